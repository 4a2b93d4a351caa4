// js-libp2p (pinned in package.json) dialling our server's /wyseman/1.0.0 (docs/protocol.md,
// section 15): `node p2p_client.mjs ADDRESS USER JSON` where JSON is
//   {"token": T, "key": JWK, "listen": [..], "requests": [..], "notify": CHANNEL}
// ticket login when "token" is given (registers JWK's public half), else a key login
// signed with JWK over both peer ids and this clock's date. Prints one JSON line per
// message received (the login answer, the replies, one notification), then exits.
// ADDRESS `mdns` finds the server by mDNS instead (@libp2p/mdns, querying every
// "interval" ms of JSON's {"mdns": {"interval": MS, "wait": MS}}): the first peer
// discovered is printed as {"discovered": PEER, "multiaddrs": [..]} and dialled by its
// peer id (the addresses the discovery put in the peer store); none within "wait" ms
// prints {"discovered": null} and exits.
// Node 20 needs Promise.withResolvers: run with `node --import ./withresolvers.mjs`.
import { webcrypto as crypto } from 'node:crypto'
import { createLibp2p } from 'libp2p'
import { tcp } from '@libp2p/tcp'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { mdns } from '@libp2p/mdns'
import { multiaddr } from '@multiformats/multiaddr'

const [address, user, spec] = process.argv.slice(2)
const options = JSON.parse(spec)

const b64url = bytes => Buffer.from(bytes).toString('base64url')
const varint = n => { const out = []; do { let b = n & 0x7f; n = Math.floor(n / 128); if (n) b |= 0x80; out.push(b) } while (n); return Uint8Array.from(out) }
const frame = object => { const body = new TextEncoder().encode(JSON.stringify(object)); const out = new Uint8Array(varint(body.length).length + body.length); out.set(varint(body.length)); out.set(body, varint(body.length).length); return out }

const discovery = address === 'mdns' ? [mdns({ interval: options.mdns.interval })] : []
const node = await createLibp2p({ transports: [tcp()], connectionEncrypters: [noise()], streamMuxers: [yamux()], peerDiscovery: discovery })
let target, server
if (address === 'mdns') {
  const found = Promise.withResolvers()
  node.addEventListener('peer:discovery', event => found.resolve(event.detail))
  const timer = setTimeout(() => found.resolve(null), options.mdns.wait)
  const peer = await found.promise
  clearTimeout(timer)
  console.log(JSON.stringify({ discovered: peer && peer.id.toString(), multiaddrs: peer ? peer.multiaddrs.map(String) : [] }))
  if (peer == null) { await node.stop(); process.exit(0) }
  target = peer.id
  server = peer.id.toString()
} else {
  target = multiaddr(address)
  server = address.split('/p2p/')[1]
}
const stream = await node.dialProtocol(target, '/wyseman/1.0.0')
const client = node.peerId.toString()

const jwk = options.key
let login
if (options.token) {
  const pub = { kty: jwk.kty, crv: jwk.crv, x: jwk.x, y: jwk.y }
  login = { user, token: options.token, pub: b64url(new TextEncoder().encode(JSON.stringify(pub))), listen: options.listen || [] }
} else {
  const key = await crypto.subtle.importKey('jwk', jwk, { name: 'ECDSA', namedCurve: 'P-521' }, false, ['sign'])
  const date = new Date().toJSON()
  const message = JSON.stringify({ protocol: '/wyseman/1.0.0', server, client, date })
  const sign = await crypto.subtle.sign({ name: 'ECDSA', hash: 'SHA-384' }, key, new TextEncoder().encode(message))
  login = { user, date, sign: b64url(new Uint8Array(sign)), listen: options.listen || [] }
}

let buffer = new Uint8Array(0)
const wanted = 1 + (options.requests || []).length + (options.notify ? 1 : 0)
let seen = 0
const done = Promise.withResolvers()
function handle (message) {
  console.log(JSON.stringify(message))
  seen += 1
  if (seen === 1) {
    if (message.login !== 'accepted') { done.resolve(); return }
    for (const request of options.requests || []) stream.send(frame(request))
    if (options.notify) console.log(JSON.stringify({ ready: options.notify }))
  }
  if (seen >= wanted) done.resolve()
}
stream.addEventListener('message', event => {
  const chunk = event.data.subarray()
  const joined = new Uint8Array(buffer.length + chunk.length)
  joined.set(buffer); joined.set(chunk, buffer.length); buffer = joined
  for (;;) {
    let length = 0; let shift = 0; let i = 0
    for (; i < buffer.length && i < 10; i++) { length += (buffer[i] & 0x7f) * 2 ** shift; shift += 7; if (!(buffer[i] & 0x80)) break }
    if (i >= buffer.length || buffer.length < i + 1 + length) return
    const body = buffer.subarray(i + 1, i + 1 + length)
    buffer = buffer.subarray(i + 1 + length)
    handle(JSON.parse(new TextDecoder().decode(body)))
  }
})
stream.addEventListener('close', () => done.resolve())
stream.send(frame(login))
await done.promise
await stream.close().catch(() => {})
await node.stop()
