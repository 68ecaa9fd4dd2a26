// Shared line-protocol loop for the reference peers: one JSON request per stdin line, one JSON
// response per stdout line ({"result": ...} or {"error": "..."}). Each peer script imports
// `serve` and passes an object of handlers keyed by request "op".
import readline from 'node:readline'

export function serve (handlers) {
  const rl = readline.createInterface({ input: process.stdin, crlfDelay: Infinity })
  const queue = []
  let busy = false
  const pump = async () => {
    if (busy) return
    busy = true
    while (queue.length) {
      const line = queue.shift()
      let out
      try {
        const req = JSON.parse(line)
        const fn = handlers[req.op]
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
}

export const hex = x => Buffer.from(x).toString('hex')
export const unhex = s => Buffer.from(s, 'hex')
// Baileys logs through pino; the peers keep it silent.
export const silentLogger = { child () { return this }, trace () {}, debug () {}, info () {}, warn () {}, error () {}, fatal () {}, level: 'silent' }
