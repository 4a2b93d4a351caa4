// The wyseman web console: a client of docs/protocol.md in plain JavaScript and
// WebCrypto, no build step. A ticket login makes a P-521 key in the browser and registers
// its public half (4.3); the private half is kept in localStorage, and later visits sign
// their logins with it (4.4). WebCrypto needs a secure context: https://, or http:// on
// localhost / 127.0.0.1.

const STORE = "wyseman.console.site";
const $ = (id) => document.getElementById(id);
const ALGORITHM = { name: "ECDSA", namedCurve: "P-521" };

let socket = null;
let nextId = 1;

function b64url(bytes) {
  let text = "";
  for (const byte of new Uint8Array(bytes)) text += String.fromCharCode(byte);
  return btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

const b64urlText = (text) => b64url(new TextEncoder().encode(text));

function status(text, state) {
  const line = $("status");
  line.textContent = text;
  line.dataset.state = state;
}

function show(text, kind) {
  const item = document.createElement("li");
  item.textContent = text;
  if (kind) item.className = kind;
  $("log").prepend(item);
}

function saved() {
  try {
    return JSON.parse(localStorage.getItem(STORE) || "null");
  } catch {
    return null;
  }
}

function showSaved() {
  const site = saved();
  $("saved").textContent = site
    ? `A key for ${site.user} at ${site.host}:${site.port} is saved in this browser.`
    : "No key is saved in this browser yet.";
  $("login-key").disabled = !site;
  $("forget").disabled = !site;
}

/** The ticket pasted: wyseman's JSON ({"ticket": {...}}), or a link with its query. */
function readTicket(text) {
  text = text.trim();
  if (!text) throw new Error("paste a ticket first");
  if (/^https?:\/\//.test(text)) {
    const query = new URL(text).searchParams;
    return { token: query.get("token"), user: query.get("user"),
             host: query.get("host"), port: query.get("port") };
  }
  let document_;
  try {
    document_ = JSON.parse(text);
  } catch {
    throw new Error("the ticket is not JSON (paste what `wyseman ticket NAME` prints)");
  }
  const ticket = document_.ticket ?? document_;
  if (!ticket || typeof ticket.token !== "string") throw new Error("the ticket has no token");
  return ticket;
}

function channels() {
  return $("channels").value.split(/[\s,]+/).filter(Boolean);
}

/** Where the WebSocket is: the host this page came from (the gateway that serves it,
 *  so that the Origin matches and the cookie is the one /clientinfo saw), at the ticket's
 *  port, else this page's. */
function address(port) {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const host = location.hostname;
  port = port || location.port;
  const name = host.includes(":") && !host.startsWith("[") ? `[${host}]` : host;
  return `${scheme}://${name}${port ? ":" + port : ""}/`;
}

function query(user, params) {
  const parts = [`user=${encodeURIComponent(user)}`];
  const listen = channels();
  if (listen.length) parts.push(`db=${b64urlText(JSON.stringify(listen))}`);
  for (const [name, value] of Object.entries(params)) {
    parts.push(`${name}=${encodeURIComponent(value)}`);
  }
  return "?" + parts.join("&");
}

async function loginWithTicket() {
  const ticket = readTicket($("ticket").value);
  const user = $("user").value.trim() || ticket.user;
  if (!user) throw new Error("the ticket names no user: enter it");
  const pair = await crypto.subtle.generateKey(ALGORITHM, true, ["sign", "verify"]);
  const { kty, crv, x, y } = await crypto.subtle.exportKey("jwk", pair.publicKey);
  const pub = b64urlText(JSON.stringify({ kty, crv, x, y }));
  const site = { user, host: location.hostname, port: ticket.port || location.port,
                 key: await crypto.subtle.exportKey("jwk", pair.privateKey),
                 channels: channels() };
  const url = address(site.port) + query(user, { token: ticket.token, pub });
  open(url, `${user} (ticket)`, () => {
    localStorage.setItem(STORE, JSON.stringify(site));
    $("ticket").value = "";
    showSaved();
  });
}

async function loginWithKey() {
  const site = saved();
  if (!site) throw new Error("no key is saved in this browser: log in with a ticket first");
  if (!$("channels").value && site.channels) $("channels").value = site.channels.join(", ");
  // What the server will see of this browser, and its clock (docs/protocol.md, 3 and 4.4)
  const answer = await fetch("/clientinfo", { cache: "no-store", credentials: "same-origin" });
  if (!answer.ok) throw new Error(`/clientinfo answered ${answer.status}`);
  const info = await answer.json();
  const message = JSON.stringify({ ip: info.ip, cookie: info.cookie,
                                   userAgent: info.userAgent, date: info.date });
  const key = await crypto.subtle.importKey("jwk", site.key, ALGORITHM, false, ["sign"]);
  const signature = await crypto.subtle.sign({ name: "ECDSA", hash: "SHA-384" }, key,
                                             new TextEncoder().encode(message));
  const url = address(site.port)
    + query(site.user, { sign: b64url(signature), date: info.date });
  open(url, `${site.user} (key)`);
}

function open(url, who, onOpen) {
  if (socket) socket.close(1000, "logging in again");
  status("logging in…", "out");
  const ws = new WebSocket(url);
  socket = ws;
  let opened = false;
  ws.onopen = () => {
    opened = true;
    status(`logged in as ${who}`, "in");
    $("send").disabled = false;
    $("logout").disabled = false;
    if (onOpen) onOpen();
  };
  ws.onmessage = (event) => {
    let message;
    try {
      message = JSON.parse(event.data);
    } catch {
      show(`(not JSON) ${event.data}`, "error");
      return;
    }
    if (message.action === "notify") {
      show(`notify ${message.channel}: ${JSON.stringify(message.data)}`, "notify");
    } else {
      show(JSON.stringify(message), message.error ? "error" : "");
    }
  };
  ws.onclose = (event) => {
    if (socket === ws) socket = null;
    $("send").disabled = true;
    $("logout").disabled = true;
    if (!opened) {
      // a browser is told nothing of why an upgrade was refused: the server's log says
      status("the server refused the login (its log says why)", "error");
    } else {
      status(`closed (${event.code}${event.reason ? ": " + event.reason : ""})`, "out");
    }
  };
}

function send() {
  let request;
  try {
    request = JSON.parse($("request").value);
  } catch (error) {
    show(`the request is not JSON: ${error.message}`, "error");
    return;
  }
  if (!request || typeof request !== "object" || Array.isArray(request)) {
    show("a request is a JSON object", "error");
    return;
  }
  if (request.id === undefined) request.id = nextId++;
  socket.send(JSON.stringify(request));
}

function guarded(action) {
  return () => action().catch((error) => status(error.message, "error"));
}

$("login-ticket").onclick = guarded(loginWithTicket);
$("login-key").onclick = guarded(loginWithKey);
$("send").onclick = send;
$("logout").onclick = () => socket && socket.close(1000, "logged out");
$("forget").onclick = () => {
  localStorage.removeItem(STORE);
  showSaved();
};

// A link with a ticket in its query (`wyseman ticket NAME --format web --page console/`)
// fills the form; a visit without one logs in by the saved key.
const params = new URLSearchParams(location.search);
if (params.get("listen")) $("channels").value = params.get("listen");
if (params.get("token")) {
  $("ticket").value = JSON.stringify({ ticket: {
    token: params.get("token"), user: params.get("user") || undefined,
    host: params.get("host") || undefined, port: Number(params.get("port")) || undefined } });
  history.replaceState(null, "", location.pathname);   // the token stays out of history
}
showSaved();
if (!params.get("token") && saved()) guarded(loginWithKey)();
