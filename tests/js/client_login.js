// Log in with the real npm `wyseman` client class (lib/client_ws.js, pinned in
// package.json) the way an app such as wylib or a MyCHIPs client drives it:
//   1. ticket login: ClientWs generates a key pair, hands {host, port, user, key} to
//      the app's saveKey callback and builds ?user=…&token=…&pub=…;
//   2. key login: a new credentials object {host, port, user, key} (what the app
//      stored); ClientWs fetches /clientinfo (httpPort, else port − 1) and, on wss,
//      signs it: ?user=…&sign=…&date=…;
//   3. one request on the last socket, and its reply.
// ClientWs only builds URLs; the sockets are opened here with `ws`, sending the same
// User-Agent (and Cookie, if given) as the /clientinfo fetch, as a browser would.
//
// Usage: node client_login.js '<json config>'   (or the config on stdin)
//        node client_login.js --selftest        (no server needed; see selfTest below)
// config: {host, port, user, proto?: 'wss'|'ws' (ClientWs default wss), token?, key?,
//          httpPort?, listen?: [channels], request?: {…}, userAgent?, cookie?,
//          steps?: ['ticket', 'key'] (default: both with a token, else ['key']),
//          timeout?: ms (default 15000), plainTransport?: bool (wss/https URLs are
//          opened as ws/http: for the self-test only)}
// Prints one JSON line {ok, savedKey, saved, url, urls, reply, notifications} and exits
// 0; on failure {ok: false, error, step, status?, body?} and exits 1.
'use strict'
const ClientWs = require('wyseman/lib/client_ws.js')
const WebSocket = require('ws')
const { webcrypto } = require('crypto')

function transportUrl (config, url) {
  if (!config.plainTransport) return url
  return url.replace(/^wss:/, 'ws:').replace(/^https:/, 'http:')
}

function openSocket (url, headers, request, ms) {
  return new Promise((resolve, reject) => {
    const socket = new WebSocket(url, { headers, handshakeTimeout: ms })
    const notifications = []
    let settled = false
    const settle = (fn, value) => { if (!settled) { settled = true; fn(value) } }
    const refused = (status, body) =>
      Object.assign(new Error(`refused with status ${status}`), { status, body })

    socket.on('unexpected-response', (req, res) => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', chunk => { body += chunk })
      res.on('end', () => { settle(reject, refused(res.statusCode, body)); req.destroy() })
      res.on('error', () => settle(reject, refused(res.statusCode, body)))
    })
    socket.on('error', err => settle(reject, err))
    socket.on('open', () => {
      if (!request) {
        socket.close(1000)
        return settle(resolve, { reply: null, notifications })
      }
      socket.send(JSON.stringify(request))
    })
    socket.on('message', data => {
      let message
      try {
        message = JSON.parse(data.toString())
      } catch (err) {
        socket.terminate()
        return settle(reject, new Error('reply is not JSON: ' + String(data).slice(0, 200)))
      }
      if (message && message.action === 'notify') return notifications.push(message)
      socket.close(1000)
      settle(resolve, { reply: message, notifications })
    })
    socket.on('close', (code, reason) =>
      settle(reject, new Error(`socket closed before a reply: ${code} ${reason}`)))
  })
}

// Run the configured steps; always resolves to the result object (never rejects).
async function login (config) {
  const timeout = config.timeout || 15000
  const headers = { 'User-Agent': config.userAgent || 'wyseman-interop-test' }
  if (config.cookie !== undefined) headers.Cookie = config.cookie
  const proto = config.proto || 'wss'
  const { host, port, user } = config
  let saved = null
  const client = new ClientWs({
    webcrypto,
    httpPort: config.httpPort,
    listen: config.listen,
    fetch: url => fetch(transportUrl(config, url), { headers }), // Node 20 global fetch
    saveKey: creds => { saved = JSON.parse(JSON.stringify(creds)) },
    debug: config.debug ? (...msgs) => console.error('client_ws:', ...msgs) : undefined
  })
  const steps = config.steps || (config.token ? ['ticket', 'key'] : ['key'])
  const result = { ok: false, savedKey: null, saved: null, url: null, urls: {} }
  let step = null
  try {
    for (const [index, name] of steps.entries()) {
      step = name
      let creds
      if (name === 'ticket') {
        if (!config.token) throw new Error('a ticket step needs token')
        creds = { proto, host, port, user, token: config.token }
      } else if (name === 'key') {
        const key = (saved && saved.key) || config.key
        if (!key) throw new Error('a key step needs key (or a ticket step before it)')
        creds = Object.assign({}, saved || { host, port, user }, { proto, key })
      } else {
        throw new Error('unknown step ' + name)
      }
      const url = await client.uri(creds) // rejects with an Error or a bare message
      result.urls[name] = url
      result.url = url
      const last = index === steps.length - 1
      const outcome = await openSocket(transportUrl(config, url), headers,
        last ? config.request : null, timeout)
      if (last) Object.assign(result, outcome)
    }
    result.ok = true
  } catch (err) {
    result.error = String((err && err.message) || err)
    result.step = step
    if (err && err.status) Object.assign(result, { status: err.status, body: err.body })
  }
  result.saved = saved
  result.savedKey = saved ? saved.key : null
  return result
}

// --- self-test: a throwaway server on 127.0.0.1 that checks what ClientWs sends -----------

function check (condition, what, checks) {
  if (!condition) throw new Error('selftest: ' + what)
  checks.push(what)
}

function listen (server, port) {
  return new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen(port, '127.0.0.1', () => { server.removeListener('error', reject); resolve() })
  })
}

// A WebSocket port P with /clientinfo on P − 1 (the client's default), both loopback.
async function startSelfTestServer () {
  const Http = require('http')
  const state = { keys: {}, logins: [], clientinfo: 0, token: 'selftest-token' }
  const info = Http.createServer((req, res) => {
    if (req.url !== '/clientinfo') { res.statusCode = 404; return res.end() }
    state.clientinfo += 1
    res.end(JSON.stringify({ ip: req.socket.remoteAddress, cookie: req.headers.cookie,
      userAgent: req.headers['user-agent'], date: new Date().toJSON() }))
  })
  for (let attempt = 0; attempt < 50; attempt++) {
    const web = Http.createServer()
    await listen(web, 0)
    const port = web.address().port
    try {
      await listen(info, port - 1)
    } catch (err) {
      web.close()
      continue
    }
    const wss = new WebSocket.Server({ server: web, verifyClient: (i, cb) => verify(i, cb) })
    wss.on('connection', (socket, req) => {
      const login = req.selfTestLogin
      socket.on('message', data => {
        const reply = Object.assign(JSON.parse(data.toString()), { data: login })
        socket.send(JSON.stringify(reply))
      })
    })
    const close = () => { wss.close(); web.close(); info.close() }
    return { port, state, close }
  }
  throw new Error('selftest: no free pair of ports P, P − 1 on 127.0.0.1')

  // The JS server's decision (lib/wyseman.js verifyClient), on a plain socket.
  async function verify ({ req }, cb) {
    const query = new URL(req.url, 'http://selftest').searchParams
    const [user, token, pub, sign, date] = ['user', 'token', 'pub', 'sign', 'date']
      .map(k => query.get(k))
    const accept = method => {
      req.selfTestLogin = { user, method }
      state.logins.push({ user, method, url: req.url })
      cb(true)
    }
    try {
      if (user && token && pub) {
        if (token !== state.token) return cb(false, 403, 'Invalid Login')
        state.keys[user] = JSON.parse(Buffer.from(pub, 'base64').toString())
        return accept('ticket')
      }
      if (user && sign && date) {
        const message = JSON.stringify({ ip: req.socket.remoteAddress, cookie: req.headers.cookie,
          userAgent: req.headers['user-agent'], date })
        const { KeyConfig, SignConfig } = require('wyseman/lib/crypto.js')
        const jwk = state.keys[user]
        if (!jwk) return cb(false, 403, 'Invalid Login')
        const key = await webcrypto.subtle.importKey('jwk', jwk, KeyConfig, true, ['verify'])
        const valid = await webcrypto.subtle.verify(SignConfig, key, Buffer.from(sign, 'base64'),
          Buffer.from(message))
        return valid ? accept('key') : cb(false, 403, 'Invalid Login')
      }
      if (user) return accept('insecure') // plain socket: as the Node server does
      cb(false, 401, 'No login credentials')
    } catch (err) {
      cb(false, 500, String(err))
    }
  }
}

async function selfTest () {
  const server = await startSelfTestServer()
  const checks = []
  const { port, state } = server
  const base = { host: '127.0.0.1', port, user: 'alice', userAgent: 'selftest-agent' }
  try {
    // ticket, then signed key login: wss URLs, opened over plain sockets
    const listenTo = ['wyseman', 'wylib']
    const first = await login(Object.assign({}, base, { proto: 'wss', plainTransport: true,
      token: state.token, listen: listenTo, request: { id: 1, action: 'tuple', view: 'v' } }))
    check(first.ok, 'ticket + key login succeed' + (first.ok ? '' : ': ' + first.error), checks)
    const key = first.savedKey
    check(key && key.kty === 'EC' && key.crv === 'P-521' && typeof key.d === 'string' &&
      JSON.stringify(key.key_ops) === '["sign"]', 'saveKey got a private P-521 JWK', checks)
    check(first.saved.host === base.host && first.saved.port === port &&
      first.saved.user === 'alice', 'saveKey got {host, port, user, key}', checks)
    const db = 'WyJ3eXNlbWFuIiwid3lsaWIiXQ'
    const ticketUrl = new RegExp(`^wss://127\\.0\\.0\\.1:${port}/\\?user=alice&db=${db}` +
      `&token=${state.token}&pub=([A-Za-z0-9_-]+)$`)
    const ticketMatch = ticketUrl.exec(first.urls.ticket)
    check(ticketMatch, 'ticket URL: user, db, token, pub in this order, unencoded', checks)
    const pub = JSON.parse(Buffer.from(ticketMatch[1], 'base64url').toString())
    check(pub.x === key.x && pub.y === key.y && pub.d === undefined &&
      JSON.stringify(pub.key_ops) === '["verify"]', 'pub is the public half of the saved key',
    checks)
    const keyUrl = new RegExp(`^wss://127\\.0\\.0\\.1:${port}/\\?user=alice&db=${db}` +
      '&sign=[A-Za-z0-9_-]{176}&date=\\d{4}-\\d\\d-\\d\\dT\\d\\d:\\d\\d:\\d\\d\\.\\d{3}Z$')
    check(keyUrl.test(first.urls.key), 'key URL: user, db, sign (176 chars), date', checks)
    check(state.clientinfo === 1, '/clientinfo fetched once, at port - 1, for the key login only',
      checks)
    check(state.logins.map(l => l.method).join() === 'ticket,key',
      'the server verified the signature over {ip, userAgent, date}', checks)
    check(first.reply && first.reply.id === 1 && first.reply.data.method === 'key',
      'the request went over the key-login socket and got its reply', checks)

    // a wrong token is refused: status reported, ok false
    const refused = await login(Object.assign({}, base, { proto: 'wss', plainTransport: true,
      token: 'wrong', steps: ['ticket'] }))
    check(!refused.ok && refused.status === 403 && refused.step === 'ticket' &&
      refused.savedKey, 'a refused ticket reports 403 (the key was saved anyway)', checks)

    // a key the server does not know is refused
    const stranger = await login(Object.assign({}, base, { proto: 'wss', plainTransport: true,
      key: refused.savedKey }))
    check(!stranger.ok && stranger.status === 403, 'an unknown key is refused with 403', checks)

    // plain ws: the client fetches /clientinfo but does not sign
    const before = state.clientinfo
    const plain = await login(Object.assign({}, base, { proto: 'ws', key }))
    check(plain.ok && /^ws:\/\/[^?]+\/\?user=alice$/.test(plain.url) &&
      state.clientinfo === before + 1, 'on ws the key login is unsigned (/clientinfo still fetched)',
    checks)
    return { ok: true, selftest: 'passed', checks }
  } catch (err) {
    return { ok: false, error: String((err && err.message) || err), checks }
  } finally {
    server.close()
  }
}

// --- main ------------------------------------------------------------------------------

function readStdin () {
  return new Promise((resolve, reject) => {
    const chunks = []
    process.stdin.on('data', c => chunks.push(c))
    process.stdin.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')))
    process.stdin.on('error', reject)
  })
}

function finish (result) {
  if (!result.ok) process.stderr.write('client_login: ' + (result.error || 'failed') + '\n')
  process.stdout.write(JSON.stringify(result) + '\n', () => process.exit(result.ok ? 0 : 1))
}

async function main () {
  const args = process.argv.slice(2)
  if (args[0] === '--selftest') return selfTest()
  const config = JSON.parse(args.length ? args[0] : await readStdin())
  for (const k of ['host', 'port', 'user']) {
    if (!config[k]) throw new Error(`config needs ${k}`)
  }
  const guard = setTimeout(() => finish({ ok: false, error: 'timeout' }),
    (config.timeout || 15000) * 2)
  const result = await login(config)
  clearTimeout(guard)
  return result
}

main().then(finish, err => finish({ ok: false, error: String((err && err.message) || err) }))
