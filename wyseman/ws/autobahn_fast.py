"""The Autobahn internals the WebSocket server relies on, in one place: a server protocol
class whose overrides of Autobahn's members make the common frames cheap (docs/
performance.md, "Fast paths"), and the frame helpers they use. The gateway's own
policy (logins, in-flight caps, slow consumers) lives in :mod:`wyseman.ws.protocol`,
on top of this class.

Every Autobahn member overridden or called here that Autobahn does not document is
named in tests/test_compat.py, which fails when a new Autobahn drops one; setup.cfg caps
Autobahn at the newest version tested.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from autobahn.twisted.websocket import WebSocketServerProtocol
from autobahn.websocket import protocol as autobahn_protocol
from autobahn.websocket.protocol import PreparedMessage
from twisted.logger import Logger

from wyseman.ws.twisted_io import (
    TLSTarget,
    nothing_buffered,
    socket_send,
    tls_idle,
    tls_target,
    write_now,
)

log = Logger(namespace="wyseman.ws")

_REASON_PHRASES = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
                   426: "Upgrade Required", 429: "Too Many Requests",
                   500: "Internal Server Error", 503: "Service Unavailable"}


def _unformatted(object: object, *args: Any, **kwargs: Any) -> str:  # noqa: A002
    return "(not formatted)"


#: Autobahn's per-connection lists that are only needed during the opening handshake
#: (its configuration lists, e.g. ``versions``, are the factory's, shared by all)
_HANDSHAKE_LISTS = ("websocket_extensions", "websocket_extensions_in_use",
                    "websocket_protocols", "_valid_events")

#: Autobahn's per-connection texts of the opening handshake, read only while it runs
_HANDSHAKE_TEXTS = ("http_request_data", "http_response_data", "http_status_line", "_wskey")


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


def _size(frame: bytes | PreparedMessage) -> int:
    # (a PreparedMessage made without compression has no ``payload``, only the frame)
    return len(frame.payloadHybi) if isinstance(frame, PreparedMessage) else len(frame)


def prepare_frame(frame: bytes) -> PreparedMessage:
    """Frame a text message once, to send the same bytes to many sockets."""
    return PreparedMessage(frame, False, False, True)


class FastServerProtocol(WebSocketServerProtocol):
    """Autobahn's server protocol with short cuts for the frames almost all traffic is,
    and the write path that sends them: every write (Autobahn's too: the 101 answer,
    pings, close frames) goes through :meth:`sendData`, :meth:`_send_now` or
    :meth:`send_rest`.

    The outbound state is kept here because the direct path reads it: ``_send_paused``
    (the transport's buffer is full), ``_outbound`` (frames queued behind it) and
    ``_buffered``: True from any write that may have left bytes in Twisted's buffer (or
    Autobahn's send queue) until :meth:`direct_send` finds both empty again; while it is
    False, a notification may go straight to the socket without looking at the
    transport."""

    _buffered = False
    #: a TCP or TLS transport (Protocol's annotation, ITransport, names none of what
    #: the direct path reads)
    transport: Any
    # options Autobahn sets per connection from the factory's (setProtocolOptions)
    autoPingInterval: float  # noqa: N815
    autoFragmentSize: int  # noqa: N815
    maskServerFrames: bool  # noqa: N815
    logFrames: bool  # noqa: N815
    maxMessagePayloadSize: int  # noqa: N815
    #: set by a subclass that logs a refusal itself (see failHandshake)
    _refusal_logged = False
    client_address = ""

    def __init__(self) -> None:
        super().__init__()
        self._send_paused = False
        #: (made when first needed: an empty deque is 760 bytes, on every idle socket)
        self._outbound: deque[bytes | PreparedMessage] | None = None
        self._socket_send: Any = None
        self._tls_target: TLSTarget | bool | None = None   # (direct_tls_target)

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

    def _open_direct_path(self) -> None:
        """On open: look the socket's ``send`` up once, if frames may go straight to it
        (plain TCP, no compression; see :meth:`direct_send`)."""
        if self._perMessageCompress is None:
            self._socket_send = socket_send(self.transport)

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
        # and the request's and the answer's text, only read while they were exchanged
        # (about 1.3 KiB a socket)
        for name in _HANDSHAKE_TEXTS:
            if name in self.__dict__:
                setattr(self, name, None)
        self.http_headers = {}

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
        if (send is None or self.state != _OPEN or self._send_paused or self._outbound
                or self.send_queue or not nothing_buffered(self.transport)):
            return None
        self._buffered = False       # (drained since)
        return send

    def direct_tls_target(self) -> TLSTarget | None:
        """For a TLS socket that is open with nothing queued in any layer: its TLS
        session and socket, for a fan-out to encrypt a prepared frame and send the
        record itself (:func:`wyseman.ws.twisted_io.seal`); None otherwise
        (:meth:`send_frame`). The parts are looked up at the first fan-out."""
        if (self._socket_send is not None or self.state != _OPEN or self._send_paused
                or self._outbound or self.send_queue):
            return None
        target = self._tls_target
        if target is None:
            target = self._tls_target = tls_target(self.transport) or False
        if isinstance(target, TLSTarget) and tls_idle(target):
            return target
        return None

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
