"""PostgreSQL stops and starts under a running gateway (D10): sockets stay open,
requests during the outage get error replies, subscriptions come back."""

from __future__ import annotations

from twisted.internet import defer, threads
from twisted.trial.unittest import SkipTest, TestCase

from tests import pgtest
from tests.harness import add_user, start_gateway
from wyseman import keys
from wyseman.client.connection import RequestError, connect
from wyseman.db import admin


class RestartTests(TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def test_survives_postgresql_restart(self):
        cluster = pgtest.cluster()
        if cluster is None:
            raise SkipTest("WYSEMAN_TEST_DSN names an external server: cannot restart it")
        db = pgtest.fresh_database(self)
        user = add_user(db)
        server = yield start_gateway(self, db)
        listener = server.gateway.db.listener
        token = admin.issue_ticket(db.dsn, user).token
        conn = yield connect(server.url, user, token=token, new_key=keys.generate_private_jwk(),
                             listen=["app_restart"])
        self.addCleanup(conn.close)
        row = yield conn.request({"action": "tuple", "view": "base.curr_eid()"})
        self.assertIn("curr_eid", row)

        reconnected = defer.Deferred()
        listener._on_reconnect = lambda: reconnected.called or reconnected.callback(None)
        yield threads.deferToThread(cluster.stop, "fast")
        try:
            with self.assertRaises(RequestError) as ctx:
                yield conn.request({"action": "tuple", "view": "base.curr_eid()"})
            self.assertEqual(ctx.exception.code, "!wm.lang:noDatabase")
            self.assertTrue(conn.connected)
        finally:
            yield threads.deferToThread(cluster.start)
        yield reconnected
        self.assertIn("app_restart", listener.channels)

        arrived = defer.Deferred()
        conn.on_notify("app_restart", arrived.callback)
        db.run("""notify app_restart, '{"back": true}'""")
        data = yield arrived
        self.assertEqual(data, {"back": True})
        row = yield conn.request({"action": "tuple", "view": "base.curr_eid()"})
        self.assertIn("curr_eid", row)
