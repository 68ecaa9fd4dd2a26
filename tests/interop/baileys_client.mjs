// Baileys 7.0.0-rc14 as an outside client of the wafleet simulator (issue 5, item 5).
// Line protocol (lineserver.mjs). Ops:
//   start {url, root, dir}       point Baileys at the simulator (its root key trusted at run time,
//                                shared/interop/README.md), open a socket with creds in `dir`
//   wait {kind, timeoutMs}       the next event of a kind: qr | open | close | message
//                                (delivered to us, incl. our phone's) | status (of our sends)
//                                | receipt (raw <receipt> attributes as they arrive)
//   receipts                     every raw receipt so far
//   send {to, text}              sock.sendMessage; returns the message id (kept for getMessage,
//                                which answers retry receipts)
//   received                     every message received so far
//   stop                         end the socket
// The script reconnects on 515 (restart required) with the saved creds, as Baileys' example does.
import * as B from '@whiskeysockets/baileys'
import { WA_CERT_DETAILS } from '@whiskeysockets/baileys/lib/Defaults/index.js'
import { appendFileSync } from 'node:fs'
import { serve, silentLogger } from './lineserver.mjs'

// libsignal writes session notes with console.*: keep stdout for the line protocol.
for (const name of ['log', 'info', 'warn', 'debug']) {
  console[name] = (...args) => process.stderr.write(args.map(String).join(' ') + '\n')
}

const makeWASocket = B.default.default || B.default || B.makeWASocket
// BAILEYS_LOG=<file>: Baileys' own log lines (debug level) go there, for debugging a test.
const logFile = process.env.BAILEYS_LOG
const logger = logFile ? fileLogger(logFile) : silentLogger

function fileLogger (path) {
  const write = level => (obj, msg) => appendFileSync(path, JSON.stringify({ level, obj, msg },
    (_, v) => typeof v === 'bigint' ? String(v) : v) + '\n')
  const l = { level: 'debug', child () { return l } }
  for (const level of ['trace', 'debug', 'info', 'warn', 'error', 'fatal']) l[level] = write(level)
  return l
}
let sock = null
let options = null
let stopped = false
const queues = { qr: [], open: [], close: [], message: [], status: [], receipt: [] }
const waiters = []
const received = []
const rawReceipts = []
// What this app sent, by id: Baileys' `getMessage` hook, which it calls to answer a retry
// receipt (SPEC §15.4) when its own recent-message cache misses (it keys that by the chat,
// while a peer device's receipt names the device).
// A retry can arrive before sendMessage resolves: getMessage waits for the sends in flight.
const sent = new Map()
let sending = Promise.resolve()

function push (kind, value) {
  const w = waiters.findIndex(x => x.kind === kind)
  if (w >= 0) {
    const [waiter] = waiters.splice(w, 1)
    clearTimeout(waiter.timer)
    waiter.resolve(value)
  } else {
    queues[kind].push(value)
  }
}

async function open () {
  const { state, saveCreds } = await B.useMultiFileAuthState(options.dir)
  sock = makeWASocket({
    waWebSocketUrl: options.url,
    auth: state,
    logger,
    printQRInTerminal: false,
    markOnlineOnConnect: false,
    syncFullHistory: false,
    fireInitQueries: false,
    shouldSyncHistoryMessage: () => false,
    connectTimeoutMs: 20000,
    getMessage: async key => { await sending; return sent.get(key.id) }
  })
  sock.ev.on('creds.update', saveCreds)
  sock.ws.on('CB:receipt', node => { rawReceipts.push(node.attrs); push('receipt', node.attrs) })
  sock.ev.on('connection.update', update => {
    if (update.qr) push('qr', update.qr)
    if (update.connection === 'open') push('open', { me: sock.user && sock.user.id })
    if (update.connection === 'close') {
      const code = update.lastDisconnect && update.lastDisconnect.error &&
        update.lastDisconnect.error.output && update.lastDisconnect.error.output.statusCode
      push('close', { code: code || null })
      if (!stopped && code === B.DisconnectReason.restartRequired) open()
    }
  })
  sock.ev.on('messages.update', updates => {
    for (const { key, update } of updates) {
      if (update.status !== undefined) push('status', { id: key.id, status: update.status })
    }
  })
  sock.ev.on('messages.upsert', ({ messages, type }) => {
    for (const m of messages) {
      const text = m.message && (m.message.conversation ||
        (m.message.extendedTextMessage && m.message.extendedTextMessage.text))
      if (!text) continue
      const item = { id: m.key.id, from: m.key.remoteJid, fromMe: !!m.key.fromMe, text, type }
      received.push(item)
      if (type === 'notify') push('message', item)
    }
  })
}

serve({
  async start (req) {
    WA_CERT_DETAILS.PUBLIC_KEY = Buffer.from(req.root, 'hex')
    options = { url: req.url, dir: req.dir }
    stopped = false
    await open()
    return true
  },
  async wait (req) {
    if (queues[req.kind].length) return queues[req.kind].shift()
    return await new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        const i = waiters.findIndex(x => x.timer === timer)
        if (i >= 0) waiters.splice(i, 1)
        reject(new Error(`timed out waiting for ${req.kind}`))
      }, req.timeoutMs || 20000)
      waiters.push({ kind: req.kind, resolve, timer })
    })
  },
  async send (req) {
    const pending = sock.sendMessage(req.to, { text: req.text })
    sending = sending.then(() => pending).then(msg => { sent.set(msg.key.id, msg.message) }, () => {})
    const msg = await pending
    return msg.key.id
  },
  async received () { return received },
  async receipts () { return rawReceipts },
  async stop () {
    stopped = true
    if (sock) sock.end(undefined)
    return true
  }
})
