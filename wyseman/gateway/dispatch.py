"""One request in, one reply out (docs/protocol.md, 6 "Messages" and 7 "Actions").

The dispatcher parses the frame, hands custom actions to their handler,
answers ``meta``/``lang`` from the process-wide cache, compiles everything else
with :mod:`wyseman.sql.compiler` and runs it on the user's pooled session.
Every request gets exactly one reply: data, a database error, or a protocol
error — never silence (the JS server drops requests without ``view``, D20, and
dies on a non-JSON frame, D9).
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from wyseman import errors
from wyseman.db import pg
from wyseman.db.errors import ServerError, server_error
from wyseman.db.pool import DatabaseUnavailable, PoolBusy, PoolClosed
from wyseman.db.types import RawJSON, dumps
from wyseman.errors import ProtocolError
from wyseman.sql import compiler

if TYPE_CHECKING:
    from wyseman.gateway.resources import ResourceStore
    from wyseman.gateway.seams import StatementRunner

#: a decoded request: the JSON object a client sent
Request = dict[str, Any]

log = Logger(namespace="wyseman.dispatch")

BUILTIN_ACTIONS = frozenset({"tuple", "select", "insert", "update", "delete", "meta", "lang"})
_READS = frozenset({"tuple", "select"})
#: "no statement key made yet" (None means: this request cannot have one)
_NO_KEY = object()
_TRANSLATABLE = re.compile(r"^![\w.]+:\w")
_WRITES = frozenset({"insert", "update"})


class _ErrorReply(Exception):
    """A finished error reply (the request echoed with data and error), raised so every
    error leaves :meth:`Dispatcher._handle` the same way."""

    def __init__(self, frame: bytes) -> None:
        super().__init__("error reply")
        self.frame = frame


class Session:
    """An authenticated client, whatever the transport (WebSocket today).

    ``send`` takes one encoded frame. Custom actions get the session too.
    """

    def __init__(self, user: str, listen: tuple[str, ...], send: Callable[[bytes], object],
                 peer: str = "", key_x: str | None = None) -> None:
        self.user = user
        self.listen = listen
        self.send = send
        self.peer = peer
        self.key_x = key_x
        #: this session's meta and lang replies waiting for earlier ones (made when first
        #: needed)
        self.metadata_replies: MetadataReplies | None = None


class MetadataReplies:
    """Sends a session's ``meta`` and ``lang`` replies in the order of their requests.

    Other replies come as they are ready (docs/protocol.md, 6.1), but wylib reads a
    view's ``lang`` texts into the grid it makes from the view's ``meta``, and only if
    they came first: when ``meta``'s reply overtakes ``lang``'s (their queries ran on
    different pooled connections), the grid keeps the bare column names. The Node server
    answers a socket's requests one after another, so apps never saw that order."""

    __slots__ = ("_queue",)

    def __init__(self) -> None:
        self._queue: deque[list[Any]] = deque()

    def in_turn(self, reply: Callable[[bytes], Any]) -> Callable[[bytes], None]:
        """``reply``, held until every earlier request's reply has been sent."""
        entry: list[Any] = [reply, None]
        self._queue.append(entry)

        def ready(frame: bytes) -> None:
            entry[1] = frame
            queue = self._queue
            while queue and queue[0][1] is not None:
                send, done = queue.popleft()
                send(done)
        return ready


@dataclass
class _BadTuples(Exception):
    """Row count ≠ 1: raised inside the transaction so it rolls back (D15)."""
    count: int
    first: Any


class Dispatcher:
    def __init__(self, db: StatementRunner, policy: compiler.Policy, actions: Any = None, *,
                 clock: Any = None,
                 observe: Callable[[str, str, float], None] | None = None) -> None:
        self.db = db
        self.policy = policy
        self.actions = actions
        #: what custom actions publish (wyseman.gateway.resources), if anything
        self.resources: ResourceStore | None = None
        self.clock = clock
        self.observe = observe
        # Compiled statements by request (minus its id): apps repeat the same requests.
        self._statements: dict[bytes, compiler.Statement] = {}

    # -- entry point -------------------------------------------------------
    def handle(self, session: Session, payload: bytes | str) -> defer.Deferred[Any]:
        """Deferred firing with the encoded reply (never fails)."""
        d: defer.Deferred[Any] = defer.Deferred()
        self.handle_then(session, payload, d.callback)
        return d

    def handle_then(self, session: Session, payload: bytes | str,
                    reply: Callable[[bytes], Any]) -> None:
        """Call ``reply`` with the encoded reply, once, maybe before this returns (never
        an error: every failure becomes an error reply).

        A read whose statement is compiled already (apps repeat their requests) goes to
        its read batch and back with plain calls, without the Deferreds (several
        microseconds a request) the other requests take."""
        try:
            request = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            reply(_protocol_error(None, errors.bad_message(f"not JSON: {exc}")))
            return
        if not isinstance(request, dict):
            reply(_protocol_error(None, errors.bad_message("a request must be a JSON object")))
            return
        started = self.clock.seconds() if self.clock is not None else 0.0
        key = _NO_KEY
        action = request.get("action")
        if action == "meta" or action == "lang":
            order = session.metadata_replies
            if order is None:
                order = session.metadata_replies = MetadataReplies()
            reply = order.in_turn(reply)
        if type(action) is str and action in _READS and self.db.read_batch > 1:
            key = _statement_key(request, self.db.generation)
            statement = self._statements.get(key) if key is not None else None
            if statement is not None and statement.batchable:
                answered = False

                def read_done(outcome: Any) -> None:
                    nonlocal answered
                    if not answered:
                        answered = True
                        reply(self._read_reply(outcome, statement, request, started))
                assert statement.json_sql is not None     # (batchable)
                try:
                    self.db.read_as_then(session.user, statement.json_sql, statement.params,
                                         statement.pyformat(True), read_done)
                except Exception:    # (as maybeDeferred would: an error reply)
                    read_done(Failure())
                return
        d = defer.maybeDeferred(self._handle, session, request, key)
        d.addCallbacks(self._observed, self._failed, callbackArgs=(request, started, "ok"),
                       errbackArgs=(request, started))
        d.addCallbacks(reply, self._last_resort, errbackArgs=(reply,))

    @staticmethod
    def _last_resort(failure: Failure, reply: Callable[[bytes], Any]) -> None:
        """Making an error reply failed (a bug): the request is still answered, so that
        the client is not left waiting and its socket's in-flight place comes back."""
        log.failure("making a reply failed", failure)
        reply(dumps({"error": ProtocolError("internal", "internal server error").as_reply()}))

    def _read_reply(self, outcome: Any, statement: compiler.Statement, request: Request,
                    started: float) -> bytes:
        """The reply frame of a batched read (what :meth:`_run`'s callbacks make)."""
        if isinstance(outcome, Failure):
            return self._failed(outcome, request, started)
        try:
            frame = _reply(request, _read_rows(outcome, statement))
        except _BadTuples as bad:
            return self._observed(_bad_tuples_frame(bad, request), request, started, "error")
        except Exception:
            return self._failed(Failure(), request, started)
        return self._observed(frame, request, started, "ok")

    def _failed(self, failure: Any, request: Request, started: float) -> bytes:
        return self._observed(self._unexpected(failure, request), request, started, "error")

    def _observed(self, reply: bytes, request: Request, started: float, outcome: str) -> bytes:
        if self.observe is not None and self.clock is not None:
            action = request.get("action")
            label = action if isinstance(action, str) and action in BUILTIN_ACTIONS \
                else "custom"
            self.observe(label, outcome, self.clock.seconds() - started)
        return reply

    def _unexpected(self, failure: Failure, request: Request) -> bytes:
        if isinstance(failure.value, _ErrorReply):
            return failure.value.frame
        if failure.check(orjson.JSONEncodeError):   # the echo nested too deeply, say
            return _protocol_error(request, errors.bad_message(
                f"the reply cannot be encoded: {failure.getErrorMessage()}"))
        if isinstance(failure.value, ProtocolError):
            return _protocol_error(request, failure.value)
        if failure.check(pg.CommitUnknown):
            log.warn("a change's commit outcome is unknown (connection lost after COMMIT "
                     "was sent): {why}", why=failure.getErrorMessage())
            return _protocol_error(request, errors.commit_unknown())
        if pg.is_connection_error(failure):     # (before other psycopg2 errors)
            return _protocol_error(request, errors.no_database(
                "connection lost during the request"))
        said = server_error(failure)
        if said is not None:
            return _database_error(request, said)
        if failure.check(DatabaseUnavailable, PoolClosed):
            return _protocol_error(request, errors.no_database(failure.getErrorMessage()))
        if failure.check(PoolBusy):
            return _protocol_error(request, ProtocolError(
                "busy", "too many requests waiting for the database; try again"))
        if failure.check(defer.CancelledError):
            # txpostgres turns PostgreSQL's query_canceled (57014) into CancelledError.
            return _error_reply(request, {
                "message": "from database; canceling statement due to statement timeout",
                "code": "57014", "pgCode": "57014"})
        log.failure("request failed", failure)
        return _protocol_error(request, ProtocolError("internal", "internal server error"))

    def _handle(self, session: Session, request: Request, key: Any = _NO_KEY) -> Any:
        """The reply frame, or a Deferred of it (plain callbacks: this runs per request).
        ``key``: the request's statement key when the caller has made it already."""
        action = request.get("action")
        view = request.get("view")
        if not isinstance(view, str) or not view:
            raise errors.bad_message("a request needs a 'view' (string)")
        if not isinstance(action, str) or action not in BUILTIN_ACTIONS:
            handler = self.actions.find(view, request) if self.actions else None
            if handler is None:
                raise errors.bad_action(action)
            return defer.maybeDeferred(handler, session, request, self.db,
                                       self.resources).addCallback(
                lambda data: _reply(request, data))
        if action == "meta":
            return self.db.meta(view).addCallback(lambda row: _one_row_reply(request, row))
        if action == "lang":
            language = request.get("language") or "eng"
            if not isinstance(language, str):
                raise errors.bad_message("'language' must be a string")
            return self.db.lang(view, language).addCallback(
                lambda row: _one_row_reply(request, row))
        if key is _NO_KEY:
            key = _statement_key(request, self.db.generation)
        statement = self._statements.get(key) if key is not None else None
        if statement is not None:
            return self._run(statement, session, request)
        name = compiler.called_view(compiler.parse_view(view, self.policy), request)
        if name.arg_types is not None:   # a function: no column metadata
            return self._compiled(None, name, key, session, request)
        d = self.db.column_types(pg.quote_ident(name.schema) + "." + pg.quote_ident(name.name))
        return d.addCallback(self._compiled, name, key, session, request)

    def _compiled(self, columns: Any, name: compiler.ViewName, key: bytes | None,
                  session: Session, request: Request) -> defer.Deferred[Any]:
        statement = compiler.compile_request(request, columns, self.policy, name)
        if key is not None:
            if len(self._statements) >= STATEMENT_CACHE_SIZE:
                self._statements.clear()
            self._statements[key] = statement
        return self._run(statement, session, request)

    def _run(self, statement: compiler.Statement, session: Session,
             request: Request) -> defer.Deferred[Any]:
        writes = statement.rows == "one" and request.get("action") in _WRITES
        if statement.batchable and self.db.read_batch > 1:
            assert statement.json_sql is not None
            d = self.db.read_as(session.user, statement.json_sql, statement.params,
                                statement.pyformat(True))
            d.addCallback(_read_rows, statement)
            return d.addCallbacks(lambda data: _reply(request, data), _bad_tuples,
                                  errbackArgs=(request,))
        prepare = self.db.prepared_statements
        d = self.db.run_as(session.user,
                           lambda conn: _execute(conn, statement, writes, prepare))
        return d.addCallbacks(_bounded_reply, _bad_tuples, callbackArgs=(request, statement),
                              errbackArgs=(request,))


def _bad_tuples(failure: Any, request: Request) -> Any:
    """Row count ≠ 1 → the request echoed with the first row and the error."""
    bad = failure.check(_BadTuples) and failure.value
    if not bad:
        return failure
    raise _ErrorReply(_bad_tuples_frame(bad, request))


def _bad_tuples_frame(bad: _BadTuples, request: Request) -> bytes:
    reply = dict(request)
    if bad.first is not None:
        reply["data"] = bad.first
    reply["error"] = errors.bad_tuples(bad.count).as_reply()
    return dumps(reply)


STATEMENT_CACHE_SIZE = 4096
_NOT_COMPILED = frozenset({"id"})


def _statement_key(request: Request, generation: int) -> bytes | None:
    """Everything the compiler reads, as bytes (and the metadata generation: a schema
    change must not reuse statements compiled against the old columns); None when the
    request cannot be a key (nested deeper than orjson writes: the compiler refuses it)."""
    try:
        return b"%d:" % generation + orjson.dumps(
            {k: v for k, v in request.items() if k not in _NOT_COMPILED})
    except orjson.JSONEncodeError:
        return None


def _execute(conn: pg.Connection, statement: compiler.Statement, writes: bool,
             prepare: bool = False) -> defer.Deferred[Any]:
    as_json = statement.json_sql is not None and not writes
    sql, params = statement.pyformat(as_json)

    def single(result: pg.Result) -> Any:
        rows = result.dicts()
        if len(rows) != 1:
            raise _BadTuples(len(rows), rows[0] if rows else None)
        return rows[0]

    # Writes run in a transaction that rolls back unless exactly one row was hit.
    if writes:
        return conn.transaction(lambda tx: tx.execute(sql, params).addCallback(single))
    if prepare and statement.text_values:
        dollar_sql = statement.json_sql if as_json and statement.json_sql else statement.sql
        result = conn.execute_prepared(dollar_sql, statement.params, (sql, params))
    else:
        result = conn.execute(sql, params)
    if statement.rows == "none":
        return result.addCallback(lambda r: None)
    if as_json:
        return result.addCallback(pg.Result.first_column).addCallback(_read_rows, statement)
    if statement.rows == "many":
        return result.addCallback(pg.Result.dicts).addCallback(_within_row_cap, statement)
    return result.addCallback(single)


def _within_row_cap(rows: list[Any], statement: compiler.Statement) -> list[Any]:
    if statement.row_cap and len(rows) > statement.row_cap:
        raise errors.too_many_rows(statement.row_cap)
    return rows


def _bounded_reply(data: Any, request: Request, statement: compiler.Statement) -> bytes:
    """The reply frame of rows the Python side rendered; over ``byte_cap`` refused (rows
    rendered by PostgreSQL are counted before any reply is built: :func:`_read_rows`)."""
    frame = _reply(request, data)
    if statement.byte_cap and statement.rows == "many" and len(frame) > statement.byte_cap:
        raise errors.reply_too_large(statement.byte_cap)
    return frame


def _read_rows(rows: list[str], statement: compiler.Statement) -> Any:
    """A read's rows as PostgreSQL rendered them (one JSON text each) → the reply's data,
    spliced unparsed (``many``: a list, ``one``: the row), within the statement's
    bounds."""
    if statement.rows == "many":
        if statement.row_cap and len(rows) > statement.row_cap:
            raise errors.too_many_rows(statement.row_cap)
        if statement.byte_cap and sum(map(len, rows)) > statement.byte_cap:
            raise errors.reply_too_large(statement.byte_cap)
        return RawJSON("[" + ",".join(rows) + "]")
    if len(rows) != 1:
        raise _BadTuples(len(rows), RawJSON(rows[0]) if rows else None)
    return RawJSON(rows[0])


def _reply(request: Request, data: Any) -> bytes:
    reply = dict(request)
    reply["data"] = data
    return dumps(reply)


def _one_row_reply(request: Request, row: Any) -> bytes:
    if isinstance(row, dict):
        return _reply(request, row)
    count = len(row) if isinstance(row, list) else 0
    reply = dict(request)
    if count:
        reply["data"] = row[0]
    why = ""
    if not count:       # say what was not found (the code stays the Node server's)
        action, view = request.get("action"), request.get("view")
        if action == "lang":
            why = f"no lang texts for view {view!r} in {request.get('language') or 'eng'!r}"
        else:
            why = f"no {action} data for view {view!r}"
    reply["error"] = errors.bad_tuples(count, why).as_reply()
    raise _ErrorReply(dumps(reply))


def _protocol_error(request: Request | None, error: ProtocolError) -> bytes:
    """The reduced reply (docs/protocol.md, 6.3 "Replies"): error plus id, view, action
    (when known)."""
    reply: dict[str, Any] = {"error": error.as_reply()}
    if request is not None:
        for key in ("id", "view", "action"):
            if key in request:
                reply[key] = request[key]
    try:
        return dumps(reply)
    except orjson.JSONEncodeError:     # an echoed member nested too deeply to encode
        return dumps({"error": errors.bad_message(
            "the request's id, view or action is nested too deeply to be echoed "
            f"(the reply was: {error.message})").as_reply()})


def _database_error(request: Request, said: ServerError) -> bytes:
    error: dict[str, Any] = {"message": f"from database; {said.message}"}
    if said.detail:
        error["detail"] = said.detail
    if said.constraint and _TRANSLATABLE.match(said.constraint):
        error["code"] = said.constraint
    elif said.sqlstate:
        error["code"] = said.sqlstate
    else:
        error["code"] = errors.LANG_PREFIX + "undefined"
    if said.sqlstate:
        error["pgCode"] = said.sqlstate
    return _error_reply(request, error)


def _error_reply(request: Request, error: dict[str, Any]) -> bytes:
    """The request echoed with ``error`` (database errors; docs/protocol.md, 6.3 "Replies")."""
    reply = dict(request)
    reply["error"] = error
    return dumps(reply)
