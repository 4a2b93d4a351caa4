"""Operations: metrics endpoint, schema-change signal, authorization session mode,
the client from async code."""

from __future__ import annotations

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, readBody

from tests.harness import add_user, start_gateway, ticket_login
from tests.pgtest import fresh_database
from wyseman.client import keys
from wyseman.client.connection import connect
from wyseman.provision import admin


class OperationsTests(TestCase):
    timeout = 60

    def login(self, server, db, user):
        return ticket_login(self, server, db, user)

    @defer.inlineCallbacks
    def test_metrics_endpoint(self):
        db = fresh_database(self)
        user = add_user(db)
        server = yield start_gateway(self, db,
                                     metrics={"listen": "tcp:0:interface=127.0.0.1"})
        conn = yield self.login(server, db, user)
        yield conn.request({"action": "tuple", "view": "base.curr_eid()"})
        metrics_port = server.ports[-1].getHost().port
        response = yield Agent(reactor).request(
            b"GET", f"http://127.0.0.1:{metrics_port}/metrics".encode())
        text = (yield readBody(response)).decode()
        self.assertIn('wyseman_connections{transport="websocket"} 1.0', text)
        self.assertIn('wyseman_handshakes_total{outcome="accepted",reason="ticket",'
                      'transport="websocket"} 1.0', text)
        self.assertIn('wyseman_request_seconds_count{action="tuple",outcome="ok"} 1.0', text)
        self.assertIn("wyseman_pool_connections 1.0", text)   # the user's pooled session

    @defer.inlineCallbacks
    def test_schema_change_signal_drops_metadata_cache(self):
        db = fresh_database(self)
        db.run("create table public.t (a int); grant select on public.t to wyseman_user")
        user = add_user(db)
        server = yield start_gateway(self, db)
        conn = yield self.login(server, db, user)
        meta = yield conn.request({"action": "meta", "view": "public.t"})
        self.assertEqual([c["col"] for c in meta["columns"]], ["a"])
        db.run("alter table public.t add column b text")
        cached = yield conn.request({"action": "meta", "view": "public.t"})
        self.assertEqual([c["col"] for c in cached["columns"]], ["a"])   # from the cache
        dropped = defer.Deferred()
        clear = server.gateway.db.clear_caches

        def clearing():
            clear()
            dropped.callback(None)
        server.gateway.db.clear_caches = clearing
        db.run("select wm.init_dictionary()")          # NOTIFY wyseman
        yield dropped
        fresh = yield conn.request({"action": "meta", "view": "public.t"})
        self.assertEqual([c["col"] for c in fresh["columns"]], ["a", "b"])

    @defer.inlineCallbacks
    def test_authorization_session_mode(self):
        db = fresh_database(self)
        user = add_user(db)
        server = yield start_gateway(self, db, database={"session_mode": "authorization"})
        conn = yield self.login(server, db, user)
        row = yield conn.request({"action": "tuple", "view": "base.curr_eid()"})
        expected = db.run("select id from base.ent where username = %s", (user,))[0][0]
        self.assertEqual(row["curr_eid"], expected)   # base.curr_eid() uses session_user

    def test_client_from_async_code(self):
        db = fresh_database(self)
        user = add_user(db)

        async def main():
            server = await start_gateway(self, db)
            token = admin.issue_ticket(db.dsn, user).token
            conn = await connect(server.url, user, token=token,
                                 new_key=keys.generate_private_jwk())
            row = await conn.request({"action": "tuple", "view": "base.curr_eid()"})
            await conn.close()
            return row
        d = defer.ensureDeferred(main())
        d.addCallback(lambda row: self.assertIn("curr_eid", row))
        return d
