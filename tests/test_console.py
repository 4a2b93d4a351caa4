"""The server's own web console (``[web] console``) in a real browser: Debian's chromium
driven by playwright-core (tests/js/console_test.js) pastes a ticket, logs in, sends
requests, reloads and logs in again by the key the page kept, and sees a notification,
over ws:// on 127.0.0.1 (a secure context for WebCrypto) and over wss://.

Skipped, with the reason, when node or chromium is not installed (scripts/test.sh
installs chromium when it runs as root on Debian)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from tests.browser import RUN_TIMEOUT, drive_console
from tests.harness import APP_SAMPLE, add_user, http_get, start_gateway
from tests.pgtest import fresh_database
from tests.tlsutil import TestCA
from wyseman.provision import admin


class ConsoleTests(TestCase):
    timeout = RUN_TIMEOUT + 30

    def setUp(self) -> None:
        self.db = fresh_database(self)
        self.db.run(APP_SAMPLE)
        self.db.run("insert into app.item (name, qty) values ('bolt', 3), ('nut', 5)")
        self.user = add_user(self.db)

    @defer.inlineCallbacks
    def check_console(self, server: Any, scheme: str, host: str) -> Any:
        ticket = admin.issue_ticket(self.db.dsn, self.user, host=host, port=server.port)
        text = admin.format_ticket(ticket, "json", admin_user=None)
        select = {"id": 7, "action": "select", "view": "app.item_v",
                  "fields": ["name", "qty"], "order": ["name"]}
        result = yield drive_console(
            self, f"{scheme}://{host}:{server.port}/console/", text, ["app_console"],
            before=[{"id": 1, "action": "tuple", "view": "app.whoami()"}],
            after=[select, {"id": 8, "action": "insert", "view": "app.item_v",
                            "fields": {"name": "washer", "qty": -1}}],
            notify=lambda: self.db.run("""notify app_console, '{"from": "postgres"}'"""))
        self.assertEqual(result["ticketLogin"], f"logged in as {self.user} (ticket)")
        self.assertEqual(result["keyLogin"], f"logged in as {self.user} (key)")
        whoami, rows, refused = result["replies"]
        self.assertEqual(whoami["data"], {"whoami": self.user})     # the user's own role
        self.assertEqual(rows["data"], [{"name": "bolt", "qty": 3}, {"name": "nut", "qty": 5}])
        self.assertEqual(refused["error"]["code"], "!app.item:negative")
        self.assertEqual(result["notification"], 'notify app_console: {"from":"postgres"}')
        # the ticket registered the browser's key; the key login then used it
        conn_pub = self.db.run("select conn_pub from base.ent_v where username = %s",
                               (self.user,))[0][0]
        self.assertTrue(conn_pub)

    @defer.inlineCallbacks
    def test_over_ws_on_loopback(self):
        server = yield start_gateway(self, self.db, web={"console": "/console"})
        yield self.check_console(server, "http", "127.0.0.1")

    @defer.inlineCallbacks
    def test_over_wss(self):
        base = Path(self.mktemp()).resolve()
        base.mkdir(parents=True)
        cert, key, _ = TestCA.create().issue(base, "server")
        server = yield start_gateway(
            self, self.db, server={"listen": "tls:0:interface=127.0.0.1"},
            tls={"cert": str(cert), "key": str(key)}, web={"console": "/console"})
        yield self.check_console(server, "https", "localhost")


class ConsoleServedTests(TestCase):
    """What is served, without a browser."""

    @defer.inlineCallbacks
    def test_the_console_is_served_only_when_configured(self):
        db = fresh_database(self)
        on = yield start_gateway(self, db, web={"console": "/tools/console"})
        status, headers, body = yield http_get(on.port, "/tools/console/")
        self.assertEqual(status, 200)
        self.assertIn(b'<script type="module" src="console.js">', body)
        status, headers, body = yield http_get(on.port, "/tools/console/console.js")
        self.assertEqual(status, 200)
        self.assertIn("content-type: text/javascript", headers)
        off = yield start_gateway(self, db)
        status, _, _ = yield http_get(off.port, "/tools/console/")
        self.assertEqual(status, 426)
