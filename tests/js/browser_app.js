// The page of the real-browser test (tests/test_browser.py): the stock npm `wyseman`
// client (lib/client_ws.js, pinned in package.json), bundled for the browser by
// browser_test.js with esbuild and served by the Python server from its [web] root.
// It does what wylib does: a ticket login that keeps the new key in localStorage, and
// after a reload a key login with that key, /clientinfo fetched from the page's own
// origin (with the page's cookies) and signed. browser_test.js drives it through
// window.wysemanTest.
'use strict'
const ClientWs = require('wyseman/lib/client_ws.js')

const KEY = 'wyseman-test-key'
const notifications = []
const waiting = []
const replies = new Map()     // id → resolve, for requests sent with ask()

function client (listen) {
  return new ClientWs({
    webcrypto: window.crypto,
    httpPort: window.location.port, // /clientinfo on the page's own origin
    listen,
    fetch: url => window.fetch(url, { credentials: 'include' }),
    saveKey: creds => { window.localStorage.setItem(KEY, JSON.stringify(creds)) }
  })
}

// Open a WebSocket and send one request; → {socket, reply}. Notifications that come
// later are kept (nextNotification).
function openAndAsk (url, request) {
  return new Promise((resolve, reject) => {
    const socket = new window.WebSocket(url)
    let answered = false
    socket.onerror = () => { if (!answered) reject(new Error('WebSocket error: ' + url)) }
    socket.onclose = event => {
      if (!answered) reject(new Error(`WebSocket closed: ${event.code} ${event.reason}`))
    }
    socket.onopen = () => socket.send(JSON.stringify(request))
    socket.onmessage = event => {
      const message = JSON.parse(event.data)
      if (message.action === 'notify') {
        const waiter = waiting.shift()
        if (waiter) waiter(message); else notifications.push(message)
        return
      }
      if (!answered && message.id === request.id) {
        answered = true
        resolve({ socket, reply: message })
      } else if (replies.has(message.id)) {
        replies.get(message.id)(message)
        replies.delete(message.id)
      }
    }
  })
}

window.wysemanTest = {
  async ticketLogin ({ host, port, user, token }) {
    window.localStorage.removeItem(KEY)
    const url = await client().uri({ host, port, user, token })
    const { socket, reply } = await openAndAsk(url, { id: 1, action: 'tuple',
      view: 'base.curr_eid()' })
    socket.close(1000)
    return { url, reply, saved: JSON.parse(window.localStorage.getItem(KEY)) }
  },

  async keyLogin ({ listen, request }) {
    const saved = JSON.parse(window.localStorage.getItem(KEY))
    if (!saved) throw new Error('no key in localStorage')
    const url = await client(listen).uri({ host: saved.host, port: saved.port,
      user: saved.user, key: saved.key })
    const { socket, reply } = await openAndAsk(url, request)
    window.wysemanSocket = socket
    const info = await (await window.fetch('/clientinfo', { credentials: 'include' })).json()
    return { url, reply, clientinfo: info, cookie: document.cookie }
  },

  // one more request on the key login's socket → its reply
  ask (request) {
    return new Promise(resolve => {
      replies.set(request.id, resolve)
      window.wysemanSocket.send(JSON.stringify(request))
    })
  },

  nextNotification () {
    if (notifications.length) return Promise.resolve(notifications.shift())
    return new Promise(resolve => waiting.push(resolve))
  }
}
