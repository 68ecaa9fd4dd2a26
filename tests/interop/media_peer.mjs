// Reference peer for media crypto (SPEC §11.1–§11.4): Baileys getMediaKeys, encryptedStream and
// the upload-token encoding, plus a decrypt built from Baileys' key expansion and Node's AES.
import { createDecipheriv, createHmac, createHash } from 'node:crypto'
import { readFile, unlink } from 'node:fs/promises'
import * as B from '@whiskeysockets/baileys'
import { serve, hex, unhex } from './lineserver.mjs'

serve({
  keys: async req => {
    const k = await B.getMediaKeys(unhex(req.mediaKey), req.type)
    return { iv: hex(k.iv), cipherKey: hex(k.cipherKey), macKey: hex(k.macKey) }
  },
  // Decrypt an uploaded file the way a Baileys receiver does, and also check the MAC and
  // hashes with Baileys' keys (Baileys' own downloader skips the MAC, SPEC §11.2).
  decrypt: async req => {
    const enc = unhex(req.enc)
    const { iv, cipherKey, macKey } = await B.getMediaKeys(unhex(req.mediaKey), req.type)
    const ct = enc.subarray(0, enc.length - 10)
    const mac = enc.subarray(enc.length - 10)
    const macOk = createHmac('sha256', macKey).update(iv).update(ct).digest().subarray(0, 10).equals(mac)
    const plain = B.aesDecryptWithIV(ct, cipherKey, iv)
    return {
      plain: hex(plain),
      macOk,
      fileSha256: hex(createHash('sha256').update(plain).digest()),
      fileEncSha256: hex(createHash('sha256').update(enc).digest())
    }
  },
  // Baileys' encryptedStream over a buffer (random media key chosen by Baileys).
  encrypt: async req => {
    const r = await B.encryptedStream(unhex(req.plain), req.type)
    const enc = await readFile(r.encFilePath)
    await unlink(r.encFilePath)
    return {
      mediaKey: hex(r.mediaKey), enc: hex(enc), mac: hex(r.mac),
      fileSha256: hex(r.fileSha256), fileEncSha256: hex(r.fileEncSha256), fileLength: r.fileLength
    }
  },
  uploadToken: req => B.encodeBase64EncodedStringForUpload(unhex(req.hash).toString('base64'))
})
