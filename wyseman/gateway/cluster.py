"""``[cluster] shared_state = "postgres"``: several gateway hosts behind one balancer,
coordinated through their database rather than a protocol of their own.

What one host keeps for itself would otherwise let a client around the limits by going
through another host: a signed login URL accepted by host A could be used once more on
host B (the replay cache), and a user could hold ``max_connections_per_user`` sockets on
each host (the per-user count). Both move to tables of the database all the hosts
already share (``wyseman_shared``, :mod:`wyseman.db.shared`), each check one statement on
the admin connection:

- :class:`SharedReplay` (the :class:`~wyseman.auth.seams.ReplayGuard` seam): an insert
  that is both the record and the check;
- :class:`SharedSlots` (the :class:`~wyseman.auth.seams.UserSlots` seam): one row per
  (host, user) with a count; a reservation counts the user's rows over the hosts whose
  lease is alive, under a lock on the user, so two hosts cannot grant one last place;
- a key login does both in one call (:meth:`SharedReplay.check_placing`, the
  :class:`~wyseman.auth.seams.PlacingReplayGuard` seam): the signature recorded and, if
  it was new, the user's place reserved, so that the shared state costs it one round
  trip to the database rather than two; the releases of the connections that closed go
  in the same call (:meth:`SharedSlots._send`);
- :class:`ClusterState`: this host's lease, renewed every ``lease`` ÷ 3 seconds (a host
  that dies without a word frees its places when its lease ends), and the periodic
  cleanup of expired rows; started before the ports open, stopped after the sockets
  closed (the host leaves: its places are free at once).

There is no peer protocol to secure, configure or partition: a host that cannot reach
the database cannot check logins anyway.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, task
from twisted.internet.base import DelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from wyseman.auth import credentials as cred
from wyseman.config import Config
from wyseman.db.database import Database
from wyseman.db.shared import SharedTables

log = Logger(namespace="wyseman.cluster")

#: seconds a closed connection's release waits for a key login to go with, before it is
#: sent on its own: so long may other hosts count the place after the socket closed (a
#: login of the same user on this host meanwhile carries it, counted before itself)
RELEASE_DELAY = 0.25

#: shared replay rows past which key logins are refused (``FULL``) until a cleanup finds
#: fewer: only verified signatures are recorded and each is deleted after 2 × the date
#: window, so reaching it takes real keys logging in over 8,000 times a second
SHARED_REPLAY_MAX_ROWS = 1_000_000


def host_id_for(config: Config, worker: int | None = None) -> str:
    """This process's name in the shared tables: ``[cluster] host_id``, or the host name
    and process id (the supervisor's for a worker: a restarted worker takes its
    predecessor's name and so clears its rows at once); ``/N`` for worker N."""
    base = config.cluster.host_id
    if not base:
        pid = os.getppid() if worker is not None else os.getpid()
        base = f"{socket.gethostname()[:40]}-{pid}"
    return base if worker is None else f"{base}/{worker}"


class SharedReplay:
    """The replay cache of every host: :meth:`check` records the signature and says
    whether it was new, in one statement; :meth:`check_placing` also reserves the user's
    place in ``slots`` in that statement."""

    def __init__(self, tables: SharedTables, ttl: float, slots: SharedSlots,
                 max_rows: int = SHARED_REPLAY_MAX_ROWS) -> None:
        self.tables = tables
        self.ttl = ttl
        self.slots = slots
        self.max_rows = max_rows
        #: set by the cleanup while the table holds ``max_rows`` rows or more
        self.full = False
        self.full_refusals = 0

    def check(self, user: str, sign: str, now: float) -> defer.Deferred[str]:
        """Deferred of ``NEW`` (recorded until ``now`` + ttl), ``SEEN`` or ``FULL``."""
        if self.full:
            self.full_refusals += 1
            return defer.succeed(cred.FULL)
        d = self.tables.record_signature(user, cred.signature_digest(sign), now, now + self.ttl)
        d.addCallback(lambda new: cred.NEW if new else cred.SEEN)
        return d

    def check_placing(self, user: str, sign: str,
                      now: float) -> defer.Deferred[tuple[str, bool]]:
        """Deferred of (the outcome of :meth:`check`, whether ``user``'s place is now
        held in :attr:`slots`): a place only for a ``NEW`` signature. (A full table
        asks nothing: the login is refused.)"""
        if self.full:
            self.full_refusals += 1
            return defer.succeed((cred.FULL, False))
        d = self.slots.reserve_signed(user, cred.signature_digest(sign), now, now + self.ttl)
        return d.addCallback(lambda answer: (cred.NEW if answer[0] else cred.SEEN, answer[1]))

    def measure(self) -> defer.Deferred[None]:
        """Count the rows (up to the bound) and set :attr:`full` (logged when it changes)."""
        def counted(rows: int) -> None:
            full = rows >= self.max_rows
            if full and not self.full:
                log.warn("the shared replay table holds {rows} rows or more: key logins "
                         "are refused until expired ones are deleted", rows=self.max_rows)
            elif self.full and not full:
                log.info("the shared replay table has room again: key logins accepted")
            self.full = full
        return self.tables.replay_rows(self.max_rows).addCallback(counted)


class SharedSlots:
    """Each user's connections over every live host (``[limits]
    max_connections_per_user``), and this host's own in memory: what it writes again if
    its rows were lost (a lapsed lease, a release that failed).

    Key logins and releases go one call at a time, together: what arrives while a call
    is under way (key logins, connections closed) waits and goes in the next, so that a
    host whose clients come and go by the hundred a second pays neither a statement for
    each nor one for its logins and another for its releases. A release is not worth a
    call of its own at once: it waits up to :data:`RELEASE_DELAY` for a key login to
    ride with (a login of the same user in that call is counted after it), and goes on
    its own only when none comes; :meth:`quiet` sends it at once. A rewrite of the rows
    makes the releases not yet sent moot (it writes the counts without them)."""

    def __init__(self, tables: SharedTables, host_id: str, limit: int,
                 clock: Any) -> None:
        self.tables = tables
        self.host_id = host_id
        self.limit = limit
        self.clock = clock
        #: the releases waiting are to go now (their delay is over, or a quiet is asked)
        self._flush = False
        self._release_timer: DelayedCall | None = None
        #: this host's connections per user (granted places)
        self._counts: dict[str, int] = {}
        #: reservations and releases sent and not yet answered
        self._in_flight = 0
        #: connections closed whose release is not sent yet, per user
        self._unsent: dict[str, int] = {}
        #: key logins not sent yet: (user, signature digest, now, expires, their answer)
        self._logins: list[tuple[str, bytes, float, float,
                                 defer.Deferred[tuple[bool, bool]]]] = []
        #: a call of key logins and releases is under way (the next ones wait for it)
        self._calling = False
        #: while this host's rows are rewritten: the reservations and releases waiting
        self._gate: list[defer.Deferred[None]] | None = None
        #: the rows in the database may differ from :attr:`_counts`: rewrite them
        self.resync_wanted = False
        self._quiet_waiters: list[defer.Deferred[None]] = []
        #: a rewrite asked for: its lease and who waits for its answer
        self._sync: tuple[float, list[defer.Deferred[bool]]] | None = None
        self._sync_running = False

    def count(self, user: str) -> int:
        """``user``'s connections on this host."""
        return self._counts.get(user, 0)

    def held(self) -> dict[str, int]:
        return dict(self._counts)

    def _opened(self) -> defer.Deferred[None]:
        """Fires once no rewrite of this host's rows is under way."""
        if self._gate is None:
            return defer.succeed(None)
        waiter: defer.Deferred[None] = defer.Deferred()
        self._gate.append(waiter)
        return waiter

    def reserve(self, user: str) -> defer.Deferred[bool]:
        """Deferred of whether ``user`` may have one more connection (counted if so)."""
        return self._opened().addCallback(lambda _: self._reserve(user))

    def reserve_signed(self, user: str, sign_hash: bytes, now: float,
                       expires: float) -> defer.Deferred[tuple[bool, bool]]:
        """A key login's signature recorded (as :meth:`SharedTables.record_signature`)
        and, if it was new, :meth:`reserve` in the same statement: Deferred of (new,
        granted). It goes in the next call with the other key logins and the releases
        (:meth:`_send`); it waits for a rewrite of this host's rows like reservations:
        its place must be in the counts written."""
        answer: defer.Deferred[tuple[bool, bool]] = defer.Deferred()
        self._logins.append((user, sign_hash, now, expires, answer))
        self._send()
        return answer

    def _reserve(self, user: str) -> defer.Deferred[bool]:
        self._in_flight += 1
        d = self.tables.reserve(self.host_id, user, self.limit)

        def answered(granted: bool) -> bool:
            if granted:
                self._counts[user] = self._counts.get(user, 0) + 1
            return granted
        d.addCallback(answered)
        d.addBoth(self._settled)
        return d

    def release(self, user: str) -> None:
        """One connection of ``user`` closed (one that this host reserved)."""
        count = self._counts.get(user, 0)
        if count <= 0:
            return
        if count == 1:
            del self._counts[user]
        else:
            self._counts[user] = count - 1
        self._unsent[user] = self._unsent.get(user, 0) + 1
        if self._flush or self._quiet_waiters:      # due already, or a quiet waits
            self._send_releases_now()
        elif self._release_timer is None:
            self._release_timer = self.clock.callLater(RELEASE_DELAY, self._releases_due)

    def _releases_due(self) -> None:
        self._release_timer = None
        self._send_releases_now()

    def _send_releases_now(self) -> None:
        """The releases waiting are due: they go in the next call, now if none is under
        way."""
        self._flush = True
        self._send()

    def _cancel_release_timer(self) -> None:
        if self._release_timer is not None:
            self._release_timer.cancel()
            self._release_timer = None

    def _send(self) -> None:
        """Send the key logins waiting, with the releases waiting, in one call; or the
        releases alone once they are due (:attr:`_flush`). Not while a call is under way
        (its answer sends them) or a rewrite is coming (the logins go once it ends; it
        makes the releases moot, and those after it go once it ends)."""
        if self._calling or self._gate is not None:
            return
        if not self._logins and not (self._flush and self._unsent):
            return
        batch, self._logins = self._logins, []
        closed, self._unsent = self._unsent, {}
        self._flush = False
        self._cancel_release_timer()
        self._calling = True
        self._in_flight += 1
        d = self.tables.host_calls(self.host_id, [login[:4] for login in batch],
                                   self.limit, closed)

        def answered(result: Any) -> None:
            if isinstance(result, Failure):
                # the rows may differ from the counts (places not freed, or taken by a
                # call that did its work and lost its answer) until they are written again
                self.resync_wanted = True
                if closed:
                    log.warn("could not free places of {users} in the shared count: {why} "
                             "(written again at the next lease renewal)",
                             users=", ".join(sorted(closed)), why=result.getErrorMessage())
            else:
                for (user, *_), (_, granted) in zip(batch, result, strict=True):
                    if granted:
                        self._counts[user] = self._counts.get(user, 0) + 1
            self._calling = False
            self._send()                 # (before this one is settled: quiet waits)
            if isinstance(result, Failure):
                for *_, waiter in batch:
                    waiter.errback(result)
            else:
                for (*_, waiter), answer in zip(batch, result, strict=True):
                    waiter.callback(answer)
        d.addBoth(answered)
        d.addBoth(self._settled)

    def _settled(self, result: Any) -> Any:
        self._in_flight -= 1
        if self._in_flight == 0 and self._sync is not None and not self._sync_running:
            self._start_sync()
        self._maybe_quiet()
        return result

    def _maybe_quiet(self) -> None:
        if self.idle and self._quiet_waiters:
            waiters, self._quiet_waiters = self._quiet_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def quiet(self) -> defer.Deferred[None]:
        """Sends the releases waiting now; fires once no reservation, release or rewrite
        is under way or waiting (a stop leaves after them; tests wait for a closed
        socket's place to be freed)."""
        if self._unsent:
            self._send_releases_now()
        if self.idle:
            return defer.succeed(None)
        waiter: defer.Deferred[None] = defer.Deferred()
        self._quiet_waiters.append(waiter)
        return waiter

    @property
    def idle(self) -> bool:
        return self._in_flight == 0 and self._gate is None and not self._unsent

    def resync(self, lease: float) -> defer.Deferred[bool]:
        """Write this host's rows again from its own counts (and renew the lease for
        ``lease`` seconds). New reservations and releases wait meanwhile, and the rewrite
        waits for those under way (an answer not yet counted would be lost). Deferred of
        whether the previous lease was alive."""
        done: defer.Deferred[bool] = defer.Deferred()
        if self._sync is not None:          # one is coming: this is the same
            self._sync[1].append(done)
            return done
        self._sync = (lease, [done])
        if self._gate is None:
            self._gate = []
        if self._in_flight == 0:
            self._start_sync()
        return done

    def _start_sync(self) -> None:
        assert self._sync is not None
        lease, waiting = self._sync
        self._sync_running = True
        self._unsent.clear()             # (the counts written are without them)
        self._flush = False
        self._cancel_release_timer()
        d = self.tables.sync(self.host_id, lease, self._counts)

        def finished(result: Any) -> None:
            if not isinstance(result, Failure):
                self.resync_wanted = False
            self._sync, self._sync_running = None, False
            gate, self._gate = self._gate or [], None
            for waiter in gate:
                waiter.callback(None)
            self._send()                 # (logins and closes during the rewrite)
            for answer in waiting:
                if isinstance(result, Failure):
                    answer.errback(result)
                else:
                    answer.callback(result)
            self._maybe_quiet()
        d.addBoth(finished)


class ClusterState:
    """This host's part in the shared state: the two seams, its lease and the cleanup.

    Two :class:`~twisted.internet.task.LoopingCall` timers, owned here and stopped by
    :meth:`stop`: the lease renewal (``lease`` ÷ 3: two renewals may fail before the lease
    ends) and the cleanup (``cleanup_interval``)."""

    def __init__(self, db: Database, config: Config, clock: Any, host_id: str) -> None:
        cluster = config.cluster
        self.host_id = host_id
        self.lease = cluster.lease
        self.cleanup_interval = cluster.cleanup_interval
        self.clock = clock
        self.tables = SharedTables(db)
        self.slots = SharedSlots(self.tables, host_id, config.limits.max_connections_per_user,
                                 clock)
        self.replay = SharedReplay(self.tables, cred.replay_ttl(config.auth.date_window),
                                   self.slots)
        self._renewal = self._timer(self.renew)
        self._cleaning = self._timer(self.cleanup)
        self._renew_failing = False
        self._cleanup_failing = False

    def _timer(self, work: Callable[[], defer.Deferred[Any]]) -> task.LoopingCall:
        timer = task.LoopingCall(work)
        timer.clock = self.clock
        return timer

    @property
    def lease_ok(self) -> bool:
        """Whether the last renewal of this host's lease succeeded."""
        return not self._renew_failing

    @defer.inlineCallbacks
    def start(self) -> Any:
        """Check the schema, replace this host's rows by none (a predecessor of this name
        is gone with its sockets), take the lease, start the timers."""
        yield self.tables.check_schema()
        alive = yield self.tables.sync(self.host_id, self.lease, {})
        if alive:
            log.warn("[cluster] host_id {host} had a live lease: the counts of an earlier "
                     "gateway of this name were dropped (if another gateway runs with this "
                     "name, give each its own host_id)", host=self.host_id)
        self._renewal.start(self.lease / 3, now=False)
        self._cleaning.start(self.cleanup_interval, now=True)
        log.info("shared state in PostgreSQL as host {host} (lease {lease:g} s)",
                 host=self.host_id, lease=self.lease)

    @defer.inlineCallbacks
    def stop(self) -> Any:
        """Stop the timers and leave (this host's places free at once); a failure is
        logged: the lease then ends on its own."""
        for timer in (self._renewal, self._cleaning):
            if timer.running:
                timer.stop()
        try:
            yield self.slots.quiet()      # (a release landing after the leave is lost)
            yield self.tables.leave(self.host_id)
        except Exception as exc:
            log.warn("could not leave the shared state ({why}): this host's places are "
                     "free when its lease ends", why=str(exc))

    def renew(self) -> defer.Deferred[None]:
        """Renew the lease, or write this host's rows again if they may be wrong; never
        fails (a failure is logged once until a renewal works again)."""
        slots = self.slots
        if slots.resync_wanted:
            return slots.resync(self.lease).addCallbacks(self._renewed, self._renew_failed)

        def renewed(alive: bool) -> Any:
            self._renewed(alive)
            if alive:
                return None
            log.warn("shared state: the lease of {host} had ended (renewals late or "
                     "failed): its counts are written again", host=self.host_id)
            slots.resync_wanted = True
            return slots.resync(self.lease).addCallbacks(self._renewed, self._renew_failed)
        d = self.tables.renew(self.host_id, self.lease)
        return d.addCallbacks(renewed, self._renew_failed)

    def _renewed(self, alive: bool) -> None:
        if self._renew_failing:
            self._renew_failing = False
            log.info("shared state: lease of {host} renewed again", host=self.host_id)

    def _renew_failed(self, failure: Failure) -> None:
        if not self._renew_failing:
            self._renew_failing = True
            log.warn("shared state: could not renew the lease of {host}: {why}",
                     host=self.host_id, why=failure.getErrorMessage())

    def cleanup(self) -> defer.Deferred[None]:
        """Delete expired replay rows and the hosts whose lease ended, then measure the
        replay table; never fails (a failure is logged once until one works)."""
        d = self.tables.cleanup(self.clock.seconds())

        def done(deleted: tuple[int, int]) -> defer.Deferred[None]:
            replays, hosts = deleted
            self._cleanup_failing = False
            if hosts:
                log.info("shared state: {hosts} host(s) whose lease ended removed, with "
                         "their connection counts", hosts=hosts)
            if replays:
                log.debug("shared state: {rows} expired replay rows deleted", rows=replays)
            return self.replay.measure()

        def failed(failure: Failure) -> None:
            if not self._cleanup_failing:
                self._cleanup_failing = True
                log.warn("shared state: cleanup failed: {why}", why=failure.getErrorMessage())
        return d.addCallback(done).addErrback(failed)
