"""Connection pools keyed by PostgreSQL role.

Every request of a user runs on a connection *logged in as that user's role*
(wyselib identifies the caller by ``session_user``), so connections are never
shared across roles. All sockets of one user share that role's pool: far fewer
backends than the Node server's one-connection-per-socket.

A pool is bounded (``size``), requests wait in a bounded queue when it is busy,
idle connections are closed after ``idle_timeout`` and every connection is
replaced after ``max_lifetime``. The :class:`PoolSet` caps the total across
roles, closing idle connections of other roles to make room.

A connection released while requests wait is handed to the next one *without
nesting*: a result can arrive synchronously (the adapter reads an answer that is
already in the socket), so the next request's work may finish, and release the
connection again, inside the hand-off. Done as calls inside calls, a burst of
queued requests would nest one hand-off per request until Python's recursion
limit broke a hand-off half way and left its connection counted busy for ever.
Hand-offs are therefore queued and run by one loop (a trampoline), and every
path that takes a connection gives it back whatever the work or its callbacks
raise.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from wyseman.db.pg import Connection, is_connection_error
from wyseman.db.seams import Clock, Timer

if TYPE_CHECKING:
    from wyseman.db.batch import ReadBatcher

_T = TypeVar("_T")

log = Logger(namespace="wyseman.pool")


class PoolBusy(Exception):
    """Too many requests are already waiting for this role's connections."""


class PoolClosed(Exception):
    """The pool was closed (server shutting down)."""


class DatabaseUnavailable(Exception):
    """PostgreSQL cannot be reached (or refused this role's login)."""


Connector = Callable[[str], defer.Deferred[Connection]]  # role -> a connection as that role


@dataclass(eq=False)
class _Slot:
    conn: Connection
    born: float
    idle_since: float = 0.0


@dataclass
class PoolStats:
    open: int = 0
    idle: int = 0
    waiting: int = 0
    waits_total: int = 0
    connects_total: int = 0
    connect_failures_total: int = 0


@dataclass(eq=False)
class RolePool:
    role: str
    connector: Connector
    clock: Clock
    owner: PoolSet
    size: int = 4
    queue_limit: int = 1000
    idle_timeout: float = 300.0
    max_lifetime: float = 3600.0
    stats: PoolStats = field(default_factory=PoolStats)
    #: the read batcher in front of this pool (:mod:`wyseman.db.batch`), made on first use
    batcher: ReadBatcher | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self._idle: deque[_Slot] = deque()
        self._busy: dict[int, _Slot] = {}
        self._waiters: deque[defer.Deferred[Connection]] = deque()
        self._connecting = 0
        self._pending_connects: set[defer.Deferred[None]] = set()
        self._closed = False
        #: connections released to waiters, not yet given to them (see the module's
        #: docstring: hand-offs run one after another, never one inside another)
        self._handoffs: deque[tuple[defer.Deferred[Connection], Connection]] = deque()
        self._handing = False
        #: one timer per pool closes idle connections (not one per release: a timer
        #: made and cancelled per request costs more than the pool's own bookkeeping)
        self._sweep: Timer | None = None

    # -- accounting --------------------------------------------------------
    @property
    def open_count(self) -> int:
        return len(self._idle) + len(self._busy) + self._connecting

    def _update_stats(self) -> None:
        self.stats.open = len(self._idle) + len(self._busy)
        self.stats.idle = len(self._idle)
        self.stats.waiting = len(self._waiters)

    # -- acquire / release -------------------------------------------------
    def acquire(self, count_wait: bool = True) -> defer.Deferred[Connection]:
        """A Deferred firing with a :class:`Connection` reserved for the caller.
        ``count_wait=False``: a wait is not counted in ``stats.waits_total`` (the caller
        counts its own)."""
        if self._closed:
            return defer.fail(PoolClosed(self.role))
        conn = self._take_idle()
        if conn is not None:
            return defer.succeed(conn)
        if self.open_count < self.size and self.owner.reserve(self):
            return self._open()
        if len(self._waiters) >= self.queue_limit:
            return defer.fail(PoolBusy(self.role))
        waiter: defer.Deferred[Connection] = defer.Deferred(self._cancel_waiter)
        self._waiters.append(waiter)
        self.owner.waiting.add(self)
        self.stats.waits_total += count_wait
        self._update_stats()
        return waiter

    @property
    def in_use(self) -> int:
        """Connections busy with work (or being opened for it)."""
        return len(self._busy) + self._connecting

    def can_run_now(self) -> bool:
        """True when work given to :meth:`run` now would not wait behind other work: a
        connection is idle, or there is room to open one, and nobody is waiting."""
        return (bool(self._idle) or self.open_count < self.size) and not self._waiters

    def _take_idle(self) -> Connection | None:
        """An idle connection, now busy, or None."""
        while self._idle:
            slot = self._idle.pop()  # most recently used: warm, and lets others idle out
            if slot.conn.closed:
                continue
            self._busy[id(slot.conn)] = slot
            self._update_stats()
            return slot.conn
        return None

    def _cancel_waiter(self, waiter: defer.Deferred[Connection]) -> None:
        try:
            self._waiters.remove(waiter)
        except ValueError:
            pass

    def _open(self) -> defer.Deferred[Connection]:
        self._connecting += 1
        settled: defer.Deferred[None] = defer.Deferred()
        self._pending_connects.add(settled)
        self.stats.connects_total += 1
        d = defer.maybeDeferred(self.connector, self.role)

        def opened(conn: Connection) -> Connection:
            self._connecting -= 1
            if self._closed:
                conn.close()
                self.owner.release_capacity()
                raise PoolClosed(self.role)
            slot = _Slot(conn, self.clock.seconds())
            conn.on_lost(lambda reason: self._lost(slot))
            self._busy[id(conn)] = slot
            self._update_stats()
            return conn

        def failed(failure: Failure) -> Failure:
            self._connecting -= 1
            self.stats.connect_failures_total += 1
            self.owner.release_capacity()
            self._update_stats()
            # Everyone waiting would fail the same way: tell them now, not after a hang (D19).
            error = DatabaseUnavailable(_describe(failure))
            while self._waiters:
                self._waiters.popleft().errback(error)
            return Failure(error)

        def settle(result: _T) -> _T:
            self._pending_connects.discard(settled)
            settled.callback(None)
            return result

        return d.addCallbacks(opened, failed).addBoth(settle)

    def release(self, conn: Connection, broken: bool = False) -> None:
        """Give a connection back; ``broken`` ones (lost, or mid-error) are closed."""
        slot = self._busy.pop(id(conn), None)
        if slot is None:
            return
        now = self.clock.seconds()
        expired = now - slot.born >= self.max_lifetime
        if broken or expired or conn.closed or self._closed:
            self._discard(slot)
            self._serve_waiters()
            self._retire_if_unused()
            return
        if self._waiters:
            self._busy[id(conn)] = slot
            self._handoffs.append((self._waiters.popleft(), conn))
            self._update_stats()
            self._run_handoffs()
            return
        slot.idle_since = now
        self._idle.append(slot)       # (oldest on the left: idle_since increases)
        if self._sweep is None:
            self._schedule_sweep(now)
        self._update_stats()
        self.owner.capacity_available()

    def _run_handoffs(self) -> None:
        """Give each queued connection to its waiter, one after another. A release made
        while a waiter runs (its work finished at once) only queues the next hand-off;
        the loop already running here makes it, so the stack stays flat however many
        requests wait."""
        if self._handing:
            return
        self._handing = True
        try:
            while self._handoffs:
                waiter, conn = self._handoffs.popleft()
                if waiter.called:        # cancelled after it left the queue
                    self._give_back(conn)
                    continue
                try:
                    waiter.callback(conn)
                except Exception:        # only a waiter fired meanwhile can raise here
                    log.failure("a pool waiter could not take its connection")
                    self._give_back(conn)
        finally:
            self._handing = False

    def _give_back(self, conn: Connection) -> None:
        """Release a connection that its taker never got (from inside the hand-off loop:
        this only queues the next hand-off, the loop makes it)."""
        self.release(conn)

    def _serve_waiters(self) -> None:
        """Open a connection for the first waiter if there is room."""
        while self._waiters and self.open_count < self.size and self.owner.reserve(self):
            waiter = self._waiters.popleft()
            self._open().chainDeferred(waiter)
        if not self._waiters:
            self.owner.waiting.discard(self)
        self._update_stats()

    def has_waiters(self) -> bool:
        return bool(self._waiters)

    # -- closing -----------------------------------------------------------
    def _schedule_sweep(self, now: float) -> None:
        if self.idle_timeout > 0 and self._idle and not self._closed:
            due = self._idle[0].idle_since + self.idle_timeout
            self._sweep = self.clock.callLater(max(0.0, due - now), self._sweep_idle)

    def _sweep_idle(self) -> None:
        """Close the connections idle for ``idle_timeout``; wake again for the next."""
        self._sweep = None
        now = self.clock.seconds()
        while self._idle and now - self._idle[0].idle_since >= self.idle_timeout:
            self._discard(self._idle.popleft())
        self._schedule_sweep(now)
        self._retire_if_unused()

    def _discard(self, slot: _Slot) -> None:
        slot.conn.close()
        self.owner.release_capacity()
        self._update_stats()

    def _lost(self, slot: _Slot) -> None:
        """The server dropped a connection: forget it (a busy one errors in its query)."""
        if slot in self._idle:
            self._idle.remove(slot)
            self.owner.release_capacity()
            self._update_stats()
            self._retire_if_unused()

    def _retire_if_unused(self) -> None:
        """No connection left, nothing waiting: the set forgets this pool (a server meets
        many users over its life; each pool and batcher is a few KiB). The role's next
        request makes a new one."""
        if (not self._idle and not self._busy and not self._connecting and not self._waiters
                and not self._pending_connects and not self._closed
                and (self.batcher is None or self.batcher.idle)):
            if self._sweep is not None and self._sweep.active():
                self._sweep.cancel()
            self._sweep = None
            self.owner.retire(self)

    def close_one_idle(self) -> bool:
        """Close the least recently used idle connection (to make room for another role)."""
        if not self._idle:
            return False
        self._discard(self._idle.popleft())
        return True

    def close(self) -> defer.Deferred[list[tuple[bool, None]]]:
        """Close every connection; the Deferred fires once connects still under way have
        finished too (each is closed as it completes), so nothing outlives the pool."""
        self._closed = True
        if self._sweep is not None and self._sweep.active():
            self._sweep.cancel()
        self._sweep = None
        while self._waiters:
            self._waiters.popleft().errback(PoolClosed(self.role))
        while self._idle:
            self._discard(self._idle.popleft())
        for slot in list(self._busy.values()):
            slot.conn.close()
        return defer.DeferredList(list(self._pending_connects))

    # -- running work --------------------------------------------------------
    def run(self, work: Callable[[Connection], defer.Deferred[_T]]) -> defer.Deferred[_T]:
        """Acquire, run ``work(conn)``, release (discarding the connection if it broke).
        With an idle connection at hand, ``work`` runs at once (no Deferred to wait on)."""
        conn = None if self._closed else self._take_idle()
        if conn is None:
            return self.acquire().addCallback(self._run_on, work)
        return self._run_on(conn, work)

    def _run_on(self, conn: Connection,
                work: Callable[[Connection], defer.Deferred[_T]]) -> defer.Deferred[_T]:
        inner: object
        try:
            inner = work(conn)
        except Exception:
            inner = defer.fail()
        # (work that answers at once, not with a Deferred, is taken as it is)
        d: defer.Deferred[_T] = inner if isinstance(inner, defer.Deferred) \
            else defer.succeed(inner)
        return d.addBoth(self._done, conn)

    def _done(self, result: _T, conn: Connection) -> _T:
        try:
            broken = isinstance(result, Failure) and is_connection_error(result)
            self.release(conn, broken=broken or conn.closed)
        except Exception:
            # the connection is back (release pops it first): a failure after that is a
            # bug to log, not a reason to lose the request's own outcome
            log.failure("releasing a pooled connection failed")
        return result


def _describe(failure: Failure) -> str:
    text = str(failure.value).strip().splitlines()
    return text[0] if text else type(failure.value).__name__


class PoolSet:
    """The role pools of one server, with a cap on their total connections."""

    def __init__(self, connector: Connector, clock: Clock, *, size: int = 4,
                 total: int = 200, queue_limit: int = 1000, idle_timeout: float = 300.0,
                 max_lifetime: float = 3600.0) -> None:
        self.connector = connector
        self.clock = clock
        self.size = size
        self.total = total
        self.queue_limit = queue_limit
        self.idle_timeout = idle_timeout
        self.max_lifetime = max_lifetime
        self.pools: dict[str, RolePool] = {}
        #: pools with requests waiting (so freeing capacity need not scan every pool)
        self.waiting: set[RolePool] = set()
        #: the counts of pools no longer in use (so the totals never go down)
        self.retired = PoolStats()
        self._open = 0

    def pool(self, role: str) -> RolePool:
        pool = self.pools.get(role)
        if pool is None:
            pool = self.pools[role] = RolePool(
                role, self.connector, self.clock, self, size=self.size,
                queue_limit=self.queue_limit, idle_timeout=self.idle_timeout,
                max_lifetime=self.max_lifetime)
        return pool

    def run(self, role: str,
            work: Callable[[Connection], defer.Deferred[_T]]) -> defer.Deferred[_T]:
        return self.pool(role).run(work)

    def retire(self, pool: RolePool) -> None:
        """Forget ``pool`` (it has no connections and nothing waiting), keeping its counts."""
        if self.pools.get(pool.role) is not pool:
            return
        del self.pools[pool.role]
        self.waiting.discard(pool)
        self.retired.waits_total += pool.stats.waits_total
        self.retired.connects_total += pool.stats.connects_total
        self.retired.connect_failures_total += pool.stats.connect_failures_total

    def waits_total(self) -> int:
        """Requests that waited for a connection, in all (pools retired included)."""
        return self.retired.waits_total + sum(
            pool.stats.waits_total for pool in self.pools.values())

    def waiting_now(self) -> int:
        """Requests waiting for a connection now (reads waiting for a batch included)."""
        return sum(pool.stats.waiting + (pool.batcher.waiting if pool.batcher else 0)
                   for pool in self.pools.values())

    @property
    def open_connections(self) -> int:
        return self._open

    def reserve(self, requester: RolePool) -> bool:
        """Count one more connection if the total allows, closing another role's idle one."""
        if self._open >= self.total:
            for pool in self.pools.values():
                if pool is not requester and pool.close_one_idle():
                    break
        if self._open >= self.total:
            return False
        self._open += 1
        return True

    def release_capacity(self) -> None:
        self._open -= 1
        self.capacity_available()

    def capacity_available(self) -> None:
        if not self.waiting:
            return
        for pool in list(self.waiting):
            if not pool.has_waiters():
                self.waiting.discard(pool)
            else:
                pool._serve_waiters()

    def close(self) -> defer.Deferred[list[tuple[bool, list[tuple[bool, None]]]]]:
        return defer.DeferredList([pool.close() for pool in self.pools.values()])
