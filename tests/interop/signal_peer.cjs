// libsignal-node 6.0.0 + curve25519-js + Baileys' sender-key port as an outside peer for
// wafleet's Signal interop tests and benchmark (tests/interop/node.py protocol: one JSON request
// per stdin line, one JSON response per stdout line; bytes as hex).
//
// CommonJS so that patching `curve.generateKeyPair` (SPEC §18.10) reaches the very module
// instance libsignal's SessionBuilder/SessionCipher call. Baileys' Group files are ESM and are
// loaded with dynamic import() (SPEC §18.11).
'use strict'

const readline = require('node:readline')
const nodeCrypto = require('node:crypto')
const ls = require('libsignal')
const curve = require('libsignal/src/curve')
const lcrypto = require('libsignal/src/crypto')
const curveJs = require('curve25519-js')

// libsignal logs session changes with console.info (stdout) and failures with console.error;
// stdout carries our protocol and nobody drains stderr, so keep both quiet.
for (const k of ['log', 'info', 'warn', 'error', 'debug']) console[k] = () => {}

const hex = x => Buffer.from(x).toString('hex')
const unhex = s => Buffer.from(s, 'hex')

// SPEC §18.0 helper: deterministic X25519 key pair from a raw private key.
const DER = Buffer.from('302e020100300506032b656e04220420', 'hex')
const kpFromPriv = priv => {
  const pub = nodeCrypto.createPublicKey(nodeCrypto.createPrivateKey({ key: Buffer.concat([DER, priv]), format: 'der', type: 'pkcs8' }))
    .export({ format: 'der', type: 'spki' }).subarray(12)
  return { privKey: Buffer.from(priv), pubKey: Buffer.concat([Buffer.from([5]), pub]) }
}
const K = b => kpFromPriv(Buffer.alloc(32, b))

// Key generation: random unless a test queued explicit private keys.
const realGenerate = curve.generateKeyPair
const keyQueue = []
curve.generateKeyPair = () => keyQueue.length ? kpFromPriv(keyQueue.shift()) : realGenerate()

// -- 1:1 parties ---------------------------------------------------------------------------
const parties = {}

function makeStore (p) {
  return {
    getOurIdentity: async () => p.identity,
    getOurRegistrationId: async () => p.registrationId,
    isTrustedIdentity: async () => true,
    loadSession: async a => p.sessions[a],
    storeSession: async (a, r) => { p.sessions[a] = r },
    loadPreKey: async i => p.preKeys[i],
    removePreKey: async i => { delete p.preKeys[i] },
    loadSignedPreKey: async i => p.signedPreKeys[i]
  }
}

function party (name) {
  const p = parties[name]
  if (!p) throw new Error(`no party ${name}`)
  return p
}

const addr = s => { const i = s.lastIndexOf('.'); return new ls.ProtocolAddress(s.slice(0, i), Number(s.slice(i + 1))) }

// -- sender keys (Baileys lib/Signal/Group) --------------------------------------------------
let G = null
async function group () {
  if (!G) {
    const base = './node_modules/@whiskeysockets/baileys/lib/Signal/Group/'
    const idx = await import(base + 'index.js')
    const rec = await import(base + 'sender-key-record.js')
    const nm = await import(base + 'sender-key-name.js')
    G = { ...idx, SenderKeyRecord: rec.SenderKeyRecord, SenderKeyName: nm.SenderKeyName }
  }
  return G
}
const groupStores = {}
function groupStore (owner, g) {
  if (!groupStores[owner]) {
    const map = {}
    groupStores[owner] = {
      loadSenderKey: async n => map[n.toString()] || new g.SenderKeyRecord(),
      storeSenderKey: async (n, r) => { map[n.toString()] = r }
    }
  }
  return groupStores[owner]
}
const senderKeyName = (g, s) => { const [grp, user, dev] = s.split('::'); return new g.SenderKeyName(grp, new ls.ProtocolAddress(user, Number(dev))) }

const ops = {
  // SPEC §18.3 / §10.3
  async sign ({ priv, msg }) { return hex(curve.calculateSignature(unhex(priv), unhex(msg))) },
  async verify ({ pub, msg, sig }) {
    const viaCurveJs = curveJs.verify(unhex(pub).subarray(-32), unhex(msg), unhex(sig))
    let viaLibsignal
    try { viaLibsignal = curve.verifySignature(unhex(pub), unhex(msg), unhex(sig)) } catch (e) { viaLibsignal = false }
    return { curveJs: viaCurveJs, libsignal: viaLibsignal }
  },
  // SPEC §18.9
  async kdf ({ ikm, salt, info }) { return lcrypto.deriveSecrets(unhex(ikm), unhex(salt), Buffer.from(info)).map(hex) },
  async mac ({ key, data }) { return hex(lcrypto.calculateMAC(unhex(key), unhex(data))) },

  async queue_keys ({ privs }) { for (const p of privs) keyQueue.push(unhex(p)); return keyQueue.length },

  // A libsignal device: identity, registration id, signed prekey (id 1) and prekeys.
  async new_party ({ name, registrationId, identity }) {
    const id = identity ? kpFromPriv(unhex(identity)) : realGenerate()
    const spk = ls.keyhelper.generateSignedPreKey(id, 1)
    parties[name] = { identity: id, registrationId, sessions: {}, preKeys: {}, signedPreKeys: { 1: spk.keyPair }, spk, nextPreKey: 1 }
    return { identity: hex(id.pubKey) }
  },
  async bundle ({ name, withPreKey }) {
    const p = party(name)
    const out = { registrationId: p.registrationId, identityKey: hex(p.identity.pubKey), signedPreKeyId: 1, signedPreKey: hex(p.spk.keyPair.pubKey), signature: hex(p.spk.signature) }
    if (withPreKey) {
      const pk = ls.keyhelper.generatePreKey(p.nextPreKey++)
      p.preKeys[pk.keyId] = pk.keyPair
      out.preKeyId = pk.keyId
      out.preKey = hex(pk.keyPair.pubKey)
    }
    return out
  },
  async has_prekey ({ name, id }) { return !!party(name).preKeys[id] },
  async init_outgoing ({ name, address, bundle }) {
    const p = party(name)
    const device = {
      registrationId: bundle.registrationId,
      identityKey: unhex(bundle.identityKey),
      signedPreKey: { keyId: bundle.signedPreKeyId, publicKey: unhex(bundle.signedPreKey), signature: unhex(bundle.signature) }
    }
    if (bundle.preKey) device.preKey = { keyId: bundle.preKeyId, publicKey: unhex(bundle.preKey) }
    await new ls.SessionBuilder(makeStore(p), addr(address)).initOutgoing(device)
    return true
  },
  async encrypt ({ name, address, pt }) {
    const p = party(name)
    const r = await new ls.SessionCipher(makeStore(p), addr(address)).encrypt(unhex(pt))
    return { type: r.type === 3 ? 'pkmsg' : 'msg', body: hex(r.body) }
  },
  async decrypt ({ name, address, type, body }) {
    const p = party(name)
    const c = new ls.SessionCipher(makeStore(p), addr(address))
    try {
      const pt = type === 'pkmsg' ? await c.decryptPreKeyWhisperMessage(unhex(body)) : await c.decryptWhisperMessage(unhex(body))
      return { ok: true, pt: hex(pt) }
    } catch (e) {
      return { ok: false, error: String(e && e.message) }
    }
  },

  // SPEC §18.10 reproduced live: returns e1, e2, Bob's reply and both decryptions.
  async session_vector () {
    keyQueue.length = 0
    const store = (id, reg, pre = {}, signed = {}) => { const s = {}; return { getOurIdentity: async () => id, getOurRegistrationId: async () => reg, isTrustedIdentity: async () => true, loadSession: async a => s[a], storeSession: async (a, r) => { s[a] = r }, loadPreKey: async i => pre[i], removePreKey: async i => { delete pre[i] }, loadSignedPreKey: async i => signed[i] } }
    keyQueue.push(Buffer.alloc(32, 0xB1), Buffer.alloc(32, 0xB2))
    const alice = store(K(0xA1), 1234); const bobAddr = new ls.ProtocolAddress('15550002222', 0); const aliceAddr = new ls.ProtocolAddress('15550001111', 0)
    const spkSig = curve.calculateSignature(K(0xC1).privKey, K(0xC2).pubKey)
    await new ls.SessionBuilder(alice, bobAddr).initOutgoing({ registrationId: 5678, identityKey: K(0xC1).pubKey, signedPreKey: { keyId: 1, publicKey: K(0xC2).pubKey, signature: spkSig }, preKey: { keyId: 31, publicKey: K(0xC3).pubKey } })
    const pt = Buffer.from('0a0568656c6c6f030303', 'hex')
    const e1 = await new ls.SessionCipher(alice, bobAddr).encrypt(pt)
    const e2 = await new ls.SessionCipher(alice, bobAddr).encrypt(pt)
    keyQueue.push(Buffer.alloc(32, 0xD1))
    const bob = store(K(0xC1), 5678, { 31: K(0xC3) }, { 1: K(0xC2) })
    const d1 = await new ls.SessionCipher(bob, aliceAddr).decryptPreKeyWhisperMessage(e1.body)
    const reply = await new ls.SessionCipher(bob, aliceAddr).encrypt(Buffer.from('0a02686901', 'hex'))
    keyQueue.push(Buffer.alloc(32, 0xB3))
    const d2 = await new ls.SessionCipher(alice, bobAddr).decryptWhisperMessage(reply.body)
    return { spkSig: hex(spkSig), e1: hex(e1.body), e1Type: e1.type, e2: hex(e2.body), d1: hex(d1), reply: hex(reply.body), replyType: reply.type, d2: hex(d2) }
  },

  // SPEC §18.11 reproduced live.
  async sender_key_vector () {
    const g = await group()
    const name = new g.SenderKeyName('120363000000000001@g.us', new ls.ProtocolAddress('15551234567', 3))
    const rec = new g.SenderKeyRecord()
    const k43 = K(0x43)
    rec.setSenderKeyState(1234567, 0, Buffer.alloc(32, 0x42), { public: k43.pubKey, private: k43.privKey })
    const map = { [name.toString()]: rec }
    const storage = { loadSenderKey: async n => map[n.toString()] || new g.SenderKeyRecord(), storeSenderKey: async (n, r) => { map[n.toString()] = r } }
    const pt = Buffer.from('0a0568656c6c6f030303', 'hex')
    const skdm = hex((await new g.GroupSessionBuilder(storage).create(name)).serialize())
    const m1 = hex(await new g.GroupCipher(storage, name).encrypt(pt))
    const m2 = hex(await new g.GroupCipher(storage, name).encrypt(pt))
    return { name: name.toString(), skdm, m1, m2 }
  },

  // Sender keys between a Baileys "owner" store and names.
  async group_create ({ owner, name }) {
    const g = await group()
    return hex((await new g.GroupSessionBuilder(groupStore(owner, g)).create(senderKeyName(g, name))).serialize())
  },
  async group_process ({ owner, name, skdm }) {
    const g = await group()
    const msg = new g.SenderKeyDistributionMessage(null, null, null, null, unhex(skdm))
    await new g.GroupSessionBuilder(groupStore(owner, g)).process(senderKeyName(g, name), msg)
    return true
  },
  async group_encrypt ({ owner, name, pt }) {
    const g = await group()
    return hex(await new g.GroupCipher(groupStore(owner, g), senderKeyName(g, name)).encrypt(unhex(pt)))
  },
  async group_decrypt ({ owner, name, body }) {
    const g = await group()
    try {
      return { ok: true, pt: hex(await new g.GroupCipher(groupStore(owner, g), senderKeyName(g, name)).decrypt(unhex(body))) }
    } catch (e) {
      return { ok: false, error: String(e && e.message) }
    }
  },

  // Benchmark: the same operations as tests/benchmarks/bench_signal.py, timed here.
  async bench ({ messages, builds, signs }) {
    const now = () => Number(process.hrtime.bigint()) / 1e9
    const mk = (reg) => { const id = realGenerate(); const spk = ls.keyhelper.generateSignedPreKey(id, 1); return { identity: id, registrationId: reg, sessions: {}, preKeys: { 1: realGenerate() }, signedPreKeys: { 1: spk.keyPair }, spk } }
    const a = mk(1); const b = mk(2)
    const aAddr = new ls.ProtocolAddress('1', 0); const bAddr = new ls.ProtocolAddress('2', 0)
    const bundle = () => ({ registrationId: 2, identityKey: b.identity.pubKey, signedPreKey: { keyId: 1, publicKey: b.spk.keyPair.pubKey, signature: b.spk.signature }, preKey: { keyId: 1, publicKey: b.preKeys[1].pubKey } })
    let t = now()
    for (let i = 0; i < builds; i++) await new ls.SessionBuilder(makeStore(a), bAddr).initOutgoing(bundle())
    const buildRate = builds / (now() - t)
    a.sessions = {}
    await new ls.SessionBuilder(makeStore(a), bAddr).initOutgoing(bundle())
    const first = await new ls.SessionCipher(makeStore(a), bAddr).encrypt(Buffer.from('x'))
    await new ls.SessionCipher(makeStore(b), aAddr).decryptPreKeyWhisperMessage(first.body)
    const reply = await new ls.SessionCipher(makeStore(b), aAddr).encrypt(Buffer.from('y'))
    await new ls.SessionCipher(makeStore(a), bAddr).decryptWhisperMessage(reply.body)
    const pt = Buffer.alloc(100, 7)
    t = now()
    for (let i = 0; i < messages; i++) {
      const m = await new ls.SessionCipher(makeStore(a), bAddr).encrypt(pt)
      await new ls.SessionCipher(makeStore(b), aAddr).decryptWhisperMessage(m.body)
    }
    const msgRate = messages / (now() - t)
    const msg = Buffer.alloc(100, 3)
    t = now()
    let sig
    for (let i = 0; i < signs; i++) sig = curve.calculateSignature(a.identity.privKey, msg)
    const signRate = signs / (now() - t)
    t = now()
    for (let i = 0; i < signs; i++) curve.verifySignature(a.identity.pubKey, msg, sig)
    const verifyRate = signs / (now() - t)
    return { messages: msgRate, builds: buildRate, sign: signRate, verify: verifyRate }
  }
}

const rl = readline.createInterface({ input: process.stdin, crlfDelay: Infinity })
const queue = []
let busy = false
async function pump () {
  if (busy) return
  busy = true
  while (queue.length) {
    const line = queue.shift()
    let out
    try {
      const req = JSON.parse(line)
      const fn = ops[req.op]
      if (!fn) throw new Error(`unknown op ${req.op}`)
      out = { result: await fn(req) }
    } catch (err) {
      out = { error: String(err && err.stack ? err.stack : err) }
    }
    process.stdout.write(JSON.stringify(out) + '\n')
  }
  busy = false
}
rl.on('line', line => { if (line.trim()) { queue.push(line); pump() } })
