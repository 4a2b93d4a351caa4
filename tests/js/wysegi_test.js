// wyclif's prebuilt wysegi (npm `wyclif`, a database browser built on wylib) against the
// Python server, in Debian's chromium driven by playwright-core (which downloads no
// browser); tests/test_wysegi.py serves the app from the server's [web.mounts] over
// https and runs this script:
//   1. opens the page; imports the ticket file through the app's connection dialog
//      (its "Import Key" file input) and connects (a double click on the site);
//   2. answers the app's first-run question (keep its data in the browser, no
//      passphrase); waits for the wm.table_pub grid and reads its column titles;
//   3. the Users tab: the base.ent_v grid and its column titles;
//   4. opens the user's own record in the editor (a double click on its row), changes
//      its comment and saves it (an update);
//   5. saves the application's state under a name (the app menu's Save As:
//      wylib.set_data);
//   6. reloads: the app reconnects by itself with the key it kept (a signed login).
// Every WebSocket the page opens is wrapped before the app's code runs, so every frame
// it sends and receives is recorded; the script waits until each request it sent has
// had its reply.
//
// Usage: node wysegi_test.js '<json config>'
// config: {url, ticket_file, user, comment, state_name, chromium?, timeout?: ms,
//          screenshots?: directory (a picture after each step, for debugging)}
// Prints one JSON line {ok: true, sockets, frames, grids, ...} and exits 0; on failure
// {ok: false, error, frames} and exits 1.
'use strict'
const path = require('path')
const { withBrowser } = require('./chromium')

// Runs in the page before its own scripts, on every load: the app's WebSockets report
// each frame to the driver (an exposed binding survives reloads).
function wrapWebSocket () {
  const Original = window.WebSocket
  let serial = 0
  window.WebSocket = class extends Original {
    constructor (...args) {
      super(...args)
      const socket = ++serial
      window.__wysegiFrame({ kind: 'open', socket, url: String(args[0]) })
      this.addEventListener('message', event =>
        window.__wysegiFrame({ kind: 'in', socket, text: String(event.data) }))
      this.addEventListener('close', event =>
        window.__wysegiFrame({ kind: 'close', socket, code: event.code }))
    }

    send (data) {
      window.__wysegiFrame({ kind: 'out', text: String(data) })
      return super.send(data)
    }
  }
}

class Frames {
  constructor () {
    this.all = []
    this.waiters = []
    this.load = 0           // page loads so far (frames of earlier loads are kept)
  }

  add (frame) {
    frame.load = this.load
    if (frame.kind === 'in' || frame.kind === 'out') {
      try { frame.msg = JSON.parse(frame.text) } catch (err) { frame.msg = null }
    }
    this.all.push(frame)
    this.waiters = this.waiters.filter(w => !w.check())
  }

  // requests paired with their replies, in the order sent (a client reuses its ids:
  // a reply answers the oldest request of its id that has none yet)
  exchanges () {
    const open = []
    const done = []
    for (const frame of this.all) {
      if (!frame.msg) continue
      if (frame.kind === 'out') {
        const entry = { request: frame.msg, load: frame.load, reply: null }
        open.push(entry)
        done.push(entry)
      } else if (frame.kind === 'in' && frame.msg.id !== undefined) {
        const index = open.findIndex(e => e.request.id === frame.msg.id && e.load === frame.load)
        if (index >= 0) open.splice(index, 1)[0].reply = frame.msg
      }
    }
    return done
  }

  // → a promise of the first frame or exchange for which test() is true
  until (what, test, ms) {
    return new Promise((resolve, reject) => {
      const waiter = {
        check: () => {
          const found = test(this)
          if (found) { clearTimeout(timer); resolve(found) }
          return !!found
        }
      }
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter(w => w !== waiter)
        reject(new Error(`timed out waiting for ${what}`))
      }, ms)
      if (!waiter.check()) this.waiters.push(waiter)
    })
  }

  // a promise of the reply to a request of this load that matches `match`
  reply (what, match, ms) {
    return this.until(what, f => f.exchanges().find(
      e => e.load === f.load && e.reply && match(e.request)), ms)
  }

  // a promise that fires once every request of this load has had its reply
  settled (ms) {
    return this.until('a reply to every request', f => {
      const mine = f.exchanges().filter(e => e.load === f.load)
      return mine.length > 0 && mine.every(e => e.reply) && mine
    }, ms)
  }
}

// The column titles of the grid that is on screen, [{field, title}], once the titles of
// the view's language reply are in place (until then a grid heads its columns with
// their field names; none of the views here has a title equal to its field name)
async function visibleColumns (page, frames, view, timeout) {
  const read = () => {
    const columns = [...document.querySelectorAll('.wylib-dbp .slick-header-column')]
      .filter(el => el.offsetParent !== null)
    const shown = columns.map(el => ({
      field: (el.getAttribute('title') || '').split('\n')[0],
      title: (el.querySelector('.slick-column-name') || el).textContent.trim()
    }))
    return shown.length > 0 && shown.every(c => c.title !== c.field) && shown
  }
  try {
    const handle = await page.waitForFunction(read, null, { timeout })
    return handle.jsonValue()
  } catch (err) {
    // wylib links a view's titles to its metadata when the metadata arrives: if the
    // lang reply comes after the meta reply, the titles are never applied
    const order = frames.all.filter(f => f.kind === 'in' && f.msg && f.msg.view === view &&
      (f.msg.action === 'lang' || f.msg.action === 'meta')).map(f => f.msg.action)
    throw new Error(`${view}: the column titles were not applied (replies: ` +
      `${order.join(', ')}): ${err.message}`)
  }
}

// wylib's record editor in this build hands its fields' listeners to Vue 3 as an
// attribute (the Vue 2 `on: {...}` form in its render functions: the DOM shows
// on="[object Object]"), so typing into a field never reaches the editor. This does
// what the lost listener would: the field's own input handler, then the field set's.
function relayFieldInput (field) {
  const instances = []
  const visit = vnode => {
    if (!vnode) return
    if (vnode.component) {
      instances.push(vnode.component)
      visit(vnode.component.subTree)
    } else if (Array.isArray(vnode.children)) {
      vnode.children.forEach(visit)
    }
  }
  visit(document.getElementById('app')._vnode)
  const dew = instances.find(i => i.type.name === 'wylib-dew' && i.props.field === field &&
    i.subTree.el && i.subTree.el.offsetParent !== null)
  if (!dew) throw new Error(`no editing field ${field} on screen`)
  let mdew = dew.parent
  while (mdew && mdew.type.name !== 'wylib-mdew') mdew = mdew.parent
  const entry = dew.subTree.el.querySelector('textarea, input')
  dew.proxy.input({ target: entry })
  mdew.proxy.input(dew.proxy.userValue, field, dew.proxy.dirty, dew.proxy.valid)
}

async function run (config) {
  const frames = new Frames()
  const result = { frames }
  let shot = 0
  try {
    return await withBrowser(config, 'wyseman-chromium-', async (context, timeout) => {
      await context.exposeBinding('__wysegiFrame', (source, frame) => frames.add(frame))
      await context.addInitScript(wrapWebSocket)
      const page = context.pages()[0] || await context.newPage()
      page.setDefaultTimeout(timeout)
      result.pageErrors = []
      page.on('pageerror', err => result.pageErrors.push(String(err && err.message)))
      const snap = async name => {
        if (config.screenshots) {
          await page.screenshot({ path: path.join(config.screenshots, `${++shot}-${name}.png`) })
        }
      }
      const isView = (view, action) => r => r.view === view && r.action === action

      // 1. the page; the ticket through the connection dialog; connect
      await page.goto(config.url, { waitUntil: 'load' })
      await page.setInputFiles('.wylib-connect input[type=file]', config.ticket_file)
      const site = page.locator('.wylib-connect .sitelist td', { hasText: config.user })
      await site.waitFor()
      await snap('ticket-imported')
      await site.dblclick()
      const tables = await frames.reply('the wm.table_pub rows', r =>
        r.action === 'select' && r.view === 'wm.table_pub', timeout)

      // 2. the first-run question (store the app's data in this browser, no passphrase)
      const yes = page.locator('.wylib-modal button', { hasText: 'Yes' })
      await yes.waitFor()
      await snap('first-run')
      await yes.click()
      await yes.waitFor({ state: 'detached' })
      await frames.reply('the wm.table_pub titles', isView('wm.table_pub', 'lang'), timeout)
      result.tables = {
        rows: tables.reply.data && tables.reply.data.length,
        columns: await visibleColumns(page, frames, 'wm.table_pub', timeout)
      }
      await snap('tables')

      // 3. the Users tab
      await page.locator('.tabset .tab', { hasText: 'Users' }).click()
      const users = await frames.reply('the base.ent_v rows', isView('base.ent_v', 'select'),
        timeout)
      const row = page.locator('.wylib-dbp .slick-row', { hasText: config.user })
        .filter({ visible: true })
      await row.first().waitFor()
      await frames.reply('the base.ent_v titles', isView('base.ent_v', 'lang'), timeout)
      result.users = {
        rows: users.reply.data && users.reply.data.length,
        columns: await visibleColumns(page, frames, 'base.ent_v', timeout)
      }
      await snap('users')

      // 4. the user's record in the editor: change its comment, save it
      await row.first().dblclick()
      const editor = page.locator('.wylib.wylib-dbe').filter({ visible: true })
      await editor.first().waitFor()
      await frames.reply('the record for the editor', r =>
        r.view === 'base.ent_v' && r.action === 'tuple', timeout)
      await snap('editor')
      const comment = page.locator('.wylib-dew[title*="(ent_cmt)"] textarea')
        .filter({ visible: true })
      await comment.fill(config.comment)
      await page.evaluate(relayFieldInput, 'ent_cmt')
      const update = page.locator('.wylib-button[title^="Update:"]').filter({ visible: true })
      await update.click()
      const updated = await frames.reply('the update', isView('base.ent_v', 'update'), timeout)
      result.update = updated.request
      await snap('updated')

      // 5. the app's state saved under a name (app menu, Save As: wylib.set_data)
      await page.locator('.tab-filler .wylib-button[title="Application menu"]').click()
      await snap('app-menu')
      await page.locator('.wylib-menu tr', { hasText: 'Save State As' }).filter({ visible: true })
        .click()
      const dialog = page.locator('.wylib-modal').filter({ visible: true })
      await dialog.locator('input[type=text]').first().waitFor()
      await snap('save-as')
      await dialog.locator('input[type=text]').first().fill(config.state_name)
      await page.evaluate(relayFieldInput, 't')
      await dialog.locator('button', { hasText: 'Yes' }).click()
      const saved = await frames.reply('wylib.set_data', r =>
        r.action === 'tuple' && String(r.view).startsWith('wylib.set_data'), timeout)
      result.saved = saved.request
      result.exchangesBeforeReload = await frames.settled(timeout).then(list => list.length)

      // 6. reload: the app reconnects with the key it kept
      frames.load++
      await page.reload({ waitUntil: 'load' })
      const again = await frames.reply('the grid after the reload', r => r.action === 'select' &&
        (r.view === 'wm.table_pub' || r.view === 'base.ent_v'), timeout)
      result.afterReload = again.request
      await frames.settled(timeout)
      await snap('reloaded')
      result.ok = true
      return result
    }, { viewport: { width: 1400, height: 1000 } })
  } catch (err) {
    result.ok = false
    result.error = String(err && err.stack || err)
    return result
  }
}

function report (result) {
  const frames = result.frames
  result.sockets = frames.all.filter(f => f.kind === 'open' || f.kind === 'close')
    .map(f => ({ kind: f.kind, load: f.load, url: f.url, code: f.code }))
  // the replies in brief: what answered, and the error if any (their data is large)
  result.exchanges = frames.exchanges().map(e => ({
    load: e.load,
    request: e.request,
    reply: e.reply && {
      action: e.reply.action,
      view: e.reply.view,
      error: e.reply.error,
      hasData: 'data' in e.reply,
      rows: Array.isArray(e.reply.data) ? e.reply.data.length : null
    }
  }))
  delete result.frames
  return result
}

run(JSON.parse(process.argv[2]))
  .then(result => {
    process.stdout.write(JSON.stringify(report(result)) + '\n',
      () => process.exit(result.ok ? 0 : 1))
  })
  .catch(err => {
    process.stdout.write(JSON.stringify({ ok: false, error: String(err && err.stack || err) }) + '\n',
      () => process.exit(1))
  })
