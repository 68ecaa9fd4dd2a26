// Reference peer for the Noise handshake and transport: Baileys' makeNoiseHandler.
// client_* ops: Baileys is the initiator (processHandshake verifies the chain against
// WA_CERT_DETAILS.PUBLIC_KEY, set here to the test root, see shared/interop/README.md).
// server_* ops: a handler driven step by step plays the responder (SPEC §18.2 snippet).
import crypto from 'node:crypto'
import * as B from '@whiskeysockets/baileys'
import { WA_CERT_DETAILS } from '@whiskeysockets/baileys/lib/Defaults/index.js'
import { serve, hex, unhex, silentLogger } from './lineserver.mjs'
import { fromJson, toJson } from './wire_nodes.mjs'

const { proto, Curve } = B
const DER = Buffer.from('302e020100300506032b656e04220420', 'hex')
const keyPair = privHex => {
  const priv = unhex(privHex)
  const pub = crypto.createPublicKey(crypto.createPrivateKey({ key: Buffer.concat([DER, priv]), format: 'der', type: 'pkcs8' }))
    .export({ format: 'der', type: 'spki' }).subarray(12)
  return { private: priv, public: Buffer.from(pub) }
}
const frame = data => {
  const out = Buffer.alloc(3 + data.length)
  out.writeUIntBE(data.length, 0, 3)
  out.set(data, 3)
  return out
}
const cfg = { version: [2, 3000, 1043857760], browser: ['Mac OS', 'Chrome', '14.4.1'], countryCode: 'US', syncFullHistory: true }

let client = null
let server = null

const collect = async (handler, data) => {
  const frames = []
  await handler.decodeFrame(unhex(data), f => frames.push(f))
  return frames
}

serve({
  client_start: ({ ephemeral, noise_key, root, routing_info }) => {
    WA_CERT_DETAILS.PUBLIC_KEY = unhex(root)
    const eph = keyPair(ephemeral)
    const handler = B.makeNoiseHandler({
      keyPair: eph, NOISE_HEADER: B.NOISE_WA_HEADER, logger: silentLogger,
      routingInfo: routing_info ? unhex(routing_info) : undefined
    })
    client = { handler, noiseKey: keyPair(noise_key) }
    return hex(handler.encodeFrame(proto.HandshakeMessage.encode({ clientHello: { ephemeral: eph.public } }).finish()))
  },
  client_server_hello: async ({ data, jid }) => {
    const [raw] = await collect(client.handler, data)
    const hs = proto.HandshakeMessage.decode(raw)
    const keyEnc = client.handler.processHandshake(hs, client.noiseKey)
    const payload = proto.ClientPayload.encode(B.generateLoginNode(jid, cfg)).finish()
    const finish = proto.HandshakeMessage.encode({ clientFinish: { static: keyEnc, payload: client.handler.encrypt(payload) } }).finish()
    const out = client.handler.encodeFrame(finish)
    await client.handler.finishInit()
    return { frame: hex(out), payload: hex(payload) }
  },
  client_send: ({ nodes }) => hex(Buffer.concat(nodes.map(n => client.handler.encodeFrame(B.encodeBinaryNode(fromJson(n)))))),
  client_recv: async ({ data }) => (await collect(client.handler, data)).map(toJson),

  server_start: async ({ data, ephemeral, static_key, cert }) => {
    // data = intro (4 bytes, no routing info) + ClientHello frame
    const bytes = unhex(data)
    const header = bytes.subarray(0, 4)
    const hello = proto.HandshakeMessage.decode(bytes.subarray(7, 7 + bytes.readUIntBE(4, 3)))
    const cE = Buffer.from(hello.clientHello.ephemeral)
    const sE = keyPair(ephemeral); const sS = keyPair(static_key)
    const s = B.makeNoiseHandler({ keyPair: { private: sE.private, public: cE }, NOISE_HEADER: header, logger: silentLogger })
    s.authenticate(sE.public)
    s.mixIntoKey(Curve.sharedKey(sE.private, cE))
    const st = s.encrypt(sS.public)
    s.mixIntoKey(Curve.sharedKey(sS.private, cE))
    const pl = s.encrypt(unhex(cert))
    server = { s, sE }
    return hex(frame(proto.HandshakeMessage.encode({ serverHello: { ephemeral: sE.public, static: st, payload: pl } }).finish()))
  },
  server_finish: ({ data }) => {
    const bytes = unhex(data)
    const cf = proto.HandshakeMessage.decode(bytes.subarray(3)).clientFinish
    const cs = server.s.decrypt(cf.static)
    server.s.mixIntoKey(Curve.sharedKey(server.sE.private, cs))
    const payload = server.s.decrypt(cf.payload)
    return { client_static: hex(cs), payload: hex(payload) }
  }
})
