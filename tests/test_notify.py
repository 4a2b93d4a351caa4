"""Sessions and notifications across sockets, users and servers."""

from __future__ import annotations

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from tests.harness import add_user, start_gateway, unregistered
from tests.pgtest import fresh_database
from wyseman.client import keys
from wyseman.client.connection import connect
from wyseman.provision import admin

SLEEPY = """
create function public.nap() returns int language sql as $$ select 1 from pg_sleep(0.05) $$;
grant execute on function public.nap() to wyseman_user;
"""


class FanOutTests(TestCase):
    timeout = 90

    @defer.inlineCallbacks
    def sockets(self, server, db, user, count, listen=()):
        private = keys.generate_private_jwk()
        token = admin.issue_ticket(db.dsn, user).token
        first = yield connect(server.url, user, token=token, new_key=private, listen=listen)
        conns = [first]
        for _ in range(count - 1):
            conns.append((yield connect(server.url, user, key=private, listen=listen,
                                        clientinfo_url=server.clientinfo_url)))
        for conn in conns:
            self.addCleanup(conn.close)
        return private, conns

    @defer.inlineCallbacks
    def test_backends_bounded_by_pool_and_session_user(self):
        db = fresh_database(self)
        db.run(SLEEPY)
        alice, bob = add_user(db, "alice"), add_user(db, "bob")
        server = yield start_gateway(self, db, database={"pool_size": 2})
        conns = {}
        for user in (alice, bob):
            _, conns[user] = yield self.sockets(server, db, user, 3)
        requests = []
        for sockets in conns.values():
            for conn in sockets:
                for _ in range(4):
                    requests.append(conn.request({"action": "tuple", "view": "public.nap()"}))
                requests.append(conn.request({"action": "tuple", "view": "base.curr_eid()"}))
        yield defer.gatherResults(requests)
        for user in (alice, bob):
            count = db.run("select count(*) from pg_stat_activity where usename = %s",
                           (user,))[0][0]
            self.assertLessEqual(count, 2, user)
            self.assertGreaterEqual(count, 1, user)
            row = yield conns[user][0].request({"action": "tuple", "view": "base.curr_eid()"})
            self.assertEqual(row["curr_eid"], db.run("select id from base.ent where username = "
                                                     "%s", (user,))[0][0])

    @defer.inlineCallbacks
    def test_unlisten_after_last_subscriber(self):
        db = fresh_database(self)
        user = add_user(db)
        server = yield start_gateway(self, db)
        listener = server.gateway.db.listener
        _, (first, second) = yield self.sockets(server, db, user, 2, listen=["app_one"])
        self.assertIn("app_one", listener.channels)
        gone = unregistered(server.gateway, 1)
        yield first.close()
        yield gone
        self.assertIn("app_one", listener.channels)
        gone = unregistered(server.gateway, 1)
        yield second.close()
        yield gone
        self.assertNotIn("app_one", listener.channels)

    @defer.inlineCallbacks
    def test_started_server_is_already_listening(self):
        """Ports open only once the LISTEN connection is up with the server's own
        channels: a client that logs in at once and is sent a notification gets it."""
        db = fresh_database(self)
        server = yield start_gateway(self, db)
        listener = server.gateway.db.listener
        self.assertTrue(listener.connected)
        self.assertEqual(listener.channels, {"wyseman", "wyseman_auth"})
        user = add_user(db)
        _, (conn,) = yield self.sockets(server, db, user, 1, listen=["app_now"])
        got = defer.Deferred()
        conn.on_notify("app_now", got.callback)
        db.run("""notify app_now, '{"n": 1}'""")
        self.assertEqual((yield got), {"n": 1})

    @defer.inlineCallbacks
    def test_two_servers_on_one_database(self):
        """The scale-out model: each server LISTENs for its own clients."""
        db = fresh_database(self)
        user = add_user(db)
        one = yield start_gateway(self, db)
        two = yield start_gateway(self, db)
        private, (a,) = yield self.sockets(one, db, user, 1, listen=["app_both"])
        b = yield connect(two.url, user, key=private, listen=["app_both"],
                          clientinfo_url=two.clientinfo_url)
        self.addCleanup(b.close)
        got_a, got_b = defer.Deferred(), defer.Deferred()
        a.on_notify("app_both", got_a.callback)
        b.on_notify("app_both", got_b.callback)
        db.run("""notify app_both, '{"to": "everyone"}'""")
        results = yield defer.gatherResults([got_a, got_b])
        self.assertEqual(results, [{"to": "everyone"}, {"to": "everyone"}])
