"""A connection handed from one request to the next never nests, and is never lost.

Results can arrive synchronously (an answer already in the socket is read at once), so
the next waiting request can finish, and release its connection, inside the hand-off that
gave it the connection. These tests use connections that always answer synchronously: the
worst case, and one a real server meets in bursts.
"""

from __future__ import annotations

import sys

from twisted.internet import defer, task
from twisted.trial.unittest import TestCase

from tests.harness import add_user, key_logins, start_gateway
from tests.pgtest import fresh_database
from wyseman.db.batch import ReadBatcher
from wyseman.db.pg import Result
from wyseman.db.pool import PoolSet


class PromptConnection:
    """Answers every statement before ``execute`` returns (as the adapter may)."""

    def __init__(self) -> None:
        self.closed = False
        self.statements = 0

    def on_lost(self, callback):
        pass

    def close(self):
        self.closed = True

    def execute(self, statement, params=None):
        self.statements += 1
        return defer.succeed(Result(None, [('{"n": 1}',)], 1))

    def execute_prepared(self, sql, values, plain):
        return self.execute(*plain)


class HandoffTests(TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.opened: list[PromptConnection] = []

    def connector(self, role):
        conn = PromptConnection()
        self.opened.append(conn)
        return defer.succeed(conn)

    def held_pool(self, size=2, queue_limit=100_000):
        """A pool whose every connection is held by an unfinished request: what comes
        next waits in the queue. → (pool, the Deferreds that finish the held requests)."""
        pools = PoolSet(self.connector, self.clock, size=size, queue_limit=queue_limit)
        self.addCleanup(pools.close)
        pool = pools.pool("alice")
        holds = [defer.Deferred() for _ in range(size)]
        for hold in holds:
            pool.run(lambda conn, hold=hold: hold)
        self.assertEqual(pool.in_use, size)
        return pool, holds

    def assert_all_back(self, pool, size):
        self.assertEqual((pool.in_use, pool.stats.idle, pool.stats.waiting), (0, size, 0))
        self.assertEqual(pool.owner.open_connections, size)
        self.assertEqual(len(self.opened), size)

    def test_a_queue_far_beyond_the_recursion_limit_is_served_flat(self):
        pool, holds = self.held_pool()
        waiting = 4 * sys.getrecursionlimit()
        answers = [pool.run(lambda conn: conn.execute("select 1")) for _ in range(waiting)]
        self.assertEqual(pool.stats.waiting, waiting)
        for hold in holds:
            hold.callback(None)
        results = [self.successResultOf(d) for d in answers]
        self.assertEqual(len(results), waiting)
        self.assert_all_back(pool, 2)
        self.assertEqual(sum(conn.statements for conn in self.opened), waiting)

    def test_failing_and_raising_work_gives_the_connection_back(self):
        pool, holds = self.held_pool(size=1)

        def raises(conn):
            raise ValueError("a bug in the work")

        def plain_value(conn):
            return 42

        works = [raises, lambda conn: defer.fail(KeyError("x")), plain_value] * 1000
        outcomes = [pool.run(work) for work in works]
        holds[0].callback(None)
        seen = [self.successResultOf(d) if work is plain_value
                else type(self.failureResultOf(d).value)
                for work, d in zip(works, outcomes, strict=True)]
        self.assertEqual(seen, [ValueError, KeyError, 42] * 1000)
        self.assert_all_back(pool, 1)

    def test_a_caller_whose_own_callback_raises_does_not_keep_the_connection(self):
        pool, holds = self.held_pool(size=1)
        broken = [pool.run(lambda conn: conn.execute("select 1")).addCallback(
            lambda result: 1 / 0) for _ in range(3000)]
        holds[0].callback(None)
        for d in broken:
            self.failureResultOf(d, ZeroDivisionError)
        self.assert_all_back(pool, 1)

    def test_a_waiter_cancelled_while_its_hand_off_is_queued(self):
        """A waiter that gives up between leaving the queue and getting the connection:
        the connection goes to the next one, not nowhere."""
        pool, holds = self.held_pool(size=1)
        first, second = pool.acquire(), pool.acquire()
        last = pool.run(lambda conn: conn.execute("select 2"))

        def release_then_cancel_the_next(conn):
            pool.release(conn)          # queues the hand-off to ``second``...
            second.cancel()             # ...which gives up before it runs
        first.addCallback(release_then_cancel_the_next)
        holds[0].callback(None)
        self.failureResultOf(second, defer.CancelledError)
        self.successResultOf(last)
        self.assert_all_back(pool, 1)

    def test_batched_reads_beyond_the_recursion_limit(self):
        """The read batcher's connections come through the same hand-offs."""
        pool, holds = self.held_pool(size=2)
        batcher = ReadBatcher(pool, limit=4, fast=1.0)
        sql = "select 1"
        batcher._note_cost(sql, 0.0)     # known to be fast: batched
        batcher._lonely = False
        reads = [batcher.read(sql, (), (sql, {})) for _ in range(4 * sys.getrecursionlimit())]
        self.clock.advance(0)            # the reactor turn's reads go out
        for hold in holds:
            hold.callback(None)
        self.assertEqual(len([self.successResultOf(d) for d in reads]), len(reads))
        self.assertTrue(batcher.idle)
        self.assert_all_back(pool, 2)


TWICE = """
create function public.twice(n int) returns int language sql as $$ select n * 2 $$;
grant execute on function public.twice(int) to wyseman_user;
-- the same, 20 ms slower: a burst of these is sure to outrun the pool and its queue
create function public.twice_slowly(n int) returns int language sql
    as $$ select n * 2 from pg_sleep(0.02) $$;
grant execute on function public.twice_slowly(int) to wyseman_user;
"""


class BurstTests(TestCase):
    """Bursts of one user's requests far beyond the pool and its queue, on a real server
    and PostgreSQL: every request is answered, and afterwards the pool holds exactly the
    backends PostgreSQL shows, none of them busy."""

    timeout = 120

    @defer.inlineCallbacks
    def test_bursts_beyond_pool_and_queue_leave_no_connection_behind(self):
        db = fresh_database(self)
        db.run(TWICE)
        user = add_user(db)
        server = yield start_gateway(self, db, database={"pool_size": 4, "pool_queue": 20},
                                     limits={"max_in_flight": 64})
        sockets = yield key_logins(self, server, db, user, 10)
        # answers at once (hand-offs that nested), then answers slower than they come
        for function in ("twice", "twice", "twice_slowly"):
            requests = [(i, conn.request({"action": "tuple", "view": f"public.{function}(int)",
                                          "params": [i]}, timeout=30))
                        for conn in sockets for i in range(64)]
            outcomes = yield defer.DeferredList([d for _, d in requests], consumeErrors=True)
            answered = busy = 0
            for (i, _), (ok, value) in zip(requests, outcomes, strict=True):
                if ok:
                    self.assertEqual(value, {function: 2 * i})
                    answered += 1
                else:       # the queue is full: told so, at once
                    self.assertIn("!wm.lang:busy", str(value.value))
                    busy += 1
            self.assertEqual(answered + busy, 640)
            if function == "twice_slowly":
                self.assertGreater(busy, 0)   # (the burst did go beyond the queue)
            self.assertGreaterEqual(answered, 24)    # the queue and the pool, at least
        pool = server.gateway.db.users.pools[user]
        backends = db.run("select count(*), count(*) filter (where state = 'idle') "
                          "from pg_stat_activity where usename = %s", (user,))[0]
        self.assertEqual((pool.in_use, pool.stats.waiting), (0, 0))
        self.assertEqual((pool.open_count, pool.stats.idle), tuple(backends))
        row = yield sockets[0].request({"action": "tuple", "view": "public.twice(int)",
                                        "params": [21]})
        self.assertEqual(row, {"twice": 42})
