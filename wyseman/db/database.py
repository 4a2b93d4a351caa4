"""Everything the gateway asks of PostgreSQL, behind one object.

- an **admin** pool (the configured admin role): ticket and key checks,
  metadata and language lookups (never a user's session, D16);
- **user** pools keyed by role (:mod:`wyseman.db.pool`): requests run logged in
  as the user's own role, or under ``SET SESSION AUTHORIZATION``;
- one **LISTEN** connection (:mod:`wyseman.db.listener`) shared by all sockets.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Hashable, Mapping, Sequence
from typing import Any, TypeVar

import orjson
from twisted.internet import defer
from twisted.logger import Logger

from wyseman.db import pg, types
from wyseman.db.batch import BatchStats, Outcome, ReadBatcher, Rows
from wyseman.db.listener import Listener
from wyseman.db.pool import PoolSet, RolePool
from wyseman.db.seams import Reactor
from wyseman.sql.compiler import pyformat_sql

_T = TypeVar("_T")
_K = TypeVar("_K", bound=Hashable)
#: a row of wm.table_meta or wm.table_lang, by column name
MetaRow = dict[str, Any]

log = Logger(namespace="wyseman.db")

# A user's stored key material as JSON text: a read that the admin pool's batcher may run
# together with other logins' (one round trip for the lookups of a burst of logins).
_CONN_PUB_SQL = "select conn_pub::text from base.ent_v where username = $1"
_CONN_PUB_PLAIN = pyformat_sql(_CONN_PUB_SQL)
_USER_EXISTS_SQL = "select 1 from base.ent_v where username = %(u)s"
_TOKEN_VALID_SQL = "select base.token_valid(%(u)s, %(t)s, %(p)s::jsonb) as valid"
# Column name -> type name of a relation, from the catalogue (function views: no row).
# Column → type name; a domain reports its base type (as PostgreSQL does to clients),
# an enum reports 'anyenum' (wyseman.sql.json_rows renders it as text).
_COLUMNS_SQL = """
select a.attname,
       case when b.typtype = 'e' then 'anyenum' else b.typname end
  from pg_catalog.pg_attribute a
  join pg_catalog.pg_type t on t.oid = a.atttypid
  join pg_catalog.pg_type b
    on b.oid = case when t.typtype = 'd' then t.typbasetype else t.oid end
 where a.attrelid = to_regclass(%(rel)s) and a.attnum > 0 and not a.attisdropped
 order by a.attnum"""
_META_SQL = ("select obj,pkey,cols,columns,styles,fkeys from wm.table_meta "
             "where obj = %(v)s")
_LANG_SQL = ("select title,help,columns,messages from wm.table_lang "
             "where obj = %(v)s and language = %(l)s")


def _parse_conn_pub(rows: Sequence[str | None]) -> Any:
    """The rows of the conn_pub lookup (JSON texts) → the key material, or None."""
    if not rows or rows[0] is None:
        return None
    try:
        return orjson.loads(rows[0])
    except orjson.JSONDecodeError:
        return None


class Database:
    """Owns the pools and the LISTEN connection of one server process."""

    def __init__(self, *, admin_dsn: str, session_dsn: str = "", session_mode: str = "login",
                 reactor: Reactor, pool_size: int = 4, pool_total: int = 200,
                 pool_queue: int = 1000, idle_timeout: float = 300.0,
                 max_lifetime: float = 3600.0, connect_timeout: float = 10.0,
                 statement_timeout: float = 30.0, admin_pool_size: int = 4,
                 prepared_statements: bool = True, read_batch: int = 16,
                 on_listener_reconnect: Callable[[], object] | None = None) -> None:
        self.reactor = reactor
        #: run reads as prepared statements of their session connection
        self.prepared_statements = prepared_statements
        #: most reads of one role that run as one statement (1: each alone)
        self.read_batch = read_batch
        self.batch_stats = BatchStats()
        #: the same for the admin pool's key lookups (logins)
        self.lookup_stats = BatchStats()
        self.admin_dsn = admin_dsn
        self.session_dsn = session_dsn or admin_dsn
        self.session_mode = session_mode
        self.connect_timeout = connect_timeout
        self._setup = list(types.SESSION_SETUP)
        if statement_timeout:
            self._setup.append(f"set statement_timeout = {int(statement_timeout * 1000)}")
        self.admin_role = pg.dsn_params(admin_dsn).get("user", "")
        self.admin = PoolSet(self._connect_admin, reactor, size=admin_pool_size,
                             total=admin_pool_size, queue_limit=pool_queue,
                             idle_timeout=idle_timeout, max_lifetime=max_lifetime)
        self.users = PoolSet(self._connect_user, reactor, size=pool_size, total=pool_total,
                             queue_limit=pool_queue, idle_timeout=idle_timeout,
                             max_lifetime=max_lifetime)
        self.listener = Listener(self._connect_listener, reactor,
                                 on_reconnect=on_listener_reconnect)
        self._columns: dict[str, Mapping[str, str] | None] = {}
        self._meta: dict[str, MetaRow] = {}
        self._lang: dict[tuple[str, str], MetaRow] = {}

    # -- connections ---------------------------------------------------------
    @defer.inlineCallbacks
    def _open(self, dsn: str, extra_setup: tuple[str, ...] = ()
              ) -> Generator[defer.Deferred[Any], object, pg.Connection]:
        conn = pg.Connection(self.reactor)
        yield conn.connect(dsn, connect_timeout=self.connect_timeout)
        types.register(conn.raw)
        for statement in (*self._setup, *extra_setup):
            yield conn.execute(statement)
        return conn

    def _connect_admin(self, role: str) -> defer.Deferred[pg.Connection]:
        return self._open(self.admin_dsn)

    def _connect_user(self, role: str) -> defer.Deferred[pg.Connection]:
        if self.session_mode == "authorization":
            return self._open(self.admin_dsn,
                              (f"set session authorization {pg.quote_ident(role)}",))
        return self._open(pg.dsn_with(self.session_dsn, user=role))

    def _connect_listener(self) -> defer.Deferred[pg.Connection]:
        return pg.connect(self.admin_dsn, self.reactor, connect_timeout=self.connect_timeout)

    # -- life cycle -----------------------------------------------------------
    @defer.inlineCallbacks
    def start(self) -> Generator[defer.Deferred[Any], object, None]:
        """Check the admin connection works and open the LISTEN connection: a client must
        not log in before it, or notifications sent meanwhile to its channels are lost."""
        yield self.ping()
        self.listener.start()
        yield self.listener.ready
        log.info("database ready (admin role {role}, session mode {mode})",
                 role=self.admin_role or "(default)", mode=self.session_mode)

    def ping(self) -> defer.Deferred[pg.Result]:
        """Fires once the admin connection answered ``select 1`` (fails if it cannot)."""
        return self.run_admin(lambda conn: conn.execute("select 1"))

    def stop(self) -> defer.Deferred[list[tuple[bool, Any]]]:
        """Close everything; fires once connects that were under way are closed too."""
        closing: list[defer.Deferred[Any]] = [self.listener.stop(), self.users.close(),
                                              self.admin.close()]
        return defer.DeferredList(closing)

    # -- running ---------------------------------------------------------------
    def run_admin(self, work: Callable[[pg.Connection], defer.Deferred[_T]]
                  ) -> defer.Deferred[_T]:
        return self.admin.run("admin", work)

    def run_as(self, role: str, work: Callable[[pg.Connection], defer.Deferred[_T]]
               ) -> defer.Deferred[_T]:
        return self.users.run(role, work)

    def read_as(self, role: str, sql: str, values: tuple[Any, ...],
                plain: tuple[str, dict[str, Any]]) -> defer.Deferred[Rows]:
        """Run a read (``sql`` renders each row as one JSON text) as ``role`` → Deferred of
        the row texts. Reads of the role that arrive in the same reactor iteration, or
        wait for its busy pool, run together (:mod:`wyseman.db.batch`)."""
        return self._batcher(self.users.pool(role), self.batch_stats).read(sql, values, plain)

    def read_as_then(self, role: str, sql: str, values: tuple[Any, ...],
                     plain: tuple[str, dict[str, Any]], then: Callable[[Outcome], None]) -> None:
        """:meth:`read_as` with a plain callback: ``then`` gets the row texts or a
        :class:`~twisted.python.failure.Failure` (no Deferred: this runs per request)."""
        self._batcher(self.users.pool(role), self.batch_stats).read_then(sql, values, plain,
                                                                         then)

    def _batcher(self, pool: RolePool, stats: BatchStats) -> ReadBatcher:
        """The read batcher of ``pool``, made on first use (it goes with the pool)."""
        if pool.batcher is None:
            pool.batcher = ReadBatcher(pool, limit=self.read_batch,
                                       prepare=self.prepared_statements, stats=stats)
        return pool.batcher

    def reads_waiting(self) -> int:
        """Reads waiting to run in a batch (for the end of the reactor iteration, or for a
        connection)."""
        return sum(pool.batcher.waiting for pool in self.users.pools.values() if pool.batcher)

    # -- authentication lookups -------------------------------------------------
    def token_valid(self, user: str, token: str, pub_json: str) -> defer.Deferred[bool]:
        """``base.token_valid`` on the admin connection → Deferred[bool]."""
        d = self.run_admin(lambda c: c.execute(_TOKEN_VALID_SQL, {"u": user, "t": token,
                                                                  "p": pub_json}))
        return d.addCallback(lambda r: bool(r.rows and r.rows[0][0] is True))

    def conn_pub(self, user: str) -> defer.Deferred[Any]:
        """The stored key material of ``user`` (parsed JSON), or None."""
        batcher = self._batcher(self.admin.pool("admin"), self.lookup_stats)
        d = batcher.read(_CONN_PUB_SQL, (user,), (_CONN_PUB_PLAIN, {"p1": user}))
        return d.addCallback(_parse_conn_pub)

    def user_exists(self, user: str) -> defer.Deferred[bool]:
        d = self.run_admin(lambda c: c.execute(_USER_EXISTS_SQL, {"u": user}))
        return d.addCallback(lambda r: bool(r.rows))

    # -- metadata (process-wide caches, filled on the admin connection) ---------
    def column_types(self, relation: str) -> defer.Deferred[Mapping[str, str] | None]:
        """Column → type name of ``schema.name`` (quoted form), None if not a relation."""
        if relation in self._columns:
            return defer.succeed(self._columns[relation])
        d = self.run_admin(lambda c: c.execute(_COLUMNS_SQL, {"rel": relation}))

        def store(result: pg.Result) -> Mapping[str, str] | None:
            columns: dict[str, str] | None = dict(result.rows) if result.rows else None
            self._columns[relation] = columns
            return columns
        return d.addCallback(store)

    def meta(self, view: str) -> defer.Deferred[MetaRow | list[MetaRow]]:
        """``wm.table_meta`` row of ``view`` as a dict, or None."""
        if view in self._meta:
            return defer.succeed(self._meta[view])
        d = self.run_admin(lambda c: c.execute(_META_SQL, {"v": view}))
        return d.addCallback(self._store_row, self._meta, view)

    def lang(self, view: str, language: str) -> defer.Deferred[MetaRow | list[MetaRow]]:
        key = (view, language)
        if key in self._lang:
            return defer.succeed(self._lang[key])
        d = self.run_admin(lambda c: c.execute(_LANG_SQL, {"v": view, "l": language}))
        return d.addCallback(self._store_row, self._lang, key)

    @staticmethod
    def _store_row(result: pg.Result, cache: dict[_K, MetaRow],
                   key: _K) -> MetaRow | list[MetaRow]:
        """The row (cached), or the rows when there is not exactly one (not cached)."""
        rows = result.dicts()
        if len(rows) == 1:
            cache[key] = rows[0]
            return rows[0]
        return rows

    #: bumped whenever the metadata caches are cleared (callers key their own caches on it)
    generation = 0

    def clear_caches(self) -> None:
        """Forget all metadata (the admin channel said the schema changed)."""
        self.generation += 1
        self._columns.clear()
        self._meta.clear()
        self._lang.clear()
