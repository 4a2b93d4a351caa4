// Drive the real npm `wyseman` client (lib/client_ws.js, pinned in package.json) against a
// server: build the login URL exactly as the JS client does, open the socket with `ws`,
// send one request, print one JSON line. Usage: node client_login.js '<json config>'
// config: {host, port, proto, user, token?, key?, listen?, request?, httpPort?, userAgent}
'use strict'
const ClientWs = require('wyseman/lib/client_ws.js')
const WebSocket = require('ws')
const { webcrypto } = require('crypto')

const config = JSON.parse(process.argv[2])
const headers = { 'User-Agent': config.userAgent || 'wyseman-interop-test' }
let savedKey = null

function finish (result, code) {
  process.stdout.write(JSON.stringify(result) + '\n')
  process.exit(code)
}
setTimeout(() => finish({ ok: false, error: 'timeout' }, 1), 15000)

const client = new ClientWs({
  webcrypto,
  httpPort: config.httpPort,
  listen: config.listen,
  fetch: (url) => fetch(url, { headers }),           // same User-Agent as the socket
  saveKey: (creds) => { savedKey = creds.key },
  debug: () => {}
})

const credentials = { proto: config.proto, host: config.host, port: config.port, user: config.user }
if (config.token) credentials.token = config.token
if (config.key) credentials.key = config.key

client.uri(credentials).then(url => {
  const socket = new WebSocket(url, { headers })
  socket.on('unexpected-response', (req, res) => {
    finish({ ok: false, error: 'refused', status: res.statusCode }, 1)
  })
  socket.on('error', err => finish({ ok: false, error: String(err && err.message) }, 1))
  socket.on('open', () => {
    if (!config.request) return finish({ ok: true, savedKey, url }, 0)
    socket.send(JSON.stringify(config.request))
  })
  socket.on('message', data => {
    const message = JSON.parse(data.toString())
    if (message.action === 'notify') return
    socket.close()
    finish({ ok: true, savedKey, reply: message, url }, 0)
  })
}).catch(err => finish({ ok: false, error: String(err && (err.message || err)) }, 1))
