// Reference peer for the plaintext layer (SPEC §10.9, §13.1, §13.2): Baileys' padding, Message
// protobuf and message ids. Randomness and time are made deterministic per request by
// replacing crypto.randomBytes / Date.now (configuration of the reference, not a change to it).
import { createRequire, syncBuiltinESMExports } from 'node:module'
import * as B from '@whiskeysockets/baileys'
import { serve, hex, unhex } from './lineserver.mjs'

const require = createRequire(import.meta.url)
const nodeCrypto = require('node:crypto')
const realRandomBytes = nodeCrypto.randomBytes
const realNow = Date.now

// Run fn with randomBytes returning the given bytes in order and Date.now fixed.
function withInjected (randomHex, nowMs, fn) {
  let pool = unhex(randomHex)
  nodeCrypto.randomBytes = n => {
    if (pool.length < n) throw new Error('injected randomness exhausted')
    const out = Buffer.from(pool.subarray(0, n)); pool = pool.subarray(n); return out
  }
  syncBuiltinESMExports()
  if (nowMs !== undefined) Date.now = () => nowMs
  try { return fn() } finally {
    nodeCrypto.randomBytes = realRandomBytes
    syncBuiltinESMExports()
    Date.now = realNow
  }
}

serve({
  pad: req => withInjected(req.random, undefined, () => hex(B.writeRandomPadMax16(unhex(req.data)))),
  unpad: req => {
    try { return { ok: hex(B.unpadRandomMax16(unhex(req.data))) } } catch (e) { return { error: String(e.message) } }
  },
  messageId: req => withInjected(req.random, req.nowMs, () => B.generateMessageIDV2(req.jid ?? undefined)),
  // Baileys' own sending encoding of a Message given as protobuf bytes (decode, re-encode, pad).
  encodeWAMessage: req => withInjected(req.random, undefined,
    () => hex(B.encodeWAMessage(B.proto.Message.decode(unhex(req.message))))),
  // Baileys' `meMsg` for our own other devices (messages-send.js relayMessage), encoded.
  wrapOwn: req => {
    const message = B.proto.Message.decode(unhex(req.message))
    const meMsg = { deviceSentMessage: { destinationJid: req.jid, message }, messageContextInfo: message.messageContextInfo }
    return hex(B.proto.Message.encode(meMsg).finish())
  },
  // What Baileys reads from a padded plaintext: unpad, decode, re-encode.
  decodeWAMessage: req => {
    const msg = B.proto.Message.decode(B.unpadRandomMax16(unhex(req.data)))
    const inner = msg.deviceSentMessage?.message
    return {
      message: hex(B.proto.Message.encode(msg).finish()),
      inner: inner ? hex(B.proto.Message.encode(inner).finish()) : null,
      destinationJid: msg.deviceSentMessage?.destinationJid ?? null,
      text: msg.conversation || msg.extendedTextMessage?.text || null
    }
  }
})
