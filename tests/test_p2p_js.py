"""js-libp2p (npm ``libp2p`` with ``@libp2p/tcp``, ``@chainsafe/libp2p-noise`` and
``@chainsafe/libp2p-yamux``, pinned in tests/js/package.json) dials our server's
``/wyseman/1.0.0``: a ticket login, a key login signed with WebCrypto over both peer
ids, a select and a notification (tests/js/p2p_client.mjs). Node 20 lacks
``Promise.withResolvers``, which js-libp2p 3 uses: the script runs with a polyfill
(tests/js/withresolvers.mjs)."""

from __future__ import annotations

import json
import os

from twisted.internet import defer, protocol, reactor
from twisted.trial.unittest import TestCase

from tests import jsinterop
from tests.harness import add_user, start_gateway
from tests.pgtest import fresh_database
from wyseman.client import keys
from wyseman.provision import admin

try:
    import wyseman.p2p.node  # noqa: F401
except ImportError as exc:
    MISSING = f"the wyseman[p2p] extra (py-libp2p) is not installed: {exc}"
else:
    MISSING = None


class _Lines(protocol.ProcessProtocol):
    """The script's JSON lines; ``on_line(message)`` for each, ``ended`` at exit."""

    def __init__(self, on_line):
        self.on_line = on_line
        self.lines = []
        self.err = b""
        self._partial = b""
        self.ended = defer.Deferred()

    def outReceived(self, data):  # noqa: N802
        self._partial += data
        *complete, self._partial = self._partial.split(b"\n")
        for line in complete:
            if line.strip():
                message = json.loads(line)
                self.lines.append(message)
                self.on_line(message)

    def errReceived(self, data):  # noqa: N802
        self.err += data

    def processEnded(self, reason):  # noqa: N802
        self.ended.callback(reason.value.exitCode)


class JsLibp2pTests(TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def setUp(self):
        if MISSING:
            raise self.skipTest(MISSING)
        self.node = jsinterop.node()
        self.db = fresh_database(self)
        self.user = add_user(self.db, "js")
        self.db.run("create table public.js_note (body text); "
                    "grant select on public.js_note to wyseman_user; "
                    "insert into public.js_note values ('from js-libp2p')")
        self.server = yield start_gateway(self, self.db, p2p={
            "listen": ["/ip4/127.0.0.1/tcp/0"],
            "key_file": os.path.abspath(self.mktemp())})
        self.address = self.server.p2p.addresses[0]

    def run_script(self, options, on_line=lambda message: None):
        lines = _Lines(on_line)
        script = str(jsinterop.JS_DIR / "p2p_client.mjs")
        reactor.spawnProcess(lines, self.node,
                             [self.node, "--import", "./withresolvers.mjs", script,
                              self.address, self.user, json.dumps(options)],
                             env=dict(os.environ), path=str(jsinterop.JS_DIR))
        return lines

    @defer.inlineCallbacks
    def test_ticket_then_key_login_select_and_notification(self):
        private = keys.generate_private_jwk()
        token = admin.issue_ticket(self.db.dsn, self.user).token
        ticketed = self.run_script({"token": token, "key": private, "requests": [
            {"id": "t1", "action": "tuple", "view": "base.curr_eid()"}]})
        code = yield ticketed.ended
        self.assertEqual(code, 0, ticketed.err.decode())
        answer, reply = ticketed.lines
        self.assertEqual((answer["login"], answer["method"]), ("accepted", "ticket"))
        expected = self.db.run("select id from base.ent where username = %s", (self.user,))
        self.assertEqual(reply["data"], {"curr_eid": expected[0][0]})

        def notify_when_ready(message):
            if message.get("ready") == "app_js":
                self.db.run("""select pg_notify('app_js', '{"from": "postgres"}')""")
        keyed = self.run_script({"key": private, "listen": ["app_js"], "notify": "app_js",
                                 "requests": [{"id": "s1", "action": "select",
                                               "view": "public.js_note"}]},
                                notify_when_ready)
        code = yield keyed.ended
        self.assertEqual(code, 0, keyed.err.decode())
        answer = keyed.lines[0]
        self.assertEqual((answer["login"], answer["method"], answer["listen"]),
                         ("accepted", "key", ["app_js"]))
        by_kind = {("reply" if "id" in m else "notify" if m.get("action") == "notify"
                    else "other"): m for m in keyed.lines[1:]}
        self.assertEqual(by_kind["reply"]["data"], [{"body": "from js-libp2p"}])
        self.assertEqual(by_kind["notify"], {"action": "notify", "channel": "app_js",
                                             "data": {"from": "postgres"}})

    @defer.inlineCallbacks
    def test_a_bad_signature_is_refused_with_its_reason(self):
        # a key the server does not store for this user
        admin.issue_ticket(self.db.dsn, self.user)
        refused = self.run_script({"key": keys.generate_private_jwk()})
        code = yield refused.ended
        self.assertEqual(code, 0, refused.err.decode())
        self.assertEqual(refused.lines, [{"login": "refused", "status": 403,
                                          "reason": "Invalid Login", "kind": "no_key"}])
