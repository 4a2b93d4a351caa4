"""Per-role pools and the shared LISTEN connection, on real PostgreSQL connections."""

from __future__ import annotations

import json

import psycopg2
from twisted.internet import defer, reactor, task
from twisted.trial.unittest import TestCase

from tests.harness import add_user
from tests.pgtest import fresh_database
from wyseman.db import batch, pg
from wyseman.db.database import Database
from wyseman.db.listener import Listener
from wyseman.db.pool import DatabaseUnavailable, PoolBusy, PoolClosed, PoolSet


class PoolTests(TestCase):
    timeout = 60

    def setUp(self):
        self.db = fresh_database(self)
        self.clock = task.Clock()

    def pools(self, **options):
        def connector(role):
            return pg.connect(pg.dsn_with(self.db.dsn, user=role), reactor)
        pools = PoolSet(connector, self.clock, **options)
        self.addCleanup(pools.close)
        return pools

    def backends(self, role):
        return self.db.run("select count(*) from pg_stat_activity where usename = %s "
                           "and datname = current_database()", (role,))[0][0]

    @defer.inlineCallbacks
    def test_runs_as_the_role_within_the_size(self):
        user = add_user(self.db)
        pools = self.pools(size=2)
        seen = []

        @defer.inlineCallbacks
        def work(conn):
            result = yield conn.execute("select session_user, pg_backend_pid()")
            seen.append(result.rows[0])
            yield conn.execute("select pg_sleep(0.05)")
        yield defer.gatherResults([pools.run(user, work) for _ in range(8)])
        self.assertEqual({row[0] for row in seen}, {user})
        self.assertLessEqual(len({row[1] for row in seen}), 2)
        self.assertEqual(pools.open_connections, len({row[1] for row in seen}))
        self.assertLessEqual(self.backends(user), 2)

    @defer.inlineCallbacks
    def test_close_waits_for_connects_under_way(self):
        """A pool closed while it is connecting must not leave that connection behind
        (a service stopping mid-connect): close() fires once it has been closed."""
        user = add_user(self.db)
        pools = self.pools(size=2)
        work = pools.run(user, lambda conn: conn.execute("select 1"))
        closed = pools.close()
        self.assertFalse(closed.called)          # the connect is still under way
        yield closed
        with self.assertRaises(PoolClosed):
            yield work
        self.assertEqual(self.backends(user), 0)

    @defer.inlineCallbacks
    def test_queue_is_bounded(self):
        user = add_user(self.db)
        pools = self.pools(size=1, queue_limit=1)
        first = yield pools.pool(user).acquire()
        waiting = pools.pool(user).acquire()
        with self.assertRaises(PoolBusy):
            yield pools.pool(user).acquire()
        pools.pool(user).release(first)
        second = yield waiting
        self.assertIs(second, first)  # handed over, not reopened
        pools.pool(user).release(second)

    @defer.inlineCallbacks
    def test_idle_connections_close(self):
        user = add_user(self.db)
        pools = self.pools(size=2, idle_timeout=10)
        conn = yield pools.pool(user).acquire()
        pools.pool(user).release(conn)
        self.assertFalse(conn.closed)
        self.clock.advance(11)
        self.assertTrue(conn.closed)
        self.assertEqual(pools.open_connections, 0)

    @defer.inlineCallbacks
    def test_an_unused_pool_is_forgotten_and_its_counts_kept(self):
        """A server meets many users: a role's pool (and read batcher) goes once its last
        connection has closed, the totals the metrics show stay, and the role's next
        request gets a new pool."""
        user = add_user(self.db)
        pools = self.pools(size=1, idle_timeout=10)
        pool = pools.pool(user)
        first = yield pool.acquire()
        waiting = pool.acquire()              # waits: counted
        pool.release(first)
        pool.release((yield waiting))
        self.assertEqual((pools.waits_total(), pool.stats.connects_total), (1, 1))
        self.clock.advance(9)
        self.assertIs(pools.pool(user), pool)  # an idle connection: kept
        self.clock.advance(2)
        self.assertNotIn(user, pools.pools)
        self.assertEqual((pools.open_connections, pools.waits_total()), (0, 1))
        self.assertEqual(pools.retired.connects_total, 1)
        result = yield pools.run(user, lambda conn: conn.execute("select session_user"))
        self.assertEqual(result.rows, [(user,)])
        self.assertIsNot(pools.pool(user), pool)

    @defer.inlineCallbacks
    def test_each_idle_connection_closes_after_its_own_idle_time(self):
        """One timer per pool: many releases do not pile up timers, a connection used
        again is not closed on its old schedule, and each closes idle_timeout after its
        own last release."""
        user = add_user(self.db)
        pool = self.pools(size=2, idle_timeout=10).pool(user)
        first = yield pool.acquire()
        second = yield pool.acquire()
        pool.release(first)                         # t=0
        self.clock.advance(4)
        pool.release(second)                        # t=4
        for _ in range(50):                         # busy: the same (warm) one each time
            again = yield pool.acquire()
            self.assertIs(again, second)
            pool.release(again)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(6)                       # t=10: first idle for 10 s
        self.assertTrue(first.closed)
        self.assertFalse(second.closed)
        self.clock.advance(3.9)                     # t=13.9: second idle 9.9 s
        self.assertFalse(second.closed)
        self.clock.advance(0.1)
        self.assertTrue(second.closed)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    @defer.inlineCallbacks
    def test_connections_replaced_after_max_lifetime(self):
        user = add_user(self.db)
        pools = self.pools(size=1, max_lifetime=60, idle_timeout=0)
        conn = yield pools.pool(user).acquire()
        pools.pool(user).release(conn)
        again = yield pools.pool(user).acquire()
        self.assertIs(again, conn)                # young: reused
        self.clock.advance(61)
        pools.pool(user).release(again)           # too old: closed on return
        self.assertTrue(conn.closed)
        fresh = yield pools.pool(user).acquire()
        self.assertIsNot(fresh, conn)
        pools.pool(user).release(fresh)

    @defer.inlineCallbacks
    def test_total_cap_takes_idle_connection_of_another_role(self):
        alice, bob = add_user(self.db), add_user(self.db)
        pools = self.pools(size=2, total=1)
        conn = yield pools.pool(alice).acquire()
        pools.pool(alice).release(conn)
        other = yield pools.pool(bob).acquire()
        self.assertTrue(conn.closed)
        self.assertEqual(pools.open_connections, 1)
        pools.pool(bob).release(other)

    @defer.inlineCallbacks
    def test_login_failure_fails_fast(self):
        """D19: a role that cannot log in gets an error, not a hang."""
        pools = self.pools(size=1)
        with self.assertRaises(DatabaseUnavailable):
            yield pools.run("no_such_role_x", lambda conn: conn.execute("select 1"))
        self.assertEqual(pools.open_connections, 0)

    @defer.inlineCallbacks
    def test_error_rolls_back_and_connection_is_reused(self):
        user = add_user(self.db)
        self.db.run(f'create table t (x int); grant all on t to "{user}"')
        pools = self.pools(size=1)

        def failing(tx):
            d = tx.execute("insert into t values (1)")
            return d.addCallback(lambda _: tx.execute("select 1/0"))
        with self.assertRaises(pg.DatabaseError):
            yield pools.run(user, lambda conn: conn.transaction(failing))
        result = yield pools.run(user, lambda conn: conn.execute("select count(*) from t"))
        self.assertEqual(result.rows, [(0,)])
        self.assertEqual(pools.open_connections, 1)


class ListenerTests(TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def test_listen_ref_counted_and_delivered(self):
        db = fresh_database(self)
        listener = Listener(lambda: pg.connect(db.dsn, reactor), reactor)
        self.addCleanup(listener.stop)
        yield listener.start()
        got = []
        arrived = defer.Deferred()

        def one(n):
            got.append(("one", n.payload))
            if len(got) == 2:
                arrived.callback(None)

        def two(n):
            got.append(("two", n.payload))
            if len(got) == 2:
                arrived.callback(None)
        yield listener.subscribe("chan", one)
        yield listener.subscribe("chan", two)
        self.assertEqual(listener.channels, {"chan"})
        db.run("notify chan, 'hello'")
        yield arrived
        self.assertEqual(sorted(got), [("one", "hello"), ("two", "hello")])
        yield listener.unsubscribe("chan", one)
        listening = yield listener._conn.execute("select pg_listening_channels()")
        self.assertEqual(listening.rows, [("chan",)])
        yield listener.unsubscribe("chan", two)
        self.assertEqual(listener.channels, frozenset())
        listening = yield listener._conn.execute("select pg_listening_channels()")
        self.assertEqual(listening.rows, [])


class DatabaseFacadeTests(TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def test_metadata_comes_from_the_admin_connection(self):
        """D16: cache fills never run on a user's session."""
        db = fresh_database(self)
        db.run("create table public.thing (id int primary key, doc jsonb)")
        database = Database(admin_dsn=db.dsn, reactor=reactor)
        self.addCleanup(database.stop)
        yield database.start()
        columns = yield database.column_types('"public"."thing"')
        self.assertEqual(columns, {"id": "int4", "doc": "jsonb"})
        self.assertEqual(list(database.users.pools), [])
        meta = yield database.meta("public.thing")
        self.assertEqual(meta["obj"], "public.thing")
        database.clear_caches()
        self.assertEqual(database._meta, {})


    @defer.inlineCallbacks
    def test_key_lookups_of_a_burst_of_logins_share_one_statement(self):
        """Logins that arrive together look their keys up in one round trip on the admin
        connection, each getting its own user's key (or None)."""
        self.patch(batch, "FAST_SECONDS", 60.0)   # a loaded machine must not look slow
        db = fresh_database(self)
        alice, bob, carol = (add_user(db, name) for name in ("alice", "bob", "carol"))
        for user, x in ((alice, "a"), (bob, "b")):
            db.run("update base.ent set conn_pub = %s where username = %s",
                   (json.dumps({"default": {"kty": "EC", "x": x}}), user))
        database = Database(admin_dsn=db.dsn, reactor=reactor, admin_pool_size=1)
        self.addCleanup(database.stop)
        yield database.start()
        first = yield database.conn_pub(alice)       # (seen once: known to be fast)
        self.assertEqual(first, {"default": {"kty": "EC", "x": "a"}})
        pool = database.admin.pool("admin")
        held = yield pool.acquire()                   # the admin connection is busy
        lookups = [database.conn_pub(user) for user in (alice, bob, carol, "nobody_here")]
        pool.release(held)
        found = yield defer.gatherResults(lookups)
        self.assertEqual(found, [{"default": {"kty": "EC", "x": "a"}},
                                 {"default": {"kty": "EC", "x": "b"}}, None, None])
        self.assertEqual((database.lookup_stats.batches, database.lookup_stats.batched_reads),
                         (1, 4))
        self.assertEqual(database.batch_stats.batches, 0)   # (user reads are counted apart)


class AdapterTests(TestCase):
    """wyseman.db.pg: results are handed over within the poll cycle, and the next
    statement may start from the callback of the previous one."""

    timeout = 30

    @defer.inlineCallbacks
    def test_next_statement_from_the_callback_and_no_timer_per_result(self):
        db = fresh_database(self)
        conn = yield pg.connect(db.dsn, reactor)
        self.addCleanup(conn.close)
        zero_delay = []
        original = reactor.callLater

        def counting(delay, *args, **kwargs):
            if delay == 0:
                zero_delay.append(args[0] if args else None)
            return original(delay, *args, **kwargs)
        reactor.callLater = counting
        try:
            chained = conn.execute("select 1").addCallback(
                lambda first: conn.execute("select %(n)s::int + 1", {"n": first.rows[0][0]}))
            second = yield chained
            failed = conn.execute("select 1/0")
            with self.assertRaises(psycopg2.errors.DivisionByZero):
                yield failed
            after_error = yield conn.execute("select 3")
        finally:
            reactor.callLater = original
        self.assertEqual(second.rows, [(2,)])
        self.assertEqual(after_error.rows, [(3,)])
        self.assertEqual(zero_delay, [])   # (txpostgres alone delays each by callLater(0))

    @defer.inlineCallbacks
    def test_statements_leave_the_reactor_registration_alone(self):
        """Once connected, the socket stays registered: no add/remove per statement
        (txpostgres alone makes four epoll_ctl calls per statement), and NOTIFYs
        arriving between and during statements still reach the observers."""
        db = fresh_database(self)
        conn = yield pg.connect(db.dsn, reactor)
        self.addCleanup(conn.close)
        other = yield pg.connect(db.dsn, reactor)
        self.addCleanup(other.close)
        got = []
        conn.add_notify_observer(lambda n: got.append(n.payload))
        yield conn.listen("adapter_test")
        calls = []
        patched = {}
        for name in ("addReader", "removeReader", "addWriter", "removeWriter"):
            original = getattr(reactor, name)
            patched[name] = original

            def counting(selectable, _name=name, _original=original):
                if selectable is conn._conn or getattr(selectable, "_connection", None) \
                        is conn._conn:
                    calls.append(_name)
                return _original(selectable)
            setattr(reactor, name, counting)
        try:
            total = 0
            for n in range(20):
                result = yield conn.execute("select %(n)s::int", {"n": n})
                total += result.rows[0][0]
            yield other.execute("notify adapter_test, 'between'")
            # a notification that arrives while a statement of the listening connection runs
            slow = conn.execute("select pg_sleep(0.2), 1")
            yield other.execute("notify adapter_test, 'during'")
            yield slow
            while len(got) < 2:
                yield conn.execute("select 1")
        finally:
            for name, original in patched.items():
                setattr(reactor, name, original)
        self.assertEqual(total, sum(range(20)))
        self.assertEqual(calls, [])
        self.assertEqual(sorted(got), ["between", "during"])

    @defer.inlineCallbacks
    def test_backend_killed_during_a_statement(self):
        """The running statement fails with a connection error, the owner hears of the
        loss, and the reactor is left clean (libpq closes its socket on the way)."""
        db = fresh_database(self)
        conn = yield pg.connect(db.dsn, reactor)
        self.addCleanup(conn.close)
        admin = yield pg.connect(db.dsn, reactor)
        self.addCleanup(admin.close)
        lost = defer.Deferred()
        conn.on_lost(lambda reason: lost.callback(reason.value))
        running = conn.execute("select pg_sleep(30)")
        yield admin.execute("select pg_terminate_backend(%(pid)s)", {"pid": conn.backend_pid})
        with self.assertRaises(psycopg2.Error) as caught:
            yield running
        self.assertTrue(pg.is_connection_error(caught.exception))
        yield lost
        self.assertTrue(conn.closed)
        self.assertNotIn(conn._conn, reactor.getReaders())

    @defer.inlineCallbacks
    def prepared_names(self, conn):
        result = yield conn.execute("select name, statement from pg_prepared_statements "
                                    "order by prepare_time")
        return result.rows

    @defer.inlineCallbacks
    def test_prepared_statement_reused(self):
        db = fresh_database(self)
        conn = yield pg.connect(db.dsn, reactor)
        self.addCleanup(conn.close)
        sql = "select $1::int + 1 as n"
        answers = []
        for value in ("41", "1", None):
            result = yield conn.execute_prepared(
                sql, (value,), ("select %(p1)s::int + 1 as n", {"p1": value}))
            answers.append(result.rows[0][0])
        self.assertEqual(answers, [42, 2, None])
        prepared = yield self.prepared_names(conn)
        self.assertEqual(len(prepared), 1)            # prepared once, executed three times
        self.assertIn(sql, prepared[0][1])

    @defer.inlineCallbacks
    def test_unpreparable_text_runs_with_literals(self):
        """``pg_typeof($1)``: PREPARE cannot type the parameter (42P18); the literal
        is of type unknown, and that is what the caller gets, every time."""
        db = fresh_database(self)
        conn = yield pg.connect(db.dsn, reactor)
        self.addCleanup(conn.close)
        sql = "select pg_typeof($1)::text as v, $1 is null as n"
        for _ in range(2):
            result = yield conn.execute_prepared(
                sql, ("7",), ("select pg_typeof(%(p1)s)::text as v, %(p1)s is null as n",
                              {"p1": "7"}))
            self.assertEqual(result.rows, [("unknown", False)])
        self.assertEqual((yield self.prepared_names(conn)), [])
        self.assertIsNone(conn._prepared[sql])   # not tried a second time

    @defer.inlineCallbacks
    def test_errors_reach_the_caller_and_result_type_changes_are_survived(self):
        db = fresh_database(self)
        db.run("create table public.t (id int primary key, a int); "
               "insert into public.t values (1, 10)")
        conn = yield pg.connect(db.dsn, reactor)
        self.addCleanup(conn.close)

        def run(sql, values, plain):
            return conn.execute_prepared(sql, values, plain)
        with self.assertRaises(psycopg2.errors.UndefinedTable):     # a PREPARE error
            yield run("select * from public.nope where id = $1", ("1",),
                      ("select * from public.nope where id = %(p1)s", {"p1": "1"}))
        with self.assertRaises(psycopg2.errors.DivisionByZero):     # an EXECUTE error
            yield run("select 1 / $1::int", ("0",), ("select 1 / %(p1)s::int", {"p1": "0"}))
        select = ("select * from public.t where id = $1", ("1",),
                  ("select * from public.t where id = %(p1)s", {"p1": "1"}))
        first = yield run(*select)
        self.assertEqual((first.columns, first.rows), (("id", "a"), [(1, 10)]))
        db.run("alter table public.t add column b text default 'x'")   # result type changes
        second = yield run(*select)
        self.assertEqual((second.columns, second.rows), (("id", "a", "b"), [(1, 10, "x")]))
        third = yield run(*select)                                     # prepared anew
        self.assertEqual(third.rows, [(1, 10, "x")])
        statements = [s for _, s in (yield self.prepared_names(conn))]
        self.assertEqual(sum("public.t where" in s for s in statements), 1)
        yield conn.execute("deallocate all")          # e.g. a function ran DISCARD ALL
        fourth = yield run(*select)                    # 26000: answered, then prepared anew
        self.assertEqual(fourth.rows, [(1, 10, "x")])
        fifth = yield run(*select)
        self.assertEqual(fifth.rows, [(1, 10, "x")])
        self.assertEqual(len((yield self.prepared_names(conn))), 1)

    @defer.inlineCallbacks
    def test_prepared_statements_are_bounded_per_connection(self):
        self.patch(pg, "PREPARED_LIMIT", 3)
        db = fresh_database(self)
        conn = yield pg.connect(db.dsn, reactor)
        self.addCleanup(conn.close)
        for n in range(7):
            result = yield conn.execute_prepared(
                f"select $1::int + {n}", ("1",), (f"select %(p1)s::int + {n}", {"p1": "1"}))
            self.assertEqual(result.rows, [(1 + n,)])
            self.assertLessEqual(len((yield self.prepared_names(conn))), 3)
