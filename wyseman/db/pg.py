"""The txpostgres adapter: the only module that imports txpostgres.

It gives the rest of the server a small surface: connect, run a statement,
run a transaction, LISTEN/UNLISTEN, NOTIFY observers, close, and a callback
when the connection is lost. Everything returns Deferreds.

psycopg2 interpolates parameters on the client (``%(name)s`` placeholders);
:mod:`wyseman.sql` renders statements in that form.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar, cast

import psycopg2
import psycopg2.extensions
from psycopg2 import sql as pgsql
from twisted.internet import defer, task
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.logger import Logger
from twisted.python.failure import Failure
from txpostgres import txpostgres

from wyseman.db.seams import FDReactor

log = Logger(namespace="wyseman.db")

_T = TypeVar("_T")
_P = ParamSpec("_P")

#: a statement's parameters: by name (``%(name)s``) or by position (``%s``)
Params = Mapping[str, Any] | Sequence[Any] | None
Row = tuple[Any, ...]

#: psycopg2's exception base, re-exported so callers need not import psycopg2.
DatabaseError = psycopg2.Error
OperationalError = psycopg2.OperationalError
InterfaceError = psycopg2.InterfaceError


class Result:
    """Rows of one statement, with column names and the affected row count.

    (A plain class: one is made per statement, and the names are only looked up when
    asked for, since most reads use the rows alone.)"""

    __slots__ = ("_description", "_columns", "rows", "rowcount")

    def __init__(self, description: Sequence[psycopg2.extensions.Column] | None,
                 rows: list[Row], rowcount: int) -> None:
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
    params = dsn_params(dsn)
    params.update({k: v for k, v in overrides.items() if v is not None})
    return psycopg2.extensions.make_dsn(**params)


def dsn_params(dsn: str) -> dict[str, str]:
    params: dict[str, str] = psycopg2.extensions.parse_dsn(dsn) if dsn else {}
    return params


if TYPE_CHECKING:
    # txpostgres has no annotations: the parts of it this module uses (internals
    # included, which tests/test_compat.py checks are there), declared for the checker
    class _TxCursor:
        reactor: FDReactor
        _connection: _LossAwareConnection
        #: fires with the cursor once its statement's poll cycle ends
        _pollingD: defer.Deferred[_TxCursor] | None
        description: Sequence[psycopg2.extensions.Column] | None
        rowcount: int

        def pollable(self) -> psycopg2.extensions.connection: ...
        def execute(self, query: str | pgsql.Composable,
                    params: Params = None) -> defer.Deferred[_TxCursor]: ...
        def fetchall(self) -> list[Row]: ...
        def continuePolling(self, swallowErrors: bool = False) -> None: ...  # noqa: N802, N803

    class _TxConnection:
        reactor: FDReactor
        #: None until connect: declared as always there, since only the connect and
        #: close paths can come before it, and they check
        _connection: psycopg2.extensions.connection
        _cursors: set[_TxCursor]
        cooperator: task.Cooperator

        def __init__(self, reactor: FDReactor | None = None) -> None: ...
        def connect(self, dsn: str) -> defer.Deferred[None]: ...
        def runOperation(self, operation: str) -> defer.Deferred[None]: ...  # noqa: N802
        def cursor(self) -> _PromptCursor: ...
        def cancel(self, d: defer.Deferred[Any]) -> None: ...
        def close(self) -> None: ...
        def fileno(self) -> int: ...
        def cursorRunning(self, cursor: _TxCursor) -> None: ...  # noqa: N802
        def cursorFinished(self, cursor: _TxCursor) -> None: ...  # noqa: N802
        def checkForNotifies(self) -> None: ...  # noqa: N802
        #: (a reason to disconnect, as Twisted's IReadDescriptor may return)
        def doRead(self) -> BaseException | None: ...  # noqa: N802
        def doWrite(self) -> None: ...  # noqa: N802
        def connectionLost(self, reason: Failure) -> None: ...  # noqa: N802
        def addNotifyObserver(  # noqa: N802
                self, observer: Callable[[psycopg2.extensions.Notify], object]) -> None: ...
        def removeNotifyObserver(  # noqa: N802
                self, observer: Callable[[psycopg2.extensions.Notify], object]) -> None: ...
        def getNotifyObservers(  # noqa: N802
                self) -> list[Callable[[psycopg2.extensions.Notify], object]]: ...
else:
    _TxCursor = txpostgres.Cursor
    _TxConnection = txpostgres.Connection


class _PromptCursor(_TxCursor):
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


class _LossAwareConnection(_TxConnection):
    """txpostgres connection that reports an unexpected loss to its owner and, once
    ``steady`` (connected), stays registered as its socket's reader for good, handing
    read and write events to the cursor whose statement is running (if any)."""

    cursorFactory = _PromptCursor  # noqa: N815 (txpostgres's name)

    lost_callback: Callable[[Failure], None] | None = None
    closing = False
    steady = False
    _running: _TxCursor | None = None
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

    _notify_queue: deque[Any] | None = None

    def checkForNotifies(self) -> None:  # noqa: N802 (txpostgres name)
        """Hand the NOTIFYs received to the observers in the order PostgreSQL sent them.

        txpostgres gives each batch it finds to the global Cooperator as a task of its
        own; when a second batch arrives before the first is done (a fan-out to
        thousands of sockets outlasts the Cooperator's time slice), the two tasks take
        turns and a notification overtakes an earlier one. Here every batch joins one
        queue, worked off by one cooperative task at a time: in order, and still
        yielding to the reactor between notifications."""
        received = self._connection.notifies
        if not received:
            return
        if self._notify_queue is None:
            self._notify_queue = deque()
        fresh = not self._notify_queue
        self._notify_queue.extend(received)
        del received[:]
        if fresh:
            self.cooperator.cooperate(self._dispatch_notifies())

    def _dispatch_notifies(self) -> Iterator[defer.Deferred[Any]]:
        queue = self._notify_queue
        assert queue is not None
        while queue:
            notify = queue[0]
            for observer in self.getNotifyObservers():
                yield defer.maybeDeferred(observer, notify).addErrback(
                    lambda failure: log.failure("a NOTIFY observer failed", failure))
            queue.popleft()          # (last: a batch arriving meanwhile joins this task)

    def cursorRunning(self, cursor: _TxCursor) -> None:  # noqa: N802 (txpostgres name)
        if not self.steady:
            super().cursorRunning(cursor)
            return
        self._cursors.add(cursor)
        self._running = cursor

    def cursorFinished(self, cursor: _TxCursor) -> None:  # noqa: N802 (txpostgres name)
        if not self.steady:
            super().cursorFinished(cursor)
            return
        self._cursors.discard(cursor)
        if self._running is cursor:
            self._running = None
        if not self._connection.closed:
            self.checkForNotifies()

    def doRead(self) -> ConnectionLost | None:  # noqa: N802 (Twisted name)
        """An idle connection whose server went away raises from psycopg2's poll; hand
        the reactor a reason instead, so it disconnects us without logging an error."""
        if not self.steady:
            try:
                super().doRead()
                return None
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

    def doWrite(self) -> None:  # noqa: N802 (Twisted name)
        if not self.steady:
            super().doWrite()
            return None
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

    def __init__(self, reactor: FDReactor | None = None) -> None:
        self._conn = _LossAwareConnection(reactor=reactor)
        self._on_lost: list[Callable[[Failure], None]] = []
        self._observers: dict[Callable[[Notification], object],
                              Callable[[psycopg2.extensions.Notify], object]] = {}
        self.dsn = ""
        self.lost = False
        self._cursor: _PromptCursor | None = None
        #: statement text → (name, EXECUTE text) of its prepared statement; None: the
        #: text cannot be prepared
        self._prepared: dict[str, tuple[str, str] | None] = {}
        self._prepared_count = 0

    # -- life cycle ------------------------------------------------------
    @defer.inlineCallbacks
    def connect(self, dsn: str, connect_timeout: float | None = None,
                setup: Sequence[str] = ()) -> Generator[defer.Deferred[Any], object, Connection]:
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
                params: Params = None) -> defer.Deferred[Result]:
        """Run one statement and fetch its rows (if any) → Deferred of :class:`Result`.

        One cursor per connection, reused: a connection runs one statement at a time
        (the pool hands it to one caller), and a cursor per statement costs as much as
        the rest of the Python side of a small query."""
        cursor = self._cursor
        if cursor is None:
            cursor = self._cursor = self._conn.cursor()
        return cursor.execute(statement, params).addCallback(_result)

    def execute_prepared(self, sql: str, values: Sequence[Any],
                         plain: tuple[str, Mapping[str, Any]]) -> defer.Deferred[Result]:
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
        if isinstance(known, tuple):
            return self._execute_named(sql, known, values, plain)
        d: defer.Deferred[Any]
        if len(self._prepared) >= PREPARED_LIMIT:
            self._prepared.clear()
            d = self.execute("deallocate all")
        else:
            d = defer.succeed(None)
        self._prepared_count += 1
        name = f"wyseman_{self._prepared_count}"
        text = f"execute {name}(" + ", ".join(["%s"] * len(values)) + ")" if values \
            else f"execute {name}"

        def prepared(_: object) -> defer.Deferred[Result]:
            self._prepared[sql] = (name, text)
            return self._execute_named(sql, (name, text), values, plain)

        def not_preparable(failure: Failure) -> Failure | defer.Deferred[Result]:
            if is_connection_error(failure):
                return failure
            if getattr(failure.value, "pgcode", None) in _PARAMETER_TYPE_ERRORS:
                self._prepared[sql] = None      # never: the parameters need literals
            return self.execute(*plain)         # (other errors: the client gets them)

        d.addCallback(lambda _: self.execute(f"prepare {name} as {sql}"))
        return d.addCallbacks(prepared, not_preparable)

    def _execute_named(self, sql: str, known: tuple[str, str], values: Sequence[Any],
                       plain: tuple[str, Mapping[str, Any]]) -> defer.Deferred[Result]:
        name, text = known
        d = self.execute(text, values).addErrback(self._stale_prepared, sql, name, plain)
        return _results(d)

    def _stale_prepared(self, failure: Failure, sql: str, name: str,
                        plain: tuple[str, Mapping[str, Any]]) -> Failure | defer.Deferred[Result]:
        code = getattr(failure.value, "pgcode", None)
        if code not in ("0A000", "26000"):
            return failure
        known = self._prepared.get(sql)
        if known and known[0] == name:
            del self._prepared[sql]
        d: defer.Deferred[Any] = (self.execute(f"deallocate {name}") if code == "0A000"
                                  else defer.succeed(None))
        return d.addBoth(lambda _: self.execute(*plain))

    def transaction(self, work: Callable[Concatenate[Transaction, _P], defer.Deferred[_T]],
                    *args: _P.args, **kwargs: _P.kwargs) -> defer.Deferred[_T]:
        """Run ``work(tx, *args)`` inside BEGIN/COMMIT; an error rolls back.

        ``tx.execute(statement, params)`` returns a Deferred of :class:`Result`. A
        connection lost once COMMIT was sent fails with :class:`CommitUnknown`: the change
        may be stored. (txpostgres's ``runInteraction`` cannot tell that case from a
        failure before COMMIT, and logs a lost connection's failed ROLLBACK as an error.)
        """
        cursor = self._conn.cursor()
        committing: list[bool] = []

        def run(_: object) -> defer.Deferred[_T]:
            return work(Transaction(cursor), *args, **kwargs)

        def commit(result: _T) -> defer.Deferred[_T]:
            committing.append(True)
            return cursor.execute("commit").addCallback(lambda _: result)

        def failed(failure: Failure) -> Failure | defer.Deferred[Failure]:
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

        d = cursor.execute("begin").addCallback(run).addCallback(commit).addErrback(failed)
        return cast("defer.Deferred[_T]", d)   # (see _results)

    def cancel(self, d: defer.Deferred[Any]) -> None:
        self._conn.cancel(d)

    # -- notifications ---------------------------------------------------
    def listen(self, channel: str) -> defer.Deferred[None]:
        return self._conn.runOperation("listen " + quote_ident(channel))

    def unlisten(self, channel: str) -> defer.Deferred[None]:
        return self._conn.runOperation("unlisten " + quote_ident(channel))

    def add_notify_observer(self, observer: Callable[[Notification], object]) -> None:
        def adapt(notify: psycopg2.extensions.Notify) -> object:
            return observer(Notification(notify.channel, notify.payload, notify.pid))
        self._observers[observer] = adapt
        self._conn.addNotifyObserver(adapt)

    def remove_notify_observer(self, observer: Callable[[Notification], object]) -> None:
        adapt = self._observers.pop(observer, None)
        if adapt is not None:
            self._conn.removeNotifyObserver(adapt)


class Transaction:
    """What :meth:`Connection.transaction` hands to its work function."""

    def __init__(self, cursor: _TxCursor) -> None:
        self._cursor = cursor

    @defer.inlineCallbacks
    def execute(self, statement: str | pgsql.Composable,
                params: Params = None) -> Generator[defer.Deferred[Any], object, Result]:
        yield self._cursor.execute(statement, params)
        return _result(self._cursor)


#: prepared statements per connection before they are all deallocated
PREPARED_LIMIT = 256
#: PREPARE errors that mean a text needs its values as literals: a parameter whose type
#: nothing fixes (42P18), or that is ambiguous (42P08, 42725 ambiguous function, 42804)
_PARAMETER_TYPE_ERRORS = frozenset({"42P18", "42P08", "42725", "42804"})


def _results(d: defer.Deferred[Result | Failure | defer.Deferred[Result]]
             ) -> defer.Deferred[Result]:
    """``d`` as it fires: an errback's Failure fails the chain and its Deferred is waited
    for, which Twisted's annotations do not say (they give the errback's return type)."""
    return cast("defer.Deferred[Result]", d)


def _result(cursor: _TxCursor) -> Result:
    description = cursor.description
    if description is None:
        return Result(None, [], cursor.rowcount)
    return Result(description, cursor.fetchall(), cursor.rowcount)


def connect(dsn: str, reactor: FDReactor | None = None, connect_timeout: float | None = None,
            setup: Sequence[str] = ()) -> defer.Deferred[Connection]:
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
        code = exc.pgcode
        return code is None or code.startswith("08") or code in ("57P01", "57P02", "57P03")
    return isinstance(exc, (ConnectionDone, ConnectionLost))
