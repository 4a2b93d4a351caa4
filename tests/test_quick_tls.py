"""The TLS layer of a ``tls:`` port's connections (``twisted_io.QuickTLSTransport``): it
must behave as Twisted's own, seen from both ends, while it asks pyOpenSSL for nothing
that is known to be missing and sends a turn's first write at once.

Each scenario runs twice on a memory transport, once with Twisted's transport and once
with ours, and what the application and the peer see is compared."""

from __future__ import annotations

from pathlib import Path

from OpenSSL import SSL
from twisted.internet import protocol
from twisted.internet.ssl import PrivateCertificate
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory
from twisted.trial.unittest import SynchronousTestCase

from tests.tlsutil import TestCA
from wyseman.ws import twisted_io
from wyseman.ws.twisted_io import QuickTLSTransport, quick_tls


class _Recorder(protocol.Protocol):
    """The application: what it is given, and why its connection ended."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.reason: object = None

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.received.append(data)

    def connectionLost(self, reason: object = None) -> None:  # noqa: N802
        self.reason = reason


class _Peer:
    """The client: a pyOpenSSL session on memory BIOs, wired to the server's transport
    by hand (bytes go across only when the test moves them)."""

    def __init__(self) -> None:
        context = SSL.Context(SSL.TLS_METHOD)
        self.tls = SSL.Connection(context, None)
        self.tls.set_connect_state()

    def records(self) -> bytes:
        """Everything the client's TLS session has made to send."""
        out = b""
        while True:
            try:
                out += self.tls.bio_read(65536)
            except SSL.WantReadError:
                return out

    def take(self, data: bytes) -> bytes:
        """Give the client the server's bytes; → the plaintext they held."""
        if data:
            self.tls.bio_write(data)
        plain = b""
        while True:
            try:
                plain += self.tls.recv(65536)
            except (SSL.WantReadError, SSL.ZeroReturnError):
                return plain

    def handshake(self) -> None:
        try:
            self.tls.do_handshake()
        except SSL.WantReadError:
            pass


class _Misses:
    """Counts pyOpenSSL calls on the server's session that raised WantReadError."""

    def __init__(self, case: SynchronousTestCase) -> None:
        self.count = 0
        self.session: object = None
        for name in ("recv", "bio_read"):
            original = getattr(SSL.Connection, name)
            case.patch(SSL.Connection, name, self._counting(original))

    def _counting(self, original):
        def call(tls, *args):
            try:
                return original(tls, *args)
            except SSL.WantReadError:
                if tls is self.session:
                    self.count += 1
                raise
        return call


class QuickTLSTests(SynchronousTestCase):
    def setUp(self) -> None:
        directory = Path(self.mktemp())
        directory.mkdir()
        cert, key, _ = TestCA.create().issue(directory, "server")
        self.options = PrivateCertificate.loadPEM(
            cert.read_text() + key.read_text()).options()

    def connect(self, quick: bool):
        """A server connection (ours if ``quick``) past its handshake with a fresh
        client; → (server transport, application, TCP transport, client, clock)."""
        clock = MemoryReactorClock()
        application = _Recorder()
        factory = TLSMemoryBIOFactory(self.options, False,
                                      protocol.Factory.forProtocol(lambda: application),
                                      clock=clock)
        server = factory.buildProtocol(None)
        self.assertIs(type(server), BufferingTLSTransport)
        if quick:
            self.assertTrue(quick_tls(server))
            self.assertIs(type(server), QuickTLSTransport)
        tcp = StringTransport()
        server.makeConnection(tcp)
        peer = _Peer()
        for _ in range(10):             # the handshake's flights, each way
            peer.handshake()
            sent = peer.records()
            if sent:
                server.dataReceived(sent)
            peer.take(tcp.value())
            tcp.clear()
        self.assertTrue(server._handshakeDone)
        return server, application, tcp, peer, clock

    def both(self, scenario):
        """``scenario(server, application, tcp, peer, clock)`` → what was seen, with
        Twisted's transport and with ours: the same; → WantReadErrors (Twisted's, ours)."""
        seen, misses = [], []
        for quick in (False, True):
            counter = _Misses(self)
            server, application, tcp, peer, clock = self.connect(quick)
            counter.session = server._tlsConnection
            counter.count = 0
            seen.append(scenario(server, application, tcp, peer, clock))
            misses.append(counter.count)
        self.assertEqual(seen[1], seen[0])
        return misses

    def test_records_in_one_read_and_split_records_are_all_delivered(self) -> None:
        def scenario(server, application, tcp, peer, clock):
            chunks = []
            for text in (b"one", b"two" * 3000, b"three"):
                peer.tls.send(text)
                chunks.append(peer.records())
            server.dataReceived(b"".join(chunks))          # three records at once
            peer.tls.send(b"four" * 50)
            split = peer.records()
            for i in range(len(split)):                    # one byte at a time
                server.dataReceived(split[i:i + 1])
            return b"".join(application.received)
        twisted_misses, quick_misses = self.both(scenario)
        self.assertGreater(twisted_misses, 0)
        # only the partial record's reads miss (a record not yet whole)
        self.assertLess(quick_misses, twisted_misses)

    def test_a_request_and_its_reply_raise_nothing(self) -> None:
        def scenario(server, application, tcp, peer, clock):
            replies = []
            for n in range(5):
                peer.tls.send(b"request %d" % n)
                server.dataReceived(peer.records())
                server.write(b"reply %d" % n)
                clock.advance(0)
                replies.append(peer.take(tcp.value()))
                tcp.clear()
            return b"".join(application.received), replies
        twisted_misses, quick_misses = self.both(scenario)
        self.assertGreaterEqual(twisted_misses, 10)
        self.assertEqual(quick_misses, 0)

    def test_first_write_of_a_turn_goes_at_once_later_ones_join(self) -> None:
        server, _, tcp, peer, clock = self.connect(quick=True)
        server.write(b"first")
        self.assertEqual(peer.take(tcp.value()), b"first")    # before the turn ends
        tcp.clear()
        server.write(b"second")
        server.write(b"third")
        self.assertEqual(tcp.value(), b"")                      # kept for the turn's end
        clock.advance(0)
        record = tcp.value()
        tcp.clear()
        self.assertEqual(peer.take(record), b"secondthird")   # one record of both
        server.write(b"next turn")
        self.assertEqual(peer.take(tcp.value()), b"next turn")

    def test_connections_of_a_port_share_one_timer_a_turn(self) -> None:
        clock = MemoryReactorClock()
        factory = TLSMemoryBIOFactory(self.options, False,
                                      protocol.Factory.forProtocol(_Recorder), clock=clock)
        servers = []
        for _ in range(3):
            server = factory.buildProtocol(None)
            quick_tls(server)
            server.makeConnection(StringTransport())
            servers.append(server)
        clock.advance(0)
        for server in servers:
            server._handshakeDone = True      # (writes before it are kept by Twisted)
            server.write(b"x")
        self.assertEqual(len(clock.getDelayedCalls()), 1)

    def test_a_clean_close_and_a_cut_end_as_with_twisted(self) -> None:
        def closed(server, application, tcp, peer, clock):
            peer.tls.send(b"last words")
            peer.tls.shutdown()                            # close_notify
            server.dataReceived(peer.records())
            peer.take(tcp.value())
            # the server answered with its own close_notify and closes its TCP side
            answered = (tcp.disconnecting, peer.tls.get_shutdown())
            server.connectionLost(protocol.connectionDone)
            return (b"".join(application.received), answered,
                    type(application.reason.value))

        def cut(server, application, tcp, peer, clock):
            peer.tls.send(b"half a record")
            record = peer.records()
            server.dataReceived(record[:-3])
            server.connectionLost(protocol.connectionDone)   # the peer's TCP is gone
            return b"".join(application.received), type(application.reason.value)
        self.both(closed)
        self.both(cut)

    def test_a_broken_record_fails_the_connection_as_with_twisted(self) -> None:
        def broken(server, application, tcp, peer, clock):
            peer.tls.send(b"tampered")
            record = bytearray(peer.records())
            record[-1] ^= 0xFF
            server.dataReceived(bytes(record))
            alerted = tcp.value() != b""          # the server's alert, sent
            failed = tcp.disconnecting
            server.connectionLost(protocol.connectionDone)
            return (b"".join(application.received), failed, alerted,
                    type(application.reason.value))
        self.both(broken)

    def test_long_writes_and_many_records_as_with_twisted(self) -> None:
        def scenario(server, application, tcp, peer, clock):
            server.write(b"a" * 50_000)                  # more than three records
            clock.advance(0)
            server.write(b"b" * (twisted_io.TLS_RECORD_DATA + 1))
            server.write(b"c")
            clock.advance(0)
            delivered = peer.take(tcp.value())
            tcp.clear()
            for n in range(3):
                peer.tls.send(b"x" * 20_000 + b"%d" % n)
            server.dataReceived(peer.records())
            return delivered, b"".join(application.received)
        self.both(scenario)

    def test_an_established_session_is_driven_by_direct_calls(self) -> None:
        """Past the handshake, a request and its reply go through pyOpenSSL's binding
        directly: none of the session's own methods for them is called (each costs
        twice the call it wraps)."""
        wrapped = ("recv", "send", "bio_read", "bio_write")
        for quick in (False, True):
            server, application, tcp, peer, clock = self.connect(quick)
            calls: list[str] = []
            for name in wrapped:
                original = getattr(SSL.Connection, name)

                def spy(tls, *args, _original=original, _name=name,
                        _session=server._tlsConnection, _calls=calls):
                    if tls is _session:
                        _calls.append(_name)
                    return _original(tls, *args)
                self.patch(SSL.Connection, name, spy)
            peer.tls.send(b"request")
            server.dataReceived(peer.records())
            server.write(b"reply")
            clock.advance(0)
            self.assertEqual(peer.take(tcp.value()), b"reply")
            self.assertEqual(application.received, [b"request"])
            if quick:
                self.assertEqual(calls, [])
            else:
                self.assertEqual(set(calls), set(wrapped))

    def test_whatever_the_outgoing_bio_holds_is_sent_in_order(self) -> None:
        """The outgoing BIO is read until a read returns less than it asked for: what it
        holds leaves whole, also exactly one read's worth or several (a handshake flight
        with a long chain), and an empty BIO sends nothing."""
        from OpenSSL.SSL import _lib  # type: ignore[attr-defined]
        for direct in (twisted_io._direct, None):
            self.patch(twisted_io, "_direct", direct)
            server, application, tcp, peer, clock = self.connect(True)
            outgoing = server._tlsConnection._from_ssl
            size = twisted_io._DirectCalls.SIZE
            for length in (0, 1, size - 1, size, size + 1, 3 * size + 7):
                tcp.clear()
                data = bytes(i % 251 for i in range(length))
                if data:
                    self.assertEqual(_lib.BIO_write(outgoing, data, length), length)
                server._flushSendBIO()
                self.assertEqual(tcp.value(), data, (direct, length))

    def test_without_the_binding_pyopenssl_methods_do_the_same(self) -> None:
        def scenario(server, application, tcp, peer, clock):
            replies = []
            for n in range(3):
                peer.tls.send(b"request %d" % n)
                server.dataReceived(peer.records())
                server.write(b"reply %d" % n * 2000)
                clock.advance(0)
                replies.append(peer.take(tcp.value()))
                tcp.clear()
            return b"".join(application.received), replies
        self.patch(twisted_io, "_direct", None)
        twisted_misses, quick_misses = self.both(scenario)
        self.assertEqual(quick_misses, 0)

    def test_other_transports_are_left_alone(self) -> None:
        self.assertFalse(quick_tls(StringTransport()))
        self.patch(twisted_io, "_bytes_in", None)     # a pyOpenSSL without the binding
        factory = TLSMemoryBIOFactory(self.options, False,
                                      protocol.Factory.forProtocol(_Recorder))
        server = factory.buildProtocol(None)
        self.assertFalse(quick_tls(server))
        self.assertIs(type(server), BufferingTLSTransport)
