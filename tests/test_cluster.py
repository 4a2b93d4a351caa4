"""``[cluster] shared_state = "postgres"``: several gateway hosts on one database share
the replay cache and each user's connection count (wyseman.gateway.cluster).

Two gateways in this process on distinct ports stand for two hosts; the processes of
tests/test_cluster_hosts.py are the real thing."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.harness import add_user, http_get, js_date, raw_upgrade, start_gateway
from tests.pgtest import fresh_database
from wyseman.application.service import GatewayService
from wyseman.application.startfail import StartError
from wyseman.auth import credentials as cred
from wyseman.auth.credentials import signed_message
from wyseman.client import keys
from wyseman.client.connection import ClientError, connect
from wyseman.gateway.cluster import RELEASE_DELAY, SharedSlots
from wyseman.provision import admin

SHARED = {"shared_state": "postgres"}


class TwoHostTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.db = fresh_database(self)

    def host(self, name: str | None, shared: bool = True, **sections: Any) -> Any:
        cluster = dict(SHARED, host_id=name) if shared else {"shared_state": "off"}
        return start_gateway(self, self.db, cluster=cluster, **sections)

    @defer.inlineCallbacks
    def hosts(self, shared: bool = True, **sections: Any) -> Any:
        a = yield self.host("host-a", shared, **sections)
        b = yield self.host("host-b", shared, **sections)
        return a, b

    def slots(self, user: str) -> list[tuple[str, int]]:
        """``user``'s places per host (a count fallen to 0 holds none)."""
        return self.db.run("select host_id, count from wyseman_shared.user_slot "
                           "where username = %s and count > 0 order by host_id", (user,))

    @defer.inlineCallbacks
    def signed_query(self, server: Any, user: str) -> Any:
        """A key login URL (a key registered by a ticket login on ``server``)."""
        private = keys.generate_private_jwk()
        token = admin.issue_ticket(self.db.dsn, user).token
        conn = yield connect(server.url, user, token=token, new_key=private)
        yield conn.close()
        date = js_date(datetime.now(UTC))
        sign = keys.sign(private, signed_message("::ffff:127.0.0.1", None, None, date))
        return f"user={user}&sign={sign}&date={date}"

    @defer.inlineCallbacks
    def test_a_signed_login_url_is_accepted_once_over_both_hosts(self) -> None:
        a, b = yield self.hosts()
        user = add_user(self.db)
        query = yield self.signed_query(a, user)
        self.assertEqual((yield raw_upgrade(a.port, query))[0], 101)
        self.assertEqual((yield raw_upgrade(b.port, query))[0], 403)
        self.assertEqual((yield raw_upgrade(a.port, query))[0], 403)
        self.assertEqual(self.db.run("select username, length(sign_hash) from "
                                     "wyseman_shared.replay"), [(user, 32)])

    @defer.inlineCallbacks
    def test_behind_an_http_proxy_clientinfo_and_login_may_reach_different_hosts(self) -> None:
        """The nginx recipe of docs/operations.md: X-Forwarded-For from a trusted proxy;
        /clientinfo answered by host a, the login it signs accepted by host b, its replay
        refused by a."""
        a, b = yield self.hosts(server={"trusted_proxies": ["127.0.0.1"]})
        user = add_user(self.db)
        private = keys.generate_private_jwk()
        token = admin.issue_ticket(self.db.dsn, user).token
        conn = yield connect(a.url, user, token=token, new_key=private)
        yield conn.close()
        forwarded = {"X-Forwarded-For": "203.0.113.9"}
        status, _, body = yield http_get(a.port, "/clientinfo", headers=forwarded)
        self.assertEqual(status, 200)
        info = json.loads(body)
        self.assertEqual(info["ip"], "::ffff:203.0.113.9")
        date = js_date(datetime.now(UTC))
        sign = keys.sign(private, signed_message(info["ip"], None, None, date))
        query = f"user={user}&sign={sign}&date={date}"
        self.assertEqual((yield raw_upgrade(b.port, query, forwarded))[0], 101)
        self.assertEqual((yield raw_upgrade(a.port, query, forwarded))[0], 403)

    @defer.inlineCallbacks
    def test_without_shared_state_each_host_has_its_own_cache_and_count(self) -> None:
        """shared_state off (the default) is what one host did before: the same URL passes
        once on each host, and the bound is each host's."""
        a, b = yield self.hosts(shared=False, limits={"max_connections_per_user": 1},
                                auth={"insecure": True})
        self.assertIsNone(a.cluster)
        user = add_user(self.db)
        query = yield self.signed_query(a, user)
        self.assertEqual((yield raw_upgrade(a.port, query))[0], 101)
        self.assertEqual((yield raw_upgrade(b.port, query))[0], 101)
        for server in (a, b):
            conn = yield connect(server.url, user)
            self.addCleanup(conn.close)
        self.assertEqual(self.db.run("select count(*) from wyseman_shared.host"), [(0,)])

    @defer.inlineCallbacks
    def test_a_users_bound_holds_over_both_hosts(self) -> None:
        a, b = yield self.hosts(limits={"max_connections_per_user": 2},
                                auth={"insecure": True})
        user = add_user(self.db)
        first = yield connect(a.url, user)
        self.addCleanup(first.close)
        second = yield connect(b.url, user)
        self.addCleanup(second.close)
        for server in (a, b):
            with self.assertRaises(ClientError) as ctx:
                yield connect(server.url, user)
            self.assertIn("503", str(ctx.exception))
        self.assertEqual(self.slots(user), [("host-a", 1), ("host-b", 1)])
        other = yield connect(a.url, add_user(self.db))    # each user their own bound
        self.addCleanup(other.close)
        yield second.close()
        yield b.cluster.slots.quiet()
        self.assertEqual(self.slots(user), [("host-a", 1)])
        again = yield connect(a.url, user)                 # the place is free again
        self.addCleanup(again.close)
        self.assertEqual(self.slots(user), [("host-a", 2)])

    def spy(self, server: Any) -> list[str]:
        """The names of the shared-table calls ``server`` makes from now on."""
        calls: list[str] = []
        tables = server.cluster.tables

        def spied(name: str) -> Any:
            method = getattr(tables, name)

            def called(*args: Any) -> Any:
                calls.append(name)
                return method(*args)
            return called
        for name in ("record_signature", "reserve", "host_calls"):
            setattr(tables, name, spied(name))
        return calls

    @defer.inlineCallbacks
    def test_a_key_login_asks_the_database_once(self) -> None:
        """Its signature recorded and its place reserved by one call, with the rules of
        the two statements: at the user's bound it is refused with 503 and its URL is
        spent; a new one is admitted, and its place given back when it closes."""
        a, b = yield self.hosts(limits={"max_connections_per_user": 1},
                                auth={"insecure": True})
        user = add_user(self.db)
        private = keys.generate_private_jwk()
        token = admin.issue_ticket(self.db.dsn, user).token
        conn = yield connect(a.url, user, token=token, new_key=private)
        yield conn.close()
        yield a.cluster.slots.quiet()
        held = yield connect(b.url, user)                    # the user's one place
        calls = self.spy(a)
        date = js_date(datetime.now(UTC))
        sign = keys.sign(private, signed_message("::ffff:127.0.0.1", None, None, date))
        query = f"user={user}&sign={sign}&date={date}"
        self.assertEqual((yield raw_upgrade(a.port, query))[0], 503)
        self.assertEqual(calls, ["host_calls"])
        yield held.close()
        yield b.cluster.slots.quiet()
        self.assertEqual((yield raw_upgrade(a.port, query))[0], 403)   # spent
        self.assertEqual(self.slots(user), [])
        conn = yield connect(a.url, user, key=private,
                             clientinfo_url=f"http://127.0.0.1:{a.port}/clientinfo")
        self.assertEqual(self.slots(user), [("host-a", 1)])
        self.assertEqual(a.cluster.slots.count(user), 1)
        self.assertEqual(calls, ["host_calls"] * 3)
        yield conn.close()
        yield a.cluster.slots.quiet()
        self.assertEqual((self.slots(user), a.cluster.slots.count(user)), ([], 0))

    @defer.inlineCallbacks
    def test_a_host_whose_lease_ends_frees_its_places(self) -> None:
        """Host b stops renewing (as if its process hung or died): once its lease has
        ended its user's place counts no more, the cleanup removes it, and when b renews
        again it writes its counts back."""
        a, b = yield self.hosts(limits={"max_connections_per_user": 1},
                                auth={"insecure": True})
        user = add_user(self.db)
        held = yield connect(b.url, user)
        self.addCleanup(held.close)
        with self.assertRaises(ClientError):
            yield connect(a.url, user)
        b.cluster._renewal.stop()
        lease_ok = {"state": "lease_ok"}
        self.assertEqual(b.gateway.metrics.registry.get_sample_value(
            "wyseman_shared_state", lease_ok), 1)
        self.db.run("update wyseman_shared.host set lease_until = clock_timestamp() "
                    "- interval '1 second' where host_id = 'host-b'")
        conn = yield connect(a.url, user)
        self.addCleanup(conn.close)
        yield a.cluster.cleanup()
        self.assertEqual(self.slots(user), [("host-a", 1)])
        self.assertEqual(self.db.run("select host_id from wyseman_shared.host"), [("host-a",)])
        yield b.cluster.renew()     # b is back: its lease had ended, its count returns
        self.assertEqual(self.slots(user), [("host-a", 1), ("host-b", 1)])
        self.assertFalse(b.cluster.slots.resync_wanted)

    @defer.inlineCallbacks
    def test_failing_renewals_are_logged_once_and_reported(self) -> None:
        a = yield self.host("host-a")
        a.cluster._renewal.stop()
        warnings: list[str] = []

        def observe(event: dict) -> None:
            if event.get("log_namespace") == "wyseman.cluster":
                warnings.append(str(event.get("log_format")))
        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        self.db.run("alter function wyseman_shared.host_renew(text, double precision) "
                    "rename to host_renew_away")
        for _ in range(3):
            yield a.cluster.renew()       # never fails: the timer must go on
        self.assertEqual(len([w for w in warnings if "could not renew" in w]), 1)
        lease_ok = {"state": "lease_ok"}
        registry = a.gateway.metrics.registry
        self.assertEqual(registry.get_sample_value("wyseman_shared_state", lease_ok), 0)
        self.db.run("alter function wyseman_shared.host_renew_away(text, double precision) "
                    "rename to host_renew")
        yield a.cluster.renew()
        self.assertEqual(registry.get_sample_value("wyseman_shared_state", lease_ok), 1)
        self.assertTrue(any("renewed again" in w for w in warnings), warnings)

    @defer.inlineCallbacks
    def test_a_stopped_host_leaves_and_a_restarted_one_clears_its_old_rows(self) -> None:
        a, b = yield self.hosts(limits={"max_connections_per_user": 1},
                                auth={"insecure": True})
        user = add_user(self.db)
        yield connect(b.url, user)
        yield b.stopService()            # (its socket is closed with 1001)
        self.assertEqual(self.db.run("select host_id from wyseman_shared.host"), [("host-a",)])
        self.assertEqual(self.slots(user), [])
        # a predecessor named host-c that died with a connection and a live lease
        self.db.run("select wyseman_shared.host_renew('host-c', 60); "
                    "select wyseman_shared.slot_reserve('host-c', %s, 1)", (user,))
        with self.assertRaises(ClientError):
            yield connect(a.url, user)
        warnings: list[str] = []

        def observe(event: dict) -> None:
            if "had a live lease" in str(event.get("log_format", "")):
                warnings.append(event["host"])
        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        yield self.host("host-c", limits={"max_connections_per_user": 1},
                        auth={"insecure": True})
        self.assertEqual(warnings, ["host-c"])
        self.assertEqual(self.slots(user), [])
        conn = yield connect(a.url, user)
        self.addCleanup(conn.close)

    @defer.inlineCallbacks
    def test_expired_replay_rows_are_cleaned_and_a_full_table_refuses(self) -> None:
        a = yield self.host("host-a")
        replay = a.cluster.replay
        now = reactor.seconds()
        self.assertEqual((yield replay.check("old", "AAAA", now - 1000)), cred.NEW)
        self.assertEqual((yield replay.check("new", "AAAA", now)), cred.NEW)
        self.assertEqual((yield replay.check("new", "AAAA", now)), cred.SEEN)
        self.assertEqual(self.db.run("select count(*) from wyseman_shared.replay"), [(2,)])
        yield a.cluster.cleanup()
        self.assertEqual(self.db.run("select username from wyseman_shared.replay"), [("new",)])
        self.assertFalse(replay.full)
        registry = a.gateway.metrics.registry
        self.assertEqual(registry.get_sample_value("wyseman_shared_state",
                                                   {"state": "replay_full"}), 0)
        replay.max_rows = 1             # the bound reached: refused until rows expire
        yield a.cluster.cleanup()
        self.assertTrue(replay.full)
        self.assertEqual(registry.get_sample_value("wyseman_shared_state",
                                                   {"state": "replay_full"}), 1)
        self.assertEqual((yield replay.check("other", "BBBB", now)), cred.FULL)
        self.assertEqual(self.db.run("select count(*) from wyseman_shared.replay"), [(1,)])

    @defer.inlineCallbacks
    def test_a_count_that_cannot_be_kept_refuses_the_login_with_503(self) -> None:
        a = yield self.host("host-a", auth={"insecure": True})
        user = add_user(self.db)
        self.db.run("drop function wyseman_shared.slot_reserve(text, text, integer)")
        status, _ = yield raw_upgrade(a.port, f"user={user}")
        self.assertEqual(status, 503)
        self.assertEqual(a.gateway.connection_count, 0)

    @defer.inlineCallbacks
    def test_a_database_without_the_shared_schema_refuses_to_start(self) -> None:
        from tests.harness import make_config
        self.db.run("drop schema wyseman_shared cascade")
        service = GatewayService(make_config(self.db, cluster=SHARED),
                                 lambda: defer.succeed(self.db.dsn), reactor)
        service.stop_reactor_on_failure = False
        failures: list[Any] = []
        service.ready.addErrback(failures.append)
        yield service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual(len(failures), 1)
        failures[0].trap(StartError)
        self.assertIn("wyseman db init", str(failures[0].value))
        self.assertEqual(service.ports, [])


class _Tables:
    """SharedTables in memory, answering when told (``answer``)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.pending: list[defer.Deferred] = []

    def _call(self, name: str, *args: Any, entry: Any = None) -> defer.Deferred:
        self.calls.append(entry or (name, args))
        d: defer.Deferred = defer.Deferred()
        self.pending.append(d)
        return d

    def reserve(self, host: str, user: str, most: int) -> defer.Deferred:
        return self._call("reserve", user)

    def host_calls(self, host: str, logins: list, most: int, closed: dict) -> defer.Deferred:
        """Recorded as ("calls", ((user, digest), ...), closed)."""
        return self._call("calls", entry=(
            "calls", tuple((user, digest) for user, digest, *_ in logins), dict(closed)))

    def sync(self, host: str, lease: float, counts: dict) -> defer.Deferred:
        return self._call("sync", dict(counts))

    def answer(self, value: Any = None) -> None:
        self.pending.pop(0).callback(value)


class SharedSlotsTests(TestCase):
    """The host's own counts and the rewrite of its rows, without a database."""

    def setUp(self) -> None:
        self.tables = _Tables()
        self.clock = task.Clock()
        self.slots = SharedSlots(self.tables, "h", 2, self.clock)   # type: ignore[arg-type]

    def test_a_failed_release_is_repaired_by_writing_the_rows_again(self) -> None:
        granted = self.slots.reserve("u")
        self.tables.answer(True)
        self.assertTrue(self.successResultOf(granted))
        self.assertEqual(self.slots.count("u"), 1)
        self.slots.release("u")
        self.clock.advance(RELEASE_DELAY)
        self.assertEqual(self.tables.calls[-1], ("calls", (), {"u": 1}))
        self.tables.pending.pop(0).errback(RuntimeError("connection lost"))
        self.assertEqual(self.slots.count("u"), 0)
        self.assertTrue(self.slots.resync_wanted)
        self.assertTrue(self.slots.idle)
        self.slots.reserve("v")
        self.tables.answer(True)
        synced = self.slots.resync(15.0)
        # meanwhile reservations and releases wait for the rewrite
        waiting = self.slots.reserve("u")
        self.slots.release("v")
        self.assertEqual(self.tables.calls[-1], ("sync", ({"v": 1},)))
        self.assertNoResult(waiting)
        quiet = self.slots.quiet()
        self.tables.answer(True)
        self.assertTrue(self.successResultOf(synced))
        self.assertFalse(self.slots.resync_wanted)
        self.assertEqual(self.tables.calls[-2:], [("reserve", ("u",)),
                                                  ("calls", (), {"v": 1})])
        self.assertNoResult(quiet)
        self.tables.answer(True)
        self.tables.answer([])
        self.assertTrue(self.successResultOf(waiting))
        self.successResultOf(quiet)
        self.assertEqual((self.slots.count("u"), self.slots.count("v")), (1, 0))

    def test_a_rewrite_waits_for_the_reservations_under_way_and_holds_new_ones(self) -> None:
        first = self.slots.reserve("u")                 # sent, not answered yet
        synced = self.slots.resync(15.0)
        again = self.slots.resync(15.0)                 # the same rewrite
        later = self.slots.reserve("v")                 # held back
        self.assertEqual([name for name, *_ in self.tables.calls], ["reserve"])
        self.tables.answer(True)                        # counted: now the rewrite
        self.assertTrue(self.successResultOf(first))
        self.assertEqual(self.tables.calls[-1], ("sync", ({"u": 1},)))
        self.assertNoResult(later)
        self.tables.pending.pop(0).errback(RuntimeError("gone"))
        self.failureResultOf(synced, RuntimeError)
        self.failureResultOf(again, RuntimeError)
        self.assertEqual(self.tables.calls[-1], ("reserve", ("v",)))   # let through
        self.tables.answer(False)
        self.assertFalse(self.successResultOf(later))
        self.assertTrue(self.slots.idle)

    def test_key_logins_wait_for_the_call_under_way_and_go_together(self) -> None:
        """reserve_signed: (new, granted) each, from one call for the logins that arrived
        while the previous one was under way; a place counted only when granted."""
        first = self.slots.reserve_signed("u", b"h1", 1.0, 121.0)
        self.assertEqual(self.tables.calls, [("calls", (("u", b"h1"),), {})])
        later = [self.slots.reserve_signed(user, digest, 2.0, 122.0)
                 for user, digest in (("u", b"h1"), ("v", b"h2"), ("u", b"h3"))]
        self.assertEqual(len(self.tables.calls), 1)
        quiet = self.slots.quiet()
        self.tables.answer([(True, True)])
        self.assertEqual(self.successResultOf(first), (True, True))
        self.assertEqual(self.tables.calls[-1],
                         ("calls", (("u", b"h1"), ("v", b"h2"), ("u", b"h3")), {}))
        answers = [(False, False), (True, True), (True, False)]  # a replay; no place left
        self.tables.answer(answers)
        self.assertEqual([self.successResultOf(d) for d in later], answers)
        self.successResultOf(quiet)
        self.assertEqual(self.slots.held(), {"u": 1, "v": 1})

    def test_key_logins_wait_for_a_rewrite_and_fail_together(self) -> None:
        """A failed call fails its logins, and the rows are written again at the next
        renewal (the call may have taken places before its answer was lost)."""
        self.held("u")
        synced = self.slots.resync(15.0)
        later = [self.slots.reserve_signed("v", b"h", 1.0, 121.0),
                 self.slots.reserve_signed("w", b"h", 1.0, 121.0)]
        self.assertEqual(self.tables.calls[-1], ("sync", ({"u": 1},)))
        self.tables.answer(True)
        self.successResultOf(synced)
        self.assertFalse(self.slots.resync_wanted)
        self.assertEqual(self.tables.calls[-1], ("calls", (("v", b"h"), ("w", b"h")), {}))
        self.tables.pending.pop(0).errback(RuntimeError("connection lost"))
        for d in later:
            self.failureResultOf(d, RuntimeError)
        self.assertEqual(self.slots.held(), {"u": 1})
        self.assertTrue(self.slots.resync_wanted)
        self.assertTrue(self.slots.idle)

    def held(self, *users: str) -> None:
        for user in users:
            self.slots.reserve(user)
            self.tables.answer(True)

    def test_releases_wait_for_a_login_or_their_delay_and_go_together(self) -> None:
        """A release alone goes once RELEASE_DELAY is over, with those that came
        meanwhile; those that come while it is under way go together after it, once
        their own delay is over."""
        self.slots = SharedSlots(self.tables, "h", 5, self.clock)   # type: ignore[arg-type]
        self.held("u", "u", "u", "v")
        calls = len(self.tables.calls)
        self.slots.release("u")
        self.clock.advance(RELEASE_DELAY / 2)
        self.slots.release("v")
        self.assertEqual(len(self.tables.calls), calls)     # not yet: it waits
        self.clock.advance(RELEASE_DELAY / 2)
        self.assertEqual(self.tables.calls[-1], ("calls", (), {"u": 1, "v": 1}))
        self.slots.release("u")
        self.slots.release("u")
        self.assertEqual(len(self.tables.pending), 1)      # the first one's answer first
        self.tables.answer([])
        self.assertEqual(len(self.tables.pending), 0)
        self.clock.advance(RELEASE_DELAY)
        self.assertEqual(self.tables.calls[-1], ("calls", (), {"u": 2}))
        self.tables.answer([])
        self.assertEqual(self.slots.held(), {})
        self.assertTrue(self.slots.idle)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_quiet_sends_the_releases_waiting_at_once(self) -> None:
        self.held("u")
        self.slots.release("u")
        quiet = self.slots.quiet()
        self.assertEqual(self.tables.calls[-1], ("calls", (), {"u": 1}))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertNoResult(quiet)
        self.tables.answer([])
        self.successResultOf(quiet)

    def test_logins_and_releases_go_in_one_call(self) -> None:
        """What arrives while a call is under way, key logins and closed connections
        alike, goes in the next call, together: the releases do not wait for their
        delay."""
        self.held("u", "v")
        first = self.slots.reserve_signed("w", b"h1", 1.0, 121.0)
        self.slots.release("u")
        second = self.slots.reserve_signed("u", b"h2", 2.0, 122.0)
        self.slots.release("v")
        self.assertEqual(self.tables.calls[-1], ("calls", (("w", b"h1"),), {}))
        self.tables.answer([(True, True)])
        self.assertEqual(self.successResultOf(first), (True, True))
        self.assertEqual(self.tables.calls[-1],
                         ("calls", (("u", b"h2"),), {"u": 1, "v": 1}))
        self.tables.answer([(True, True)])
        self.assertEqual(self.successResultOf(second), (True, True))
        self.assertEqual(self.slots.held(), {"u": 1, "w": 1})
        self.assertTrue(self.slots.idle)
        self.assertEqual(self.clock.getDelayedCalls(), [])     # nothing left to send

    def test_a_rewrite_makes_the_releases_not_sent_moot(self) -> None:
        """Counts written without the places of connections closed meanwhile: their
        releases are not sent after (they would free those places twice); releases of
        connections that close during the rewrite are."""
        self.held("u", "v")
        first = self.slots.reserve("w")                  # under way: the rewrite waits
        synced = self.slots.resync(15.0)
        self.slots.release("u")
        self.tables.answer(True)
        self.successResultOf(first)
        self.assertEqual(self.tables.calls[-1], ("sync", ({"v": 1, "w": 1},)))
        self.slots.release("v")                          # during the rewrite
        self.tables.answer(True)
        self.successResultOf(synced)
        self.clock.advance(RELEASE_DELAY)
        self.assertEqual(self.tables.calls[-1], ("calls", (), {"v": 1}))
        self.tables.answer([])
        self.assertEqual([name for name, *_ in self.tables.calls].count("calls"), 1)
        self.assertTrue(self.slots.idle)

    def test_a_release_without_a_reservation_is_ignored(self) -> None:
        self.slots.release("nobody")
        self.assertEqual(self.tables.calls, [])


class PreflightTests(SynchronousTestCase):
    def test_config_check_connect_looks_for_the_shared_schema(self) -> None:
        from tests.harness import make_config
        from wyseman.application.preflight import try_connect
        from wyseman.config import ConfigError
        db = fresh_database(self)
        config = make_config(db, cluster=SHARED)
        self.assertIn("shared state tables found", try_connect(config))
        self.assertNotIn("shared", try_connect(make_config(db)))
        db.run("drop schema wyseman_shared cascade")
        with self.assertRaises(ConfigError) as ctx:
            try_connect(config)
        self.assertIn("wyseman db init", str(ctx.exception))
        self.assertIn("test.toml", str(ctx.exception))
