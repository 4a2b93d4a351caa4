"""The WebSocket front door: Autobahn protocol, factory, and the twisted.web site
that serves the WebSocket and ``GET /clientinfo`` on one port.
"""

from __future__ import annotations

from collections import deque
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket import protocol as autobahn_protocol
from autobahn.websocket.protocol import PreparedMessage, parseHttpHeader
from twisted.internet import defer, interfaces, tcp
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
from wyseman.ws.httpbounds import GatewaySite, Upgrade

if TYPE_CHECKING:
    from wyseman.gateway.seams import TransportHub

log = Logger(namespace="wyseman.ws")

_REASON_PHRASES = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
                   426: "Upgrade Required", 429: "Too Many Requests",
                   500: "Internal Server Error", 503: "Service Unavailable"}



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


def _unformatted(value: Any) -> str:
    return "(not formatted)"


#: Autobahn's per-connection lists that are only needed during the opening handshake
#: (its configuration lists, e.g. ``versions``, are the factory's, shared by all)
_HANDSHAKE_LISTS = ("websocket_extensions", "websocket_extensions_in_use",
                    "websocket_protocols", "_valid_events")


def unmask(payload: bytes, mask: bytes) -> bytes:
    """A client frame's payload XOR its 4-byte masking key (RFC 6455 §5.3)."""
    n = len(payload)
    if not n:
        return payload
    key = (mask * ((n >> 2) + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(
        n, "little")


def text_frame_header(length: int) -> bytes:
    """Header of a final, unmasked text frame of ``length`` payload bytes (RFC 6455 §5.2)."""
    if length < 126:
        return bytes((0x81, length))
    if length < 65536:
        return b"\x81\x7e" + length.to_bytes(2, "big")
    return b"\x81\x7f" + length.to_bytes(8, "big")


_OPEN = WebSocketServerProtocol.STATE_OPEN
_CONNECTING = WebSocketServerProtocol.STATE_CONNECTING


def send_some(send: Any, data: bytes) -> int:
    """``send(data)`` on a non-blocking socket: the bytes written, 0 on EAGAIN or an
    error (Twisted's own write path, given the rest, reports the error)."""
    try:
        return send(data)
    except OSError:
        return 0


def write_now(transport: Any, data: bytes) -> bool:
    """``transport.write(data)``, but for a plain TCP connection whose write buffer is
    empty the bytes go to the socket at once (what does not fit is buffered as usual).
    True if Twisted was given bytes to buffer."""
    if (type(transport) is tcp.Server and transport.connected and not transport.disconnecting
            and not transport.dataBuffer and not getattr(transport, "_tempDataBuffer", True)):
        written = send_some(transport.socket.send, data)
        if written == len(data):
            return False
        data = data[written:]
    transport.write(data)
    return True


class GatewayProtocol(WebSocketServerProtocol):
    """One client connection."""

    factory: GatewayFactory
    session: Session | None = None
    #: True from any write that may have left bytes in Twisted's buffer (or Autobahn's
    #: send queue) until :meth:`direct_send` finds both empty again: while it is False,
    #: a notification may go straight to the socket without looking at the transport.
    #: Every write of this protocol goes through :meth:`sendData` (Autobahn's too: the
    #: 101 answer, pings, close frames), :meth:`_send_now` or :meth:`send_rest`.
    _buffered = False

    def _connectionMade(self) -> None:
        # Autobahn pretty-prints its whole configuration for a debug line on every new
        # connection, whether or not debug logging is on (~15 % of a login's CPU).
        formatter, autobahn_protocol.pformat = autobahn_protocol.pformat, _unformatted
        try:
            super()._connectionMade()
        finally:
            autobahn_protocol.pformat = formatter

    def sendData(self, data: bytes, sync: bool = False,  # noqa: N802
                 chopsize: int | None = None) -> None:
        """Autobahn's, for data not queued behind other data, without the debug-log
        arguments it formats on every write (``hltype``), and written straight to a plain
        TCP socket when Twisted has nothing buffered for it: one ``send`` instead of a
        buffer, two epoll changes and a later ``doWrite`` (a notification fans out to
        thousands of sockets; each login writes its 101 answer, and a close frame)."""
        if sync or chopsize or self.send_queue:
            self._buffered = True
            super().sendData(data, sync, chopsize)
            return
        if write_now(self.transport, data):
            self._buffered = True
        state = self.state
        if state == _OPEN:
            self.trafficStats.outgoingOctetsWireLevel += len(data)
        elif state == _CONNECTING:
            self.trafficStats.preopenOutgoingOctetsWireLevel += len(data)

    def __init__(self) -> None:
        super().__init__()
        self._in_flight = 0
        self._waiting: deque[bytes] = deque()  # read before the pause took effect
        self._reading_paused = False
        self._draining = False   # _request_done is dispatching the waiting frames
        self._send_paused = False
        #: the latest ping not answered while the peer did not drain, and what the pongs
        #: owed since would have cost (see onPing)
        self._owed_pong: bytes | None = None
        self._owed_control_bytes = 0
        self._outbound: deque[bytes] = deque()
        self._outbound_bytes = 0
        self._counted = False
        self._socket_send: Any = None
        self._admission: Admitted | None = None   # the login and the place it holds
        self._refusal_logged = False     # (see failHandshake)

    # -- opening handshake -------------------------------------------------
    def onConnect(self, request: Any) -> defer.Deferred:  # noqa: N802
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

    def failHandshake(self, reason: str, code: int = 400,  # noqa: N802
                      responseHeaders: Any = None) -> None:  # noqa: N803
        """A refused upgrade is logged once, with its reason and peer: a login refusal by
        :meth:`_refusal_exception`, anything Autobahn refuses (a malformed request) here;
        Autobahn's own two lines per refusal ("failing WebSocket opening handshake",
        "dropping connection") are not added."""
        if not self._refusal_logged:
            log.info("refused {code} {reason} to {ip}", code=code, reason=reason,
                     ip=getattr(self, "client_address", None) or self.peer)
        self.wasNotCleanReason = reason
        self.sendHttpErrorResponse(code, reason, responseHeaders)
        self.wasClean = True       # (said above: dropConnection would warn once more)
        self.dropConnection(abort=False)

    def sendHttpErrorResponse(self, code: int, reason: str,  # noqa: N802
                              responseHeaders: Any = None) -> None:  # noqa: N803
        """As the Node server's ``ws`` sends it: standard phrase, the reason as body; the
        headers Autobahn adds (``Sec-WebSocket-Version`` for a version it does not speak),
        and ``Upgrade`` on a 426 (RFC 7231 §6.5.15)."""
        body = reason.encode("utf-8")
        phrase = _REASON_PHRASES.get(code, "Error")
        extra = [*(responseHeaders or ()), *([("Upgrade", "websocket")] if code == 426 else [])]
        head = (f"HTTP/1.1 {code} {phrase}\r\nConnection: close\r\n"
                + "".join(f"{name}: {value}\r\n" for name, value in extra)
                + f"Content-Type: text/html\r\nContent-Length: {len(body)}\r\n\r\n")
        self.sendData(head.encode("latin-1") + body)

    # -- open connection ---------------------------------------------------
    def onOpen(self) -> None:  # noqa: N802
        assert self.session is not None
        gateway = self.factory.gateway
        self._counted = True
        transport = self.transport
        if type(transport) is tcp.Server and self._perMessageCompress is None:
            self._socket_send = transport.socket.send   # see direct_send
        gateway.register(self)
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

    def _shed_handshake_state(self) -> None:
        """Autobahn keeps per-connection lists from the opening handshake (extensions,
        sub-protocols, event names, the query's parameters: a dict of lists) for the
        socket's whole life. As tuples (and the parameters dropped) they are no longer
        objects the garbage collector walks: ~9 of an idle socket's ~22 tracked objects,
        and so that share of a full collection's time on a server holding many sockets."""
        for name in _HANDSHAKE_LISTS:
            value = getattr(self, name, None)
            if type(value) is list:
                setattr(self, name, tuple(value))
        self.http_request_params = {}

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 (Twisted name)
        """Autobahn's, without the debug-log arguments it formats for every read."""
        self._dataReceived(data)

    def processData(self) -> bool:  # noqa: N802 (Autobahn name)
        """Autobahn's frame parser, with a short cut for the frame almost every request
        is: one whole, final, masked text frame under 126 bytes, no extension, outside a
        fragmented message. Autobahn spends more on such a frame (a frame object, a masker,
        an incremental UTF-8 validator, five callbacks and a Future) than we spend on the
        request. Anything else, including a short frame that is not valid UTF-8 (Autobahn
        then closes with 1007), goes through Autobahn's own parser."""
        data = self.data
        if (len(data) >= 6 and data[0] == 0x81 and self.current_frame is None
                and not self.inside_message and self.state == self.STATE_OPEN
                and self._perMessageCompress is None and self.applyMask
                and not self.logFrames and not self.trackedTimings):
            b1 = data[1]
            length = b1 & 0x7F
            end = 6 + length
            if (b1 & 0x80 and length < 126 and len(data) >= end
                    and not 0 < self.maxFramePayloadSize < length
                    and not 0 < self.maxMessagePayloadSize < length):
                payload = unmask(data[6:end], data[2:6])
                try:
                    payload.decode("utf-8")
                except UnicodeDecodeError:
                    return super().processData()
                self.data = data[end:]
                self.trafficStats.incomingWebSocketFrames += 1
                self.trafficStats.incomingWebSocketMessages += 1
                if self.autoPingTimeoutCall and self.autoPingRestartOnAnyTraffic:
                    self._cancelAutoPingTimeoutCall()
                self.onMessage(payload, False)
                return len(self.data) > 0
        elif (len(data) >= 6 and data[0] == 0x8A and self.autoPingPending
              and self.current_frame is None and self.state == self.STATE_OPEN
              and not self.logFrames and not self.trackedTimings):
            b1 = data[1]
            end = 6 + (b1 & 0x7F)
            if (b1 & 0x80 and end <= 131 and len(data) >= end
                    and unmask(data[6:end], data[2:6]) == self.autoPingPending):
                self.data = data[end:]     # (Autobahn counts no control frames)
                self._answered_auto_ping()
                return len(self.data) > 0
        return super().processData()

    def _answered_auto_ping(self) -> None:
        """The pong to our heartbeat ping, whole in the buffer: what Autobahn does with
        it (the timeout cancelled, the next ping scheduled) without its frame parser,
        masker and debug logging: with ten thousand idle sockets, one every 3 ms."""
        if self.autoPingTimeoutCall:
            self.autoPingTimeoutCall.cancel()
        self.autoPingPending = None
        self.autoPingPendingSent = None
        self.autoPingTimeoutCall = None
        if self.autoPingInterval:
            self.autoPingPendingCall = self.factory._batched_timer.call_later(
                self.autoPingInterval, self._sendAutoPing)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:  # noqa: N802, N803
        """At most ``max_in_flight`` requests run at once; at the cap the socket stops
        being read, and frames that arrived in the same read wait here."""
        if self.session is None:
            return
        if self._in_flight >= self.factory.gateway.max_in_flight:
            self._waiting.append(payload)
            self._pause_reading()
            return
        self._dispatch(payload)

    def _dispatch(self, payload: bytes) -> None:
        gateway = self.factory.gateway
        self._in_flight += 1
        if self._in_flight >= gateway.max_in_flight:
            self._pause_reading()
        gateway.dispatcher.handle_then(self.session, payload, self._replied)

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
            self._waiting.clear()
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
        if self.state != self.STATE_OPEN:
            self._waiting.clear()
        elif not self._waiting and self._reading_paused and self._in_flight < limit:
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
        self._outbound.clear()
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
            return self.send_frame(frame)
        data = frame.payloadHybi
        written = send_some(send, data)
        if written != len(data):
            self.send_rest(data, written)
        return True

    def direct_send(self) -> Any:
        """The socket's ``send``, if a prepared frame may be written straight to it
        (open, nothing queued, no compression, plain TCP with an empty buffer); None if
        the frame must be queued (:meth:`send_frame`). The reactor thread asks, also
        before a fan-out whose ``send`` calls run on several threads (what falls short
        goes to :meth:`send_rest`).
        (Wire-level byte counts are not kept on this path: nothing reads them, and with
        10,000 sockets every attribute touched here is a cache miss of its own. For the
        same reason the socket's ``send`` is looked up once, when the socket opens:
        ``transport.socket.send`` was ~40 % of picking the sockets of a fan-out, and the
        transport is looked at only after a write that may have left bytes buffered
        (:attr:`_buffered`): its four attributes were most of the rest.)"""
        send = self._socket_send
        if send is not None and self.state == _OPEN and not self._buffered:
            return send
        transport = self.transport
        if (send is None or self.state != _OPEN or self._send_paused or self._outbound
                or self.send_queue or not transport.connected or transport.disconnecting
                or transport.dataBuffer or transport._tempDataBuffer):
            return None
        self._buffered = False       # (drained since)
        return send

    def send_rest(self, data: bytes, written: int) -> None:
        """What a fan-out thread could not write to :meth:`direct_send`, buffered by
        Twisted (reactor thread)."""
        if write_now(self.transport, data[written:]):
            self._buffered = True

    def _send_now(self, frame: bytes | PreparedMessage) -> None:
        """Frame and send a reply ourselves: in one step, and whatever its size.

        Autobahn's ``sendMessage`` refuses (raises) a message larger than
        ``maxMessagePayloadSize``, the limit we set on what a *client* may send
        (``[limits] max_message_size``): a reply of more than 1 MiB would be lost.
        Compression and fragmenting options are not used by this server; should they be
        on, Autobahn's path is taken and the limit is lifted for the call.
        """
        if isinstance(frame, PreparedMessage):
            self.sendPreparedMessage(frame)
        elif (self._perMessageCompress is None and not self.autoFragmentSize
              and not self.maskServerFrames and not self.logFrames and not self.trackedTimings
              and self.state == self.STATE_OPEN):
            # What sendMessage → sendFrame → sendData come to for an unfragmented,
            # uncompressed text frame from a server.
            data = text_frame_header(len(frame)) + frame
            if self.send_queue:
                self.sendData(data)     # behind what Autobahn has queued
            else:
                if write_now(self.transport, data):
                    self._buffered = True
                self.trafficStats.outgoingOctetsWireLevel += len(data)
            stats = self.trafficStats
            stats.outgoingWebSocketMessages += 1
            stats.outgoingWebSocketFrames += 1
        else:
            limit, self.maxMessagePayloadSize = self.maxMessagePayloadSize, 0
            try:
                self.sendMessage(frame, isBinary=False)
            finally:
                self.maxMessagePayloadSize = limit

    def _flush_outbound(self) -> None:
        while self._outbound and not self._send_paused and self.state == self.STATE_OPEN:
            frame = self._outbound.popleft()
            self._outbound_bytes -= _size(frame)
            self._send_now(frame)
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
            self.factory.gateway.unregister(self)
            if self.factory.gateway.log_connections:
                log.info("disconnect {user} from {ip} (code {code}, {reason})",
                         user=self.session.user if self.session else "?",
                         ip=getattr(self, "client_address", "?"), code=code,
                         reason=reason or ("clean" if wasClean else "unclean"))
        self._outbound.clear()


class GatewayFactory(WebSocketServerFactory):
    protocol = GatewayProtocol

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
    3 "GET /clientinfo")."""

    isLeaf = True

    def __init__(self, gateway: TransportHub) -> None:
        super().__init__()
        self.gateway = gateway

    def render_GET(self, request: server.Request) -> bytes:  # noqa: N802
        body = self.body(request.getClientAddress(), _header(request, b"x-forwarded-for"),
                         _header(request, b"x-real-ip"), _header(request, b"cookie"),
                         _header(request, b"user-agent"))
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"access-control-allow-origin", b"*")
        return body

    def body(self, peer: Any, forwarded_for: str | None, real_ip: str | None,
             cookie: str | None, user_agent: str | None) -> bytes:
        """The answer for a client at ``peer`` (an ``IAddress``) with these request
        headers; also what :mod:`wyseman.ws.sniff` answers a plain request with."""
        ip = client_ip(peer, forwarded_for, self.gateway.trusted_proxies,
                       self.gateway.ip_style)
        return cred.clientinfo_body(ip, real_ip or forwarded_for, cookie, user_agent,
                                    datetime.fromtimestamp(self.gateway.clock.seconds(), UTC))


def _size(frame: bytes | PreparedMessage) -> int:
    # (a PreparedMessage made without compression has no ``payload``, only the frame)
    return len(frame.payloadHybi) if isinstance(frame, PreparedMessage) else len(frame)


def prepare_frame(frame: bytes) -> PreparedMessage:
    """Frame a text message once, to send the same bytes to many sockets."""
    return PreparedMessage(frame, False, False, True)


def _header(request: server.Request, name: bytes) -> str | None:
    value = request.getHeader(name)
    return value.decode("latin-1") if isinstance(value, bytes) else value


class _Root(resource.Resource):
    """``/clientinfo`` and, on every other path, the WebSocket (as the Node server)."""

    def __init__(self, gateway: TransportHub, websocket: resource.Resource | None) -> None:
        super().__init__()
        self.clientinfo = ClientInfo(gateway)
        self.websocket = websocket

    def getChild(self, path: bytes, request: server.Request) -> resource.Resource:  # noqa: N802
        request.setHeader(b"server", b"wyseman")   # not twisted.web's name and version
        if path == b"clientinfo":
            return self.clientinfo
        if self.websocket is None:
            return resource.NoResource()
        return self.websocket

    def render(self, request: server.Request) -> bytes:
        request.setHeader(b"server", b"wyseman")
        if self.websocket is None:
            return resource.NoResource().render(request)
        return self.websocket.render(request)


def build_site(gateway: TransportHub, *, secure: bool, insecure_allowed: bool,
               clientinfo_only: bool = False) -> server.Site:
    """The twisted.web site of one endpoint."""
    websocket = factory = None
    if not clientinfo_only:
        factory = GatewayFactory(gateway, url=("wss" if secure else "ws") + "://127.0.0.1/",
                                 secure=secure, insecure_allowed=insecure_allowed)
        websocket = Upgrade(factory)
    root = _Root(gateway, websocket)
    # A connection has open_handshake_timeout idle seconds to complete its HTTP request
    # (twisted.web's default is 60; once a request is in, its idle timeout is off, so an
    # upgraded WebSocket is not affected), a kept-alive one as long between requests, and
    # twice that in all (a client sending a byte now and then is not idle).
    # (a plain upgrade or GET /clientinfo skips twisted.web: wyseman.ws.sniff)
    site = GatewaySite.bounded_by(
        root, gateway.config.limits, exempt=gateway.trusted_proxies,
        on_refused=lambda reason: gateway.metrics.handshake("refused", reason),
        websocket=factory, clientinfo=root.clientinfo)
    site.displayTracebacks = False
    site.noisy = False
    return site
