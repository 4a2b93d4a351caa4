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
const { withBrowser, main, step } = require('./chromium')

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
  return withBrowser(config, 'wyseman-console-', async (context, timeout) => {
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
    step('listening')
    const notice = await page.waitForSelector('#log li.notify', { timeout })
    const notification = await notice.textContent()
    return { ok: true, ticketLogin, keyLogin, replies, notification }
  })
}

main(run)
