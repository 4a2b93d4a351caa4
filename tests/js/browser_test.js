// A real browser against the Python server (tests/test_browser.py): bundles
// browser_app.js (the npm `wyseman` client) with esbuild into the server's [web] root,
// then drives Debian's chromium with playwright-core (which downloads no browser):
//   1. a cookie on the host; the page from the server over https;
//   2. a ticket login in the page (the key kept in localStorage);
//   3. reload; a key login with the kept key (/clientinfo fetched from the page's own
//      origin and signed), listening to a channel, and a select;
//   4. prints {"step": "listening"} and waits for a notification on that channel.
//
// Usage: node browser_test.js '<json config>'
// config: {root, host, port, user, token, channel, request, cookie: {name, value},
//          chromium?: path (default /usr/bin/chromium), timeout?: ms}
// Prints one JSON line {ok: true, ticket, key, notification} and exits 0; on failure
// {ok: false, error} and exits 1.
'use strict'
const fs = require('fs')
const path = require('path')
const { withBrowser, main, step } = require('./chromium')

function bundle (root) {
  require('esbuild').buildSync({
    entryPoints: [path.join(__dirname, 'browser_app.js')],
    bundle: true,
    platform: 'browser',
    format: 'iife',
    outfile: path.join(root, 'app.js'),
    logLevel: 'error'
  })
  fs.writeFileSync(path.join(root, 'index.html'),
    '<!doctype html><meta charset="utf-8"><title>wyseman browser test</title>' +
    '<script src="app.js"></script>\n')
}

function withTimeout (promise, ms, what) {
  let timer
  return Promise.race([promise, new Promise((resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out: ${what}`)), ms)
  })]).finally(() => clearTimeout(timer))
}

async function run (config) {
  bundle(config.root)
  return withBrowser(config, 'wyseman-chromium-', async (context, timeout) => {
    const origin = `https://${config.host}:${config.port}`
    await context.addCookies([{ name: config.cookie.name, value: config.cookie.value,
      domain: config.host, path: '/', secure: true }])
    const page = context.pages()[0] || await context.newPage()
    page.setDefaultTimeout(timeout)
    const loaded = async () => {
      await page.waitForFunction(() => window.wysemanTest !== undefined)
    }
    await page.goto(origin + '/', { waitUntil: 'load' })
    await loaded()
    const ticket = await page.evaluate(args => window.wysemanTest.ticketLogin(args),
      { host: config.host, port: config.port, user: config.user, token: config.token })
    await page.reload({ waitUntil: 'load' })
    await loaded()
    const key = await page.evaluate(args => window.wysemanTest.keyLogin(args),
      { listen: [config.channel], request: config.request })
    const more = []
    for (const request of config.more || []) {
      more.push(await withTimeout(page.evaluate(r => window.wysemanTest.ask(r), request),
        timeout, `the reply to ${JSON.stringify(request)}`))
    }
    step('listening')
    const notification = await withTimeout(
      page.evaluate(() => window.wysemanTest.nextNotification()), timeout, 'notification')
    return { ok: true, ticket, key, more, notification }
  })
}

main(run)
