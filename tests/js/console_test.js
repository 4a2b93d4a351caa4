// Drives the server's web console (wyseman/webconsole) in Debian's chromium with
// playwright-core, as a user would: paste a ticket and log in, send requests, reload
// (the console logs in again by the key it kept), send more, wait for a notification.
//
// Usage: node console_test.js '<json config>'
// config: {url, ticket? (the text `wyseman ticket` prints), channels?, before: [request],
//          after: [request], chromium?, timeout?: ms}
// Each request is a JSON object with an "id". Prints {"step": "listening"} once logged
// in by key, then one JSON line {ok: true, ticketLogin, keyLogin, replies, notification}
// and exits 0; on failure {ok: false, error} and exits 1.
'use strict'
const fs = require('fs')
const os = require('os')
const path = require('path')

const FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic',
  '--no-first-run', '--disable-background-networking', '--disable-component-update',
  '--disable-sync', '--ignore-certificate-errors']

async function loggedIn (page, timeout) {
  await page.waitForSelector('#status[data-state="in"], #status[data-state="error"]',
    { timeout })
  const state = await page.getAttribute('#status', 'data-state')
  const text = await page.textContent('#status')
  if (state !== 'in') throw new Error(`login failed: ${text}`)
  return text
}

async function ask (page, request, timeout) {
  await page.fill('#request', JSON.stringify(request))
  await page.click('#send')
  const marker = `"id":${JSON.stringify(request.id)}`
  const item = await page.waitForSelector(`#log li:has-text('${marker}')`, { timeout })
  return JSON.parse(await item.textContent())
}

async function run (config) {
  const { chromium } = require('playwright-core')
  const timeout = config.timeout || 30000
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'wyseman-console-'))
  let context
  try {
    context = await chromium.launchPersistentContext(profile, {
      executablePath: config.chromium || '/usr/bin/chromium',
      headless: true,
      args: FLAGS,
      ignoreHTTPSErrors: true,
      timeout
    })
    const page = context.pages()[0] || await context.newPage()
    page.setDefaultTimeout(timeout)
    await page.goto(config.url)
    // (without them: what the page took from its link's query)
    if (config.ticket) await page.fill('#ticket', config.ticket)
    if (config.channels) await page.fill('#channels', config.channels.join(', '))
    await page.click('#login-ticket')
    const ticketLogin = await loggedIn(page, timeout)
    const replies = []
    for (const request of config.before || []) replies.push(await ask(page, request, timeout))
    await page.reload()                      // a later visit: by the key it kept
    const keyLogin = await loggedIn(page, timeout)
    for (const request of config.after || []) replies.push(await ask(page, request, timeout))
    process.stdout.write(JSON.stringify({ step: 'listening' }) + '\n')
    const notice = await page.waitForSelector('#log li.notify', { timeout })
    const notification = await notice.textContent()
    return { ok: true, ticketLogin, keyLogin, replies, notification }
  } finally {
    if (context) await context.close()
    fs.rmSync(profile, { recursive: true, force: true })
  }
}

run(JSON.parse(process.argv[2])).then((result) => {
  process.stdout.write(JSON.stringify(result) + '\n')
  process.exit(0)
}, (error) => {
  process.stdout.write(JSON.stringify({ ok: false, error: String(error && error.stack) }) + '\n')
  process.exit(1)
})
