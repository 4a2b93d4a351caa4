"""State shared by every connection of one server process.

The :class:`Gateway` ties the layers together: the database facade, the
authenticator, the request dispatcher, the registry of open sessions per user
and the notification fan-out (one LISTEN per channel for the whole process,
each frame encoded once and sent to every subscribed socket).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import orjson
from twisted.internet import defer
from twisted.logger import Logger

from wyseman.auth.admission import Admission
from wyseman.auth.credentials import candidate_keys
from wyseman.auth.keychanges import KeyChanges
from wyseman.auth.login import AUTH_CHANNEL, Authenticator, ChannelPolicy, Login
from wyseman.auth.origins import OriginPolicy
from wyseman.auth.seams import ReplayGuard
from wyseman.auth.signatures import SignatureChecker
from wyseman.config import Config
from wyseman.db.database import Database
from wyseman.db.pg import Notification
from wyseman.db.types import dumps
from wyseman.gateway.dispatch import Dispatcher
from wyseman.gateway.health import HealthCheck
from wyseman.gateway.metrics import Metrics
from wyseman.gateway.resources import ResourceStore
from wyseman.gateway.seams import Broadcaster, Connection, UserSlots
from wyseman.gateway.userslots import LocalSlots
from wyseman.sql import compiler
from wyseman.tuning.affinity import auto_threads
from wyseman.tuning.gcpause import PauseObserver

log = Logger(namespace="wyseman.gateway")

CLOSE_CREDENTIALS_CHANGED = 4001
#: users whose keys are re-read at once after ``wyseman_auth`` hints (beyond: a flood)
AUTH_RECHECKS_MAX = 1024


class _Recheck:
    """A re-read of one user's keys under way: ``again`` if another hint came meanwhile,
    ``at`` the number of the latest hint (:meth:`KeyChanges.announce`), ``waiters`` the
    logins waiting for it to end."""

    __slots__ = ("again", "at", "waiters")

    def __init__(self, at: int) -> None:
        self.again = False
        self.at = at
        self.waiters: list[defer.Deferred[Any]] = []


def notification_frame(notification: Notification) -> bytes:
    """The notify frame; a payload that is not JSON is sent as a string (D8), and so is
    JSON nested too deeply to be encoded again (its text is sent as PostgreSQL had it)."""
    frame = {"action": "notify", "channel": notification.channel, "data": None}
    if notification.payload:
        try:
            frame["data"] = orjson.loads(notification.payload)
            return dumps(frame)
        except (orjson.JSONDecodeError, orjson.JSONEncodeError):
            frame["data"] = notification.payload
    return dumps(frame)


class Gateway:
    def __init__(self, config: Config, db: Database, clock: Any, actions: Any = None,
                 replay: ReplayGuard | None = None, user_slots: UserSlots | None = None, *,
                 broadcaster: Broadcaster) -> None:
        """``replay``, ``user_slots``: a shared replay cache and per-user connection count
        (a worker's supervisor's, or every host's in PostgreSQL:
        wyseman.gateway.cluster); this process's own by default.
        ``broadcaster``: writes notifications to the subscribed sockets (the transport's
        fan-out)."""
        self.config = config
        self.db = db
        self.clock = clock
        self.metrics = Metrics()
        self._gc_pauses = PauseObserver(self.metrics.gc_pauses)
        self.metrics.listen_reconnects.set_function(lambda: db.listener.reconnects)
        pools = db.users
        self.metrics.pool_connections.set_function(lambda: pools.open_connections)
        self.metrics.pool_waiting.set_function(pools.waiting_now)
        self.metrics.pool_waits.set_function(pools.waits_total)
        batches = db.batch_stats
        self.metrics.read_batches.set_function(lambda: batches.batches)
        self.metrics.batched_reads.set_function(lambda: batches.batched_reads)
        self.metrics.failed_batches.set_function(lambda: batches.failed_batches)
        limits = config.limits
        self.max_connections = limits.max_connections
        #: each user's connections, from an accepted login to its close (wyseman.gateway.userslots)
        self.user_slots = user_slots or LocalSlots(limits.max_connections_per_user)
        self.max_in_flight = limits.max_in_flight
        self.max_outbound_bytes = limits.max_outbound_bytes
        self.trusted_proxies = config.server.trusted_proxies
        self.ip_style = config.server.ip_style
        self.log_connections = config.server.log_connections
        #: what ``GET /healthz`` reports
        self.health = HealthCheck(db.ping, clock)
        self.signatures = SignatureChecker(config.auth.verify_threads
                                           or auto_threads(config.server.workers), clock)
        self.authenticator = Authenticator(
            db, clock, date_window=config.auth.date_window, signatures=self.signatures,
            channels=ChannelPolicy(config.channels.allow, config.channels.roles),
            max_failures=config.auth.max_failures, failure_window=config.auth.failure_window,
            replay=replay)
        policy = compiler.Policy(denied_schemas=frozenset(config.views.deny_schemas),
                                 allowed_schemas=frozenset(config.views.allow_schemas) or None,
                                 max_rows=limits.max_reply_rows,
                                 max_bytes=limits.max_reply_bytes)
        self.dispatcher = Dispatcher(db, policy, actions, clock=clock,
                                     observe=self.metrics.request)
        #: what custom actions publish for their sessions' clients (served by transports)
        self.resources = ResourceStore(clock, max_bytes=config.actions.resource_max_bytes,
                                       max_total=config.actions.resource_total_bytes,
                                       ttl=config.actions.resource_ttl)
        self.dispatcher.resources = self.resources
        self._by_user: dict[str, set[Connection]] = {}
        #: ``wyseman_auth`` notifications, for the logins being checked meanwhile
        self.key_changes = KeyChanges()
        self._rechecks: dict[str, _Recheck] = {}
        self._flooded = False
        self._flood_missed = False
        self._idle_waiters: list[defer.Deferred[Any]] = []
        #: while :meth:`close_all` runs: the sockets not yet gone, and its Deferred
        self._closing: tuple[set[Connection], defer.Deferred[Any]] | None = None
        self._by_channel: dict[str, set[Connection]] = {}
        self.connection_count = 0
        #: the whole login decision (wyseman.auth.admission), for every transport
        self.admission = Admission(
            self.authenticator, origins=OriginPolicy(config.server.allowed_origins),
            user_slots=self.user_slots, key_changes=self.key_changes,
            keys_settled=self.keys_settled,
            at_capacity=lambda: self.connection_count >= self.max_connections,
            prepare=self._prepare)
        self.admin_channel = config.channels.admin
        #: what writes a notification to its subscribers' sockets (the transport's)
        self.fanout = broadcaster

    # -- life cycle ----------------------------------------------------------
    def start(self) -> Any:
        self._gc_pauses.start()
        d = self.db.start()
        if self.admin_channel:
            d.addCallback(lambda _: self.db.listener.subscribe(self.admin_channel,
                                                                self._on_admin))
        d.addCallback(lambda _: self.db.listener.subscribe(AUTH_CHANNEL, self._on_auth))
        return d

    def stop(self) -> defer.Deferred[Any]:
        self._gc_pauses.stop()
        self.fanout.close()
        self.signatures.close()
        return self.db.stop()

    # -- sessions ----------------------------------------------------------------
    def _prepare(self, login: Login) -> defer.Deferred[Any]:
        return self.ensure_listening(login.listen)

    def ensure_listening(self, channels: Sequence[str]) -> defer.Deferred[Any]:
        """LISTEN to ``channels`` now, so that a socket is subscribed the moment it opens
        (the upgrade completes after this fires)."""
        return defer.gatherResults(
            [self.db.listener.subscribe(channel, self._on_notify) for channel in channels])

    def register(self, protocol: Connection) -> defer.Deferred[Any]:
        """Track an opened connection; fires once its channels are LISTENed."""
        session = protocol.session
        self.connection_count += 1
        self.metrics.connections.labels(protocol.transport_name).inc()
        self._by_user.setdefault(session.user, set()).add(protocol)
        listening = []
        for channel in session.listen:
            members = self._by_channel.setdefault(channel, set())
            listening.append(self.db.listener.subscribe(channel, self._on_notify))
            members.add(protocol)
        return defer.gatherResults(listening)

    def unregister(self, protocol: Connection) -> None:
        if self._closing is not None:
            closing, done = self._closing
            closing.discard(protocol)
            if not closing and not done.called:
                done.callback(None)
        session = protocol.session
        self.resources.session_ended(session)
        self.connection_count -= 1
        self.metrics.connections.labels(protocol.transport_name).dec()
        users = self._by_user.get(session.user)
        if users is not None:
            users.discard(protocol)
            if not users:
                del self._by_user[session.user]
        for channel in session.listen:
            members = self._by_channel.get(channel)
            if members is None:
                continue
            members.discard(protocol)
            if not members:
                del self._by_channel[channel]
                self.db.listener.unsubscribe(channel, self._on_notify)

    def close_all(self, code: int, reason: str, timeout: float) -> defer.Deferred[Any]:
        """Send every open socket a close frame (``code``, ``reason``), let clients answer
        it for up to ``timeout`` seconds, then drop those still there; fires when all are
        gone."""
        open_now = set(self.all_connections())
        if not open_now:
            return defer.succeed(None)
        done: defer.Deferred[Any] = defer.Deferred()
        self._closing = (open_now, done)
        for protocol in list(open_now):
            protocol.end_session(code, reason)

        def drop_the_rest() -> None:
            for protocol in list(open_now):
                protocol.abort()
        late = self.clock.callLater(timeout, drop_the_rest)

        def finished(result: Any) -> Any:
            if late.active():
                late.cancel()
            self._closing = None
            return result
        return done.addBoth(finished)

    def connections_of(self, user: str) -> frozenset[Connection]:
        return frozenset(self._by_user.get(user, ()))

    def all_connections(self) -> list[Connection]:
        return [p for protocols in self._by_user.values() for p in protocols]

    # -- notifications --------------------------------------------------------------
    def _on_notify(self, notification: Notification) -> None:
        members = self._by_channel.get(notification.channel)
        if not members:
            return
        started = time.perf_counter()
        sent = self.fanout.broadcast(list(members), notification_frame(notification))
        self.metrics.notification_fanout.observe(time.perf_counter() - started)
        self.metrics.notifications.inc(sent)
        if sent < len(members):
            self.metrics.notifications_dropped.inc(len(members) - sent)

    def _on_auth(self, notification: Notification) -> None:
        """A user's key may have changed, or the user gone: re-read the stored keys, then
        close the sockets whose key is gone and tell the logins being checked meanwhile
        (:class:`KeyChanges`).

        Any role that may NOTIFY can send on this channel, so the payload is only a hint
        naming the user: what counts is what the database stores. A forged notification
        costs one read of that user's keys and closes nothing."""
        try:
            change = orjson.loads(notification.payload)
            user = change["user"]
            if not isinstance(user, str):
                raise TypeError(user)
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            log.warn("ignored malformed {channel} payload", channel=AUTH_CHANNEL)
            return
        self._recheck(user)

    def _recheck(self, user: str) -> None:
        """Re-read ``user``'s keys; hints that come while a read runs are coalesced into
        one more read after it (the running one may predate their change). Past
        :data:`AUTH_RECHECKS_MAX` users at once (a flood), every login being checked is
        refused and every open key socket checked, as after a LISTEN gap."""
        at = self.key_changes.announce()
        pending = self._rechecks.get(user)
        if pending is not None:
            pending.again, pending.at = True, at
            return
        if len(self._rechecks) >= AUTH_RECHECKS_MAX:
            self._flood_missed = True
            if not self._flooded:
                self._flooded = True
                log.warn("more than {count} users' keys announced as changed at once: "
                         "checking every open key socket", count=AUTH_RECHECKS_MAX)
                self._check_everyone()
            return
        pending = self._rechecks[user] = _Recheck(at)
        self._run_recheck(user, pending)

    def _check_everyone(self) -> None:
        """Hints were dropped (a flood): refuse the logins being checked and check every
        open key socket, again until no hint was dropped during a check."""
        self._flood_missed = False

        def over(_: Any) -> None:
            if self._flood_missed:
                self._check_everyone()
            else:
                self._flooded = False
                self._maybe_idle()
        self._check_open_key_sockets("key-change flood").addBoth(over)

    def _run_recheck(self, user: str, pending: _Recheck) -> None:
        pending.again = False
        d = self._check_keys(user, announced=pending.at)

        def done(_: Any) -> None:
            if pending.again:
                self._run_recheck(user, pending)
                return
            del self._rechecks[user]
            waiters, pending.waiters = pending.waiters, []
            for waiter in waiters:
                waiter.callback(None)
            self._maybe_idle()
        d.addBoth(done)

    def key_checks_idle(self) -> defer.Deferred[Any]:
        """Fires once no re-read of announced key changes is under way (for tests and
        orderly stops)."""
        waiter: defer.Deferred[Any] = defer.Deferred()
        self._idle_waiters.append(waiter)
        self._maybe_idle()
        return waiter

    def _maybe_idle(self) -> None:
        if self._rechecks or self._flooded or not self._idle_waiters:
            return
        waiters, self._idle_waiters = self._idle_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def keys_settled(self, user: str) -> defer.Deferred[Any]:
        """Fires once no re-read of ``user``'s keys is under way: a login about to open
        waits for it, so that a removal announced meanwhile refuses it."""
        pending = self._rechecks.get(user)
        if pending is None:
            return defer.succeed(None)
        waiter: defer.Deferred[Any] = defer.Deferred()
        pending.waiters.append(waiter)
        return waiter

    def listener_reconnected(self) -> defer.Deferred[Any]:
        """The LISTEN connection was lost and is back: key changes announced meanwhile
        were missed. The logins being checked are refused (:meth:`KeyChanges.missed`), and
        the key sockets of each user with open sockets are checked against the keys
        stored now; those whose key is gone are closed as a notification would have."""
        return self._check_open_key_sockets("LISTEN connection back")

    def _check_open_key_sockets(self, why: str) -> defer.Deferred[Any]:
        self.key_changes.missed()
        users = [user for user, protocols in self._by_user.items()
                 if any(p.session.key_x is not None for p in protocols)]
        if users:
            log.info("{why}: checking the keys of {count} user(s) with open sockets",
                     why=why, count=len(users))
        return defer.gatherResults([self._check_keys(user) for user in users])

    @defer.inlineCallbacks
    def _check_keys(self, user: str, announced: int | None = None) -> Any:
        """Close ``user``'s sockets whose key is no longer stored; ``announced`` (the
        number of a notification that said the keys changed): record what is stored for
        the logins being checked, and close sockets logged in without a key if the user
        is gone."""
        try:
            conn_pub = yield self.db.conn_pub(user)
            keyless = [p for p in self.connections_of(user) if p.session.key_x is None]
            gone = bool(announced is not None and keyless
                        and not (yield self.db.user_exists(user)))
        except Exception as exc:
            log.warn("could not read the keys of {user} again: {error}", user=user,
                     error=str(exc))
            if announced is not None:   # unknown: refuse the logins being checked
                self.key_changes.missed()
            return
        remaining = frozenset(str(key["x"]) for key in candidate_keys(conn_pub)
                              if key.get("x") is not None)
        if announced is not None:
            self.key_changes.record(user, remaining, announced)
        self._close_if_key_gone(user, remaining, keyless=gone)

    def _close_if_key_gone(self, user: str, remaining: frozenset[Any], keyless: bool) -> None:
        """Close ``user``'s sockets whose key is not in ``remaining``; ``keyless``: those
        logged in without a key too (the user is gone)."""
        for protocol in self.connections_of(user):
            key_x = protocol.session.key_x
            if key_x not in remaining and (keyless or key_x is not None):
                log.info("closing a connection of {user}: credentials changed", user=user)
                protocol.end_session(CLOSE_CREDENTIALS_CHANGED, "credentials changed")

    def _on_admin(self, notification: Notification) -> None:
        log.info("schema change signalled on {channel}: metadata caches dropped",
                 channel=notification.channel)
        self.db.clear_caches()
