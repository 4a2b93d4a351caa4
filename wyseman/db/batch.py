"""Reads of one role that arrive together, or wait for its busy pool, run as one statement.

A read of a statement known to be fast waits here until the end of the reactor
iteration it arrived in (a ``callLater(0)``). Then the reads of that iteration, and
any still waiting for a connection, go to the role's connections in batches of up to
``limit``: a batch is one statement (:mod:`wyseman.sql.batch`), so PostgreSQL is woken
once and answers once for all its reads. When all the connections are busy, the
reads wait here (not in the pool's queue) and the next connection free takes as many
as a batch may hold. The idea is a DataLoader's: what one turn of the event loop asks
for goes out as one request. A role whose reads come one at a time (the last turn
brought one, and nothing of the role is running) does not wait for company: its read
runs at once, as without batching (a timer and a Deferred per read would cost ~8 µs).

What a client sees does not depend on batching:

- **Errors** stay with their request: if a batch fails (any SQL error, a statement
  timeout), each of its reads runs again alone and gets its own answer. A batch is
  one statement, so a failed batch has changed nothing.
- **Slow reads are not batched**: a read joins a batch only once its statement has
  been seen to answer within ``fast`` seconds, and a batch takes only as many reads as
  their last known times fit in ``fast``; so a report query never holds up the quick
  lookups that came with it. A batch slower than ``fast`` sends its statements back to
  running alone until they are measured fast again. A statement's known time is that
  of its last answer alone, or its share of the last batch it was in: timed alone under
  load, a read's time is mostly the wait for the event loop (tens of milliseconds with a
  thousand sockets), which would keep later batches needlessly small.
- Only reads of relations (views, tables) that the caller marked batchable are
  taken; function calls and writes never are.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from wyseman.db.pg import Connection, Result, is_connection_error
from wyseman.db.pool import PoolBusy, RolePool
from wyseman.db.seams import Timer
from wyseman.sql import batch as batch_sql

log = Logger(namespace="wyseman.db")

#: a statement answering within this many seconds may join batches
FAST_SECONDS = 0.1
#: statements whose speed is remembered (then the memory starts over)
_COST_LIMIT = 4096
#: batch texts remembered as seen (a text is prepared the second time it is seen)
_SEEN_LIMIT = 1024

#: a read's rows: one JSON text each
Rows = list[str]
#: what a read's continuation gets: its rows, or why there are none
Outcome = Rows | Failure

_T = TypeVar("_T")


class Read:
    """One read: ``sql`` renders each row as one JSON text, ``$n`` placeholders.

    Its outcome goes to ``then`` once: the rows, or a :class:`Failure`. A plain
    callback, not a Deferred: this runs for every request, and a Deferred with the
    callbacks a request needs costs several microseconds more than the calls."""

    __slots__ = ("sql", "values", "plain", "_then")

    def __init__(self, sql: str, values: tuple[Any, ...], plain: tuple[str, dict[str, Any]],
                 then: Callable[[Outcome], None]) -> None:
        self.sql = sql
        self.values = values
        self.plain = plain   #: the same for psycopg2 (``%(pn)s`` placeholders)
        self._then: Callable[[Outcome], None] | None = then

    @property
    def settled(self) -> bool:
        return self._then is None

    def settle(self, outcome: Outcome) -> None:
        """Hand over the outcome (the first time only)."""
        then, self._then = self._then, None
        if then is not None:
            _settle(outcome, then)


def _settle(outcome: Outcome, then: Callable[[Outcome], None]) -> None:
    """``then(outcome)``; an exception there is a bug of the caller's, logged, and must
    not keep the other reads of a batch from their answers."""
    try:
        then(outcome)
    except Exception:
        log.failure("a read's continuation failed")


def _deferred_settle(d: defer.Deferred[Rows]) -> Callable[[Outcome], None]:
    def settle(outcome: Outcome) -> None:
        if isinstance(outcome, Failure):
            d.errback(outcome)
        else:
            d.callback(outcome)
    return settle


#: what a connection is handed to run: one read alone, or a batch of them
_Work = TypeVar("_Work", Read, list[Read])


@dataclass
class BatchStats:
    batches: int = 0            #: statements that answered several reads
    batched_reads: int = 0      #: reads answered by them
    failed_batches: int = 0     #: batches whose reads ran again alone


class ReadBatcher:
    """The batching front of one role's pool."""

    def __init__(self, pool: RolePool, *, limit: int = 16, prepare: bool = True,
                 fast: float | None = None, stats: BatchStats | None = None) -> None:
        self.pool = pool
        self.limit = limit
        self.prepare = prepare
        self.fast = FAST_SECONDS if fast is None else fast
        self.stats = stats if stats is not None else BatchStats()
        self._pending: deque[Read] = deque()
        self._acquiring = 0
        #: statement → seconds of its last answer (alone, or the batch it was in)
        self._cost: dict[str, float] = {}
        self._seen: set[str] = set()
        self._flush_call: Timer | None = None
        #: the last turn of the event loop brought one read: the role's reads come one
        #: at a time (one socket, one request at a time), so don't wait for company
        self._lonely = True

    def read(self, sql: str, values: Sequence[Any],
             plain: tuple[str, dict[str, Any]]) -> defer.Deferred[Rows]:
        """Deferred firing with the read's rows (a list of JSON texts)."""
        d: defer.Deferred[Rows] = defer.Deferred()
        self.read_then(sql, values, plain, _deferred_settle(d))
        return d

    def read_then(self, sql: str, values: Sequence[Any], plain: tuple[str, dict[str, Any]],
                  then: Callable[[Outcome], None]) -> None:
        """Run the read; ``then`` gets its rows (a list of JSON texts) or a
        :class:`Failure`, once, maybe before this returns."""
        if self.limit < 2 or not self._is_fast(sql) or (
                self._lonely and not self._pending and not self.pool.in_use):
            self._alone(sql, values, plain).addBoth(_settle, then)
            return
        # the pool's own bound, shared: its waiters (but for this batcher's own acquires)
        # and the reads here
        waiting = len(self._pending) + self.pool.stats.waiting - self._acquiring
        if waiting >= self.pool.queue_limit:
            _settle(Failure(PoolBusy(self.pool.role)), then)
            return
        self._pending.append(Read(sql, tuple(values), plain, then))
        if not self.pool.can_run_now():
            self.pool.stats.waits_total += 1
        if self._flush_call is None:
            # the reads of this reactor iteration go together (then a read waits for
            # the connections only as long as the reactor takes to get round to it)
            self._flush_call = self.pool.clock.callLater(0, self._flush)

    def _flush(self) -> None:
        self._flush_call = None
        self._lonely = len(self._pending) < 2
        self._acquire_more()

    @property
    def waiting(self) -> int:
        """Reads waiting here for a connection."""
        return len(self._pending)

    @property
    def idle(self) -> bool:
        """Nothing waiting here, nothing asked of the pool."""
        return not self._pending and not self._acquiring and self._flush_call is None

    # -- running alone ---------------------------------------------------------
    def _alone(self, sql: str, values: Sequence[Any],
               plain: tuple[str, dict[str, Any]]) -> defer.Deferred[Rows]:
        return self.pool.run(lambda conn: self._run_alone(conn, sql, values, plain))

    def _run_alone(self, conn: Connection, sql: str, values: Sequence[Any],
                   plain: tuple[str, dict[str, Any]]) -> defer.Deferred[Rows]:
        started = self.pool.clock.seconds()
        if self.prepare:
            d = conn.execute_prepared(sql, values, plain)
        else:
            d = conn.execute(*plain)
        return d.addCallback(self._rows_alone, sql, started)

    def _rows_alone(self, result: Result, sql: str, started: float) -> Rows:
        self._note_cost(sql, self.pool.clock.seconds() - started)
        return result.first_column()

    def _is_fast(self, sql: str) -> bool:
        cost = self._cost.get(sql)
        return cost is not None and cost <= self.fast

    def _note_cost(self, sql: str, seconds: float) -> None:
        if sql not in self._cost and len(self._cost) >= _COST_LIMIT:
            self._cost.clear()
        self._cost[sql] = seconds

    # -- waiting for a connection ------------------------------------------------
    def _acquire_more(self) -> None:
        """Ask the pool for connections: one per batch the waiting reads make, at most
        the pool's size (a free connection is handed over at once)."""
        while self._acquiring < min(-(-len(self._pending) // self.limit), self.pool.size):
            self._acquiring += 1
            self.pool.acquire(count_wait=False).addCallbacks(self._acquired,
                                                             self._not_acquired)

    def _not_acquired(self, failure: Failure) -> None:
        self._acquiring -= 1
        if self._acquiring == 0:           # nobody left to serve the waiting reads
            while self._pending:
                self._pending.popleft().settle(failure)

    def _acquired(self, conn: Connection) -> None:
        self._acquiring -= 1
        reads = self._take()
        try:
            self._acquire_more()
        except Exception:
            # never keep a connection nobody will give back (nor reads nobody will run)
            log.failure("asking the pool for more connections failed")
        if not reads:
            self.pool.release(conn)
        elif len(reads) == 1:
            read = reads[0]
            self._hand_over(conn, read, lambda conn, read: self._run_alone(
                conn, read.sql, read.values, read.plain))
        else:
            self._hand_over(conn, reads, self._run_batch)

    def _take(self) -> list[Read]:
        """The next batch: up to ``limit`` reads whose statements' last known times add up
        to at most ``fast`` (so that reads that could have run side by side on other
        connections are not held up long behind each other); at least one."""
        reads: list[Read] = []
        spent = 0.0
        pending = self._pending
        while pending and len(reads) < self.limit:
            cost = self._cost.get(pending[0].sql, 0.0)
            if reads and spent + cost > self.fast:
                break
            reads.append(pending.popleft())
            spent += cost
        return reads

    def _hand_over(self, conn: Connection, work: _Work,
                   run: Callable[[Connection, _Work], defer.Deferred[Any]]) -> None:
        """Run ``run(conn, work)``, give the connection back, then fire the Deferreds."""
        try:
            d = run(conn, work)
        except Exception:
            d = defer.fail()

        def release(result: _T) -> _T:
            broken = isinstance(result, Failure) and is_connection_error(result)
            self.pool.release(conn, broken=broken or conn.closed)
            return result
        d.addBoth(release)
        if isinstance(work, Read):
            d.addBoth(work.settle)
        else:
            d.addCallbacks(self._deliver, self._batch_failed, callbackArgs=(work,),
                           errbackArgs=(work,))

    @staticmethod
    def _deliver(answers: list[Rows], reads: list[Read]) -> None:
        for read, rows in zip(reads, answers, strict=True):
            read.settle(rows)

    # -- a batch -------------------------------------------------------------------
    def _run_batch(self, conn: Connection, reads: list[Read]) -> defer.Deferred[list[Rows]]:
        batch = batch_sql.compose([(read.sql, read.values) for read in reads])
        clock = self.pool.clock
        started = clock.seconds()
        if self.prepare and self._seen_before(batch.sql):
            d = conn.execute_prepared(batch.sql, batch.values, batch.pyformat())
        else:
            d = conn.execute(*batch.pyformat())

        def answers(result: Result) -> list[Rows]:
            elapsed = clock.seconds() - started
            # too slow to batch: run alone until fast again; else each read's share
            cost = elapsed if elapsed > self.fast else elapsed / len(reads)
            for read in reads:
                self._note_cost(read.sql, cost)
            self.stats.batches += 1
            self.stats.batched_reads += len(reads)
            return batch_sql.split(result.rows[0], batch)
        return d.addCallback(answers)

    def _seen_before(self, sql: str) -> bool:
        """A text is prepared once it repeats: a one-off mix of reads is not worth the
        extra round trip of PREPARE."""
        if sql in self._seen:
            return True
        if len(self._seen) >= _SEEN_LIMIT:
            self._seen.clear()
        self._seen.add(sql)
        return False

    def _batch_failed(self, failure: Failure, reads: list[Read]) -> None:
        """The connection is gone: every read fails with it. Any other error: each read
        runs again alone (and is not batched again until it has been answered alone)."""
        if is_connection_error(failure):
            for read in reads:
                read.settle(failure)
            return
        self.stats.failed_batches += 1
        for read in reads:
            if read.settled:
                continue
            self._cost.pop(read.sql, None)
            self._alone(read.sql, read.values, read.plain).addBoth(read.settle)
