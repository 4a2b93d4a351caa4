// Debian's chromium, headless, driven by playwright-core, for the browser tests' drivers:
// a fresh profile each run (removed after), the flags that keep it from reaching the
// network on its own, and the one-JSON-line protocol every driver answers the suite in.
'use strict'
const fs = require('fs')
const os = require('os')
const path = require('path')

const FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic',
  '--no-first-run', '--disable-background-networking', '--disable-component-update',
  '--disable-sync', '--ignore-certificate-errors']

// → body(context, timeout)'s result; config: {chromium?: path, timeout?: ms}; options:
// more of playwright's launch options (a viewport)
async function withBrowser (config, prefix, body, options = {}) {
  const { chromium } = require('playwright-core')
  const timeout = config.timeout || 30000
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), prefix))
  let context
  try {
    context = await chromium.launchPersistentContext(profile, {
      executablePath: config.chromium || '/usr/bin/chromium',
      headless: true,
      args: FLAGS,
      ignoreHTTPSErrors: true,
      timeout,
      ...options
    })
    return await body(context, timeout)
  } finally {
    if (context) await context.close().catch(() => {})
    fs.rmSync(profile, { recursive: true, force: true })
  }
}

// Runs run(config from argv[2]); prints its result as one JSON line and exits 0, or
// {ok: false, error} and exits 1.
function main (run) {
  Promise.resolve().then(() => run(JSON.parse(process.argv[2]))).then(result => {
    process.stdout.write(JSON.stringify(result) + '\n')
    process.exit(0)
  }, error => {
    process.stdout.write(JSON.stringify({ ok: false, error: String((error && error.stack) || error) }) + '\n')
    process.exit(1)
  })
}

function step (name) {
  process.stdout.write(JSON.stringify({ step: name }) + '\n')
}

module.exports = { FLAGS, withBrowser, main, step }
