"""The ``wyseman_shared`` schema (provision/schema/008_shared_state.sql,
009_shared_login.sql and 010_shared_calls.sql) on its own, in SQL: the replay
record-and-check, the per-user count over live hosts, a key login's two in one call with
the releases, leases, cleanup, privileges, that two hosts cannot both grant a user's last
place, and that hosts of versions 5 and 6 (their calls) share one bound."""

from __future__ import annotations

import hashlib
import threading
import time
from typing import Any

import psycopg2
import psycopg2.errors
from twisted.trial.unittest import SynchronousTestCase

from tests.pgtest import connect_sync, fresh_database
from wyseman.db import shared

H = hashlib.sha256(b"r").digest()

# What a gateway of schema version 5 sends (009_shared_login.sql): its functions stay in
# the schema for the hosts not yet upgraded.
V5_KEY_LOGINS_SQL = """
select new, granted from wyseman_shared.key_logins(
    %(h)s, %(u)s::text[], %(s)s::bytea[], %(n)s::float8[], %(e)s::float8[], %(m)s)"""
V5_RELEASE_SQL = """
select wyseman_shared.slot_release_many(%(h)s, %(u)s::text[], %(c)s::integer[])"""


class SharedSQLTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.db = fresh_database(self)

    def one(self, sql: str, params: Any = None) -> Any:
        return self.db.run(sql, params)[0][0]

    def record(self, user: str, digest: bytes, now: float, expires: float) -> bool:
        rows = self.db.run(shared._REPLAY_SQL, {"u": user, "h": digest, "e": expires, "n": now})
        return bool(rows)

    def reserve(self, host: str, user: str, most: int = 2) -> bool:
        return self.one(shared._RESERVE_SQL, {"h": host, "u": user, "m": most})

    def release(self, host: str, *users: str) -> None:
        """One connection of each of ``users`` closed (a user named twice: two)."""
        closed: dict[str, int] = {}
        for user in users:
            closed[user] = closed.get(user, 0) + 1
        self.calls(host, [], closed)

    def calls(self, host: str, logins: list[tuple[str, bytes, float]],
              closed: dict[str, int], most: int = 1) -> list[tuple[bool, bool]]:
        """host_calls: the releases of ``closed`` and the key logins (user, digest, now),
        each kept for 120 s → (new, granted) each."""
        users = sorted(closed)
        rows = self.db.run(shared._HOST_CALLS_SQL, {
            "h": host, "u": [user for user, _, _ in logins],
            "s": [digest for _, digest, _ in logins], "n": [now for _, _, now in logins],
            "e": [now + 120.0 for _, _, now in logins], "m": most,
            "cu": users, "cc": [closed[u] for u in users]})
        self.assertEqual(len(rows), 1)
        news, grants = rows[0]
        return list(zip(news, grants, strict=True))

    def lease(self, host: str, seconds: float = 30) -> bool:
        return self.one(shared._RENEW_SQL, {"h": host, "l": seconds})

    def expire(self, host: str) -> None:
        self.db.run("update wyseman_shared.host set lease_until = clock_timestamp() "
                    "- interval '1 second' where host_id = %s", (host,))

    def count(self, user: str) -> int:
        return self.one(shared._USER_COUNT_SQL, {"u": user})

    def test_replay_insert_is_the_record_and_the_check(self) -> None:
        self.assertTrue(self.record("alice", H, 1000.0, 1120.0))
        self.assertFalse(self.record("alice", H, 1001.0, 1121.0))        # a replay
        self.assertTrue(self.record("bob", H, 1001.0, 1121.0))           # another user
        self.assertFalse(self.record("alice", H, 1120.0, 1240.0))        # the edge: kept
        # expired but not yet deleted: not a replay, and the row is taken over
        self.assertTrue(self.record("alice", H, 1120.5, 1240.5))
        self.assertEqual(self.db.run("select extract(epoch from expires)::float8 from "
                                     "wyseman_shared.replay where username = 'alice'"),
                         [(1240.5,)])
        with self.assertRaises(psycopg2.Error):     # only digests are stored
            self.record("carol", b"x" * 200, 1000.0, 1120.0)

    def test_cleanup_deletes_expired_replays_and_dead_hosts(self) -> None:
        self.record("alice", H, 1000.0, 1120.0)
        self.record("bob", H, 1000.0, 1200.0)
        self.lease("a")
        self.lease("b")
        self.assertTrue(self.reserve("a", "alice"))
        self.assertTrue(self.reserve("b", "alice"))
        self.expire("b")
        rows = self.db.run(shared._CLEANUP_SQL, {"n": 1150.0})
        self.assertEqual(rows, [(1, 1)])
        self.assertEqual(self.db.run("select username from wyseman_shared.replay"), [("bob",)])
        self.assertEqual(self.db.run("select host_id, username, count from "
                                     "wyseman_shared.user_slot"), [("a", "alice", 1)])
        self.assertEqual(self.db.run("select host_id from wyseman_shared.host"), [("a",)])
        self.assertEqual(self.one(shared._REPLAY_ROWS_SQL, {"m": 10}), 1)
        self.assertEqual(self.one(shared._REPLAY_ROWS_SQL, {"m": 0}), 0)

    def test_a_users_places_count_over_the_live_hosts(self) -> None:
        self.lease("a")
        self.lease("b")
        self.assertTrue(self.reserve("a", "alice"))
        self.assertTrue(self.reserve("b", "alice"))
        self.assertFalse(self.reserve("a", "alice"))       # 2 of 2, wherever they are
        self.assertFalse(self.reserve("b", "alice"))
        self.assertTrue(self.reserve("a", "bob"))          # each user their own bound
        self.assertEqual(self.count("alice"), 2)
        self.release("b", "alice")
        self.assertEqual(self.count("alice"), 1)
        self.release("b", "alice")   # nothing held: no-op
        self.assertTrue(self.reserve("a", "alice"))
        self.assertEqual(self.db.run("select host_id, count from wyseman_shared.user_slot "
                                     "where username = 'alice' order by 1"),
                         [("a", 2), ("b", 0)])   # (b's row kept at 0 until a cleanup)
        # a host whose lease ended counts no more, before any cleanup
        self.expire("a")
        self.assertEqual(self.count("alice"), 0)
        self.assertTrue(self.reserve("b", "alice"))
        self.assertFalse(self.lease("a"))       # it comes back: told its lease had ended
        self.assertTrue(self.lease("a"))
        self.assertEqual(self.count("alice"), 3)   # (its rows count again: it rewrites them)

    def test_a_count_at_0_keeps_its_row_until_the_cleanup(self) -> None:
        """A user's last connection closed: the row stays (a login that follows updates
        it in place), counts nothing, never goes below 0, and the cleanup deletes it."""
        self.lease("a")
        self.assertTrue(self.reserve("a", "alice", most=1))
        self.release("a", "alice")
        self.release("a", "alice")   # nothing held
        self.assertEqual(self.db.run("select count from wyseman_shared.user_slot"), [(0,)])
        self.assertEqual(self.count("alice"), 0)
        self.assertTrue(self.reserve("a", "alice", most=1))
        self.assertFalse(self.reserve("a", "alice", most=1))
        self.release("a", "alice")
        self.lease("b")
        self.assertTrue(self.reserve("b", "bob"))
        self.assertEqual(self.db.run(shared._CLEANUP_SQL, {"n": 0.0}), [(0, 0)])
        self.assertEqual(self.db.run("select host_id, username, count from "
                                     "wyseman_shared.user_slot"), [("b", "bob", 1)])

    def test_many_releases_in_one_call(self) -> None:
        """A host's releases in one call, one user's with the number that closed; never
        below 0, never another host's row. (slot_release and slot_release_many, which
        hosts of versions 4 and 5 call, keep to the same rows.)"""
        self.lease("a")
        self.lease("b")
        for user, places in (("alice", 3), ("bob", 2), ("carol", 1)):
            for _ in range(places):
                self.assertTrue(self.reserve("a", user, most=5))
        self.assertTrue(self.reserve("b", "alice", most=5))
        self.release("a", "alice", "bob", "alice", "dave")
        self.db.run(V5_RELEASE_SQL, {"h": "a", "u": ["carol"], "c": [4]})
        self.assertEqual(self.db.run("select host_id, username, count from "
                                     "wyseman_shared.user_slot order by 1, 2"),
                         [("a", "alice", 1), ("a", "bob", 1), ("a", "carol", 0),
                          ("b", "alice", 1)])
        self.db.run("select wyseman_shared.slot_release('a', 'bob')")
        self.assertEqual(self.count("bob"), 0)
        self.release("a")                                  # nothing: a no-op
        self.assertEqual(self.count("alice"), 2)

    def key_logins(self, host: str, logins: list[tuple[str, bytes, float]],
                   most: int = 1) -> list[tuple[bool, bool]]:
        """(user, digest, now) each, kept for 120 s → (new, granted) each."""
        return self.calls(host, logins, {}, most)

    def v5_key_logins(self, host: str, logins: list[tuple[str, bytes, float]],
                      most: int = 1) -> list[tuple[bool, bool]]:
        """The same call as a gateway of version 5 makes it."""
        return self.db.run(V5_KEY_LOGINS_SQL, {
            "h": host, "u": [user for user, _, _ in logins],
            "s": [digest for _, digest, _ in logins], "n": [now for _, _, now in logins],
            "e": [now + 120.0 for _, _, now in logins], "m": most})

    def key_login(self, host: str, user: str, digest: bytes, now: float = 1000.0,
                  most: int = 1) -> tuple[bool, bool]:
        rows = self.key_logins(host, [(user, digest, now)], most)
        self.assertEqual(len(rows), 1)
        return rows[0]

    def test_several_key_logins_in_one_call(self) -> None:
        """Each login's answer in the order given, as if they had come one by one in
        the order of the users' names (one user's in the order given)."""
        self.lease("a")
        digests = [hashlib.sha256(bytes([n])).digest() for n in range(4)]
        answers = self.key_logins("a", [("carol", digests[0], 1000.0),
                                        ("alice", digests[1], 1000.0),
                                        ("carol", digests[0], 1001.0),   # a replay
                                        ("carol", digests[2], 1001.0),
                                        ("bob", digests[3], 1000.0)], most=1)
        self.assertEqual(answers, [(True, True), (True, True), (False, False),
                                   (True, False), (True, True)])
        self.assertEqual(self.db.run("select username, count from wyseman_shared.user_slot "
                                     "order by 1"), [("alice", 1), ("bob", 1), ("carol", 1)])
        self.assertEqual(self.db.run("select count(*) from wyseman_shared.replay"), [(4,)])

    def test_a_key_login_records_the_signature_and_reserves_in_one_call(self) -> None:
        self.lease("a")
        self.lease("b")
        self.assertEqual(self.key_login("a", "alice", H), (True, True))
        self.assertEqual(self.count("alice"), 1)
        # a replay, on either host: refused, and no place taken
        self.assertEqual(self.key_login("b", "alice", H, 1001.0), (False, False))
        self.assertEqual(self.key_login("a", "alice", H, 1001.0, most=5), (False, False))
        self.assertEqual(self.count("alice"), 1)
        # a new signature at the user's bound: recorded all the same, no place
        other = hashlib.sha256(b"s").digest()
        self.assertEqual(self.key_login("b", "alice", other), (True, False))
        self.assertFalse(self.record("alice", other, 1002.0, 1122.0))    # burnt
        self.assertEqual(self.db.run("select host_id, count from wyseman_shared.user_slot"),
                         [("a", 1)])
        # the same rules as the two statements: an expired row is taken over, the places
        # are counted over the live hosts
        self.assertEqual(self.key_login("b", "alice", H, 1121.0, most=2), (True, True))
        self.expire("a")
        self.assertEqual(self.key_login("b", "alice", hashlib.sha256(b"t").digest(),
                                        most=2), (True, True))
        self.assertEqual(self.count("alice"), 2)
        with self.assertRaises(psycopg2.Error):     # only digests are stored
            self.key_login("a", "carol", b"x" * 200)

    def test_the_releases_in_a_call_free_places_before_its_logins(self) -> None:
        """One call: the user's closed connection frees its place before the user's
        login in the same call is counted; a call of releases only answers no login."""
        self.lease("a")
        self.lease("b")
        self.assertEqual(self.key_login("a", "alice", H, most=1), (True, True))
        other = hashlib.sha256(b"o").digest()
        self.assertEqual(self.calls("a", [("alice", other, 1001.0)], {"alice": 1}, most=1),
                         [(True, True)])
        self.assertEqual(self.count("alice"), 1)
        # another host's place is not this host's to free
        third = hashlib.sha256(b"t").digest()
        self.assertEqual(self.calls("b", [("alice", third, 1002.0)], {"alice": 1}, most=1),
                         [(True, False)])
        self.assertEqual(self.calls("a", [], {"alice": 1, "bob": 2}), [])
        self.assertEqual(self.count("alice"), 0)

    def test_hosts_of_version_5_and_6_share_one_bound(self) -> None:
        """While gateways are upgraded one by one, a host calling the functions of
        version 5 and one calling host_calls count the same places and the same
        replays."""
        self.lease("old")
        self.lease("new")
        digests = [hashlib.sha256(bytes([n])).digest() for n in range(4)]
        self.assertEqual(self.v5_key_logins("old", [("alice", digests[0], 1000.0)], most=2),
                         [(True, True)])
        self.assertEqual(self.key_logins("new", [("alice", digests[1], 1000.0),
                                                 ("alice", digests[2], 1000.0)], most=2),
                         [(True, True), (True, False)])
        # a signature used on one is a replay on the other, either way round
        self.assertEqual(self.key_logins("new", [("alice", digests[0], 1001.0)], most=9),
                         [(False, False)])
        self.assertEqual(self.v5_key_logins("old", [("alice", digests[1], 1001.0)], most=9),
                         [(False, False)])
        # the old host's release frees a place the new host's login may take
        self.db.run(V5_RELEASE_SQL, {"h": "old", "u": ["alice"], "c": [1]})
        self.assertEqual(self.key_logins("new", [("alice", digests[3], 1002.0)], most=2),
                         [(True, True)])
        self.assertEqual(self.db.run("select host_id, count from wyseman_shared.user_slot "
                                     "order by 1"), [("new", 2), ("old", 0)])

    def test_sync_replaces_a_hosts_rows_and_leave_deletes_them(self) -> None:
        self.lease("a")
        self.reserve("a", "alice")
        self.reserve("a", "bob")
        alive = self.one(shared._SYNC_SQL, {"h": "a", "l": 30.0, "u": ["carol", "dave"],
                                            "c": [2, 0]})
        self.assertTrue(alive)
        self.assertEqual(self.db.run("select username, count from wyseman_shared.user_slot"),
                         [("carol", 2)])
        self.assertFalse(self.one(shared._SYNC_SQL, {"h": "new", "l": 30.0, "u": [], "c": []}))
        self.db.run(shared._LEAVE_SQL, {"h": "a"})
        self.assertEqual(self.db.run("select host_id from wyseman_shared.host"), [("new",)])
        self.assertEqual(self.db.run("select count(*) from wyseman_shared.user_slot"), [(0,)])

    def test_user_sessions_cannot_reach_the_shared_tables(self) -> None:
        from wyseman.provision import admin
        user = self.db.role_name("s")
        admin.add_user(self.db.dsn, user)
        conn = connect_sync(self.db.user_dsn(user))
        self.addCleanup(conn.close)
        for statement in ("select * from wyseman_shared.replay",
                          "select wyseman_shared.slot_reserve('x', 'y', 100)",
                          "select wyseman_shared.key_login('x', 'y', '', now(), now(), 1)",
                          "select wyseman_shared.key_logins('x', '{y}', '{}', '{1}', '{1}', 1)",
                          "select wyseman_shared.slot_release_many('x', '{y}', '{1}')",
                          "select wyseman_shared.host_calls('x', '{y}', '{}', '{1}', '{1}', 1, "
                          "'{}', '{}')",
                          "delete from wyseman_shared.user_slot"):
            with conn.cursor() as cur, self.assertRaises(psycopg2.errors.InsufficientPrivilege):
                cur.execute(statement)

    def test_two_hosts_cannot_both_grant_the_last_place(self) -> None:
        """Host a's reservation is not committed yet when host b asks: b waits for a's
        lock on the user, then sees a's place taken. (Without the lock b's count would not
        see a's uncommitted row and both would pass.)"""
        answer = self.race(shared._RESERVE_SQL, {"h": "b", "u": "alice", "m": 1})
        self.assertEqual(answer, [False])
        self.assertEqual(self.count("alice"), 1)

    def test_a_key_login_waits_for_the_same_lock(self) -> None:
        """The same race with b's key login (its call takes the lock of slot_reserve):
        its signature is recorded, its place refused."""
        answer = self.race(shared._HOST_CALLS_SQL, {"h": "b", "u": ["alice"], "s": [H],
                                                    "e": [1120.0], "n": [1000.0], "m": 1,
                                                    "cu": [], "cc": []})
        self.assertEqual(answer, [([True], [False])])
        self.assertEqual(self.count("alice"), 1)
        self.assertFalse(self.record("alice", H, 1001.0, 1121.0))

    def race(self, second_sql: str, params: dict[str, Any]) -> list[Any]:
        """Host a's reservation of alice's one place held open; ``second_sql`` on
        another connection meanwhile; → its answer (a row) once a's committed."""
        self.lease("a")
        self.lease("b")
        first = psycopg2.connect(self.db.dsn)
        self.addCleanup(first.close)
        with first.cursor() as cur:        # (psycopg2 opens a transaction: held open)
            cur.execute(shared._RESERVE_SQL, {"h": "a", "u": "alice", "m": 1})
            self.assertTrue(cur.fetchone()[0])
        second = connect_sync(self.db.dsn)
        self.addCleanup(second.close)
        with second.cursor() as cur:
            cur.execute("select pg_backend_pid()")
            pid = cur.fetchone()[0]
        answer: list[Any] = []

        def ask() -> None:
            with second.cursor() as cur:
                cur.execute(second_sql, params)
                row = cur.fetchone()
                answer.append(row[0] if len(row) == 1 else tuple(row))
        thread = threading.Thread(target=ask)
        thread.start()
        self.addCleanup(thread.join, 10)
        # b is another process: poll (with a deadline) until it waits for the lock
        deadline = time.monotonic() + 10
        while self.one("select wait_event_type is not distinct from 'Lock' from "
                       "pg_stat_activity where pid = %s", (pid,)) is not True:
            if answer:
                break       # b answered without waiting: fails below
            self.assertLess(time.monotonic(), deadline, "b never waited for a's lock")
            time.sleep(0.01)
        self.assertEqual(answer, [])
        first.commit()
        thread.join(10)
        return answer
