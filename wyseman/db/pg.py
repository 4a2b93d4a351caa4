"""The txpostgres adapter: the only module that imports txpostgres.

It gives the rest of the server a small surface: connect, run a statement,
run a transaction, LISTEN/UNLISTEN, NOTIFY observers, close, and a callback
when the connection is lost. Everything returns Deferreds.

psycopg2 interpolates parameters on the client (``%(name)s`` placeholders);
:mod:`wyseman.sql` renders statements in that form.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg2
import psycopg2.extensions
from psycopg2 import sql as pgsql
from twisted.internet import defer
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.logger import Logger
from twisted.python.failure import Failure
from txpostgres import txpostgres

log = Logger(namespace="wyseman.db")

#: psycopg2's exception base, re-exported so callers need not import psycopg2.
DatabaseError = psycopg2.Error
OperationalError = psycopg2.OperationalError
InterfaceError = psycopg2.InterfaceError


class Result:
    """Rows of one statement, with column names and the affected row count.

    (A plain class: one is made per statement, and the names are only looked up when
    asked for, since most reads use the rows alone.)"""

    __slots__ = ("_description", "_columns", "rows", "rowcount")

    def __init__(self, description: Sequence[Any] | None, rows: list[tuple],
                 rowcount: int) -> None:
        self._description = description
        self._columns: tuple[str, ...] | None = None
        self.rows = rows
        self.rowcount = rowcount

    @property
    def columns(self) -> tuple[str, ...]:
        if self._columns is None:
            self._columns = tuple(column.name for column in self._description or ())
        return self._columns

    def first_column(self) -> list[Any]:
        """Each row's first value (a read rendered as one JSON text per row)."""
        return [row[0] for row in self.rows]

    def dicts(self) -> list[dict[str, Any]]:
        columns = self.columns
        return [dict(zip(columns, row, strict=True)) for row in self.rows]


@dataclass(frozen=True)
class Notification:
    channel: str
    payload: str
    pid: int


def quote_ident(name: str) -> str:
    """Always-quoted identifier, as PostgreSQL reads it."""
    return '"' + name.replace('"', '""') + '"'


def dsn_with(dsn: str, **overrides: Any) -> str:
    """A libpq connection string with some keywords replaced (e.g. ``user``)."""
    params = psycopg2.extensions.parse_dsn(dsn) if dsn else {}
    params.update({k: v for k, v in overrides.items() if v is not None})
    return psycopg2.extensions.make_dsn(**params)


def dsn_params(dsn: str) -> dict[str, str]:
    return psycopg2.extensions.parse_dsn(dsn) if dsn else {}


class _PromptCursor(txpostgres.Cursor):
    """A txpostgres cursor that hands its result over as soon as the poll cycle ends,
    and leaves the socket's reactor registration to its connection.

    txpostgres delays every result by a ``callLater(0)`` (one more reactor iteration,
    and a timer, per statement) so that code run from the callback cannot re-enter the
    poll cycle. Ours can: the pool gives the connection to the next waiter, whose
    statement starts a new cycle on a cursor whose previous one is over (``_pollingD``
    is cleared first, and the reactor has already stopped watching for it).

    txpostgres also registers the cursor with the reactor for every statement (and
    unregisters the connection meanwhile): four ``epoll_ctl`` calls per statement,
    about a tenth of the server's CPU on one-row requests. Once connected, our
    connection stays the socket's only reader and hands read events to the running
    cursor (:meth:`_LossAwareConnection.doRead`), so the cursor registers nothing
    while it waits for its result.
    """

    def continuePolling(self, swallowErrors: bool = False) -> None:  # noqa: N802, N803
        try:
            state = self.pollable().poll()
        except Exception:
            if self._pollingD:
                d, self._pollingD = self._pollingD, None
                d.errback(Failure())
                return
            if not swallowErrors:
                raise
            return
        steady = self._connection.steady
        if state == psycopg2.extensions.POLL_OK:
            if self._pollingD:
                d, self._pollingD = self._pollingD, None
                d.callback(self)
        elif state == psycopg2.extensions.POLL_READ:
            if not steady:
                self.reactor.addReader(self)
        elif state == psycopg2.extensions.POLL_WRITE:
            self.reactor.addWriter(self._connection if steady else self)
        elif self._pollingD:
            d, self._pollingD = self._pollingD, None
            d.errback(txpostgres.UnexpectedPollResult())
        elif not swallowErrors:
            raise txpostgres.UnexpectedPollResult()


class _LossAwareConnection(txpostgres.Connection):
    """txpostgres connection that reports an unexpected loss to its owner and, once
    ``steady`` (connected), stays registered as its socket's reader for good, handing
    read and write events to the cursor whose statement is running (if any)."""

    cursorFactory = _PromptCursor  # noqa: N815 (txpostgres's name)

    lost_callback: Callable[[Failure], None] | None = None
    closing = False
    steady = False
    _running: Any = None
    _fd = -1

    def go_steady(self) -> None:
        """Connected: from now on stay registered, under a duplicate of the socket's
        descriptor. libpq closes its socket when it finds the server gone; the duplicate
        keeps the reactor's registration valid until we have removed it."""
        self.reactor.removeReader(self)
        self._fd = os.dup(self._connection.fileno())
        self.steady = True
        self.reactor.addReader(self)

    def fileno(self) -> int:
        return self._fd if self.steady else super().fileno()

    def _release_fd(self) -> None:
        if self._fd != -1:
            self.reactor.removeReader(self)
            self.reactor.removeWriter(self)
            fd, self._fd = self._fd, -1
            os.close(fd)

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._release_fd()

    def cursorRunning(self, cursor: Any) -> None:  # noqa: N802 (txpostgres name)
        if not self.steady:
            return super().cursorRunning(cursor)
        self._cursors.add(cursor)
        self._running = cursor

    def cursorFinished(self, cursor: Any) -> None:  # noqa: N802 (txpostgres name)
        if not self.steady:
            return super().cursorFinished(cursor)
        self._cursors.discard(cursor)
        if self._running is cursor:
            self._running = None
        if not self._connection.closed:
            self.checkForNotifies()

    def doRead(self) -> Any:  # noqa: N802 (Twisted name)
        """An idle connection whose server went away raises from psycopg2's poll; hand
        the reactor a reason instead, so it disconnects us without logging an error."""
        if not self.steady:
            try:
                return super().doRead()
            except psycopg2.Error as exc:
                return _lost_reason(exc)
            except ValueError:
                # the server hung up during the start-up handshake (a PostgreSQL going
                # down): libpq has dropped the socket (fileno -1) before txpostgres asks
                # the reactor to read it again; the connect has failed already
                if self._connection.closed or self.fileno() < 0:
                    return ConnectionLost("the server closed the connection during start-up")
                raise
        if self.closing:
            return None
        cursor = self._running
        try:
            if cursor is not None:
                cursor.continuePolling()        # errors go to the statement's Deferred
            else:
                self._connection.poll()         # NOTIFYs, or the server going away
        except psycopg2.Error as exc:
            return _lost_reason(exc)
        if self._connection.closed:
            return None if self.closing else ConnectionLost("connection closed")
        self.checkForNotifies()
        return None

    def doWrite(self) -> Any:  # noqa: N802 (Twisted name)
        if not self.steady:
            return super().doWrite()
        self.reactor.removeWriter(self)
        cursor = self._running
        if cursor is not None and not self._connection.closed:
            cursor.continuePolling()
        return None

    def connectionLost(self, reason: Failure) -> None:  # noqa: N802 (Twisted name)
        cursor, self._running = self._running, None
        if cursor is not None and cursor._pollingD:     # nobody will read its result now
            d, cursor._pollingD = cursor._pollingD, None
            d.errback(reason)
        super().connectionLost(reason)
        self._release_fd()
        callback, self.lost_callback = self.lost_callback, None
        if callback is not None and not self.closing:
            callback(reason)


def _lost_reason(exc: psycopg2.Error) -> ConnectionLost:
    return ConnectionLost(str(exc).strip().splitlines()[0] if str(exc) else "lost")


class Connection:
    """One PostgreSQL connection driven by the reactor."""

    def __init__(self, reactor: Any = None) -> None:
        self._conn = _LossAwareConnection(reactor=reactor)
        self._on_lost: list[Callable[[Failure], None]] = []
        self._observers: dict[Callable[[Notification], Any], Callable[[Any], Any]] = {}
        self.dsn = ""
        self.lost = False
        self._cursor: Any = None
        #: statement text → (name, EXECUTE text) of its prepared statement; None: the
        #: text cannot be prepared
        self._prepared: dict[str, tuple[str, str] | None] = {}
        self._prepared_count = 0

    # -- life cycle ------------------------------------------------------
    @defer.inlineCallbacks
    def connect(self, dsn: str, connect_timeout: float | None = None,
                setup: Sequence[str] = ()) -> Any:
        """Open the connection; ``setup`` statements run once after it opens."""
        self.dsn = dsn
        if connect_timeout:
            dsn = dsn_with(dsn, connect_timeout=max(1, int(connect_timeout)))
        try:
            yield self._conn.connect(dsn)
        except Exception:
            self._abandon()
            raise
        self._conn.lost_callback = self._lost
        self._conn.go_steady()
        for statement in setup:
            yield self._conn.runOperation(statement)
        return self

    def _abandon(self) -> None:
        """After a failed connect: txpostgres would keep polling the dead socket (and log
        the same error again from the reactor), so stop watching it and close it."""
        self._conn.closing = True
        raw = self._conn._connection
        if raw is None:  # psycopg2 refused before any socket existed
            return
        self._conn.reactor.removeReader(self._conn)
        self._conn.reactor.removeWriter(self._conn)
        if not raw.closed:
            raw.close()

    def _lost(self, reason: Failure) -> None:
        self.lost = True
        for callback in list(self._on_lost):
            try:
                callback(reason)
            except Exception:
                log.failure("connection-lost callback failed")

    def on_lost(self, callback: Callable[[Failure], None]) -> None:
        """Call ``callback(reason)`` if the server or network drops this connection."""
        self._on_lost.append(callback)

    def close(self) -> None:
        """Close it (idempotent); ``on_lost`` callbacks are not called."""
        self._conn.closing = True
        if self._conn._connection is not None:
            self._conn.close()

    @property
    def closed(self) -> bool:
        raw = self._conn._connection
        return raw is None or bool(raw.closed) or self.lost

    @property
    def backend_pid(self) -> int:
        return self._conn._connection.get_backend_pid()

    @property
    def raw(self) -> psycopg2.extensions.connection:
        """The psycopg2 connection (for type registration)."""
        return self._conn._connection

    # -- statements ------------------------------------------------------
    def execute(self, statement: str | pgsql.Composable,
                params: Mapping[str, Any] | Sequence[Any] | None = None) -> defer.Deferred:
        """Run one statement and fetch its rows (if any) → Deferred of :class:`Result`.

        One cursor per connection, reused: a connection runs one statement at a time
        (the pool hands it to one caller), and a cursor per statement costs as much as
        the rest of the Python side of a small query."""
        cursor = self._cursor
        if cursor is None:
            cursor = self._cursor = self._conn.cursor()
        return cursor.execute(statement, params).addCallback(_result)

    def execute_prepared(self, sql: str, values: Sequence[Any],
                         plain: tuple[str, Mapping[str, Any]]) -> defer.Deferred:
        """Run ``sql`` (``$n`` placeholders, ``values`` in order) as a prepared statement
        of this connection → Deferred of :class:`Result`; ``plain`` is the same statement
        for :meth:`execute` (``%(pn)s`` placeholders and their values).

        The first time a text is seen it is PREPAREd (one extra round trip per connection
        and text); from then on only ``EXECUTE name(values)`` is sent, and PostgreSQL
        neither parses nor plans the statement again: for a one-row lookup that halves
        its CPU per request. A text that cannot be prepared (a parameter whose type the
        statement does not fix, e.g. ``select $1``) runs as ``plain``, now and later, so
        that preparing never changes what a client sees. A prepared statement whose result
        type changed under it (``0A000``, a view redefined) or that the session lost
        (``26000``) is dropped and the request runs as ``plain``; the next one prepares
        the text anew. At most :data:`PREPARED_LIMIT` per connection: then all are
        deallocated and preparing starts over.
        """
        known = self._prepared.get(sql, False)
        if known is None:                           # cannot be prepared
            return self.execute(*plain)
        if known:
            return self._execute_named(sql, known, values, plain)
        if len(self._prepared) >= PREPARED_LIMIT:
            self._prepared.clear()
            d = self.execute("deallocate all")
        else:
            d = defer.succeed(None)
        self._prepared_count += 1
        name = f"wyseman_{self._prepared_count}"
        text = f"execute {name}(" + ", ".join(["%s"] * len(values)) + ")" if values \
            else f"execute {name}"

        def prepared(_: Any) -> defer.Deferred:
            self._prepared[sql] = (name, text)
            return self._execute_named(sql, (name, text), values, plain)

        def not_preparable(failure: Failure) -> Any:
            if is_connection_error(failure):
                return failure
            if getattr(failure.value, "pgcode", None) in _PARAMETER_TYPE_ERRORS:
                self._prepared[sql] = None      # never: the parameters need literals
            return self.execute(*plain)         # (other errors: the client gets them)

        d.addCallback(lambda _: self.execute(f"prepare {name} as {sql}"))
        return d.addCallbacks(prepared, not_preparable)

    def _execute_named(self, sql: str, known: tuple[str, str], values: Sequence[Any],
                       plain: tuple[str, Mapping[str, Any]]) -> defer.Deferred:
        name, text = known
        return self.execute(text, values).addErrback(self._stale_prepared, sql, name, plain)

    def _stale_prepared(self, failure: Failure, sql: str, name: str,
                        plain: tuple[str, Mapping[str, Any]]) -> Any:
        code = getattr(failure.value, "pgcode", None)
        if code not in ("0A000", "26000"):
            return failure
        known = self._prepared.get(sql)
        if known and known[0] == name:
            del self._prepared[sql]
        d = self.execute(f"deallocate {name}") if code == "0A000" else defer.succeed(None)
        return d.addBoth(lambda _: self.execute(*plain))

    def transaction(self, work: Callable[..., Any], *args: Any, **kwargs: Any) -> defer.Deferred:
        """Run ``work(tx, *args)`` inside BEGIN/COMMIT; an error rolls back.

        ``tx.execute(statement, params)`` returns a Deferred of :class:`Result`. A
        connection lost once COMMIT was sent fails with :class:`CommitUnknown`: the change
        may be stored. (txpostgres's ``runInteraction`` cannot tell that case from a
        failure before COMMIT, and logs a lost connection's failed ROLLBACK as an error.)
        """
        cursor = self._conn.cursor()
        committing = []

        def commit(result: Any) -> defer.Deferred:
            committing.append(True)
            return cursor.execute("commit").addCallback(lambda _: result)

        def failed(failure: Failure) -> Any:
            if committing:
                if is_connection_error(failure):
                    raise CommitUnknown(failure.getErrorMessage()) from failure.value
                return failure      # COMMIT refused: PostgreSQL rolled back
            if self.closed or is_connection_error(failure):
                return failure      # nothing left to roll back
            rollback = defer.maybeDeferred(cursor.execute, "rollback")

            def stuck(rollback_failure: Failure) -> None:
                log.warn("ROLLBACK failed ({why}): connection closed",
                         why=rollback_failure.getErrorMessage())
                self.close()
            return rollback.addErrback(stuck).addCallback(lambda _: failure)

        d = cursor.execute("begin")
        d.addCallback(lambda _: work(_Transaction(cursor), *args, **kwargs))
        return d.addCallback(commit).addErrback(failed)

    def cancel(self, d: defer.Deferred) -> None:
        self._conn.cancel(d)

    # -- notifications ---------------------------------------------------
    def listen(self, channel: str) -> defer.Deferred:
        return self._conn.runOperation("listen " + quote_ident(channel))

    def unlisten(self, channel: str) -> defer.Deferred:
        return self._conn.runOperation("unlisten " + quote_ident(channel))

    def add_notify_observer(self, observer: Callable[[Notification], Any]) -> None:
        def adapt(notify: Any) -> Any:
            return observer(Notification(notify.channel, notify.payload, notify.pid))
        self._observers[observer] = adapt
        self._conn.addNotifyObserver(adapt)

    def remove_notify_observer(self, observer: Callable[[Notification], Any]) -> None:
        adapt = self._observers.pop(observer, None)
        if adapt is not None:
            self._conn.removeNotifyObserver(adapt)


class _Transaction:
    """What :meth:`Connection.transaction` hands to its work function."""

    def __init__(self, cursor: Any) -> None:
        self._cursor = cursor

    @defer.inlineCallbacks
    def execute(self, statement: str | pgsql.Composable,
                params: Mapping[str, Any] | Sequence[Any] | None = None) -> Any:
        yield self._cursor.execute(statement, params)
        return _result(self._cursor)


#: prepared statements per connection before they are all deallocated
PREPARED_LIMIT = 256
#: PREPARE errors that mean a text needs its values as literals: a parameter whose type
#: nothing fixes (42P18), or that is ambiguous (42P08, 42725 ambiguous function, 42804)
_PARAMETER_TYPE_ERRORS = frozenset({"42P18", "42P08", "42725", "42804"})


def _result(cursor: Any) -> Result:
    description = cursor.description
    if description is None:
        return Result(None, [], cursor.rowcount)
    return Result(description, cursor.fetchall(), cursor.rowcount)


def connect(dsn: str, reactor: Any = None, connect_timeout: float | None = None,
            setup: Sequence[str] = ()) -> defer.Deferred:
    """Open a :class:`Connection` → Deferred firing with it."""
    return Connection(reactor).connect(dsn, connect_timeout=connect_timeout, setup=setup)


class CommitUnknown(Exception):
    """The connection was lost after COMMIT was sent: the transaction may or may not have
    committed, and nobody can tell from here."""


def is_connection_error(failure: Failure | BaseException) -> bool:
    """True when the error means the connection is gone (not a SQL error)."""
    exc = failure.value if isinstance(failure, Failure) else failure
    if isinstance(exc, CommitUnknown):
        return True
    if isinstance(exc, (psycopg2.OperationalError, psycopg2.InterfaceError)):
        return getattr(exc, "pgcode", None) is None or exc.pgcode.startswith("08") or \
            exc.pgcode in ("57P01", "57P02", "57P03")
    return isinstance(exc, (ConnectionDone, ConnectionLost))
