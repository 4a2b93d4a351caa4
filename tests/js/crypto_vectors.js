// Crypto vectors made by the real JS code, for the Python interoperability tests:
// Node's WebCrypto with wyseman's own KeyConfig/SignConfig and b64u-lite (as
// lib/client_ws.js uses them), and wyseman's own lib/encrypt.js for key files.
//
// Usage: node crypto_vectors.js < request.json
// The request is one object {op, ...} or a list of them; the answer (one JSON line on
// stdout) is one result or the list of results. Ops:
//   sign       {message | messageHex}  → new key pair, signature of the message bytes:
//              {publicJwk, privateJwk, sign, messageBytesHex}
//   signWith   {privateJwk, message | messageHex} → {sign, messageBytesHex}
//   verify     {jwk, message | messageHex, sign} → {valid}
//   message    {ip, cookie?, userAgent?, date} → the signed message the client builds:
//              {hex, text}   (absent members stay undefined, as in client_ws.js)
//   params     {listen?, jwk?} → {db, pub}: the URL values client_ws.js credCheck() builds
//   encrypt    {password, plain} → {blob}   (JSON text, as encrypt.js returns it)
//   decrypt    {password, blob}  → {plain}  (or {error} for a wrong password)
// Exit status 1 (with {error} on stdout) when the request itself is unusable.
'use strict'
const { webcrypto } = require('crypto')
const B64u = require('b64u-lite')
const { KeyConfig, SignConfig } = require('wyseman/lib/crypto.js')
const Encrypt = require('wyseman/lib/encrypt.js')

const subtle = webcrypto.subtle
const encrypter = new Encrypt(webcrypto)

function messageBytes (req) {
  if (typeof req.messageHex === 'string') return Buffer.from(req.messageHex, 'hex')
  if (typeof req.message === 'string') return Buffer.from(new TextEncoder().encode(req.message))
  throw new Error('message or messageHex required')
}

const ops = {
  async sign (req) {
    const bytes = messageBytes(req)
    const pair = await subtle.generateKey(KeyConfig, true, ['sign', 'verify'])
    const signature = await subtle.sign(SignConfig, pair.privateKey, bytes)
    return {
      publicJwk: await subtle.exportKey('jwk', pair.publicKey),
      privateJwk: await subtle.exportKey('jwk', pair.privateKey),
      sign: B64u.toBase64Url(signature),
      messageBytesHex: bytes.toString('hex')
    }
  },

  async signWith (req) {
    const bytes = messageBytes(req)
    // the import client_ws.js keyCheck() does for a stored key
    const key = await subtle.importKey('jwk', req.privateJwk, KeyConfig, true, ['sign'])
    const signature = await subtle.sign(SignConfig, key, bytes)
    return { sign: B64u.toBase64Url(signature), messageBytesHex: bytes.toString('hex') }
  },

  async verify (req) {
    // the import and decoding the JS server does (lib/wyseman.js validateSignature)
    const key = await subtle.importKey('jwk', req.jwk, KeyConfig, true, ['verify'])
    const signature = Buffer.from(req.sign, 'base64')
    return { valid: await subtle.verify(SignConfig, key, signature, messageBytes(req)) }
  },

  async message (req) {
    // as lib/client_ws.js signCheck(): destructure the /clientinfo reply, stringify
    const info = {}
    for (const k of ['ip', 'cookie', 'userAgent', 'date']) if (k in req) info[k] = req[k]
    const { ip, cookie, userAgent, date } = info
    const text = JSON.stringify({ ip, cookie, userAgent, date })
    return { hex: Buffer.from(new TextEncoder().encode(text)).toString('hex'), text }
  },

  async params (req) {
    const out = {}
    if ('listen' in req) out.db = B64u.toBase64Url(JSON.stringify(req.listen))
    if ('jwk' in req) out.pub = B64u.toBase64Url(JSON.stringify(req.jwk))
    return out
  },

  async encrypt (req) {
    return { blob: await encrypter.encrypt(req.password, req.plain) }
  },

  async decrypt (req) {
    try {
      return { plain: await encrypter.decrypt(req.password, req.blob) }
    } catch (err) {
      return { error: String((err && err.message) || err) }
    }
  }
}

async function run (req) {
  const op = req && ops[req.op]
  if (!op) throw new Error('unknown op ' + JSON.stringify(req && req.op))
  return op(req)
}

function readStdin () {
  return new Promise((resolve, reject) => {
    const chunks = []
    process.stdin.on('data', c => chunks.push(c))
    process.stdin.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')))
    process.stdin.on('error', reject)
  })
}

readStdin()
  .then(text => {
    const request = JSON.parse(text)
    return Array.isArray(request) ? Promise.all(request.map(run)) : run(request)
  })
  .then(out => process.stdout.write(JSON.stringify(out) + '\n'))
  .catch(err => {
    process.stdout.write(JSON.stringify({ error: String((err && err.message) || err) }) + '\n')
    process.exitCode = 1
  })
