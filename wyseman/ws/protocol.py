"""The WebSocket front door: the gateway's protocol (the login put in HTTP terms,
in-flight caps, slow consumers, pings owed), its factory, and the twisted.web site that
serves the WebSocket and ``GET /clientinfo`` on one port. What it overrides of Autobahn
for speed is in :mod:`wyseman.ws.autobahn_fast`.
"""

from __future__ import annotations

from collections import deque
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

from autobahn.twisted.websocket import WebSocketServerFactory
from autobahn.websocket.protocol import PreparedMessage, parseHttpHeader
from twisted.internet import defer, interfaces
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import resource, server
from zope.interface import implementer

from wyseman.auth import credentials as cred
from wyseman.auth.admission import Admitted, ClientLeft, LoginRequest
from wyseman.auth.login import Handshake, Refusal
from wyseman.auth.peer import client_ip
from wyseman.gateway.dispatch import Session
from wyseman.timers import ClockTimer, cancel_close_timer
from wyseman.ws.autobahn_fast import (
    FastServerProtocol,
    _size,
)
from wyseman.ws.cors import ClientInfoCors
from wyseman.ws.httpbounds import GatewaySite, Upgrade
from wyseman.ws.published import PublishedResources
from wyseman.ws.twisted_io import send_some, tls_write_now
from wyseman.ws.webroot import WebRoot

if TYPE_CHECKING:
    from wyseman.gateway.seams import Connection, TransportHub

log = Logger(namespace="wyseman.ws")


@implementer(interfaces.IPushProducer)
class _OutboundGate:
    """Registered on the transport: tells us when its send buffer is full."""

    def __init__(self, protocol: GatewayProtocol) -> None:
        self.protocol = protocol

    def pauseProducing(self) -> None:  # noqa: N802
        self.protocol._send_paused = True

    def resumeProducing(self) -> None:  # noqa: N802
        self.protocol._send_paused = False
        self.protocol._flush_outbound()

    def stopProducing(self) -> None:  # noqa: N802
        pass


class GatewayProtocol(FastServerProtocol):
    """One client connection."""

    factory: GatewayFactory
    session: Session | None = None
    #: this transport's label in metrics
    transport_name = "websocket"

    def __init__(self) -> None:
        super().__init__()
        self._in_flight = 0
        #: frames read before the pause took effect (made when first needed)
        self._waiting: deque[bytes] | None = None
        self._reading_paused = False
        self._draining = False   # _request_done is dispatching the waiting frames
        #: the latest ping not answered while the peer did not drain, and what the pongs
        #: owed since would have cost (see onPing)
        self._owed_pong: bytes | None = None
        self._owed_control_bytes = 0
        self._outbound_bytes = 0
        self._counted = False
        self._admission: Admitted | None = None   # the login and the place it holds

    # -- opening handshake -------------------------------------------------
    def onConnect(self, request: Any) -> defer.Deferred:  # type: ignore[override]  # noqa: N802
        # (Autobahn takes a Deferred of its answer too; its annotation names only the answer)
        """The login, decided by the gateway's :class:`~wyseman.auth.admission.Admission`;
        here only what the HTTP request says is read, and the outcome put in HTTP terms."""
        gateway = self.factory.gateway
        peer = self.transport.getPeer()
        headers = request.headers
        _, _, counts = parseHttpHeader(self.http_request_data)
        ip = client_ip(peer, headers.get("x-forwarded-for"), gateway.trusted_proxies,
                       gateway.ip_style)
        self.client_address = ip
        login_request = LoginRequest(
            Handshake(query=urlsplit(self.http_request_uri).query, ip=ip,
                      cookie=headers.get("cookie"), user_agent=headers.get("user-agent"),
                      secure=self.factory.isSecure,
                      insecure_allowed=self.factory.insecure_allowed),
            origin=headers.get("origin"), host=headers.get("host"),
            repeated_headers=tuple(name for name in ("Cookie", "User-Agent")
                                   if counts.get(name.lower(), 0) > 1))
        d = gateway.admission.admit(login_request,
                                    gone=lambda: self.state == self.STATE_CLOSED)
        d.addCallbacks(self._admitted, self._refused)
        return d

    def _admitted(self, admitted: Admitted) -> None:
        self._admission = admitted       # its place is released in onClose
        login = admitted.login
        self.session = Session(login.user, login.listen, self.send_frame, self.client_address,
                               login.key_x)
        gateway = self.factory.gateway
        gateway.metrics.handshake("accepted", login.method)
        if gateway.log_connections:
            log.info("login {user} ({method}) from {ip}", user=login.user,
                     method=login.method, ip=self.client_address)

    def _refused(self, failure: Failure) -> Any:
        if failure.check(ClientLeft):
            # nobody reads the answer: Autobahn must not open the connection
            from autobahn.websocket.types import ConnectionDeny
            log.info("{ip} left while its login was checked", ip=self.client_address)
            raise ConnectionDeny(400, "Bad Request")
        if failure.check(Refusal):
            raise self._refusal_exception(failure.value)
        return failure

    def _release_slot(self) -> None:
        admitted, self._admission = self._admission, None
        if admitted is not None:
            admitted.release()

    def _refusal_exception(self, refusal: Refusal) -> Exception:
        from autobahn.websocket.types import ConnectionDeny
        self.factory.gateway.metrics.handshake("refused", refusal.kind)
        self._refusal_logged = True
        log.warn("refused {status} {reason} to {ip}: {detail}", status=refusal.status,
                 reason=refusal.reason, ip=getattr(self, "client_address", "?"),
                 detail=refusal.detail)
        return ConnectionDeny(refusal.status, refusal.reason)


    # -- open connection ---------------------------------------------------
    def onOpen(self) -> None:  # noqa: N802
        assert self.session is not None
        gateway = self.factory.gateway
        self._counted = True
        self._open_direct_path()
        gateway.register(cast("Connection", self))   # (open: its session is set)
        producer = _OutboundGate(self)
        try:
            self.transport.unregisterProducer()
        except Exception:
            pass
        try:
            self.transport.registerProducer(producer, True)
        except RuntimeError:
            pass
        self._shed_handshake_state()


    def onMessage(self, payload: bytes, isBinary: bool) -> None:  # noqa: N802, N803
        """At most ``max_in_flight`` requests run at once; at the cap the socket stops
        being read, and frames that arrived in the same read wait here."""
        if self.session is None:
            return
        if self._in_flight >= self.factory.gateway.max_in_flight:
            if self._waiting is None:
                self._waiting = deque()
            self._waiting.append(payload)
            self._pause_reading()
            return
        self._dispatch(payload)

    def _dispatch(self, payload: bytes) -> None:
        gateway = self.factory.gateway
        self._in_flight += 1
        if self._in_flight >= gateway.max_in_flight:
            self._pause_reading()
        gateway.dispatcher.handle_then(self.session, payload,  # type: ignore[arg-type]
                                       self._replied)   # (only open sockets dispatch)

    def _replied(self, frame: bytes) -> None:
        """A request's reply (a reply to a closed socket is simply not sent)."""
        try:
            self.send_frame(frame)
        except Exception:
            self._request_done(Failure())
        else:
            self._request_done(None)

    def _pause_reading(self) -> None:
        if not self._reading_paused:
            self._reading_paused = True
            self.transport.pauseProducing()

    def _request_done(self, result: Any) -> None:
        """Bookkeeping after a reply; a failure here is a bug, so it is logged loudly.

        Frames waiting behind the in-flight cap are dispatched by a loop, not by a call
        nested in the reply before: a reply can come at once (an error), and thousands of
        frames can arrive in one read."""
        self._in_flight -= 1
        if isinstance(result, Failure):
            log.failure("sending a reply failed", result)
        if self.state != self.STATE_OPEN:
            self._waiting = None
            return None
        if self._draining:
            return None              # the loop below, further up the stack, goes on
        limit = self.factory.gateway.max_in_flight
        self._draining = True
        try:
            while self._waiting and self._in_flight < limit and self.state == self.STATE_OPEN:
                self._dispatch(self._waiting.popleft())
        finally:
            self._draining = False
        if self.state != self.STATE_OPEN or not self._waiting:
            self._waiting = None
        if self.state == self.STATE_OPEN and not self._waiting and self._reading_paused \
                and self._in_flight < limit:
            self._reading_paused = False
            if self.transport is not None:
                self.transport.resumeProducing()
        return None

    def send_frame(self, frame: bytes | PreparedMessage) -> bool:
        """Send one text frame (or a frame prepared once for many sockets), or queue it
        while the client is not reading; False if the connection is closing (or was
        just cut for not reading)."""
        if self.state != self.STATE_OPEN:
            return False
        if not self._send_paused and not self._outbound:
            self._send_now(frame)
            return True
        if self._outbound is None:
            self._outbound = deque()
        self._outbound.append(frame)
        self._outbound_bytes += _size(frame)
        return not self._cut_if_over_budget()

    def _cut_if_over_budget(self) -> bool:
        """Cut a peer that does not drain once what it is owed (queued frames, pongs to
        its pings) is over ``max_outbound_bytes``; True if it was cut."""
        owed = self._outbound_bytes + self._owed_control_bytes
        if owed <= self.factory.gateway.max_outbound_bytes:
            return False
        log.warn("closing slow consumer {user} at {ip}: {size} bytes queued",
                 user=self.session.user if self.session else "?",
                 ip=getattr(self, "client_address", "?"), size=owed)
        self.factory.gateway.metrics.slow_consumer()
        self._outbound = None
        self._outbound_bytes = self._owed_control_bytes = 0
        self._owed_pong = None
        # No close frame: the peer is not reading; cut the TCP connection.
        self.dropConnection(abort=True)
        return True

    def onPing(self, payload: bytes) -> None:  # noqa: N802
        """Autobahn answers every ping at once, and a peer that pings without reading
        would fill the send buffer without bound. While the peer does not drain, only the
        latest ping is answered (RFC 6455 allows it), once it does; each unanswered
        ping's pong counts against ``max_outbound_bytes`` like data."""
        if self.state != self.STATE_OPEN:
            return
        if not self._send_paused and not self._outbound:
            self.sendPong(payload)
            return
        self._owed_pong = payload
        self._owed_control_bytes += len(payload) + 2
        self._cut_if_over_budget()

    def send_notification(self, frame: PreparedMessage) -> bool:
        """:meth:`send_frame` for a frame prepared once for many sockets, with as few
        calls as possible between the fan-out loop and ``send`` on the common path
        (:meth:`direct_send`)."""
        send = self.direct_send()
        if send is None:
            # a TLS socket: straight through its TLS layer when nothing is queued
            if (self.state == self.STATE_OPEN and not self._send_paused and not self._outbound
                    and not self.send_queue and tls_write_now(self.transport, frame.payloadHybi)):
                return True
            return self.send_frame(frame)
        data = frame.payloadHybi
        written = send_some(send, data)
        if written != len(data):
            self.send_rest(data, written)
        return True


    def _flush_outbound(self) -> None:
        while self._outbound and not self._send_paused and self.state == self.STATE_OPEN:
            frame = self._outbound.popleft()
            self._outbound_bytes -= _size(frame)
            self._send_now(frame)
        if not self._outbound:
            self._outbound = None          # (drained: give its memory back)
        if self._owed_pong is not None and not self._outbound and not self._send_paused \
                and self.state == self.STATE_OPEN:
            payload, self._owed_pong = self._owed_pong, None
            self._owed_control_bytes = 0
            self.sendPong(payload)

    def end_session(self, code: int, reason: str) -> None:
        """Start the closing handshake with ``code``. Autobahn's ``sendClose`` takes only
        1000 and 3000–4999 from an application; the server's own codes (1001 going
        away) go through the frame-level ``sendCloseFrame``, which Autobahn itself uses
        for them."""
        if self.state != self.STATE_OPEN:
            return
        if code == 1000 or 3000 <= code <= 4999:
            self.sendClose(code, reason)
        else:
            self.sendCloseFrame(code=code, reasonUtf8=reason.encode()[:123], isReply=False)

    def abort(self) -> None:
        """Cut the TCP connection without a closing handshake."""
        self.dropConnection(abort=True)

    def onClose(self, wasClean: bool, code: int, reason: str) -> None:  # noqa: N802, N803
        cancel_close_timer(self)
        self._release_slot()
        if self._counted:
            self._counted = False
            self.factory.gateway.unregister(cast("Connection", self))
            if self.factory.gateway.log_connections:
                log.info("disconnect {user} from {ip} (code {code}, {reason})",
                         user=self.session.user if self.session else "?",
                         ip=getattr(self, "client_address", "?"), code=code,
                         reason=reason or ("clean" if wasClean else "unclean"))
        self._outbound = None


class GatewayFactory(WebSocketServerFactory):
    protocol = GatewayProtocol  # type: ignore[assignment]  # (Twisted's annotation is narrower)

    def __init__(self, gateway: TransportHub, *, url: str = "ws://127.0.0.1/",
                 secure: bool = False, insecure_allowed: bool = False,
                 clock: Any = None) -> None:
        super().__init__(url)
        self._batched_timer = ClockTimer(clock if clock is not None else gateway.clock)
        self.gateway = gateway
        self.insecure_allowed = insecure_allowed
        limits = gateway.config.limits
        self.setProtocolOptions(
            maxMessagePayloadSize=limits.max_message_size,
            maxFramePayloadSize=limits.max_frame_size,
            autoPingInterval=limits.ping_interval,
            autoPingTimeout=limits.ping_timeout,
            openHandshakeTimeout=limits.open_handshake_timeout,
            closeHandshakeTimeout=5,
            maxConnections=limits.max_connections,
            failByDrop=False,
            perMessageCompressionAccept=lambda offers: None,
            # A request without Upgrade gets 426 (as from the Node server's ws), not
            # Autobahn's status page, which names its version and 303-redirects to any
            # URL given as ?redirect= (an open redirector on the gateway's domain).
            webStatus=False,
        )
        self.isSecure = secure
        self.server = "wyseman"


class ClientInfo(resource.Resource):
    """``GET /clientinfo``: what the client signs for a key login (docs/protocol.md,
    3 "GET /clientinfo"), with CORS headers for the pages that may read it and an
    ``OPTIONS`` preflight (:mod:`wyseman.ws.cors`)."""

    isLeaf = True

    def __init__(self, gateway: TransportHub) -> None:
        super().__init__()
        self.gateway = gateway
        self.cors = ClientInfoCors(gateway.config.server.allowed_origins)

    def render_GET(self, request: server.Request) -> bytes:  # noqa: N802
        body = self.body(request.getClientAddress(), _header(request, b"x-forwarded-for"),
                         _header(request, b"x-real-ip"), _header(request, b"cookie"),
                         _header(request, b"user-agent"))
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        for name, value in self.cors_headers(_header(request, b"origin"),
                                             _header(request, b"host"),
                                             request.getClientAddress()):
            request.setHeader(name, value)
        return body

    def render_OPTIONS(self, request: server.Request) -> bytes:  # noqa: N802
        """A browser's preflight (asked before a cross-origin fetch with credentials
        and headers of its own): 204 for a page that may read the answer, else 403."""
        status, headers, problem = self.cors.preflight(
            _header(request, b"origin"), _header(request, b"host"),
            _header(request, b"access-control-request-method"),
            _header(request, b"access-control-request-headers"))
        request.setResponseCode(status)
        for name, value in headers:
            request.setHeader(name, value)
        request.setHeader(b"cache-control", b"no-store")
        if problem is None:
            return b""
        log.info("refused a /clientinfo preflight from {peer}: {reason}",
                 peer=getattr(request.getClientAddress(), "host", "?"), reason=problem)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return f"Forbidden: {problem}\n".encode("utf-8", "replace")

    def cors_headers(self, origin: str | None, host: str | None,
                     peer: Any) -> list[tuple[bytes, bytes]]:
        """The CORS headers of a ``GET /clientinfo`` from a page of ``origin``; also
        what :mod:`wyseman.ws.sniff` sends. An origin that may not read the answer gets
        none, and is logged."""
        if origin is not None:
            problem = self.cors.problem(origin, host)
            if problem is not None:
                log.info("no CORS headers on /clientinfo for {peer}: {reason}",
                         peer=getattr(peer, "host", "?"), reason=problem)
        return self.cors.headers(origin, host)

    def body(self, peer: Any, forwarded_for: str | None, real_ip: str | None,
             cookie: str | None, user_agent: str | None) -> bytes:
        """The answer for a client at ``peer`` (an ``IAddress``) with these request
        headers; also what :mod:`wyseman.ws.sniff` answers a plain request with."""
        ip = client_ip(peer, forwarded_for, self.gateway.trusted_proxies,
                       self.gateway.ip_style)
        return cred.clientinfo_body(ip, real_ip or forwarded_for, cookie, user_agent,
                                    datetime.fromtimestamp(self.gateway.clock.seconds(), UTC))




def _header(request: server.Request, name: bytes) -> str | None:
    value = request.getHeader(name)
    return value.decode("latin-1") if isinstance(value, bytes) else value


class _Root(resource.Resource):
    """``/clientinfo`` and, on every other path, the WebSocket (as the Node server);
    with ``[web]``, a request on another path that asks for no WebSocket gets the
    app's files (:class:`~wyseman.ws.webroot.WebRoot`)."""

    def __init__(self, gateway: TransportHub, websocket: Upgrade | None,
                 web: resource.Resource | None = None) -> None:
        super().__init__()
        self.clientinfo = ClientInfo(gateway)
        self.published = PublishedResources(gateway)
        self.websocket = websocket
        self.web = web

    def getChild(self, path: bytes, request: server.Request) -> Any:  # noqa: N802
        request.setHeader(b"server", b"wyseman")   # not twisted.web's name and version
        if path == b"clientinfo":
            return self.clientinfo
        if path == b"_wyseman" and not wants_websocket(request):
            return self.published       # (a leaf: it reads the rest of the path)
        if self.web is not None and not wants_websocket(request):
            return self.web      # (a leaf: it reads the whole path itself)
        if self.websocket is None:
            return resource.NoResource()
        return self.websocket

    def render(self, request: server.Request) -> bytes:
        request.setHeader(b"server", b"wyseman")
        if self.websocket is None:
            return resource.NoResource().render(request)
        return self.websocket.render(request)


def wants_websocket(request: server.Request) -> bool:
    """True if ``request`` asks for an upgrade to a WebSocket (it goes to Autobahn,
    which answers a malformed one; a plain GET is a page's)."""
    upgrade = request.getHeader(b"upgrade")
    return upgrade is not None and b"websocket" in upgrade.lower()


def build_site(gateway: TransportHub, *, secure: bool, insecure_allowed: bool,
               clientinfo_only: bool = False) -> server.Site:
    """The twisted.web site of one endpoint."""
    websocket = factory = None
    if not clientinfo_only:
        factory = GatewayFactory(gateway, url=("wss" if secure else "ws") + "://127.0.0.1/",
                                 secure=secure, insecure_allowed=insecure_allowed)
        websocket = Upgrade(factory)
    root = _Root(gateway, websocket, WebRoot.from_config(gateway.config))
    # A connection has open_handshake_timeout idle seconds to complete its HTTP request
    # (twisted.web's default is 60; once a request is in, its idle timeout is off, so an
    # upgraded WebSocket is not affected), a kept-alive one as long between requests, and
    # twice that in all (a client sending a byte now and then is not idle).
    # (a plain upgrade or GET /clientinfo skips twisted.web: wyseman.ws.sniff; the
    # app's files of [web] are twisted.web's, with these same bounds)
    site = GatewaySite.bounded_by(
        root, gateway.config.limits, exempt=gateway.trusted_proxies,
        on_refused=lambda reason: gateway.metrics.handshake("refused", reason),
        websocket=factory, clientinfo=root.clientinfo)
    site.displayTracebacks = False
    site.noisy = False
    return site
