// Run the Node.js Wyseman server (npm `wyseman`, pinned) for differential tests and
// benchmarks. Usage: node node_server.js '{"port": P, "pg": {host, port, database, user}}'
// With "tls": {"cert": PEM_FILE, "key": PEM_FILE} it serves wss:// (its `credentials`).
// Prints "ready" once it listens on 127.0.0.1:P.
'use strict'
const Fs = require('fs')
const Http = require('http')
const Https = require('https')
// Tests listen on loopback only: make the server's listen(port) bind 127.0.0.1.
for (const module of [Http, Https]) {
  const createServer = module.createServer
  module.createServer = (...args) => {
    const server = createServer(...args)
    const listen = server.listen.bind(server)
    server.listen = (port) => listen(port, '127.0.0.1')
    return server
  }
}
const { Wyseman } = require('wyseman')
const config = JSON.parse(process.argv[2])
const quiet = { error: () => {}, warn: () => {}, info: () => {}, verbose: () => {},
  debug: () => {}, trace: () => {} }
const log = process.env.WYSEMAN_NODE_LOG ? require('wyseman/lib/log') : quiet
const db = Object.assign({ log }, config.pg)
const credentials = config.tls &&
  { cert: Fs.readFileSync(config.tls.cert), key: Fs.readFileSync(config.tls.key) }
const server = new Wyseman(db, { websock: { port: config.port, delta: 60000, credentials }, log },
  Object.assign({ log }, config.pg))
server.server.on('listening', () => process.stdout.write('ready\n'))
process.on('SIGTERM', () => process.exit(0))
