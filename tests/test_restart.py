"""PostgreSQL stops and starts under a running gateway (D10): sockets stay open,
requests during the outage get error replies, subscriptions come back."""

from __future__ import annotations

from twisted.internet import defer, threads
from twisted.trial.unittest import SkipTest, TestCase

from tests import pgtest
from tests.harness import add_user, start_gateway
from wyseman.client import keys
from wyseman.client.connection import RequestError, connect
from wyseman.provision import admin


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


class LostDuringWriteTests(TestCase):
    """A write whose connection is lost: answered with the outage code when it cannot
    have committed, with ``commitUnknown`` when COMMIT was sent and no answer came."""

    timeout = 60

    @defer.inlineCallbacks
    def setUp(self):
        self.db = pgtest.fresh_database(self)
        self.user = add_user(self.db)
        self.db.run(f"""
            create table public.entry (id int primary key, body text);
            grant select, insert on public.entry to "{self.user}";
            create function public.lose_connection() returns trigger language plpgsql as $$
            begin perform pg_terminate_backend(pg_backend_pid()); return null; end $$;
        """)
        self.server = yield start_gateway(self, self.db)
        token = admin.issue_ticket(self.db.dsn, self.user).token
        self.conn = yield connect(self.server.url, self.user, token=token,
                                  new_key=keys.generate_private_jwk())
        self.addCleanup(self.conn.close)

    @defer.inlineCallbacks
    def refused(self, entry_id: int) -> str:
        with self.assertRaises(RequestError) as ctx:
            yield self.conn.request({"action": "insert", "view": "public.entry",
                                     "fields": {"id": entry_id, "body": "x"}})
        self.assertTrue(self.conn.connected)
        return ctx.exception.code

    @defer.inlineCallbacks
    def test_lost_at_commit_is_commit_unknown(self):
        # a deferred trigger runs during COMMIT: the connection goes while it commits
        self.db.run("create constraint trigger lose after insert on public.entry "
                    "deferrable initially deferred for each row "
                    "execute function public.lose_connection()")
        code = yield self.refused(1)
        self.assertEqual(code, "!wm.lang:commitUnknown")
        self.db.run("drop trigger lose on public.entry")
        row = yield self.conn.request({"action": "insert", "view": "public.entry",
                                       "fields": {"id": 2, "body": "y"}})
        self.assertEqual(row["id"], 2)

    @defer.inlineCallbacks
    def test_lost_before_commit_is_the_outage_code(self):
        self.db.run("create trigger lose before insert on public.entry for each row "
                    "execute function public.lose_connection()")
        code = yield self.refused(1)
        self.assertEqual(code, "!wm.lang:noDatabase")
        self.assertEqual(self.db.run("select count(*) from public.entry"), [(0,)])
