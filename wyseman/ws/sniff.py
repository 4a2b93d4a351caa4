"""A gateway connection's first bytes: a WebSocket upgrade goes straight to Autobahn,
``GET /clientinfo`` is answered at once.

Behind twisted.web, an upgrade request is parsed twice: twisted.web parses it into a
``Request`` and routes it to Autobahn's ``WebSocketResource``, which rebuilds the raw
request and lets Autobahn parse it again; about a tenth of the reactor thread's time in a
login storm. And a JS client's key login starts with a ``GET /clientinfo`` of its own,
which cost the server about half as much as the login itself through twisted.web's
request machinery.

The :class:`Sniffer` reads a connection's request head first. A plain upgrade (``GET
<path> HTTP/1.1`` with ``Upgrade: websocket``, no body, not ``/clientinfo``) goes to the
WebSocket protocol at once; a plain ``GET /clientinfo … HTTP/1.1`` is answered from the
same code as twisted.web's resource (its CORS headers included), and the connection
closed; everything else (a ``[web]`` app's files among it)
(``/healthz``, ``HEAD``, HTTP/1.0, a body, folded or malformed header lines) goes to
twisted.web with the bytes read so far, exactly as if twisted.web had read them itself.
Autobahn answered every upgrade before as well (twisted.web only routed it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote_to_bytes

from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, TimeoutMixin
from twisted.python.failure import Failure
from twisted.web.http import datetimeToString

from wyseman.nagle import send_without_delay
from wyseman.ws.twisted_io import direct_tls_writes, quick_tls

log = Logger(namespace="wyseman.http")

#: the longest request head the sniffer reads before it leaves the request to twisted.web
#: (which answers an over-long head with its own error; it bounds a head to 16 KiB too)
MAX_HEAD = 16384


#: what :func:`classify` calls a request head
UPGRADE, CLIENTINFO = "upgrade", "clientinfo"


def plain_get(head: bytes) -> tuple[bytes, dict[bytes, bytes]] | None:
    """The first path segment (percent-decoded) and the header fields (lower-case name →
    value; the last one of a repeated field, as twisted.web's ``getHeader`` has it) of a
    request head ``head`` (without its final empty line) that is a plain ``GET
    <origin-form target> HTTP/1.1`` without a body; None for anything else: another
    method or version, a ``Content-Length`` or ``Transfer-Encoding``, a field line
    that is not ``name: value`` (folded lines included), a bare CR or LF."""
    request_line, _, fields = head.partition(b"\r\n")
    parts = request_line.split(b" ")
    if (len(parts) != 3 or parts[0] != b"GET" or parts[2] != b"HTTP/1.1"
            or not parts[1].startswith(b"/")):
        return None
    first = parts[1].split(b"?", 1)[0].split(b"/", 2)[1]
    if b"%" in first:
        first = unquote_to_bytes(first)
    headers: dict[bytes, bytes] = {}
    for line in fields.split(b"\r\n") if fields else ():
        name, colon, value = line.partition(b":")
        if (not colon or not name or b" " in name or b"\t" in name
                or b"\n" in line or b"\r" in line):
            return None   # (a bare CR or LF: where the head ends depends on the reader)
        headers[name.lower()] = value.strip(b" \t")
    if b"content-length" in headers or b"transfer-encoding" in headers:
        return None
    return first, headers


def classify(head: bytes) -> tuple[str | None, dict[bytes, bytes]]:
    """What the request head ``head`` is, with its header fields: :data:`UPGRADE` (a
    plain GET with ``Upgrade: websocket``, to any path but ``/clientinfo``),
    :data:`CLIENTINFO` (a plain ``GET /clientinfo``), or None (twisted.web's)."""
    request = plain_get(head)
    if request is None:
        return None, {}
    first, headers = request
    if first == b"clientinfo":
        return CLIENTINFO, headers
    if b"websocket" in headers.get(b"upgrade", b"").lower():
        return UPGRADE, headers
    return None, headers


def is_plain_upgrade(head: bytes) -> bool:
    """True if the request head ``head`` asks for a WebSocket the plain way (see
    :func:`classify`)."""
    return classify(head)[0] == UPGRADE


def clientinfo_response(body: bytes, now: float,
                        cors: Sequence[tuple[bytes, bytes]] = ()) -> bytes:
    """The whole answer to a plain ``GET /clientinfo``: the headers twisted.web's
    :class:`~wyseman.ws.protocol.ClientInfo` sends (``cors``: its CORS headers, as
    (name, value)), and ``Connection: close``."""
    return b"".join([
        b"HTTP/1.1 200 OK\r\nServer: wyseman\r\nDate: ", datetimeToString(now),
        b"\r\nContent-Type: application/json\r\nCache-Control: no-store\r\n",
        *(_field(name, value) for name, value in cors),
        b"Content-Length: ", str(len(body)).encode(),
        b"\r\nConnection: close\r\n\r\n", body])


def _field(name: bytes, value: bytes) -> bytes:
    """One header line, ``Vary: Origin`` (the names capitalised as twisted.web sends
    them)."""
    return b"-".join(part.capitalize() for part in name.split(b"-")) + b": " + value + b"\r\n"


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
    """Reads a connection's request head, then answers a plain ``/clientinfo`` request
    itself or hands the connection over: to the site's WebSocket factory (the connection
    leaves the site's pending count) or to a twisted.web channel (which goes on counting
    until it closes or upgrades).

    While it reads, the site's idle ``timeout`` applies (as twisted.web's would) and the
    site's overall deadline, which :class:`~wyseman.ws.httpbounds.GatewaySite`
    keeps.

    With ``[server] route_by_user`` (the site has a ``router``), an upgrade for a user
    that another worker serves is passed to that worker instead
    (:mod:`wyseman.application.workers.routing`);
    ``routed`` is set on a connection passed here, which is not passed on again."""

    #: a TCP (or TLS) transport: what Protocol's annotation (ITransport) does not say
    transport: Any

    routed = False

    def __init__(self, site: Any, addr: Any, pending: Any) -> None:
        self.site = site
        self.addr = addr
        self._wyseman_pending = pending
        self._head = bytearray()
        self._answered = False
        self.callLater = site.reactor.callLater  # type: ignore[method-assign]  # TimeoutMixin's clock: the site's

    def connectionMade(self) -> None:  # noqa: N802
        send_without_delay(self.transport)
        quick_tls(self.transport)
        direct_tls_writes(self.transport)
        self.setTimeout(self.site.timeOut)

    def timeoutConnection(self) -> None:  # noqa: N802
        log.info("closed an idle connection from {peer}: no complete HTTP request in "
                 "{seconds} s", peer=getattr(self.addr, "host", "?"), seconds=self.site.timeOut)
        self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self._answered:
            return        # (after a /clientinfo answer the connection is closing)
        # Only the new bytes are searched (and the few before them that could start a
        # terminator), and a head in pieces is gathered in a bytearray: a client sending
        # one byte at a time costs time in proportion to what it sends, not its square.
        seen = len(self._head)
        if seen:
            self._head += data
            head: bytes | bytearray = self._head
        else:
            head = data
        end = head.find(b"\r\n\r\n", max(0, seen - 3))
        if end < 0 and len(head) <= MAX_HEAD and head.find(b"\n\n", max(0, seen - 1)) < 0:
            if not seen:
                self._head = bytearray(data)
            self.resetTimeout()
            return
        head = bytes(head)
        self._head = bytearray()
        self.setTimeout(None)
        # (a head over the bound is twisted.web's to refuse, even when it came whole)
        kind, headers = classify(head[:end]) if 0 <= end <= MAX_HEAD - 4 else (None, {})
        site = self.site
        if kind == UPGRADE and site.router is not None and not self.routed:
            owner = site.router.owner(head)
            if owner is not None and site.router.pass_on(site, self.transport, owner, head):
                return              # (connectionLost releases it from the pending count)
        if kind == UPGRADE and site.websocket is not None:
            protocol = site.websocket.buildProtocol(self.addr)
            site.release(self)
        elif kind == CLIENTINFO and site.clientinfo is not None:
            self._answer_clientinfo(headers)
            return
        else:
            protocol = site.http_channel(self.addr, self._wyseman_pending)
        transport = self.transport
        hand_over(transport, protocol)
        protocol.makeConnection(transport)
        protocol.dataReceived(head)

    def _answer_clientinfo(self, headers: dict[bytes, bytes]) -> None:
        """Answer ``GET /clientinfo`` (a JS client's key login starts with one) and close:
        what twisted.web's resource answers, without its request machinery."""
        def text(name: bytes) -> str | None:
            value = headers.get(name)
            return None if value is None else value.decode("latin-1")
        body = self.site.clientinfo.body(self.addr, text(b"x-forwarded-for"),
                                         text(b"x-real-ip"), text(b"cookie"),
                                         text(b"user-agent"))
        cors = self.site.clientinfo.cors_headers(text(b"origin"), text(b"host"), self.addr)
        self._answered = True
        self.transport.write(clientinfo_response(body, self.site.reactor.seconds(), cors))
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure | None = None) -> None:  # noqa: N802
        self.setTimeout(None)
        self.site.release(self)
