"""A connection's first bytes: plain upgrades go straight to Autobahn, the rest to
twisted.web (wyseman.protocol.sniff)."""

from __future__ import annotations

from twisted.internet import defer, protocol
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web import resource

from tests.harness import add_user, http_get, raw_upgrade, start_gateway, ticket_login
from tests.pgtest import fresh_database
from wyseman.protocol.httpbounds import BoundedRequest, GatewaySite
from wyseman.protocol.sniff import MAX_HEAD, Sniffer, hand_over, is_plain_upgrade

UPGRADE = (b"GET /?user=kim HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
           b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
           b"Sec-WebSocket-Version: 13")


class PlainUpgradeTests(TestCase):
    def test_plain_upgrades(self):
        self.assertTrue(is_plain_upgrade(UPGRADE))
        self.assertTrue(is_plain_upgrade(UPGRADE.replace(b"Upgrade: websocket",
                                                         b"upgrade:WebSocket")))
        self.assertTrue(is_plain_upgrade(UPGRADE.replace(b"/?user", b"/any/path?user")))

    def test_everything_else_is_left_to_twisted_web(self):
        for old, new in [
            (b"GET /?", b"POST /?"),                                  # another method
            (b"HTTP/1.1\r\nHost", b"HTTP/1.0\r\nHost"),               # another version
            (b"GET /?user=kim", b"GET http://h/?user=kim"),           # absolute form
            (b"GET /?user=kim", b"GET /clientinfo"),                  # /clientinfo ...
            (b"GET /?user=kim", b"GET /clientinfo/x?y"),
            (b"GET /?user=kim", b"GET /%63lientinfo"),                # ... however spelt
            (b"Upgrade: websocket", b"Upgrade: h2c"),                 # not a WebSocket
            (b"Upgrade: websocket", b"X-Upgrade: websocket"),         # no Upgrade at all
            (b"Host: 127.0.0.1", b"Host: 127.0.0.1\r\nContent-Length: 5"),      # a body
            (b"Host: 127.0.0.1", b"Host: 127.0.0.1\r\nTransfer-Encoding: chunked"),
            (b"Host: 127.0.0.1", b"Host: 127.0.0.1\r\nnot a header line"),
            (b"GET /?user=kim HTTP/1.1", b"GET  /?user=kim HTTP/1.1"),  # malformed line
        ]:
            head = UPGRADE.replace(old, new)
            self.assertNotEqual(head, UPGRADE)
            self.assertFalse(is_plain_upgrade(head), head)
        self.assertFalse(is_plain_upgrade(b"GET / HTTP/1.1"))


class _Recorder(protocol.Protocol):
    def __init__(self) -> None:
        self.data = b""

    def dataReceived(self, data):  # noqa: N802
        self.data += data


class _Text(resource.Resource):
    isLeaf = True

    def render_GET(self, request):  # noqa: N802
        return b"plain http"


class SnifferTests(TestCase):
    """The sniffer on a :class:`GatewaySite` (no reactor, no network)."""

    def setUp(self):
        self.clock = MemoryReactorClock()
        self.websockets = []

        def websocket():
            recorder = _Recorder()
            self.websockets.append(recorder)
            return recorder
        root = resource.Resource()
        root.putChild(b"clientinfo", _Text())
        self.site = GatewaySite(root, requestFactory=BoundedRequest, reactor=self.clock,
                                max_pending=10, timeout=5, deadline=10,
                                websocket=protocol.Factory.forProtocol(websocket))

    def connect(self):
        sniffer = self.site.buildProtocol(IPv4Address("TCP", "192.0.2.1", 40000))
        self.assertIsInstance(sniffer, Sniffer)
        transport = StringTransport()
        transport.protocol = sniffer
        sniffer.makeConnection(transport)
        return sniffer, transport

    def test_an_upgrade_goes_to_the_websocket_in_whatever_pieces_it_comes(self):
        sniffer, transport = self.connect()
        sent = UPGRADE + b"\r\n\r\n" + b"\x81\x80frame"      # a frame right behind it
        for byte in sent[:-10]:
            sniffer.dataReceived(bytes([byte]))
        self.assertEqual((self.websockets, self.site.pending), ([], 1))
        sniffer.dataReceived(sent[-10:])
        [websocket] = self.websockets
        self.assertIs(transport.protocol, websocket)           # it reads from now on
        self.assertIs(websocket.transport, transport)
        self.assertEqual(websocket.data, sent)                  # every byte, once
        self.assertEqual(self.site.pending, 0)                  # no longer pending
        self.assertEqual(self.clock.getDelayedCalls(), [])      # no timer left behind
        self.assertEqual(transport.value(), b"")                # twisted.web said nothing

    def test_other_requests_are_answered_by_twisted_web(self):
        sniffer, transport = self.connect()
        for byte in b"GET /clientinfo HTTP/1.1\r\nHost: x\r\n\r\n":
            transport.protocol.dataReceived(bytes([byte]))   # as the transport delivers
        self.assertIn(b"200 OK", transport.value())
        self.assertIn(b"plain http", transport.value())
        self.assertEqual(self.websockets, [])
        self.assertEqual(self.site.pending, 1)   # an HTTP connection counts ...
        transport.protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.site.pending, 0)   # ... until it closes
        self.assertEqual(self.clock.getDelayedCalls(), [])
        # a head with bare line feeds is twisted.web's too (the sniffer does not wait
        # for a CRLF that may never come)
        sniffer, transport = self.connect()
        sniffer.dataReceived(b"GET / HTTP/1.1\nUpgrade: websocket\n\n")
        self.assertEqual(transport.protocol.__class__.__name__,
                         "_GenericHTTPChannelProtocol")
        self.assertEqual(self.websockets, [])

    def test_an_endless_head_is_twisted_webs_to_refuse(self):
        sniffer, transport = self.connect()
        sniffer.dataReceived(b"GET / HTTP/1.1\r\nX-Long: ")
        sniffer.dataReceived(b"a" * (MAX_HEAD - 100))
        self.assertFalse(transport.disconnecting)        # still reading the head
        sniffer.dataReceived(b"a" * 200)
        self.assertIsNot(transport.protocol, sniffer)     # twisted.web's now, which drops
        self.assertTrue(transport.disconnecting)          # a line over its 16 KiB limit
        self.assertEqual(self.websockets, [])

    def test_an_idle_connection_is_closed_after_the_timeout(self):
        sniffer, transport = self.connect()
        self.clock.advance(4)
        sniffer.dataReceived(b"GET / HTTP/1.1\r\n")     # bytes: idle again from here
        self.clock.advance(4)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1.5)
        self.assertTrue(transport.disconnecting)
        sniffer.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.site.pending, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_tls_connection_is_handed_over_inside_its_wrapper(self):
        outer = StringTransport()
        wrapper = ProtocolWrapper(WrappingFactory(protocol.Factory()), _Recorder())
        outer.protocol = wrapper
        replacement = _Recorder()
        hand_over(wrapper, replacement)                 # TLSMemoryBIOProtocol's case
        self.assertIs(wrapper.wrappedProtocol, replacement)
        self.assertIs(outer.protocol, wrapper)
        inner = _Recorder()
        hand_over(outer, inner)                         # a TLS-started TCP connection
        self.assertIs(wrapper.wrappedProtocol, inner)


class ServerTests(TestCase):
    """A real server: a login never becomes a twisted.web request."""

    timeout = 60

    @defer.inlineCallbacks
    def test_logins_skip_twisted_web(self):
        db = fresh_database(self)
        server = yield start_gateway(self, db)
        site = server.ports[0].factory
        requests = []
        make_request = site.requestFactory

        def counting(*args, **kwargs):
            request = make_request(*args, **kwargs)
            requests.append(request.__class__.__name__)
            return request
        site.requestFactory = counting
        conn = yield ticket_login(self, server, db, add_user(db))
        reply = yield conn.request({"action": "tuple", "view": "base.curr_eid()"})
        self.assertIsNotNone(reply)
        self.assertEqual(requests, [])
        self.assertEqual(site.pending, 0)
        status, _, _ = yield http_get(server.port, "/clientinfo")
        self.assertEqual((status, requests), (200, ["BoundedRequest"]))
        # refused upgrades are Autobahn's answer, as before
        status, body = yield raw_upgrade(server.port, "user=nobody")
        self.assertEqual((status, body), (401, "No login credentials"))
        self.assertEqual(len(requests), 1)
