"""A transport's hub without a database: the :class:`~wyseman.gateway.seams.TransportHub`
seam, for wire tests on a ``StringTransport`` and a ``MemoryReactorClock``.

The login decision is the test's (:attr:`FakeHub.decide`), requests are answered by the
test's function (:attr:`FakeHub.answer`), and what the wire reports is recorded."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport

from wyseman import config as cfg
from wyseman.auth.admission import Admitted, LoginRequest
from wyseman.auth.login import Login, Refusal
from wyseman.gateway.dispatch import Session
from wyseman.gateway.metrics import Metrics
from wyseman.ws.protocol import GatewayFactory, GatewayProtocol

UPGRADE = ("GET /?{query} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
           "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
           "Sec-WebSocket-Version: 13\r\n{headers}\r\n")


class WireTransport(StringTransport):
    """A StringTransport that, as a real TCP transport, lets a protocol unregister a
    producer it never registered (Autobahn does so when it drops a refused connection)."""

    def unregisterProducer(self) -> None:  # noqa: N802
        if self.producer is not None:
            super().unregisterProducer()


class FakeAdmission:
    def __init__(self, hub: FakeHub) -> None:
        self.hub = hub
        self.requests: list[LoginRequest] = []
        self.released: list[str] = []

    def admit(self, request: LoginRequest, gone: Callable[[], bool]) -> defer.Deferred[Any]:
        self.requests.append(request)
        d = defer.maybeDeferred(self.hub.decide, request)

        def admitted(login: Login) -> Admitted:
            outer = self

            class Held(Admitted):
                def release(self) -> None:
                    outer.released.append(self.login.user)
            return Held(login, None)
        return d.addCallback(admitted)


class FakeDispatcher:
    def __init__(self, hub: FakeHub) -> None:
        self.hub = hub

    def handle_then(self, session: Session, payload: bytes,
                    reply: Callable[[bytes], Any]) -> None:
        answer = self.hub.answer(payload)
        if isinstance(answer, defer.Deferred):
            answer.addCallback(reply)
        else:
            reply(answer)


class FakeHub:
    """Everything a WebSocket connection asks of its process's gateway."""

    def __init__(self, clock: MemoryReactorClock | None = None, **limits: Any) -> None:
        self.config = cfg.from_dict({"database": {"dsn": "dbname=none"}, "limits": limits})
        self.clock = clock or MemoryReactorClock()
        self.metrics = Metrics()
        self.trusted_proxies: tuple[Any, ...] = ()
        self.ip_style = "plain"
        self.log_connections = False
        self.max_in_flight = self.config.limits.max_in_flight
        self.max_outbound_bytes = self.config.limits.max_outbound_bytes
        self.admission = FakeAdmission(self)
        self.dispatcher = FakeDispatcher(self)
        self.registered: list[Any] = []
        #: the login decision: → a Login (or a Deferred of one), or raise a Refusal
        self.decide: Callable[[LoginRequest], Any] = lambda request: Login(
            "alice", (), "ticket", None)
        #: a request's reply frame (or a Deferred of it)
        self.answer: Callable[[bytes], Any] = lambda payload: b'{"echo":' + payload + b"}"

    def register(self, connection: Any) -> defer.Deferred[Any]:
        self.registered.append(connection)
        return defer.succeed(None)

    def unregister(self, connection: Any) -> None:
        self.registered.remove(connection)

    def refuse_with(self, refusal: Refusal) -> None:
        def refuse(request: LoginRequest) -> Any:
            raise refusal
        self.decide = refuse

    def connect(self, query: str = "user=alice&token=t&pub=p",
                headers: str = "") -> tuple[GatewayProtocol, WireTransport]:
        """A connection on a StringTransport that has sent its upgrade request."""
        factory = GatewayFactory(self, clock=self.clock)   # type: ignore[arg-type]
        peer = IPv4Address("TCP", "127.0.0.1", 4000)
        protocol = factory.buildProtocol(peer)
        transport = WireTransport(peerAddress=peer)
        protocol.makeConnection(transport)
        protocol.dataReceived(UPGRADE.format(query=query, headers=headers).encode())
        return protocol, transport
