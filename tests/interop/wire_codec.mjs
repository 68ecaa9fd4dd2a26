// Reference peer for the binary node codec: Baileys' encodeBinaryNode / decodeBinaryNode.
// ops: encode {nodes: [json]} -> [hex]; decode {bodies: [hex]} -> [json]
import * as B from '@whiskeysockets/baileys'
import { serve, hex, unhex } from './lineserver.mjs'
import { fromJson, toJson } from './wire_nodes.mjs'

serve({
  encode: ({ nodes }) => nodes.map(n => hex(B.encodeBinaryNode(fromJson(n)))),
  decode: async ({ bodies }) => {
    const out = []
    for (const b of bodies) out.push(toJson(await B.decodeBinaryNode(unhex(b))))
    return out
  }
})
