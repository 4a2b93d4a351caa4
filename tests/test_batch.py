"""Reads waiting for a busy role pool run as one statement (wyseman.db.batch), on a real
PostgreSQL; and end to end through the gateway."""

from __future__ import annotations

import time

import psycopg2
from twisted.internet import defer, reactor, task
from twisted.trial.unittest import TestCase

from tests.harness import APP_SAMPLE as SAMPLE
from tests.harness import add_user, start_gateway
from tests.pgtest import fresh_database
from wyseman.client import keys
from wyseman.client.connection import connect
from wyseman.db import batch, pg
from wyseman.db.batch import ReadBatcher
from wyseman.db.pool import PoolBusy, PoolClosed, PoolSet
from wyseman.provision import admin
from wyseman.sql.compiler import pyformat_sql

#: reads as the batcher takes them: one JSON text per row
ONE = "select json_build_object('n', $1::int)::text"
SERIES = "select json_build_object('n', n)::text from generate_series(1, $1::int) n"
NAP = "select json_build_object('n', $2::int)::text from pg_sleep($1::float8)"


def rows(*numbers: int) -> list[str]:
    return [f'{{"n" : {n}}}' for n in numbers]


class ReadBatcherTests(TestCase):
    timeout = 60

    def setUp(self):
        self.db = fresh_database(self)
        self.user = add_user(self.db)
        # A clock of the test's: a statement's measured time is what the test makes it.
        self.clock = task.Clock()
        self.pools = self.pool_set()

    def pool_set(self, **options):
        def connector(role):
            return pg.connect(pg.dsn_with(self.db.dsn, user=role), reactor)
        pools = PoolSet(connector, self.clock, size=1, **options)
        self.addCleanup(pools.close)
        self.pool = pools.pool(self.user)
        self.batcher = ReadBatcher(self.pool)
        return pools

    def read(self, sql, *values, flush=True):
        params = {f"p{n}": value for n, value in enumerate(values, 1)}
        read = self.batcher.read(sql, values, (pyformat_sql(sql), params))
        if flush:
            self.clock.advance(0)         # the end of the reactor iteration
        return read

    @defer.inlineCallbacks
    def known(self, *reads):
        """Run each read once alone (measured fast: the test clock stands still)."""
        for sql, *values in reads:
            yield self.read(sql, *values)

    def hold(self):
        """The role's only connection, taken: reads issued now must wait."""
        return self.pool.acquire()

    @defer.inlineCallbacks
    def while_held(self, *reads, waiting):
        """Issue ``reads`` (sql, values…) while the connection is taken, check how many
        wait here for a batch, then free it → their answers."""
        conn = yield self.hold()
        pending = [self.read(*read) for read in reads]
        self.assertEqual(self.batcher.waiting, waiting)
        self.pool.release(conn)
        return (yield defer.gatherResults(pending))

    def last_statement(self, pid):
        return self.db.run("select query from pg_stat_activity where pid = %s", (pid,))[0][0]

    @defer.inlineCallbacks
    def test_waiting_reads_answered_by_one_statement(self):
        yield self.known((SERIES, "1"), (ONE, "0"))
        conn = yield self.hold()
        reads = [self.read(SERIES, "2"), self.read(ONE, "5"), self.read(SERIES, "3")]
        self.assertEqual(self.batcher.waiting, 3)
        self.pool.release(conn)
        answers = yield defer.gatherResults(reads)
        self.assertEqual(answers, [rows(1, 2), rows(5), rows(1, 2, 3)])
        self.assertEqual((self.batcher.stats.batches, self.batcher.stats.batched_reads), (1, 3))
        self.assertTrue(self.last_statement(conn.backend_pid).startswith("select array("))

    @defer.inlineCallbacks
    def test_a_failing_continuation_does_not_keep_the_others_from_their_answers(self):
        """read_then's continuations are plain calls: one that raises (a bug) is logged,
        and the other reads of its batch still get their rows, each exactly once."""
        yield self.known((ONE, "0"))
        conn = yield self.hold()
        got: list = []

        def broken(outcome):
            got.append(("broken", outcome))
            raise RuntimeError("a bug in a continuation")
        params = {"p1": "1"}
        self.batcher.read_then(ONE, ("1",), (pyformat_sql(ONE), params), broken)
        self.batcher.read_then(ONE, ("2",), (pyformat_sql(ONE), {"p1": "2"}),
                               lambda outcome: got.append(("fine", outcome)))
        self.clock.advance(0)
        self.assertEqual(self.batcher.waiting, 2)
        answered = defer.Deferred()
        self.batcher.read_then(ONE, ("3",), (pyformat_sql(ONE), {"p1": "3"}),
                               answered.callback)
        self.clock.advance(0)
        self.pool.release(conn)
        self.assertEqual((yield answered), rows(3))
        self.assertEqual(got, [("broken", rows(1)), ("fine", rows(2))])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(self.batcher.stats.batched_reads, 3)

    @defer.inlineCallbacks
    def test_reads_of_one_reactor_iteration_run_together(self):
        """The connection is free: reads that arrived together still make one statement
        (a connection each would wake PostgreSQL once per read)."""
        yield self.known((SERIES, "1"), (ONE, "0"))
        yield self.while_held((ONE, "1"), (ONE, "2"), waiting=2)   # reads come in groups
        self.assertTrue(self.pool.can_run_now())
        reads = [self.read(ONE, "4", flush=False), self.read(SERIES, "2", flush=False),
                 self.read(ONE, "5", flush=False)]
        self.assertEqual(self.batcher.waiting, 3)
        self.clock.advance(0)                  # the reactor iteration ends
        self.assertEqual(self.batcher.waiting, 0)
        self.assertEqual((yield defer.gatherResults(reads)), [rows(4), rows(1, 2), rows(5)])
        self.assertEqual((self.batcher.stats.batches, self.batcher.stats.batched_reads), (2, 5))
        self.assertEqual(self.pool.stats.waits_total, 2)   # (those of while_held only)

    @defer.inlineCallbacks
    def test_a_read_on_its_own_runs_alone(self):
        """A role whose reads come one at a time (one socket, one request at a time) has
        nothing to batch: its read runs at once, without waiting for the end of the turn."""
        yield self.known((ONE, "0"))
        read = self.read(ONE, "5", flush=False)
        self.assertEqual(self.batcher.waiting, 0)
        self.assertEqual((yield read), rows(5))
        yield self.while_held((ONE, "1"), (ONE, "2"), waiting=2)   # reads come in groups
        read = self.read(ONE, "6", flush=False)
        self.assertEqual(self.batcher.waiting, 1)  # waits for company
        self.clock.advance(0)                      # none came: alone again from now on
        self.assertEqual((yield read), rows(6))
        read = self.read(ONE, "7", flush=False)
        self.assertEqual(self.batcher.waiting, 0)
        self.assertEqual((yield read), rows(7))
        self.assertEqual(self.batcher.stats.batches, 1)

    @defer.inlineCallbacks
    def test_a_batch_is_kept_within_the_time_of_a_fast_read(self):
        """Reads measured at 60 ms each: two in one batch would hold the second up for
        longer than a fast read takes, so they go to separate statements."""
        yield self.known((ONE, "0"))
        nap = self.read(NAP, "0.2", "0")
        self.clock.advance(0.06)
        yield nap
        answers = yield self.while_held((NAP, "0", "1"), (NAP, "0", "2"), (ONE, "3"), waiting=3)
        self.assertEqual(answers, [rows(1), rows(2), rows(3)])
        self.assertEqual((self.batcher.stats.batches, self.batcher.stats.batched_reads), (1, 2))

    @defer.inlineCallbacks
    def test_a_batch_time_is_shared_by_its_reads(self):
        """After a batch, its statements' known time is their share of the batch's: a
        read timed alone under load includes the wait for the event loop, and would keep
        later batches needlessly small."""
        yield self.known((ONE, "0"), (NAP, "0", "0"))
        conn = yield self.hold()
        # (the nap keeps PostgreSQL from answering before the test clock has moved)
        first = [self.read(ONE, str(n)) for n in range(4)] + [self.read(NAP, "0.05", "9")]
        self.pool.release(conn)        # the batch of five is sent now ...
        self.clock.advance(0.09)       # ... and answers after 90 ms: 18 ms a read
        self.assertEqual((yield defer.gatherResults(first)),
                         [rows(n) for n in range(4)] + [rows(9)])
        answers = yield self.while_held(*[(ONE, str(n)) for n in range(10, 16)], waiting=6)
        self.assertEqual(answers, [rows(n) for n in range(10, 16)])
        # five of 18 ms fit the 100 ms of a batch; the sixth ran on its own
        self.assertEqual((self.batcher.stats.batches, self.batcher.stats.batched_reads),
                         (2, 10))

    @defer.inlineCallbacks
    def test_at_most_limit_reads_a_batch(self):
        self.batcher.limit = 2
        yield self.known((ONE, "0"))
        answers = yield self.while_held(*[(ONE, str(n)) for n in (1, 2, 3)], waiting=3)
        self.assertEqual(answers, [rows(1), rows(2), rows(3)])
        self.assertEqual((self.batcher.stats.batches, self.batcher.stats.batched_reads), (1, 2))

    @defer.inlineCallbacks
    def test_an_error_stays_with_its_read(self):
        yield self.known((SERIES, "1"), (ONE, "0"))
        conn = yield self.hold()
        good = self.read(SERIES, "2")
        bad = self.read(ONE, "not a number")
        other = self.read(ONE, "4")
        self.pool.release(conn)
        self.assertEqual((yield good), rows(1, 2))
        with self.assertRaises(psycopg2.DataError) as caught:
            yield bad
        self.assertEqual(caught.exception.pgcode, "22P02")
        self.assertEqual((yield other), rows(4))
        self.assertEqual(self.batcher.stats.failed_batches, 1)
        self.assertEqual(self.batcher.stats.batches, 0)

    @defer.inlineCallbacks
    def test_statements_not_seen_or_slow_run_alone(self):
        yield self.known((SERIES, "1"))        # (the connection opened)
        # PostgreSQL takes a moment, so the test clock moves while the statement runs
        slow = self.read(NAP, "0.2", "1")
        self.clock.advance(1)                  # answered after a "second": slow
        yield slow
        # slow, and never seen: alone, through the pool's queue
        answers = yield self.while_held((NAP, "0", "2"), (ONE, "1"), (ONE, "2"), waiting=0)
        self.assertEqual(answers, [rows(2), rows(1), rows(2)])
        self.assertEqual(self.batcher.stats.batches, 0)
        # measured fast alone this time: now they join batches
        answers = yield self.while_held((NAP, "0", "4"), (ONE, "3"), waiting=2)
        self.assertEqual(answers, [rows(4), rows(3)])
        self.assertEqual(self.batcher.stats.batches, 1)

    @defer.inlineCallbacks
    def test_a_slow_batch_sends_its_reads_back_to_running_alone(self):
        yield self.known((NAP, "0", "0"), (ONE, "0"))
        conn = yield self.hold()
        reads = [self.read(NAP, "0.2", "1"), self.read(ONE, "2")]
        self.pool.release(conn)                # the batch is sent now, and takes a moment
        self.clock.advance(1)
        self.assertEqual((yield defer.gatherResults(reads)), [rows(1), rows(2)])
        self.assertEqual(self.batcher.stats.batches, 1)
        answers = yield self.while_held((NAP, "0", "3"), (ONE, "4"), waiting=0)
        self.assertEqual(answers, [rows(3), rows(4)])

    @defer.inlineCallbacks
    def test_connection_lost_during_a_batch_fails_its_reads(self):
        yield self.known((NAP, "0", "7"), (ONE, "0"))
        conn = yield self.hold()
        pid = conn.backend_pid
        reads = [self.read(NAP, "30", "1"), self.read(ONE, "2")]
        self.pool.release(conn)
        # the batch is sent; the backend starts it when it gets to it (poll, with a
        # deadline: it is another process)
        deadline = time.monotonic() + 10
        while not self.last_statement(pid).startswith("select array("):
            self.assertLess(time.monotonic(), deadline, "the batch never started")
            time.sleep(0.01)
        self.db.run("select pg_terminate_backend(%s)", (pid,))
        for read in reads:
            with self.assertRaises(Exception) as caught:
                yield read
            self.assertTrue(pg.is_connection_error(caught.exception), caught.exception)
        self.assertEqual(self.batcher.stats.failed_batches, 0)  # not run again
        self.assertEqual((yield self.read(ONE, "9")), rows(9))  # on a new connection

    @defer.inlineCallbacks
    def test_closing_the_pool_fails_waiting_reads(self):
        yield self.known((ONE, "0"))
        yield self.hold()
        reads = [self.read(ONE, "1"), self.read(ONE, "2")]
        yield self.pools.close()
        for read in reads:
            with self.assertRaises(PoolClosed):
                yield read

    @defer.inlineCallbacks
    def test_waiting_reads_count_against_the_pool_queue(self):
        self.pool_set(queue_limit=2)
        yield self.known((ONE, "0"))
        conn = yield self.hold()
        reads = [self.read(ONE, "1"), self.read(ONE, "2")]
        with self.assertRaises(PoolBusy):
            yield self.read(ONE, "3")
        self.assertEqual(self.pool.stats.waits_total, 2)
        self.pool.release(conn)
        self.assertEqual((yield defer.gatherResults(reads)), [rows(1), rows(2)])

    @defer.inlineCallbacks
    def test_a_repeated_batch_is_prepared(self):
        yield self.known((ONE, "0"))

        @defer.inlineCallbacks
        def batch_then_prepared(first):
            answers = yield self.while_held((ONE, str(first)), (ONE, str(first + 1)), waiting=2)
            self.assertEqual(answers, [rows(first), rows(first + 1)])
            conn = yield self.hold()
            result = yield conn.execute("select statement from pg_prepared_statements")
            self.pool.release(conn)
            return [row[0] for row in result.rows if "array(" in row[0]]
        self.assertEqual((yield batch_then_prepared(1)), [])   # a one-off mix: not prepared
        prepared = yield batch_then_prepared(3)
        self.assertEqual(len(prepared), 1, prepared)
        self.assertEqual((yield batch_then_prepared(5)), prepared)
        self.batcher.prepare = False           # [database] prepared_statements = false
        yield self.pool.run(lambda conn: conn.execute("deallocate all"))
        for first in (7, 9):
            self.assertEqual((yield batch_then_prepared(first)), [])

    @defer.inlineCallbacks
    def test_waiting_reads_keep_their_pool(self):
        """A pool is forgotten once it has no connection left, but not while reads wait
        in its batcher (they would be served by a pool nobody closes)."""
        self.pool.batcher = self.batcher
        yield self.known((ONE, "0"))
        yield self.while_held((ONE, "1"), (ONE, "2"), waiting=2)   # reads come in groups
        conn = self.pool._idle[0].conn
        lost = defer.Deferred()
        conn.on_lost(lambda reason: lost.callback(None))
        read = self.read(ONE, "1", flush=False)   # waits for the end of the iteration
        self.db.run("select pg_terminate_backend(%s)", (conn.backend_pid,))
        yield lost                                # the pool's only connection is gone
        self.assertIs(self.pools.pool(self.user), self.pool)
        self.clock.advance(0)
        self.assertEqual((yield read), rows(1))   # on a new connection of the same pool
        self.clock.advance(self.pool.idle_timeout)
        self.assertNotIn(self.user, self.pools.pools)

    @defer.inlineCallbacks
    def test_limit_one_never_batches(self):
        self.batcher.limit = 1
        yield self.known((ONE, "0"))
        answers = yield self.while_held((ONE, "1"), (ONE, "2"), waiting=0)
        self.assertEqual(answers, [rows(1), rows(2)])
        self.assertEqual(self.batcher.stats.batches, 0)


GOOD = [
    {"action": "select", "view": "app.item_v", "fields": ["name", "price"],
     "where": {"qty": 3}, "order": ["name"]},
    {"action": "tuple", "view": "app.item_v", "fields": ["qty"], "where": {"name": "gear"}},
    {"action": "tuple", "view": "app.item_v", "fields": ["qty"], "where": {"qty": 3}},
    # numeric, timestamptz, jsonb, int8; sorted one way, limited, offset
    {"action": "select", "view": "app.item_v", "fields": ["name", "price", "made", "data", "big"],
     "order": [{"field": "price"}], "limit": 2, "offset": 1},
    {"action": "select", "view": "app.item_v", "fields": ["id", "made"],
     "where": {"left": "qty", "oper": ">=", "entry": 3}, "order": [{"field": "id", "asc": True}]},
]
#: a bad value: the batch it is in fails, and every read in it runs again alone
BAD = {"action": "tuple", "view": "app.item_v", "fields": ["qty"], "where": {"qty": "x"}}
#: more than a batch holds: a bad value first, so the first batch fails, the second not
MIXED = [BAD] + GOOD + [
    {"action": "select", "view": "app.item_v", "fields": ["name"],
     "where": {"left": "name", "oper": "in", "entry": ["nut", "gear"]}, "order": ["name"]},
    {"action": "tuple", "view": "app.item_v", "fields": ["name"], "where": {"name": "none"}},
    {"action": "select", "view": "app.item_v", "fields": ["qty"],
     "where": {"left": "price", "oper": ">", "entry": 1}, "order": [{"field": "qty", "asc": 1}]},
    {"action": "select", "view": "app.item_v", "fields": "name", "limit": 1, "order": ["name"]},
    {"action": "select", "view": "app.item_v", "fields": ["name"], "where": {"qty": 99}},
    {"action": "tuple", "view": "app.double(int)", "params": [21]},      # never batched
] + [{"action": "tuple", "view": "app.item_v", "fields": [field], "where": {"name": name}}
     for field in ("qty", "price", "made") for name in ("bolt", "nut", "gear")]


class GatewayBatchTests(TestCase):
    """Requests of one user that wait for its busy pool: batched, with the answers they
    get without batching."""

    timeout = 60

    @defer.inlineCallbacks
    def answers(self, read_batch, requests):
        # "fast" is measured on the reactor's clock: a loaded test machine must not make
        # the warm-up requests look slow
        self.patch(batch, "FAST_SECONDS", 60.0)
        db = fresh_database(self)
        db.run(SAMPLE)
        db.run("insert into app.item (name, qty, price, data, blob, big) values "
               """('bolt', 3, 1.5, '{"a": [1, 2]}', '\\x0102', 9007199254740993), """
               "('nut', 3, 0.25, null, null, null), ('gear', 7, 12, '[]', '', -1)")
        user = add_user(db, "batch")
        server = yield start_gateway(self, db, database={"pool_size": 1,
                                                         "read_batch": read_batch})
        token = admin.issue_ticket(db.dsn, user).token
        conn = yield connect(server.url, user, token=token, new_key=keys.generate_private_jwk())
        self.addCleanup(conn.close)
        for request in requests:              # each statement seen once: known to be fast
            yield conn.request(request).addErrback(lambda _: None)
        gateway_db = server.gateway.db
        pool = gateway_db.users.pool(user)
        held = yield pool.acquire()
        arrived, seen = defer.Deferred(), []

        def counting(method):
            def count(*args):
                result = method(*args)
                seen.append(args)
                if len(seen) == len(requests):       # all the requests are waiting
                    arrived.callback(None)
                return result
            return count
        gateway_db.read_as = counting(gateway_db.read_as)    # batching: a new statement
        gateway_db.read_as_then = counting(gateway_db.read_as_then)    # a compiled one
        gateway_db.run_as = counting(gateway_db.run_as)      # read_batch = 1

        def error(failure):
            return ("error", failure.value.code, failure.value.reply.get("data"))
        def early(result):          # (it never reached the pool: fail, do not hang)
            if not arrived.called:
                arrived.errback(AssertionError(f"answered without waiting: {result}"))
            return result
        pending = [conn.request(r).addErrback(error).addBoth(early) for r in requests]
        yield arrived
        waiting = gateway_db.reads_waiting()
        pool.release(held)
        answers = yield defer.gatherResults(pending)
        stats = gateway_db.batch_stats
        return answers, waiting, (stats.batches, stats.batched_reads, stats.failed_batches)

    @defer.inlineCallbacks
    def test_waiting_requests_batched_with_the_same_answers(self):
        batched, waiting, stats = yield self.answers(16, GOOD)
        self.assertEqual(batched[:2], [
            [{"name": "bolt", "price": "1.50"}, {"name": "nut", "price": "0.25"}], {"qty": 7}])
        self.assertEqual(batched[2][0], "error")
        self.assertTrue(batched[2][1].endswith("badTuples"), batched[2])
        self.assertEqual(batched[2][2], {"qty": 3})     # the first row, as unbatched
        self.assertEqual([row["name"] for row in batched[3]], ["bolt", "nut"])   # desc, from 2nd
        self.assertEqual(len(batched[4]), 3)
        self.assertEqual((waiting, stats), (5, (1, 5, 0)))
        alone, waiting, stats = yield self.answers(1, GOOD)
        self.assertEqual(alone, batched)
        self.assertEqual((waiting, stats), (0, (0, 0, 0)))

    @defer.inlineCallbacks
    def test_a_bad_request_does_not_change_the_others_answers(self):
        batched, waiting, stats = yield self.answers(16, [BAD] + GOOD)
        self.assertEqual(batched[0][:2], ("error", "22P02"))
        self.assertEqual((waiting, stats), (6, (0, 0, 1)))
        alone, _, _ = yield self.answers(1, [BAD] + GOOD)
        self.assertEqual(alone, batched)

    @defer.inlineCallbacks
    def test_a_read_that_fails_to_start_gets_an_error_reply(self):
        """A compiled read goes to its batch without a Deferred: an exception on the way
        (a bug) still answers the request, once, with an internal error, and is logged;
        the socket goes on serving."""
        db = fresh_database(self)
        db.run(SAMPLE)
        user = add_user(db, "batch")
        server = yield start_gateway(self, db)
        token = admin.issue_ticket(db.dsn, user).token
        conn = yield connect(server.url, user, token=token, new_key=keys.generate_private_jwk())
        self.addCleanup(conn.close)
        request = {"action": "select", "view": "app.item_v", "fields": ["name"]}
        self.assertEqual((yield conn.request(request)), [])        # compiled now
        gateway_db = server.gateway.db
        read_as_then = gateway_db.read_as_then

        def broken(role, sql, values, plain, then):
            raise RuntimeError("a bug on the way to the batch")
        gateway_db.read_as_then = broken
        failure = yield self.assertFailure(conn.request(request), Exception)
        self.assertEqual(failure.code, "!wm.lang:internal")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        gateway_db.read_as_then = read_as_then
        self.assertEqual((yield conn.request(request)), [])

    @defer.inlineCallbacks
    def test_a_mixed_load_gets_the_answers_it_gets_unbatched(self):
        batched, waiting, stats = yield self.answers(16, MIXED)
        self.assertEqual(waiting, len(MIXED) - 1)          # all but the function call
        self.assertEqual((stats[0], stats[2]), (1, 1))     # one batch failed, one did not
        alone, _, _ = yield self.answers(1, MIXED)
        self.assertEqual(alone, batched)
        self.assertEqual(batched[0][:2], ("error", "22P02"))
        self.assertEqual(batched[11], {"double": 42})

