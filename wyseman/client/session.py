"""A connection that stays up: :class:`ReconnectingSession` on Twisted's ``ClientService``.

Each (re)connection fetches ``/clientinfo``, signs a fresh key login and LISTENs
to the same channels again; waits between attempts grow with ClientService's
backoff. Requests sent while disconnected wait for the next connection (up to
their timeout); requests in flight when the connection drops fail with
:class:`~wyseman.client.connection.ConnectionClosed` — the server may or may
not have run them, so they are never resent blindly.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any, cast
from urllib.parse import quote, urlsplit

from twisted.application.internet import ClientService
from twisted.internet import defer
from twisted.internet.interfaces import IProtocolFactory, IStreamClientEndpoint
from zope.interface import implementer

from wyseman.client import keys
from wyseman.client.connection import (
    USER_AGENT,
    ConnectionClosed,
    WysemanConnection,
    _ClientFactory,
    _clientinfo_url,
    _ClientProtocol,
    _Endpoint,
    _transport_endpoint,
    fetch_clientinfo,
)
from wyseman.timers import ClockTimer


@implementer(IStreamClientEndpoint)
class _SigningEndpoint:
    """Before each TCP connect, sign a fresh login and put it in the factory's URL."""

    def __init__(self, session: ReconnectingSession) -> None:
        self.session = session

    @defer.inlineCallbacks
    def connect(self, factory: _ClientFactory) -> Any:
        s = self.session
        info = yield fetch_clientinfo(s.clientinfo_url, s.reactor, s.tls_options)
        message = json.dumps({k: info[k] for k in ("ip", "cookie", "userAgent", "date")
                              if k in info}, separators=(",", ":"), ensure_ascii=False)
        query = [("user", s.user)]
        if s.listen:
            query.append(("db", keys.listen_param(s.listen)))
        query += [("sign", keys.sign(s.key, message.encode("utf-8"))), ("date", info["date"])]
        qs = "&".join(f"{k}={quote(v, safe=':-_.')}" for k, v in query)
        factory.setSessionParameters(f"{s.parts.scheme}://{s.parts.netloc}/?{qs}",
                                     useragent=USER_AGENT)
        protocol = yield s.transport_endpoint().connect(factory)
        return protocol


class _SessionFactory(_ClientFactory):
    """Gives the protocol of each attempt a fresh connection with the session's observers."""

    def __init__(self, session: ReconnectingSession, url: str) -> None:
        super().__init__(url, useragent=USER_AGENT)
        self.session = session

    def buildProtocol(self, addr: Any) -> _ClientProtocol:  # noqa: N802
        connection = self.session._new_connection()
        self.connection = connection
        protocol = super().buildProtocol(addr)
        assert isinstance(protocol, _ClientProtocol)   # (our protocol class)
        protocol.wyseman_connection = connection
        return protocol


class ReconnectingSession:
    def __init__(self, url: str, user: str, key: Mapping[str, Any], *,
                 listen: Iterable[str] = (), clientinfo_url: str | None = None,
                 reactor: Any = None, tls_options: Any = None, timeout: float = 30.0) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor
            reactor = default_reactor
        self.reactor = reactor
        self.parts = urlsplit(url)
        self.user = user
        self.key = key
        self.listen = list(listen)
        self.clientinfo_url = clientinfo_url or _clientinfo_url(url, None)
        self.tls_options = tls_options
        self.timeout = timeout
        self._observers: dict[str, list[Callable[[Any], Any]]] = {}
        self.connection: WysemanConnection | None = None
        self.connects = 0
        #: requests made while no connection is open, woken by the next one
        self._waiting: list[defer.Deferred] = []
        self._stopped = False
        factory = _SessionFactory(self, url)
        factory._batched_timer = ClockTimer(reactor)
        factory.setProtocolOptions(autoPingInterval=0, perMessageCompressionOffers=[])
        self._factory = factory
        # (the casts: plain mypy cannot see zope interfaces)
        self._service = ClientService(cast(IStreamClientEndpoint, _SigningEndpoint(self)),
                                      cast(IProtocolFactory, factory), clock=reactor,
                                      prepareConnection=self._prepare)

    def _new_connection(self) -> WysemanConnection:
        """The connection of the next attempt, with the observers registered so far."""
        connection = WysemanConnection(self.reactor, self.timeout)
        for channel, observers in self._observers.items():
            for observer in observers:
                connection.on_notify(channel, observer)
        return connection

    def transport_endpoint(self) -> _Endpoint:
        return _transport_endpoint(self.reactor, self.parts, self.tls_options)

    def _prepare(self, protocol: Any) -> defer.Deferred:
        """ClientService counts the connection as made once the WebSocket is open."""
        connection = protocol.wyseman_connection

        def opened(result: Any) -> Any:
            self.connection = connection
            self.connects += 1
            waiting, self._waiting = self._waiting, []
            for waiter in waiting:
                if not waiter.called:
                    waiter.callback(connection)
            return result
        return connection._open.addCallback(opened)

    def start(self) -> None:
        self._stopped = False
        self._service.startService()

    def stop(self) -> defer.Deferred:
        self._stopped = True
        waiting, self._waiting = self._waiting, []
        for waiter in waiting:
            if not waiter.called:
                waiter.errback(ConnectionClosed("the session was stopped"))
        return self._service.stopService()

    def on_notify(self, channel: str, callback: Callable[[Any], Any]) -> None:
        self._observers.setdefault(channel, []).append(callback)
        if self.connection is not None:
            self.connection.on_notify(channel, callback)

    def _next_connection(self, timeout: float) -> defer.Deferred:
        """The next connection to open (within ``timeout`` seconds).

        Not ClientService's ``whenConnected``: while a lost connection's close is being
        handled, the service still counts it as connected and would hand it back, so a
        request made from a failed request's errback would fail at once, again and
        again, without the reactor ever getting to reconnect."""
        if self._stopped:
            return defer.fail(ConnectionClosed("the session was stopped"))
        waiter: defer.Deferred = defer.Deferred()
        self._waiting.append(waiter)

        def late(failure: Any) -> Any:
            if failure.check(defer.TimeoutError):
                if waiter in self._waiting:
                    self._waiting.remove(waiter)
                raise defer.TimeoutError(f"no connection within {timeout:g} s")
            return failure
        return waiter.addTimeout(timeout, self.reactor).addErrback(late)

    @defer.inlineCallbacks
    def request(self, message: Mapping[str, Any], timeout: float | None = None) -> Any:
        """Send on the current connection, or on the next one when there is none open;
        fires with the reply's ``data``. ``timeout`` bounds the wait for a connection
        and the reply together."""
        total = timeout or self.timeout
        started = self.reactor.seconds()
        connection = self.connection
        if connection is None or not connection.connected:
            connection = yield self._next_connection(total)
        remaining = max(total - (self.reactor.seconds() - started), 0.001)
        data = yield connection.request(message, remaining)
        return data
