"""The PROXY protocol (HAProxy's, versions 1 and 2) on a listening port: a balancer in
TCP mode says in a header before the client's bytes who the client is, so that
``/clientinfo``, the signed message of a key login, the per-address bounds and the log
see the client and not the balancer.

An endpoint string ``haproxy:tcp:…`` or ``haproxy:tls:…`` turns it on for that port
(wyseman.application.service). Every connection to such a port must start with a header
(a client that could reach the port directly could claim any address, so only peers in
``[server] trusted_proxies`` may connect): within ``open_handshake_timeout`` seconds and
:data:`MAX_HEADER` bytes, or it is closed, logged once per peer address.

Twisted has a wrapper of its own (``twisted.protocols.haproxy``), but it builds the
server's protocol when the TCP connection opens, before the header is read: the
per-address bounds would count the balancer, and the wrapping transport would hide the
plain TCP socket the WebSocket writes go to. Here the server's protocol is built only
once the header is read, from the client's address, on the connection's own transport.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin

from wyseman.ws.sniff import hand_over

log = Logger(namespace="wyseman.proxy")

V1_PREFIX = b"PROXY "
#: a version 1 header's longest form ("PROXY TCP6" with the longest addresses, CRLF)
V1_MAX = 107
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
#: the most bytes of a header read (version 2: 16 + addresses and TLVs)
MAX_HEADER = 1024
#: peer addresses whose refusals are remembered (to log only the first of each)
_REMEMBERED = 1024

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = IPv4Address | IPv6Address


class ProxyHeaderError(ValueError):
    """Not a PROXY protocol header; the text says why (for the log)."""


def _port(text: bytes) -> int:
    if not text.isdigit() or len(text) > 5 or (len(text) > 1 and text[:1] == b"0"):
        raise ProxyHeaderError("bad port")
    port = int(text)
    if port > 65535:
        raise ProxyHeaderError("bad port")
    return port


def _parse_v1(data: bytes) -> tuple[Address | None, int] | None:
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(data) >= V1_MAX:
            raise ProxyHeaderError("version 1 header without CRLF in 107 bytes")
        return None
    fields = data[:end].split(b" ")
    if fields[1:2] == [b"UNKNOWN"]:
        return None, end + 2
    if len(fields) != 6 or fields[1] not in (b"TCP4", b"TCP6"):
        raise ProxyHeaderError("malformed version 1 header")
    family = ipaddress.IPv4Address if fields[1] == b"TCP4" else ipaddress.IPv6Address
    try:
        source = family(fields[2].decode("ascii"))
        family(fields[3].decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        raise ProxyHeaderError("bad address in version 1 header") from None
    port = _port(fields[4])
    _port(fields[5])
    made = IPv4Address if family is ipaddress.IPv4Address else IPv6Address
    return made("TCP", str(source), port), end + 2


def _parse_v2(data: bytes) -> tuple[Address | None, int] | None:
    if len(data) < 16:
        return None
    version_command, family = data[12], data[13]
    if version_command >> 4 != 2 or version_command & 0x0F > 1:
        raise ProxyHeaderError("unknown version 2 version or command")
    length = int.from_bytes(data[14:16], "big")
    if 16 + length > MAX_HEADER:
        raise ProxyHeaderError(f"version 2 header over {MAX_HEADER} bytes")
    if len(data) < 16 + length:
        return None
    body = data[16:16 + length]
    if version_command & 0x0F == 0:          # LOCAL: the balancer's own (health check)
        return None, 16 + length
    if family == 0x11:                       # TCP over IPv4
        if length < 12:
            raise ProxyHeaderError("short version 2 IPv4 addresses")
        host = str(ipaddress.IPv4Address(body[0:4]))
        return IPv4Address("TCP", host, int.from_bytes(body[8:10], "big")), 16 + length
    if family == 0x21:                       # TCP over IPv6
        if length < 36:
            raise ProxyHeaderError("short version 2 IPv6 addresses")
        host = str(ipaddress.IPv6Address(body[0:16]))
        return IPv6Address("TCP", host, int.from_bytes(body[32:34], "big")), 16 + length
    if family == 0x00:                       # UNSPEC: no address to report
        return None, 16 + length
    raise ProxyHeaderError("version 2 header for a transport other than TCP")


def parse_header(data: bytes) -> tuple[Address | None, int] | None:
    """The client's address from a PROXY header at the start of ``data`` and the header's
    length; None for the address when the balancer speaks for itself (v1 ``UNKNOWN``,
    v2 ``LOCAL`` or ``UNSPEC``); None instead of the pair while the header is incomplete.

    :raises ProxyHeaderError: ``data`` does not start with a header."""
    if data[:6] == V1_PREFIX[:len(data)] and len(data) < 6:
        return None
    if data.startswith(V1_PREFIX):
        return _parse_v1(data)
    if data[:12] == V2_SIGNATURE[:len(data)]:
        return _parse_v2(data) if len(data) >= 12 else None
    raise ProxyHeaderError("no PROXY protocol header")


class ProxyHeaderReceiver(Protocol, TimeoutMixin):
    """Reads the header, then hands the connection to the wrapped factory's protocol,
    built for the client's address; the transport reports that address as its peer."""

    transport: Any

    def __init__(self, factory: ProxyProtocolFactory, addr: Any) -> None:
        self.factory = factory
        self.addr = addr
        self._buffer = b""
        self.callLater = factory.reactor.callLater  # type: ignore[method-assign]

    def connectionMade(self) -> None:  # noqa: N802
        if not self.factory.trusts(self.addr):
            self._refuse("not in [server] trusted_proxies")
            return
        self.setTimeout(self.factory.timeout)

    def timeoutConnection(self) -> None:  # noqa: N802
        self._refuse(f"no PROXY header in {self.factory.timeout:g} s")

    def _refuse(self, why: str) -> None:
        self.setTimeout(None)
        self.factory.refused(getattr(self.addr, "host", "?"), why)
        self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self._buffer += data
        try:
            parsed = parse_header(self._buffer[:MAX_HEADER])
        except ProxyHeaderError as exc:
            self._refuse(str(exc))
            return
        if parsed is None:
            if len(self._buffer) >= MAX_HEADER:
                self._refuse(f"no complete PROXY header in {MAX_HEADER} bytes")
            return
        source, length = parsed
        self.setTimeout(None)
        rest, self._buffer = self._buffer[length:], b""
        client = source if source is not None else self.addr
        protocol = self.factory.wrapped.buildProtocol(client)
        transport = self.transport
        if protocol is None:
            transport.abortConnection()
            return
        # (an attribute of this connection's transport only: what everything after this
        # asks, twisted.web's requests and the WebSocket's login included)
        transport.getPeer = lambda: client
        hand_over(transport, protocol)
        protocol.makeConnection(transport)
        if rest:
            protocol.dataReceived(rest)


class ProxyProtocolFactory(Factory):
    """``wrapped``'s connections, each after its PROXY header."""

    def __init__(self, wrapped: Any, *, trusted: Sequence[Network], timeout: float,
                 reactor: Any) -> None:
        self.wrapped = wrapped
        self.trusted = tuple(trusted)
        self.timeout = timeout
        self.reactor = reactor
        self.refusals = 0
        self._refused_from: dict[str, int] = {}

    def trusts(self, addr: Any) -> bool:
        try:
            address = ipaddress.ip_address(str(getattr(addr, "host", "")).split("%")[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.trusted)

    def refused(self, host: str, why: str) -> None:
        """Log the first refusal of each peer address (the others are counted)."""
        self.refusals += 1
        seen = self._refused_from.get(host)
        if seen is None:
            if len(self._refused_from) >= _REMEMBERED:
                self._refused_from.clear()
            self._refused_from[host] = 1
            log.warn("closed a connection from {peer} to a PROXY protocol port: {why}",
                     peer=host, why=why)
        else:
            self._refused_from[host] = seen + 1

    def buildProtocol(self, addr: Any) -> ProxyHeaderReceiver:  # noqa: N802
        return ProxyHeaderReceiver(self, addr)

    def doStart(self) -> None:  # noqa: N802
        self.wrapped.doStart()

    def doStop(self) -> None:  # noqa: N802
        self.wrapped.doStop()
