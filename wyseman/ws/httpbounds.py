"""The HTTP side of a gateway port, bounded: what a connection may do before it is a
WebSocket (or while it fetches ``/clientinfo``).

``[limits] max_connections`` counts a connection from its upgrade on; before that it is
twisted.web's, which bounds neither how many such connections there are nor the size of
a request body (spooled to a temporary file). Here: at most ``max_pending`` connections
per port still speak HTTP, and at most ``per_address`` of them from one client address
(:class:`GatewaySite`; the idle timeout is the site's ``timeout``), and no request
carries a body (:class:`BoundedRequest`).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any, cast

from autobahn.twisted.resource import WebSocketResource
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.web import resource, server

from wyseman.auth import networks
from wyseman.auth.networks import Network
from wyseman.ws.seams import ConnectionRouter
from wyseman.ws.sniff import Sniffer

log = Logger(namespace="wyseman.http")


#: the most body an HTTP request to a gateway port may carry (its clients send none)
MAX_REQUEST_BODY = 4096


class BoundedRequest(server.Request):
    """A request to a gateway port (a WebSocket upgrade, ``GET /clientinfo``) carries no
    body: one that announces more than :data:`MAX_REQUEST_BODY` bytes, or a chunked one,
    is cut off at once (twisted.web would spool a body of any size to a temporary file)."""

    _refused = False

    def gotLength(self, length: int | None) -> None:  # noqa: N802
        if length is not None and length <= MAX_REQUEST_BODY:
            super().gotLength(length)
            return
        self._refused = True
        self.content = io.BytesIO()  # type: ignore[assignment]  # (twisted.web annotates it None)
        log.warn("refused an HTTP request with a body of {size} from {peer}",
                 size="unknown length (chunked)" if length is None else f"{length} bytes",
                 peer=getattr(self.getClientAddress(), "host", "?"))
        cast(Any, self.channel).transport.abortConnection()

    def handleContentChunk(self, data: bytes) -> None:  # noqa: N802
        if not self._refused:
            super().handleContentChunk(data)

    def process(self) -> None:
        if not self._refused:
            super().process()


def client_network(addr: Any) -> Network | None:
    """What the per-address bound counts a connection from ``addr`` (a Twisted
    ``IAddress``) under (:func:`wyseman.auth.networks.client_network`); ``None`` (not
    counted) for a Unix socket or a host that is not an address."""
    return networks.client_network(getattr(addr, "host", None))


def address_key(addr: Any) -> str | None:
    """:func:`client_network` as text: ``192.0.2.7``, ``2001:db8:1:2::/64``."""
    network = client_network(addr)
    return None if network is None else networks.network_key(network)


class _Refused(Protocol):
    """A connection over :attr:`GatewaySite.per_address`: closed at once."""

    transport: Any     # (a TCP transport, which can abort)

    def connectionMade(self) -> None:  # noqa: N802
        self.transport.abortConnection()


class _Pending:
    """One connection that still speaks HTTP, as :class:`GatewaySite` counts it: from
    its acceptance to its upgrade or its end. ``protocol`` is what reads its bytes now
    (the :class:`~wyseman.ws.sniff.Sniffer`, then the HTTP channel, if any)."""

    __slots__ = ("key", "protocol", "deadline", "released")

    def __init__(self, key: str | None) -> None:
        self.key = key
        self.protocol: Any = None
        self.deadline: Any = None
        self.released = False


class GatewaySite(server.Site):
    """A site that holds at most ``max_pending`` connections still speaking HTTP (their
    request not yet in, a /clientinfo connection kept alive, an upgrade not yet taken
    over), and at most ``per_address`` of them from one client address (see
    :func:`address_key`; 0: no such bound): further ones are closed as soon as they are
    accepted; at ``max_pending`` the oldest one is closed to make room for the new one.
    ``[limits] max_connections`` counts a connection only from its upgrade on,
    so without these bounds idle and trickling clients could take every file descriptor,
    and one client could take every pending place.

    Addresses in ``exempt`` (the trusted reverse proxies, whose connections carry many
    clients) are bound by ``max_pending`` alone. Refusals are logged when they start and
    when they end (with how many there were), not one line each: a flood must not flood
    the log too.

    With a ``websocket`` factory or a ``clientinfo`` resource, a connection's first bytes
    are read by a :class:`~wyseman.ws.sniff.Sniffer`: a plain WebSocket upgrade goes
    straight to that factory's protocol (Autobahn parses the request, once), a plain
    ``GET /clientinfo`` is answered at once (``clientinfo.body``), anything else goes to
    twisted.web as before."""

    def __init__(self, root: resource.Resource, *, max_pending: int, per_address: int = 0,
                 exempt: Sequence[Any] = (), on_refused: Any = None,
                 deadline: float | None = None, websocket: Any = None,
                 clientinfo: Any = None, router: ConnectionRouter | None = None,
                 **kwargs: Any) -> None:
        """``deadline``: the most seconds a connection may speak HTTP in all (the idle
        ``timeout`` alone lets a client that sends a byte now and then stay for ever).
        ``on_refused(reason)`` is called for each refused connection, with ``pending``
        or ``pending_address``."""
        super().__init__(root, **kwargs)
        self.max_pending = max_pending
        self.per_address = per_address
        self.exempt = tuple(exempt)
        self.pending = 0
        #: the pending connections, oldest first (see _shed_oldest)
        self._by_age: dict[_Pending, None] = {}
        #: pending connections by :func:`address_key` (entries at 0 are removed)
        self.by_address: dict[str, int] = {}
        self.deadline = deadline
        self.websocket = websocket
        self.clientinfo = clientinfo
        #: who serves a user's upgrades (``[server] route_by_user``), or None
        self.router: ConnectionRouter | None = router
        self._on_refused = on_refused
        #: connections closed to make room since max_pending was reached, and refusals
        #: by address since its bound was reached
        self._refused_all: int | None = None
        self._refused_from: dict[str, int] = {}

    @classmethod
    def bounded_by(cls, root: resource.Resource, limits: Any, **kwargs: Any) -> GatewaySite:
        """A site with the HTTP bounds of ``[limits]``: no request bodies, at most
        ``max_pending_connections``, ``open_handshake_timeout`` idle seconds and twice
        that in all."""
        return cls(root, requestFactory=BoundedRequest,
                   max_pending=limits.max_pending_connections,
                   per_address=limits.max_pending_per_address,
                   timeout=limits.open_handshake_timeout,
                   deadline=2 * limits.open_handshake_timeout, **kwargs)

    def buildProtocol(self, addr: Any) -> Any:  # noqa: N802
        network = client_network(addr) if self.per_address else None
        key = None
        if network is not None and not any(network.version == trusted.version
                                           and network.subnet_of(trusted)
                                           for trusted in self.exempt):
            key = networks.network_key(network)
            if self.by_address.get(key, 0) >= self.per_address:
                return self._refuse(key)
        if self.pending >= self.max_pending:
            self._shed_oldest()
        pending = _Pending(key)
        self._by_age[pending] = None
        self.pending += 1
        if key is not None:
            self.by_address[key] = self.by_address.get(key, 0) + 1
        if self.deadline:
            reactor: Any = self.reactor   # (zope interfaces are no mypy types)
            pending.deadline = reactor.callLater(self.deadline, self._overdue, pending)
        if self.websocket is not None or self.clientinfo is not None or self.router:
            sniffer = Sniffer(self, addr, pending)
            pending.protocol = sniffer
            return sniffer
        return self.http_channel(addr, pending)

    def http_channel(self, addr: Any, pending: _Pending) -> Any:
        """twisted.web's channel for a connection counted as ``pending``; it counts until
        it closes or :class:`Upgrade` takes it over."""
        channel = super().buildProtocol(addr)
        inner = getattr(channel, "_channel", channel)
        inner._wyseman_pending = pending
        pending.protocol = inner
        lost = channel.connectionLost

        def connection_lost(reason: Any) -> Any:
            self.release(channel)
            return lost(reason)
        channel.connectionLost = connection_lost
        return channel

    def _shed_oldest(self) -> None:
        """At ``max_pending``, make room by closing the connection that has spoken HTTP
        the longest: a login completes in milliseconds, so the oldest are the idle and
        trickling ones, and a few addresses holding every place (each within its own
        bound) cannot keep new clients out by reopening."""
        oldest = next(iter(self._by_age))
        transport = getattr(oldest.protocol, "transport", None)
        if self._on_refused is not None:
            self._on_refused("pending")
        if self._refused_all is None:
            self._refused_all = 0
            log.warn("{count} connections still speak HTTP ([limits] "
                     "max_pending_connections): closing the oldest for each new one",
                     count=self.max_pending)
        self._refused_all += 1
        self._release_pending(oldest)
        if transport is not None:
            transport.abortConnection()

    def _refuse(self, key: str) -> Protocol:
        if self._on_refused is not None:
            self._on_refused("pending_address")
        if key not in self._refused_from:
            self._refused_from[key] = 0
            log.warn("refusing new connections from {address}: {count} of its "
                     "connections still speak HTTP ([limits] max_pending_per_address)",
                     address=key, count=self.by_address.get(key, 0))
        self._refused_from[key] += 1
        return _Refused()

    def _overdue(self, pending: _Pending) -> None:
        pending.deadline = None
        log.info("closed an HTTP connection that was still without a WebSocket after "
                 "{seconds} s", seconds=self.deadline)
        transport = getattr(pending.protocol, "transport", None)
        if transport is not None:
            transport.abortConnection()

    def release(self, channel: Any) -> None:
        """``channel`` no longer counts: it closed, or its connection became a WebSocket.

        ``channel`` is a :class:`~wyseman.ws.sniff.Sniffer` or twisted.web's channel.
        twisted.web hands the transport a wrapper (``_GenericHTTPChannelProtocol``) whose
        ``connectionLost`` attribute lives on the HTTP channel inside it, which is also
        what a request's ``channel`` is: both paths come down to that inner channel."""
        inner = getattr(channel, "_channel", channel)
        pending = getattr(inner, "_wyseman_pending", None)
        if pending is None or pending.released:
            return
        self._release_pending(pending)
        # drop the hook (it refers to the channel): no cycle keeps a channel alive
        vars(inner).pop("connectionLost", None)

    def _release_pending(self, pending: _Pending) -> None:
        pending.released = True
        self._by_age.pop(pending, None)
        self.pending -= 1
        key = pending.key
        if key is not None:
            left = self.by_address[key] - 1
            if left:
                self.by_address[key] = left
            else:
                del self.by_address[key]
            refused = self._refused_from.pop(key, None)
            if refused is not None:
                log.info("accepting connections from {address} again ({refused} "
                         "refused)", address=key, refused=refused)
        if self._refused_all is not None and self.pending < self.max_pending - 1:
            log.info("fewer connections speak HTTP again ({refused} closed to make room)",
                     refused=self._refused_all)
            self._refused_all = None
        if pending.deadline is not None and pending.deadline.active():
            pending.deadline.cancel()
        pending.deadline = pending.protocol = None


class Upgrade(WebSocketResource):
    """The WebSocket resource; the connection it takes over leaves the site's pending
    count (Autobahn's and the gateway's connection limits count it from here on)."""

    def render(self, request: server.Request) -> Any:
        site = getattr(request.channel, "site", None)
        if isinstance(site, GatewaySite):
            site.release(request.channel)
        return super().render(request)
