"""Resources a custom action publishes (a report, a CSV download): served to the
publishing session's client only, while that session lives, within size and time
bounds."""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.harness import APP_SAMPLE, add_user, http_get, start_gateway, unregistered
from tests.pgtest import fresh_database
from wyseman.client import keys
from wyseman.client.connection import RequestError, connect
from wyseman.errors import ProtocolError
from wyseman.gateway.actions import ActionRegistry
from wyseman.gateway.dispatch import Session
from wyseman.gateway.resources import PREFIX, ResourceStore
from wyseman.provision import admin


def session(peer: str = "127.0.0.1") -> Session:
    return Session("alice", (), lambda frame: None, peer)


class StoreTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.store = ResourceStore(self.clock, max_bytes=100, max_total=250, ttl=60)

    def token(self, url: str) -> str:
        self.assertTrue(url.startswith(PREFIX))
        return url[len(PREFIX):]

    def test_the_owner_reads_it_until_it_expires(self) -> None:
        owner = session()
        token = self.token(self.store.publish(owner, "a,b\n", "text/csv", "x.csv"))
        found = self.store.fetch(token, "127.0.0.1")
        assert found is not None
        self.assertEqual((found.body, found.content_type, found.filename),
                         (b"a,b\n", "text/csv", "x.csv"))
        self.assertIsNone(self.store.fetch(token, "127.0.0.2"))     # another client
        self.clock.advance(59)
        self.assertIsNotNone(self.store.fetch(token, "127.0.0.1"))
        self.clock.advance(1)
        self.assertIsNone(self.store.fetch(token, "127.0.0.1"))
        self.assertEqual(self.store.total, 0)

    def test_a_shorter_ttl_is_kept_a_longer_one_capped(self) -> None:
        short = self.token(self.store.publish(session(), "x", "text/plain", ttl=5))
        long = self.token(self.store.publish(session(), "y", "text/plain", ttl=3600))
        self.clock.advance(5)
        self.assertIsNone(self.store.fetch(short, "127.0.0.1"))
        self.clock.advance(55)
        self.assertIsNone(self.store.fetch(long, "127.0.0.1"))

    def test_it_goes_with_its_session(self) -> None:
        owner, other = session(), session()
        mine = self.token(self.store.publish(owner, "x", "text/plain"))
        theirs = self.token(self.store.publish(other, "y", "text/plain"))
        self.store.session_ended(owner)
        self.assertIsNone(self.store.fetch(mine, "127.0.0.1"))
        self.assertIsNotNone(self.store.fetch(theirs, "127.0.0.1"))

    def test_bounds(self) -> None:
        with self.assertRaises(ProtocolError) as large:
            self.store.publish(session(), b"x" * 101, "application/pdf")
        self.assertEqual(large.exception.tag, "resourceTooLarge")
        for _ in range(2):
            self.store.publish(session(), b"x" * 100, "application/pdf")
        with self.assertRaises(ProtocolError) as full:
            self.store.publish(session(), b"x" * 51, "application/pdf")
        self.assertEqual(full.exception.tag, "resourcesFull")
        self.clock.advance(60)                      # expired ones make room
        self.store.publish(session(), b"x" * 100, "application/pdf")
        with self.assertRaises(ProtocolError):
            self.store.publish(session(), "x", "text/plain\r\nSet-Cookie: a=b")
        with self.assertRaises(ProtocolError):
            self.store.publish(session(), "x", "text/plain", filename='a"; b')

    def test_tokens_are_unguessable(self) -> None:
        tokens = {self.token(self.store.publish(session(), "", "text/plain"))
                  for _ in range(50)}
        self.assertEqual(len(tokens), 50)
        self.assertTrue(all(len(token) >= 43 for token in tokens))   # 256 bits


class PublishedOverTheWireTests(TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def setUp(self):
        self.db = fresh_database(self)
        self.db.run(APP_SAMPLE)
        self.db.run("insert into app.item (name, qty) values ('bolt', 3), ('nut', 5)")
        self.user = add_user(self.db)
        registry = ActionRegistry()
        from wyseman.examples.csv_export import export
        registry.register("app.item_v", "csv", export)
        self.server = yield start_gateway(self, self.db, actions=registry,
                                          server={"ip_style": "plain"})
        token = admin.issue_ticket(self.db.dsn, self.user).token
        self.conn = yield connect(self.server.url, self.user, token=token,
                                  new_key=keys.generate_private_jwk())
        self.addCleanup(self.conn.close)

    def export(self, **data):
        return self.conn.request({"action": "action", "view": "app.item_v", "name": "csv",
                                  "data": {"fields": ["name", "qty"], "order": ["name"],
                                           **data}})

    @defer.inlineCallbacks
    def test_the_csv_example_publishes_a_download_for_its_session_only(self):
        reply = yield self.export(download=True)
        self.assertEqual(reply["rows"], 2)
        url = reply["url"]
        self.assertTrue(url.startswith("/_wyseman/resources/"), url)
        status, headers, body = yield http_get(self.server.port, url)
        self.assertEqual(status, 200)
        self.assertEqual(body.replace(b"\r\n", b"\n"), b"name,qty\nbolt,3\nnut,5\n")
        self.assertIn("content-type: text/csv; charset=utf-8", headers)
        self.assertIn('content-disposition: attachment; filename="app.item_v.csv"', headers)
        self.assertIn("cache-control: no-store", headers)
        # another client address, a token that never was: the same 404
        status, _, _ = yield http_get(self.server.port, url, source="127.0.0.2")
        self.assertEqual(status, 404)
        status, _, _ = yield http_get(self.server.port, url[:-4] + "AAAA")
        self.assertEqual(status, 404)
        # the session ends: its resources go with it
        gone = unregistered(self.server.gateway)
        yield self.conn.close()
        yield gone
        status, _, _ = yield http_get(self.server.port, url)
        self.assertEqual(status, 404)

    @defer.inlineCallbacks
    def test_inline_csv_is_unchanged_and_bounds_are_the_replys_error(self):
        reply = yield self.export()
        self.assertEqual(reply["csv"].replace("\r\n", "\n"), "name,qty\nbolt,3\nnut,5\n")
        self.server.gateway.resources.max_bytes = 5
        with self.assertRaises(RequestError) as ctx:
            yield self.export(download=True)
        self.assertEqual(ctx.exception.code, "!wm.lang:resourceTooLarge")
