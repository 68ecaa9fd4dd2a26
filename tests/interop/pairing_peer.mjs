// Reference peer for pairing crypto (SPEC §8.3, §8.4, §9, §18.5–§18.7): Baileys' QR builder,
// platform ids, Crockford code, PBKDF2/CTR wrapping, key bundle, and configureSuccessfulPairing.
import * as B from '@whiskeysockets/baileys'
import { serve, hex, unhex } from './lineserver.mjs'

const DER = Buffer.from('302e020100300506032b656e04220420', 'hex')  // PKCS#8 prefix for X25519
import crypto from 'node:crypto'
const kp = priv => {
  const pub = crypto.createPublicKey(crypto.createPrivateKey({ key: Buffer.concat([DER, priv]), format: 'der', type: 'pkcs8' }))
    .export({ format: 'der', type: 'spki' }).subarray(12)
  return { private: priv, public: Buffer.from(pub) }
}

// Baileys' derivePairingCodeKey, memoised per (code, salt) so examples that reuse a pair do not
// pay 131072 PBKDF2 iterations again.
const codeKeys = new Map()
const codeKey = async (code, salt) => {
  const id = code + ':' + hex(salt)
  if (!codeKeys.has(id)) codeKeys.set(id, await B.derivePairingCodeKey(code, salt))
  return codeKeys.get(id)
}

serve({
  qr: req => B.buildPairingQRData(req.ref, unhex(req.noise).toString('base64'),
    unhex(req.identity).toString('base64'), unhex(req.adv).toString('base64'), req.browser),
  platformId: req => B.getCompanionPlatformId(req.browser),
  crockford: req => B.bytesToCrockford(unhex(req.data)),
  codeKey: async req => hex(await B.derivePairingCodeKey(req.code, unhex(req.salt))),
  // Baileys' generatePairingKey with given salt and iv.
  wrap: async req => {
    const key = await codeKey(req.code, unhex(req.salt))
    return hex(Buffer.concat([unhex(req.salt), unhex(req.iv), B.aesEncryptCTR(unhex(req.pub), key, unhex(req.iv))]))
  },
  // Baileys' decipherLinkPublicKey.
  unwrap: async req => {
    const w = unhex(req.wrapped)
    const key = await codeKey(req.code, w.subarray(0, 32))
    return hex(B.aesDecryptCTR(w.subarray(48, 80), key, w.subarray(32, 48)))
  },
  // The companion_finish computation of messages-recv.js with given randoms.
  companionFinish: req => {
    const eph = kp(unhex(req.ephPriv)); const ident = kp(unhex(req.identPriv))
    const primaryIdentity = unhex(req.primaryIdentity)
    const shared = B.Curve.sharedKey(eph.private, unhex(req.primaryEph))
    const bk = B.hkdf(shared, 32, { salt: unhex(req.salt), info: 'link_code_pairing_key_bundle_encryption_key' })
    const sealed = B.aesEncryptGCM(Buffer.concat([ident.public, primaryIdentity, unhex(req.advRandom)]), bk, unhex(req.nonce), Buffer.alloc(0))
    const identShared = B.Curve.sharedKey(ident.private, primaryIdentity)
    const adv = B.hkdf(Buffer.concat([shared, identShared, unhex(req.advRandom)]), 32, { info: 'adv_secret' })
    return { bundle: hex(Buffer.concat([unhex(req.salt), unhex(req.nonce), sealed])), adv: hex(adv) }
  },
  // Open a bundle the way the primary must (GCM with the HKDF key); null when the tag fails.
  openBundle: req => {
    const shared = B.Curve.sharedKey(unhex(req.priv), unhex(req.peerPub))
    const b = unhex(req.bundle)
    const bk = B.hkdf(shared, 32, { salt: b.subarray(0, 32), info: 'link_code_pairing_key_bundle_encryption_key' })
    try { return hex(B.aesDecryptGCM(b.subarray(44), bk, b.subarray(32, 44), Buffer.alloc(0))) } catch { return null }
  },
  // Baileys as the companion: process our pair-success container (a stanza object as in §18.7).
  pairSuccess: req => {
    const ident = kp(unhex(req.identPriv))
    const stanza = { tag: 'iq', attrs: { from: 's.whatsapp.net', type: 'set', id: 'pair1', xmlns: 'md', t: '1700000000' }, content: [{ tag: 'pair-success', attrs: {}, content: [
      { tag: 'device-identity', attrs: {}, content: unhex(req.container) }, { tag: 'platform', attrs: { name: 'android' } },
      { tag: 'device', attrs: { jid: '15551234567:3@s.whatsapp.net', lid: '123456789012345:3@lid' } }] }] }
    try {
      const { reply, creds } = B.configureSuccessfulPairing(stanza, { advSecretKey: unhex(req.adv).toString('base64'), signedIdentityKey: ident, signalIdentities: [] })
      const di = reply.content[0].content[0]
      return {
        ok: true,
        reply: hex(di.content), keyIndex: di.attrs['key-index'],
        account: hex(B.encodeSignedDeviceIdentity(creds.account, true)),
        deviceSignature: hex(creds.account.deviceSignature),
        primaryIdentity: hex(creds.signalIdentities[0].identifierKey)
      }
    } catch (e) { return { ok: false, error: String(e.message) } }
  },
  // Baileys' primitives as the primary: sign the account identity and build the container.
  buildContainer: req => {
    const acct = kp(unhex(req.acctPriv))
    const detailsObj = { rawId: req.rawId, timestamp: req.timestamp, keyIndex: req.keyIndex }
    if (req.hosted) detailsObj.deviceType = B.proto.ADVEncryptionType.HOSTED
    const details = B.proto.ADVDeviceIdentity.encode(detailsObj).finish()
    const prefix = Buffer.from(req.hosted ? [6, 5] : [6, 0])
    const accSig = B.Curve.sign(acct.private, Buffer.concat([prefix, details, unhex(req.identPub)]))
    const signed = B.proto.ADVSignedDeviceIdentity.encode({ details, accountSignatureKey: acct.public, accountSignature: accSig }).finish()
    const hmacPrefix = req.hosted ? Buffer.from([6, 5]) : Buffer.alloc(0)
    const container = { details: signed, hmac: B.hmacSign(Buffer.concat([hmacPrefix, signed]), unhex(req.adv)) }
    if (req.hosted) container.accountType = B.proto.ADVEncryptionType.HOSTED
    return { container: hex(B.proto.ADVSignedDeviceIdentityHMAC.encode(container).finish()), details: hex(details), accountPublic: hex(acct.public) }
  }
})
