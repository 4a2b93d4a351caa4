"""A real browser (Debian's chromium, driven by playwright-core from tests/js) runs the
stock npm ``wyseman`` client in a page the Python server serves from its ``[web]`` root
over https: a ticket login, a reload, a key login with the key the page kept in
localStorage (``/clientinfo`` fetched from the page's own origin, with a cookie set on
the host, and signed), select, tuple, meta and lang, an error whose code names its text
in its table's lang, and a notification.

Skipped, with the reason, when node or chromium is not installed (scripts/test.sh
installs chromium when it runs as root on Debian)."""

from __future__ import annotations

from pathlib import Path

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from tests.browser import DriverRun, chromium
from tests.harness import APP_SAMPLE, add_user, start_gateway
from tests.pgtest import fresh_database
from tests.tlsutil import TestCA
from wyseman.provision import admin

#: seconds the browser run may take in all (a cold chromium start is a few seconds)
RUN_TIMEOUT = 90


class BrowserTests(TestCase):
    timeout = RUN_TIMEOUT + 30

    @defer.inlineCallbacks
    def test_wylib_style_logins_in_a_real_browser(self):
        browser = chromium()
        base = Path(self.mktemp()).resolve()
        root = base / "site"
        root.mkdir(parents=True)
        ca = TestCA.create()
        cert, key, _ = ca.issue(base, "server")
        db = fresh_database(self)
        db.run(APP_SAMPLE)
        db.run("insert into app.item (name, qty) values ('bolt', 3), ('nut', 5)")
        db.run("insert into wm.table_text values ('app', 'item_v', 'eng', 'Items', 'Stock'), "
               "('app', 'item', 'eng', 'Item', null); "
               "insert into wm.column_text values "
               "('app', 'item_v', 'qty', 'eng', 'Quantity', null); "
               "insert into wm.message_text values "
               "('app', 'item', 'negative', 'eng', 'Negative quantity', 'At least 0')")
        server = yield start_gateway(
            self, db, server={"listen": "tls:0:interface=127.0.0.1"},
            tls={"cert": str(cert), "key": str(key)}, web={"root": str(root)})
        user = add_user(db)
        token = admin.issue_ticket(db.dsn, user).token
        config = {
            "root": str(root), "host": "localhost", "port": server.port, "user": user,
            "token": token, "channel": "app_browser", "chromium": browser,
            "cookie": {"name": "wylib_session", "value": "s3cr3t-42"},
            "request": {"id": 2, "action": "select", "view": "app.item_v",
                        "fields": ["name", "qty"], "order": ["name"]},
            "more": [{"id": 3, "action": "meta", "view": "app.item_v"},
                     {"id": 4, "action": "lang", "view": "app.item_v"},
                     {"id": 5, "action": "tuple", "view": "app.double(int)", "params": [21]},
                     {"id": 6, "action": "insert", "view": "app.item_v",
                      "fields": {"name": "minus", "qty": -1}},
                     {"id": 7, "action": "lang", "view": "app.item"}],
            "timeout": 30000,
        }
        run = DriverRun(self, "browser_test.js", config, RUN_TIMEOUT)
        yield run.listening
        db.run("""notify app_browser, '{"from": "postgres"}'""")
        code, result = yield run.ended
        self.assertEqual(code, 0, result)
        self.assertTrue(result["ok"], result)

        ticket = result["ticket"]
        self.assertIn(f"wss://localhost:{server.port}/?user={user}&token=", ticket["url"])
        self.assertIn("&pub=", ticket["url"])
        self.assertTrue(ticket["reply"]["data"]["curr_eid"], ticket)
        saved = ticket["saved"]       # what the page kept in localStorage
        self.assertEqual((saved["host"], saved["port"], saved["user"]),
                         ("localhost", server.port, user))
        self.assertEqual(saved["key"]["crv"], "P-521")

        login = result["key"]         # after the reload: the kept key, signed
        self.assertIn("&sign=", login["url"])
        self.assertIn("&date=", login["url"])
        self.assertNotIn("token=", login["url"])
        self.assertEqual(login["reply"]["data"], [{"name": "bolt", "qty": 3},
                                                  {"name": "nut", "qty": 5}])
        # /clientinfo on the page's own origin saw the host's cookie, which the signed
        # message and the WebSocket upgrade carried too (or the login would be refused)
        self.assertEqual(login["clientinfo"]["cookie"], "wylib_session=s3cr3t-42")
        self.assertIn("Chrome/", login["clientinfo"]["userAgent"])

        meta, lang, tuple_, insert, table_lang = result["more"]
        self.assertIn("qty", [c["col"] for c in meta["data"]["columns"]])
        self.assertEqual((lang["data"]["title"], lang["data"]["help"]), ("Items", "Stock"))
        self.assertIn({"col": "qty", "title": "Quantity"},
                      [{"col": c["col"], "title": c["title"]} for c in lang["data"]["columns"]])
        self.assertEqual(tuple_["data"], {"double": 42})
        # the error's code names the text the app shows for it: in its table's lang
        self.assertEqual(insert["error"]["code"], "!app.item:negative")
        self.assertNotIn("data", insert)
        texts = {m["code"]: m["title"] for m in table_lang["data"]["messages"]}
        self.assertEqual(texts.get("negative"), "Negative quantity")
        self.assertEqual(result["notification"]["channel"], "app_browser")
        self.assertEqual(result["notification"]["data"], {"from": "postgres"})
