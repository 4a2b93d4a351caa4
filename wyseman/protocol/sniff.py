"""A gateway connection's first bytes: a WebSocket upgrade goes straight to Autobahn.

Behind twisted.web, an upgrade request is parsed twice: twisted.web parses it into a
``Request`` and routes it to Autobahn's ``WebSocketResource``, which rebuilds the raw
request and lets Autobahn parse it again; about a tenth of the reactor thread's time in a
login storm. The :class:`Sniffer` reads a connection's request head first; a plain upgrade
(``GET <path> HTTP/1.1`` with ``Upgrade: websocket``, no body, not ``/clientinfo``) goes
to the WebSocket protocol at once, and everything else (``/clientinfo``, ``/healthz``,
anything unusual or malformed) to twisted.web with the bytes read so far, exactly as if
twisted.web had read them itself. Either way Autobahn's answer to an upgrade is the same:
twisted.web only ever routed it.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote_to_bytes

from twisted.internet.protocol import Protocol
from twisted.protocols.policies import ProtocolWrapper, TimeoutMixin
from twisted.python.failure import Failure

#: the longest request head the sniffer reads before it leaves the request to twisted.web
#: (which answers an over-long head with its own error; it bounds a head to 16 KiB too)
MAX_HEAD = 16384


def is_plain_upgrade(head: bytes) -> bool:
    """True if the request head ``head`` (without its final empty line) asks for a
    WebSocket the plain way: ``GET``, an origin-form target whose first path segment is
    not ``clientinfo``, ``HTTP/1.1``, an ``Upgrade`` header naming ``websocket``, and no
    ``Content-Length`` or ``Transfer-Encoding`` (a body is twisted.web's to refuse)."""
    request_line, _, fields = head.partition(b"\r\n")
    parts = request_line.split(b" ")
    if (len(parts) != 3 or parts[0] != b"GET" or parts[2] != b"HTTP/1.1"
            or not parts[1].startswith(b"/")):
        return False
    segments = parts[1].split(b"?", 1)[0].split(b"/", 2)
    first = segments[1] if len(segments) > 1 else b""
    if b"%" in first:
        first = unquote_to_bytes(first)
    if first == b"clientinfo":
        return False
    upgrade = False
    for line in fields.split(b"\r\n") if fields else ():
        name, colon, value = line.partition(b":")
        if not colon:
            return False
        name = name.lower()
        if name == b"upgrade":
            upgrade = b"websocket" in value.lower()
        elif name in (b"content-length", b"transfer-encoding"):
            return False
    return upgrade


def hand_over(transport: Any, protocol: Any) -> None:
    """Make ``protocol`` the one that ``transport`` delivers bytes to (a TLS transport is
    a protocol wrapper, as Autobahn's ``WebSocketResource`` also has it)."""
    if isinstance(transport, ProtocolWrapper):
        transport.wrappedProtocol = protocol
    elif isinstance(getattr(transport, "protocol", None), ProtocolWrapper):
        transport.protocol.wrappedProtocol = protocol
    else:
        transport.protocol = protocol


class Sniffer(Protocol, TimeoutMixin):
    """Reads a connection's request head, then hands the connection over: to the site's
    WebSocket factory (the connection leaves the site's pending count) or to a
    twisted.web channel (which goes on counting until it closes or upgrades).

    While it reads, the site's idle ``timeout`` applies (as twisted.web's would) and the
    site's overall deadline, which :class:`~wyseman.protocol.httpbounds.GatewaySite`
    keeps."""

    def __init__(self, site: Any, addr: Any, pending: Any) -> None:
        self.site = site
        self.addr = addr
        self._wyseman_pending = pending
        self._head = b""
        self.callLater = site.reactor.callLater   # TimeoutMixin's clock: the site's

    def connectionMade(self) -> None:  # noqa: N802
        self.setTimeout(self.site.timeOut)

    def timeoutConnection(self) -> None:  # noqa: N802
        self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        head = self._head + data if self._head else data
        end = head.find(b"\r\n\r\n")
        if end < 0 and len(head) <= MAX_HEAD and b"\n\n" not in head:
            self._head = head
            self.resetTimeout()
            return
        self._head = b""
        self.setTimeout(None)
        if end >= 0 and is_plain_upgrade(head[:end]):
            protocol = self.site.websocket.buildProtocol(self.addr)
            self.site.release(self)
        else:
            protocol = self.site.http_channel(self.addr, self._wyseman_pending)
        transport = self.transport
        hand_over(transport, protocol)
        protocol.makeConnection(transport)
        protocol.dataReceived(head)

    def connectionLost(self, reason: Failure | None = None) -> None:  # noqa: N802
        self.setTimeout(None)
        self.site.release(self)
