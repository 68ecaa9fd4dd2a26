// Client benchmark, Baileys side (tests/benchmarks/bench_client.py): N Baileys 7.0.0-rc14
// sockets linked to the simulator by QR (the phone links through the control API), then
// logged in again from their saved creds and kept idle; RSS per socket, login latency, and
// send → delivery-receipt latency. Line protocol (lineserver.mjs), ops: link, then measure in a
// fresh process.
import * as B from '@whiskeysockets/baileys'
import { WA_CERT_DETAILS } from '@whiskeysockets/baileys/lib/Defaults/index.js'
import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { serve, silentLogger } from './lineserver.mjs'

for (const name of ['log', 'info', 'warn', 'debug']) {
  console[name] = (...args) => process.stderr.write(args.map(String).join(' ') + '\n')
}
const makeWASocket = B.default.default || B.default || B.makeWASocket

function socket (url, dir) {
  return B.useMultiFileAuthState(dir).then(({ state, saveCreds }) => {
    const sock = makeWASocket({
      waWebSocketUrl: url,
      auth: state,
      logger: silentLogger,
      printQRInTerminal: false,
      markOnlineOnConnect: false,
      syncFullHistory: false,
      fireInitQueries: false,
      shouldSyncHistoryMessage: () => false,
      getMessage: async () => undefined
    })
    sock.ev.on('creds.update', saveCreds)
    return sock
  })
}

const once = (sock, pred) => new Promise(resolve => {
  const fn = update => { if (pred(update)) { sock.ev.off('connection.update', fn); resolve(update) } }
  sock.ev.on('connection.update', fn)
})

const pct = (xs, p) => { const s = [...xs].sort((a, b) => a - b); return s[Math.min(s.length - 1, Math.floor(p * s.length))] }

serve({
  async link (req) {
    WA_CERT_DETAILS.PUBLIC_KEY = Buffer.from(req.root, 'hex')
    const dirs = []
    for (let i = 0; i < req.n; i++) {  // link each: QR → phone links → 515
      const dir = mkdtempSync(join(tmpdir(), 'wafleet-bench-'))
      dirs.push(dir)
      const sock = await socket(req.url, dir)
      const { qr } = await once(sock, u => !!u.qr)
      const closed = once(sock, u => u.connection === 'close')
      const r = await fetch(`${req.http}/control/accounts/${req.phones[i % req.phones.length]}/link`, {
        method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ qr })
      })
      if (r.status !== 200) throw new Error(`link ${r.status} ${await r.text()}`)
      await closed
      sock.end(undefined)
    }
    return dirs
  },
  async measure (req) {  // a fresh process: no memory left over from linking
    WA_CERT_DETAILS.PUBLIC_KEY = Buffer.from(req.root, 'hex')
    const dirs = req.dirs
    if (global.gc) global.gc()
    const before = process.memoryUsage().rss
    const login = []
    const socks = []
    for (const dir of dirs) {
      const t0 = performance.now()
      const sock = await socket(req.url, dir)
      await once(sock, u => u.connection === 'open')
      login.push(performance.now() - t0)
      socks.push(sock)
    }
    if (global.gc) global.gc()
    const rssPerSocket = (process.memoryUsage().rss - before) / req.n
    const sender = socks[0]
    const send = []
    for (let i = 0; i < req.messages; i++) {
      const pending = B.generateMessageIDV2(sender.user && sender.user.id)
      const t0 = performance.now()
      // The recipient phone's raw delivery receipt (Baileys' buffered status updates may
      // end on SERVER_ACK when the own phone's `sender` receipt arrives in the same flush).
      const delivered = new Promise(resolve => {
        const fn = node => {
          if (node.attrs.id === pending && !node.attrs.type) { sender.ws.off('CB:receipt', fn); resolve() }
        }
        sender.ws.on('CB:receipt', fn)
      })
      await sender.sendMessage(req.to, { text: `bench ${i}` }, { messageId: pending })
      await delivered
      send.push(performance.now() - t0)
    }
    for (const s of socks) s.end(undefined)
    return {
      rss_per_socket: rssPerSocket,
      login_p50: pct(login, 0.5), login_p99: pct(login, 0.99),
      send_p50: pct(send, 0.5), send_p99: pct(send, 0.99)
    }
  }
})
