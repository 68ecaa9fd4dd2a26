// Baileys side of tests/benchmarks/bench_wire.py: the same operations, timed in the same run.
// op run {node, payload_size, seconds, keys: {root_priv, inter_priv, s_static_priv}, cert}
import { performance } from 'node:perf_hooks'
import * as B from '@whiskeysockets/baileys'
import { WA_CERT_DETAILS } from '@whiskeysockets/baileys/lib/Defaults/index.js'
import { serve, unhex, silentLogger } from './lineserver.mjs'
import { fromJson } from './wire_nodes.mjs'

const { proto, Curve } = B

const rate = async (seconds, fn) => {
  let n = 0; let batch = 1
  const start = performance.now()
  for (;;) {
    for (let i = 0; i < batch; i++) await fn()
    n += batch
    const elapsed = (performance.now() - start) / 1000
    if (elapsed >= seconds) return n / elapsed
    batch = Math.min(batch * 2, 4096)
  }
}

const iv = c => { const b = Buffer.alloc(12); b.writeUInt32BE(c, 8); return b }

serve({
  run: async ({ node, payload_size, seconds, root_pub, s_static, cert }) => {
    const n = fromJson(node)
    const body = B.encodeBinaryNode(n)
    const encode = await rate(seconds, () => B.encodeBinaryNode(n))
    const decode = await rate(seconds, () => B.decodeBinaryNode(body))

    const key = Buffer.alloc(32, 7)
    const plain = Buffer.alloc(payload_size, 1)
    let wc = 0
    const encrypt = await rate(seconds, () => B.aesEncryptGCM(plain, key, iv(wc++), Buffer.alloc(0)))
    const sealed = B.aesEncryptGCM(plain, key, iv(0), Buffer.alloc(0))
    const decrypt = await rate(seconds, () => B.aesDecryptGCM(sealed, key, iv(0), Buffer.alloc(0)))

    WA_CERT_DETAILS.PUBLIC_KEY = unhex(root_pub)
    const sS = { private: unhex(s_static.private), public: unhex(s_static.public) }
    const noiseKey = Curve.generateKeyPair()
    const certBytes = unhex(cert)
    const payload = proto.ClientPayload.encode(B.generateLoginNode('15551234567:3@s.whatsapp.net', {
      version: [2, 3000, 1043857760], browser: ['Mac OS', 'Chrome', '14.4.1'], countryCode: 'US', syncFullHistory: true
    })).finish()
    const handshake = async () => {
      const cE = Curve.generateKeyPair(); const sE = Curve.generateKeyPair()
      const c = B.makeNoiseHandler({ keyPair: cE, NOISE_HEADER: B.NOISE_WA_HEADER, logger: silentLogger })
      const hello = proto.HandshakeMessage.decode(proto.HandshakeMessage.encode({ clientHello: { ephemeral: cE.public } }).finish())
      const s = B.makeNoiseHandler({ keyPair: { private: sE.private, public: hello.clientHello.ephemeral }, NOISE_HEADER: B.NOISE_WA_HEADER, logger: silentLogger })
      s.authenticate(sE.public); s.mixIntoKey(Curve.sharedKey(sE.private, cE.public)); const st = s.encrypt(sS.public)
      s.mixIntoKey(Curve.sharedKey(sS.private, cE.public)); const pl = s.encrypt(certBytes)
      const sh = proto.HandshakeMessage.decode(proto.HandshakeMessage.encode({ serverHello: { ephemeral: sE.public, static: st, payload: pl } }).finish())
      const keyEnc = c.processHandshake(sh, noiseKey)
      const fin = proto.HandshakeMessage.decode(proto.HandshakeMessage.encode({ clientFinish: { static: keyEnc, payload: c.encrypt(payload) } }).finish())
      await c.finishInit()
      const cs = s.decrypt(fin.clientFinish.static)
      s.mixIntoKey(Curve.sharedKey(sE.private, cs))
      proto.ClientPayload.decode(s.decrypt(fin.clientFinish.payload))
      await s.finishInit()
    }
    const handshakes = await rate(seconds, handshake)
    return { encode, decode, encrypt_mb_s: encrypt * payload_size / 1e6, decrypt_mb_s: decrypt * payload_size / 1e6, handshakes }
  }
})
