"""The HTTP side of a gateway port, bounded: what a connection may do before it is a
WebSocket (or while it fetches ``/clientinfo``).

``[limits] max_connections`` counts a connection from its upgrade on; before that it is
twisted.web's, which bounds neither how many such connections there are nor the size of
a request body (spooled to a temporary file). Here: at most ``max_pending`` connections
per port still speak HTTP (:class:`GatewaySite`; the idle timeout is the site's
``timeout``), and no request carries a body (:class:`BoundedRequest`).
"""

from __future__ import annotations

import io
from typing import Any

from autobahn.twisted.resource import WebSocketResource
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.web import resource, server

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
        self.content = io.BytesIO()
        log.warn("refused an HTTP request with a body of {size} from {peer}",
                 size="unknown length (chunked)" if length is None else f"{length} bytes",
                 peer=getattr(self.getClientAddress(), "host", "?"))
        self.channel.transport.abortConnection()

    def handleContentChunk(self, data: bytes) -> None:  # noqa: N802
        if not self._refused:
            super().handleContentChunk(data)

    def process(self) -> None:
        if not self._refused:
            super().process()


class _Refused(Protocol):
    """A connection over :attr:`GatewaySite.max_pending`: closed at once."""

    def connectionMade(self) -> None:  # noqa: N802
        self.transport.abortConnection()


class GatewaySite(server.Site):
    """A site that holds at most ``max_pending`` connections still speaking HTTP (their
    request not yet in, a /clientinfo connection kept alive, an upgrade not yet taken
    over): further ones are closed as soon as they are accepted. ``[limits]
    max_connections`` counts a connection only from its upgrade on, so without this
    bound idle and trickling clients could take every file descriptor."""

    def __init__(self, root: resource.Resource, *, max_pending: int,
                 on_refused: Any = None, deadline: float | None = None,
                 **kwargs: Any) -> None:
        """``deadline``: the most seconds a connection may speak HTTP in all (the idle
        ``timeout`` alone lets a client that sends a byte now and then stay for ever)."""
        super().__init__(root, **kwargs)
        self.max_pending = max_pending
        self.pending = 0
        self.deadline = deadline
        self._on_refused = on_refused

    @classmethod
    def bounded_by(cls, root: resource.Resource, limits: Any, **kwargs: Any) -> GatewaySite:
        """A site with the HTTP bounds of ``[limits]``: no request bodies, at most
        ``max_pending_connections``, ``open_handshake_timeout`` idle seconds and twice
        that in all."""
        return cls(root, requestFactory=BoundedRequest,
                   max_pending=limits.max_pending_connections,
                   timeout=limits.open_handshake_timeout,
                   deadline=2 * limits.open_handshake_timeout, **kwargs)

    def buildProtocol(self, addr: Any) -> Any:  # noqa: N802
        if self.pending >= self.max_pending:
            if self._on_refused is not None:
                self._on_refused()
            return _Refused()
        channel = super().buildProtocol(addr)
        self.pending += 1
        lost = channel.connectionLost

        def connection_lost(reason: Any) -> Any:
            self.release(channel)
            return lost(reason)
        channel.connectionLost = connection_lost
        if self.deadline:
            inner = getattr(channel, "_channel", channel)
            inner._wyseman_deadline = self.reactor.callLater(self.deadline, self._overdue,
                                                             inner)
        return channel

    def _overdue(self, inner: Any) -> None:
        inner._wyseman_deadline = None
        log.info("closed an HTTP connection that was still without a WebSocket after "
                 "{seconds} s", seconds=self.deadline)
        if inner.transport is not None:
            inner.transport.abortConnection()

    def release(self, channel: Any) -> None:
        """``channel`` no longer counts: it closed, or its connection became a WebSocket.

        twisted.web hands the transport a wrapper (``_GenericHTTPChannelProtocol``) whose
        ``connectionLost`` attribute lives on the HTTP channel inside it, which is also
        what a request's ``channel`` is: both paths come down to that inner channel."""
        inner = getattr(channel, "_channel", channel)
        if not getattr(inner, "_wyseman_released", False):
            inner._wyseman_released = True
            self.pending -= 1
            deadline = getattr(inner, "_wyseman_deadline", None)
            if deadline is not None and deadline.active():
                deadline.cancel()
            inner._wyseman_deadline = None
            # drop the hook (it refers to the channel): no cycle keeps a channel alive
            vars(inner).pop("connectionLost", None)


class Upgrade(WebSocketResource):
    """The WebSocket resource; the connection it takes over leaves the site's pending
    count (Autobahn's and the gateway's connection limits count it from here on)."""

    def render(self, request: server.Request) -> Any:
        site = getattr(request.channel, "site", None)
        if isinstance(site, GatewaySite):
            site.release(request.channel)
        return super().render(request)
