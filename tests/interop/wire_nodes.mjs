// JSON <-> Baileys node conversion shared by the wire peers. JSON form: {tag, attrs, content}
// with content null | string | {hex} | [nodes] (tests/protocol/wire_data.py).
import { hex, unhex } from './lineserver.mjs'

export const fromJson = n => {
  const c = n.content
  let content
  if (c === null || c === undefined) content = undefined
  else if (typeof c === 'string') content = c
  else if (Array.isArray(c)) content = c.map(fromJson)
  else content = unhex(c.hex)
  return { tag: n.tag, attrs: { ...(n.attrs || {}) }, content }
}

export const toJson = n => {
  const c = n.content
  let content
  if (c === undefined || c === null) content = null
  else if (typeof c === 'string') content = c
  else if (Array.isArray(c)) content = c.map(toJson)
  else content = { hex: hex(c) }
  return { tag: n.tag, attrs: n.attrs, content }
}
