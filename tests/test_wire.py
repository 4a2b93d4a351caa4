"""The WebSocket wire without a database: a connection on a StringTransport, its hub a
fake (tests/fakehub.py), its clock a MemoryReactorClock. What is checked is what the wire
alone decides: how a login's outcome is worded, the in-flight cap, the bound on what a
peer that does not read is owed, and closes asked by the hub."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tests.fakehub import FakeHub
from tests.harness import client_frame
from wyseman.auth.login import Login, Refusal


def server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """The (opcode, payload) of each unmasked server frame in ``data``."""
    frames = []
    while data:
        opcode, size, start = data[0] & 0x0F, data[1] & 0x7F, 2
        if size == 126:
            size, start = int.from_bytes(data[2:4], "big"), 4
        elif size == 127:
            size, start = int.from_bytes(data[2:10], "big"), 10
        frames.append((opcode, data[start:start + size]))
        data = data[start + size:]
    return frames



class LoginWordingTests(SynchronousTestCase):
    def test_a_refusal_is_its_status_and_reason_and_is_counted(self) -> None:
        hub = FakeHub()
        hub.refuse_with(Refusal(403, "Invalid Login", "token not valid", "bad_token"))
        protocol, transport = hub.connect()
        answer = transport.value()
        self.assertTrue(answer.startswith(b"HTTP/1.1 403 Forbidden\r\n"), answer)
        self.assertTrue(answer.endswith(b"\r\n\r\nInvalid Login"), answer)
        self.assertEqual(hub.registered, [])
        refused = hub.metrics.handshakes.labels("refused", "bad_token", "websocket")._value.get()
        self.assertEqual(refused, 1)

    def test_the_decision_gets_what_the_request_says(self) -> None:
        hub = FakeHub()
        hub.connect(query="user=bob&sign=s&date=d",
                    headers="Origin: https://app.example\r\nCookie: a=1\r\nCookie: b=2\r\n"
                            "User-Agent: test\r\n")
        (request,) = hub.admission.requests
        self.assertEqual(request.handshake.query, "user=bob&sign=s&date=d")
        self.assertEqual(request.handshake.ip, "127.0.0.1")
        self.assertFalse(request.handshake.secure)
        self.assertEqual((request.origin, request.host), ("https://app.example", "127.0.0.1"))
        self.assertEqual(request.repeated_headers, ("Cookie",))

    def test_an_admitted_login_opens_and_its_place_is_released_on_close(self) -> None:
        hub = FakeHub()
        hub.decide = lambda request: Login("carol", ("chan",), "key", "x1")
        protocol, transport = hub.connect()
        self.assertIn(b"101 Switching Protocols", transport.value())
        self.assertEqual(hub.registered, [protocol])
        assert protocol.session is not None
        self.assertEqual((protocol.session.user, protocol.session.listen,
                          protocol.session.key_x), ("carol", ("chan",), "x1"))
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(hub.registered, [])
        self.assertEqual(hub.admission.released, ["carol"])

    def test_the_decision_can_tell_when_the_client_left(self) -> None:
        hub = FakeHub()
        held: defer.Deferred[Any] = defer.Deferred()
        hub.decide = lambda request: held
        seen: list[Any] = []
        admit = hub.admission.admit

        def spying(request: Any, gone: Any) -> Any:
            seen.append(gone)
            return admit(request, gone)
        hub.admission.admit = spying        # type: ignore[method-assign]
        protocol, transport = hub.connect()
        (gone,) = seen
        self.assertFalse(gone())
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(gone())
        held.errback(Refusal(400, "Bad Request", "left", "client_left"))
        self.assertEqual(hub.registered, [])


class OpenConnectionTests(SynchronousTestCase):
    def open(self, hub: FakeHub) -> tuple[Any, Any]:
        protocol, transport = hub.connect()
        self.assertIn(b"101 Switching Protocols", transport.value())
        transport.clear()
        self.addCleanup(lambda: protocol.connectionLost(Failure(ConnectionDone())))
        return protocol, transport

    def test_requests_beyond_the_in_flight_cap_wait_and_reading_pauses(self) -> None:
        hub = FakeHub(max_in_flight=2)
        pending: list[defer.Deferred[bytes]] = []

        def held(payload: bytes) -> defer.Deferred[bytes]:
            d: defer.Deferred[bytes] = defer.Deferred()
            pending.append(d)
            return d
        hub.answer = held
        protocol, transport = self.open(hub)
        protocol.dataReceived(b"".join(client_frame(0x1, b"%d" % n) for n in range(5)))
        self.assertEqual(len(pending), 2)
        self.assertEqual(transport.producerState, "paused")
        pending[0].callback(b"r0")
        self.assertEqual(len(pending), 3)              # the next waiting one went in
        self.assertEqual(transport.producerState, "paused")
        for n in range(1, 5):
            pending[n].callback(b"r%d" % n)
        self.assertEqual(transport.producerState, "producing")
        self.assertEqual(server_frames(transport.value()),
                         [(0x1, b"r%d" % n) for n in range(5)])

    def test_a_peer_that_does_not_read_is_cut_at_its_budget(self) -> None:
        hub = FakeHub(max_outbound_bytes=4096)
        protocol, transport = self.open(hub)
        transport.producer.pauseProducing()          # the send buffer is full
        for _ in range(3):
            self.assertTrue(protocol.send_frame(b"x" * 1000))
        self.assertEqual(transport.value(), b"")      # queued, not written
        self.assertFalse(protocol.send_frame(b"x" * 1200))
        self.assertTrue(transport.disconnected)
        self.assertEqual(hub.metrics.slow_consumers.labels("websocket")._value.get(), 1)

    def test_pings_of_a_peer_that_does_not_read_owe_one_pong(self) -> None:
        hub = FakeHub(max_outbound_bytes=4096)
        protocol, transport = self.open(hub)
        transport.producer.pauseProducing()
        protocol.dataReceived(b"".join(client_frame(0x9, b"p%d" % n) for n in range(50)))
        self.assertEqual(transport.value(), b"")
        self.assertFalse(transport.disconnected)
        transport.producer.resumeProducing()
        self.assertEqual(server_frames(transport.value()), [(0xA, b"p49")])
        # past the budget, the pongs owed cut the peer as queued data would
        transport.clear()
        transport.producer.pauseProducing()
        protocol.dataReceived(b"".join(client_frame(0x9, b"q" * 100) for _ in range(50)))
        self.assertTrue(transport.disconnected)

    def test_a_close_asked_by_the_hub_carries_its_code(self) -> None:
        hub = FakeHub()
        protocol, transport = self.open(hub)
        protocol.end_session(4001, "credentials changed")
        ((opcode, payload),) = server_frames(transport.value())
        self.assertEqual(opcode, 0x8)
        self.assertEqual((int.from_bytes(payload[:2], "big"), payload[2:]),
                         (4001, b"credentials changed"))
        transport.clear()
        protocol.end_session(1001, "going away")     # already closing: nothing more
        self.assertEqual(transport.value(), b"")

    def test_a_server_code_goes_out_as_is(self) -> None:
        hub = FakeHub()
        protocol, transport = self.open(hub)
        protocol.end_session(1001, "server shutting down")
        ((opcode, payload),) = server_frames(transport.value())
        self.assertEqual(int.from_bytes(payload[:2], "big"), 1001)

    def test_heartbeat_on_the_fake_clock(self) -> None:
        hub = FakeHub(ping_interval=10, ping_timeout=5)
        protocol, transport = self.open(hub)
        hub.clock.advance(10.5)
        ((opcode, payload),) = server_frames(transport.value())
        self.assertEqual(opcode, 0x9)
        hub.clock.advance(6)                           # no pong within the timeout
        self.assertTrue(transport.disconnecting or transport.disconnected)


