// How node-pg (the Node server's driver, pinned with npm wyseman) reads values, for
// tests/test_node_renderings.py: each input is [type oid, the value's text as
// PostgreSQL sends it]; each output line is JSON.stringify of what node-pg's parser
// for that oid makes of it, with the parsers wyseman itself sets (lib/dbclient.js:
// dates stay text, int8 becomes a Number). Run with TZ=UTC, as the server's sessions.
//
// Usage: node pg_types.js '<json list of [oid, text]>'
'use strict'
const types = require('pg').types
types.setTypeParser(1082, d => (d))
types.setTypeParser(20, v => (parseInt(v)))

for (const [oid, text] of JSON.parse(process.argv[2])) {
  const parse = types.getTypeParser(oid, 'text')
  process.stdout.write(JSON.stringify(text === null ? null : parse(text)) + '\n')
}
