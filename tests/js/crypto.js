// Node WebCrypto and wyseman's own lib/encrypt.js, for interoperability tests.
// Usage: node crypto.js '<json {op, ...}>'; writes one JSON line on stdout.
'use strict'
const { webcrypto } = require('crypto')
const Encrypt = require('wyseman/lib/encrypt.js')
const { KeyConfig, SignConfig } = require('wyseman/lib/crypto.js')
const B64u = require('b64u-lite')

async function main (input) {
  const subtle = webcrypto.subtle
  if (input.op === 'sign') {
    const pair = await subtle.generateKey(KeyConfig, true, ['sign', 'verify'])
    const signature = await subtle.sign(SignConfig, pair.privateKey, Buffer.from(input.message))
    return { publicJwk: await subtle.exportKey('jwk', pair.publicKey),
      privateJwk: await subtle.exportKey('jwk', pair.privateKey),
      sign: B64u.toBase64Url(signature) }
  }
  if (input.op === 'verify') {
    const key = await subtle.importKey('jwk', input.jwk, KeyConfig, true, ['verify'])
    const signature = Buffer.from(input.sign, 'base64url')
    return { valid: await subtle.verify(SignConfig, key, signature, Buffer.from(input.message)) }
  }
  if (input.op === 'stringify') {
    const { ip, cookie, userAgent, date } = input
    return { hex: Buffer.from(JSON.stringify({ ip, cookie, userAgent, date })).toString('hex') }
  }
  const encrypt = new Encrypt(webcrypto)
  if (input.op === 'encrypt') return { blob: await encrypt.encrypt(input.password, input.plain) }
  if (input.op === 'decrypt') return { plain: await encrypt.decrypt(input.password, input.blob) }
  throw new Error('unknown op ' + input.op)
}

main(JSON.parse(process.argv[2]))
  .then(out => process.stdout.write(JSON.stringify(out) + '\n'))
  .catch(err => { process.stdout.write(JSON.stringify({ error: String(err) }) + '\n'); process.exit(1) })
