"""One LISTEN connection per server process, shared by every socket.

Channels are LISTENed while at least one subscriber wants them and UNLISTENed
when the last one leaves. If PostgreSQL goes away the connection is re-opened
with exponential backoff and every active channel is LISTENed again (the Node
server silently loses them, D10).
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import TypeVar

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from wyseman.db.pg import Connection, Notification
from wyseman.db.seams import Clock, Timer

log = Logger(namespace="wyseman.listener")

Subscriber = Callable[[Notification], object]

_T = TypeVar("_T")


class Listener:
    """Ref-counted LISTEN subscriptions on one reconnecting connection."""

    def __init__(self, connector: Callable[[], defer.Deferred[Connection]], clock: Clock, *,
                 initial_delay: float = 0.2, max_delay: float = 30.0,
                 on_reconnect: Callable[[], object] | None = None) -> None:
        self._connector = connector
        self._clock = clock
        self._initial_delay = initial_delay
        self._max_delay = max_delay
        self._on_reconnect = on_reconnect
        self._subscribers: dict[str, set[Subscriber]] = {}
        self._listening: set[str] = set()
        self._in_flight: dict[str, list[defer.Deferred[None]]] = {}
        self._conn: Connection | None = None
        self._retry: Timer | None = None
        self._delay = initial_delay
        self._running = False
        self._connecting: defer.Deferred[Connection] | None = None
        self.reconnects = 0
        #: fires once the first connection is up, its channels listened
        self.ready: defer.Deferred[None] = defer.Deferred()

    # -- life cycle --------------------------------------------------------
    def start(self) -> defer.Deferred[None]:
        """Connect; the Deferred fires when the first connection is up (or fails)."""
        self._running = True
        return self._connect(first=True)

    def stop(self) -> defer.Deferred[None]:
        """Close the connection; the Deferred fires once a connect still under way has
        finished (and been closed) too."""
        self._running = False
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._listening.clear()
        if self._connecting is None:
            return defer.succeed(None)
        settled: defer.Deferred[None] = defer.Deferred()

        def settle(result: _T) -> _T:
            settled.callback(None)
            return result
        self._connecting.addBoth(settle)
        return settled

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.closed

    def _connect(self, first: bool = False) -> defer.Deferred[None]:
        self._retry = None
        d = defer.maybeDeferred(self._connector)
        self._connecting = d

        @defer.inlineCallbacks
        def opened(conn: Connection) -> Generator[defer.Deferred[None], object, None]:
            self._connecting = None
            if not self._running:
                conn.close()
                return None
            self._conn = conn
            conn.add_notify_observer(self._deliver)
            conn.on_lost(self._lost)
            self._listening.clear()
            for channel in list(self._subscribers):
                if self._conn is not conn:  # stopped or lost meanwhile
                    return None
                yield self._listen(channel)
            self._delay = self._initial_delay
            if not first:
                self.reconnects += 1
                log.info("LISTEN connection restored; {count} channel(s) listened again",
                         count=len(self._listening))
                if self._on_reconnect is not None:
                    self._on_reconnect()
            if not self.ready.called:
                self.ready.callback(None)
            return None

        def failed(failure: Failure) -> None:
            self._connecting = None
            if first and not self.ready.called:
                log.warn("LISTEN connection failed: {error}; retrying",
                         error=failure.getErrorMessage())
            self._schedule_retry()

        return d.addCallbacks(opened, failed)

    def _schedule_retry(self) -> None:
        if not self._running or self._retry is not None:
            return
        delay, self._delay = self._delay, min(self._delay * 2, self._max_delay)
        self._retry = self._clock.callLater(delay, self._connect)

    def _lost(self, reason: Failure) -> None:
        log.warn("LISTEN connection lost: {error}; reconnecting", error=reason.getErrorMessage())
        self._conn = None
        self._listening.clear()
        self._schedule_retry()

    # -- subscriptions -------------------------------------------------------
    def subscribe(self, channel: str, subscriber: Subscriber) -> defer.Deferred[None]:
        """Add a subscriber; LISTEN when it is the channel's first. Fires when active
        (or at once while PostgreSQL is away: the channel is LISTENed on reconnect)."""
        subscribers = self._subscribers.setdefault(channel, set())
        subscribers.add(subscriber)
        if channel in self._in_flight:  # LISTEN sent, not yet confirmed
            waiter: defer.Deferred[None] = defer.Deferred()
            self._in_flight[channel].append(waiter)
            return waiter
        if channel in self._listening or not self.connected:
            return defer.succeed(None)
        return self._listen(channel)

    def unsubscribe(self, channel: str, subscriber: Subscriber) -> defer.Deferred[None]:
        subscribers = self._subscribers.get(channel)
        if subscribers is None:
            return defer.succeed(None)
        subscribers.discard(subscriber)
        if subscribers:
            return defer.succeed(None)
        del self._subscribers[channel]
        if channel in self._listening and self.connected and self._running:
            self._listening.discard(channel)
            assert self._conn is not None
            return self._conn.unlisten(channel).addErrback(self._log_error, "UNLISTEN", channel)
        self._listening.discard(channel)
        return defer.succeed(None)

    def _listen(self, channel: str) -> defer.Deferred[None]:
        if self._conn is None:
            return defer.succeed(None)  # LISTENed again on reconnect
        self._listening.add(channel)
        self._in_flight[channel] = []

        def confirmed(result: object) -> None:
            for waiter in self._in_flight.pop(channel, []):
                waiter.callback(None)
        d = self._conn.listen(channel).addErrback(self._log_error, "LISTEN", channel)
        return d.addBoth(confirmed)

    def _log_error(self, failure: Failure, what: str, channel: str) -> None:
        if what == "LISTEN":
            self._listening.discard(channel)  # tried again on the next subscribe/reconnect
        log.warn("{what} {channel} failed: {error}", what=what, channel=channel,
                 error=failure.getErrorMessage())

    @property
    def channels(self) -> frozenset[str]:
        """Channels currently LISTENed on the server."""
        return frozenset(self._listening)

    def subscriber_count(self, channel: str) -> int:
        return len(self._subscribers.get(channel, ()))

    def _deliver(self, notification: Notification) -> None:
        for subscriber in list(self._subscribers.get(notification.channel, ())):
            try:
                subscriber(notification)
            except Exception:
                log.failure("notification subscriber failed")
