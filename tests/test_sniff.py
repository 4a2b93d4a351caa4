"""A connection's first bytes: plain upgrades go straight to Autobahn, the rest to
twisted.web (wyseman.ws.sniff)."""

from __future__ import annotations

import json

from twisted.internet import defer, protocol
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web import resource

from tests.harness import (
    _RawHTTP,
    add_user,
    http_get,
    raw_upgrade,
    start_gateway,
    ticket_login,
)
from tests.pgtest import fresh_database
from wyseman.nagle import send_without_delay
from wyseman.ws.cors import ClientInfoCors
from wyseman.ws.httpbounds import BoundedRequest, GatewaySite
from wyseman.ws.sniff import (
    CLIENTINFO,
    MAX_HEAD,
    UPGRADE,
    Sniffer,
    classify,
    hand_over,
    is_plain_upgrade,
)

UPGRADE_HEAD = (b"GET /?user=kim HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
           b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
           b"Sec-WebSocket-Version: 13")


class PlainUpgradeTests(TestCase):
    def test_plain_upgrades(self):
        self.assertTrue(is_plain_upgrade(UPGRADE_HEAD))
        self.assertTrue(is_plain_upgrade(UPGRADE_HEAD.replace(b"Upgrade: websocket",
                                                         b"upgrade:WebSocket")))
        self.assertTrue(is_plain_upgrade(UPGRADE_HEAD.replace(b"/?user", b"/any/path?user")))

    def test_everything_else_is_left_to_twisted_web(self):
        for old, new in [
            (b"GET /?", b"POST /?"),                                  # another method
            (b"HTTP/1.1\r\nHost", b"HTTP/1.0\r\nHost"),               # another version
            (b"GET /?user=kim", b"GET http://h/?user=kim"),           # absolute form
            (b"GET /?user=kim", b"GET /clientinfo"),                  # /clientinfo ...
            (b"GET /?user=kim", b"GET /clientinfo/x?y"),
            (b"GET /?user=kim", b"GET /%63lientinfo"),                # ... however spelt
            (b"Host: 127.0.0.1", b"Host: 127.0.0.1\r\n folded"),       # a folded line
            (b"Host: 127.0.0.1", b"Host : 127.0.0.1"),                # a space in a name
            (b"Host: 127.0.0.1", b"Host: 127.0.0.1\n\nX: y"),          # bare line feeds
            (b"Host: 127.0.0.1", b"Host: 127.0.0.1\rX: y"),           # a bare CR
            (b"Upgrade: websocket", b"Upgrade: h2c"),                 # not a WebSocket
            (b"Upgrade: websocket", b"X-Upgrade: websocket"),         # no Upgrade at all
            (b"Host: 127.0.0.1", b"Host: 127.0.0.1\r\nContent-Length: 5"),      # a body
            (b"Host: 127.0.0.1", b"Host: 127.0.0.1\r\nTransfer-Encoding: chunked"),
            (b"Host: 127.0.0.1", b"Host: 127.0.0.1\r\nnot a header line"),
            (b"GET /?user=kim HTTP/1.1", b"GET  /?user=kim HTTP/1.1"),  # malformed line
        ]:
            head = UPGRADE_HEAD.replace(old, new)
            self.assertNotEqual(head, UPGRADE_HEAD)
            self.assertFalse(is_plain_upgrade(head), head)
        self.assertFalse(is_plain_upgrade(b"GET / HTTP/1.1"))

    def test_plain_clientinfo_requests(self):
        for target in (b"/clientinfo", b"/clientinfo?x=1", b"/clientinfo/", b"/%63lientinfo"):
            kind, headers = classify(b"GET " + target + b" HTTP/1.1\r\nHost: h\r\n"
                                     b"Cookie: a=1\r\ncookie:  b=2 \r\nUser-Agent: UA 1")
            self.assertEqual(kind, CLIENTINFO, target)
            # names in lower case; the last of a repeated field, trimmed (as twisted.web)
            self.assertEqual(headers, {b"host": b"h", b"cookie": b"b=2",
                                       b"user-agent": b"UA 1"})
        self.assertEqual(classify(UPGRADE_HEAD)[0], UPGRADE)
        for head in (b"HEAD /clientinfo HTTP/1.1", b"GET /clientinfo HTTP/1.0",
                     b"GET /clientinfo HTTP/1.1\r\nContent-Length: 0",
                     b"GET /other HTTP/1.1\r\nHost: h"):
            self.assertIsNone(classify(head)[0], head)


class _Recorder(protocol.Protocol):
    def __init__(self) -> None:
        self.data = b""

    def dataReceived(self, data):  # noqa: N802
        self.data += data


class _Text(resource.Resource):
    isLeaf = True

    def render_GET(self, request):  # noqa: N802
        return b"plain http"


class _ClientInfo:
    """What the sniffer asks for a /clientinfo answer (the server's is ClientInfo)."""

    def __init__(self) -> None:
        self.asked = []

    def body(self, peer, forwarded_for, real_ip, cookie, user_agent):
        self.asked.append((peer.host, forwarded_for, real_ip, cookie, user_agent))
        return b'{"ip":"x"}'

    def cors_headers(self, origin, host, peer):
        return ClientInfoCors(()).headers(origin, host)


class SnifferTests(TestCase):
    """The sniffer on a :class:`GatewaySite` (no reactor, no network)."""

    def setUp(self):
        self.clock = MemoryReactorClock()
        self.clock.advance(1_700_000_000)
        self.websockets = []
        self.clientinfo = _ClientInfo()

        def websocket():
            recorder = _Recorder()
            self.websockets.append(recorder)
            return recorder
        root = resource.Resource()
        root.putChild(b"clientinfo", _Text())
        self.site = GatewaySite(root, requestFactory=BoundedRequest, reactor=self.clock,
                                max_pending=10, timeout=5, deadline=10,
                                websocket=protocol.Factory.forProtocol(websocket),
                                clientinfo=self.clientinfo)

    def connect(self):
        sniffer = self.site.buildProtocol(IPv4Address("TCP", "192.0.2.1", 40000))
        self.assertIsInstance(sniffer, Sniffer)
        transport = StringTransport()
        transport.protocol = sniffer
        sniffer.makeConnection(transport)
        return sniffer, transport

    def test_an_upgrade_goes_to_the_websocket_in_whatever_pieces_it_comes(self):
        sniffer, transport = self.connect()
        sent = UPGRADE_HEAD + b"\r\n\r\n" + b"\x81\x80frame"      # a frame right behind it
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

    def test_a_plain_clientinfo_request_is_answered_and_closed(self):
        sniffer, transport = self.connect()
        request = (b"GET /clientinfo HTTP/1.1\r\nHost: x\r\nUser-Agent: UA\r\n"
                   b"X-Forwarded-For: 198.51.100.1\r\n\r\n")
        for byte in request:
            transport.protocol.dataReceived(bytes([byte]))
        self.assertIs(transport.protocol, sniffer)
        self.assertEqual(self.clientinfo.asked,
                         [("192.0.2.1", "198.51.100.1", None, None, "UA")])
        self.assertEqual(transport.value(), (
            b"HTTP/1.1 200 OK\r\nServer: wyseman\r\nDate: Tue, 14 Nov 2023 22:13:20 GMT\r\n"
            b"Content-Type: application/json\r\nCache-Control: no-store\r\n"
            b"Vary: Origin\r\nContent-Length: 10\r\n"
            b"Connection: close\r\n\r\n{\"ip\":\"x\"}"))
        self.assertTrue(transport.disconnecting)
        sniffer.dataReceived(b"GET /clientinfo HTTP/1.1\r\n\r\n")   # closing: ignored
        self.assertEqual(len(self.clientinfo.asked), 1)
        self.assertEqual(self.site.pending, 1)
        sniffer.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.site.pending, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_other_requests_are_answered_by_twisted_web(self):
        sniffer, transport = self.connect()
        for byte in b"GET /clientinfo HTTP/1.0\r\nHost: x\r\n\r\n":
            transport.protocol.dataReceived(bytes([byte]))   # as the transport delivers
        self.assertIn(b"200 OK", transport.value())
        self.assertIn(b"plain http", transport.value())
        self.assertEqual(self.clientinfo.asked, [])
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

    def test_an_over_long_head_in_one_read_is_twisted_webs_to_refuse(self):
        sniffer, transport = self.connect()
        fields = b"".join(b"X-F%d: v\r\n" % n for n in range(5000))
        head = UPGRADE_HEAD + b"\r\n" + fields
        self.assertGreater(len(head), MAX_HEAD)
        sniffer.dataReceived(head + b"\r\n")
        self.assertEqual(self.websockets, [])
        self.assertIsNot(transport.protocol, sniffer)
        self.assertTrue(transport.disconnecting)          # twisted.web's limits
        self.assertIn(b"400", transport.value())

    def test_an_idle_connection_is_closed_after_the_timeout(self):
        sniffer, transport = self.connect()
        self.clock.advance(4)
        sniffer.dataReceived(b"GET / HTTP/1.1\r\n")     # bytes: idle again from here
        self.clock.advance(4)
        self.assertFalse(transport.disconnecting)
        from twisted.logger import capturedLogs, formatEvent
        with capturedLogs() as events:
            self.clock.advance(1.5)
        self.assertTrue(transport.disconnecting)
        self.assertEqual([formatEvent(e) for e in events], [
            "closed an idle connection from 192.0.2.1: no complete HTTP request in 5 s"])
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
    """A real server: a login or a plain /clientinfo never becomes a twisted.web request."""

    timeout = 60

    @defer.inlineCallbacks
    def test_logins_and_clientinfo_skip_twisted_web(self):
        db = fresh_database(self)
        server = yield start_gateway(
            self, db, server={"clientinfo_listen": ["tcp:0:interface=127.0.0.1"]})
        self.assertEqual(len(server.ports), 2)
        requests = []
        for port in server.ports:     # the WebSocket port and its /clientinfo port
            site = port.factory
            make_request = site.requestFactory

            def counting(*args, make_request=make_request, **kwargs):
                request = make_request(*args, **kwargs)
                requests.append(request.__class__.__name__)
                return request
            site.requestFactory = counting
        site = server.ports[0].factory
        conn = yield ticket_login(self, server, db, add_user(db))
        reply = yield conn.request({"action": "tuple", "view": "base.curr_eid()"})
        self.assertIsNotNone(reply)
        self.assertEqual(requests, [])
        self.assertEqual(site.pending, 0)
        fast = []
        for port in [p.getHost().port for p in server.ports]:
            status, headers, body = yield http_get(port, "/clientinfo")
            self.assertEqual(status, 200)
            self.assertIn("content-type: application/json", headers)
            fast.append(json.loads(body))
        self.assertEqual(requests, [])
        # refused upgrades are Autobahn's answer, as before
        status, body = yield raw_upgrade(server.port, "user=nobody")
        self.assertEqual((status, body), (401, "No login credentials"))
        self.assertEqual(requests, [])
        # the same client's /clientinfo through twisted.web (HTTP/1.0): the same answer
        raw = _RawHTTP(b"GET /clientinfo HTTP/1.0\r\nHost: x\r\n\r\n")
        from twisted.internet import reactor
        from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", server.port), raw)
        head, _, body = (yield raw.done).partition(b"\r\n\r\n")
        self.assertEqual(requests, ["BoundedRequest"])
        self.assertIn(b"content-type: application/json", head.lower())
        slow = json.loads(body)
        for answer in [*fast, slow]:
            answer.pop("date")
        self.assertEqual(fast, [slow, slow])
        self.assertEqual(set(slow), {"ip"})   # (no cookie, user agent or proxy header)
        # the /clientinfo port has no WebSocket: an upgrade there is twisted.web's 404
        status, _ = yield raw_upgrade(server.ports[1].getHost().port, "user=x")
        self.assertEqual((status, requests), (404, ["BoundedRequest", "BoundedRequest"]))

    @defer.inlineCallbacks
    def test_nagle_is_off_on_the_gateways_connections(self):
        """TCP_NODELAY on a connection the gateway accepts (its writes are whole frames;
        Nagle would only hold a second one back for the peer's delayed ACK)."""
        import socket

        from twisted.internet import tcp
        db = fresh_database(self)
        server = yield start_gateway(self, db)
        accepted = []
        init = tcp.Server.__init__

        def recording(transport, *args, **kwargs):
            init(transport, *args, **kwargs)
            accepted.append(transport)
        self.patch(tcp.Server, "__init__", recording)
        conn = yield ticket_login(self, server, db, add_user(db))
        self.assertIsNotNone((yield conn.request({"action": "tuple",
                                                  "view": "base.curr_eid()"})))
        [gateway_side] = list(server.gateway.all_connections())
        self.assertEqual(accepted, [gateway_side.transport])
        self.assertTrue(accepted[0].socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    @defer.inlineCallbacks
    def test_the_answer_to_an_upgrade_is_written_straight_to_the_socket(self):
        """The 101 answer (and the close frame) go to the socket in the call that makes
        them, not through Twisted's write buffer and a later turn of the reactor."""
        from twisted.internet import tcp
        db = fresh_database(self)
        server = yield start_gateway(self, db)
        buffered = []
        write = tcp.Server.write

        def recording(transport, data):
            buffered.append(bytes(data))
            return write(transport, data)
        self.patch(tcp.Server, "write", recording)
        conn = yield ticket_login(self, server, db, add_user(db))
        reply = yield conn.request({"action": "tuple", "view": "base.curr_eid()"})
        self.assertIsNotNone(reply)
        yield conn.close()
        self.assertEqual([data for data in buffered if b"HTTP/1.1" in data], [])
        self.assertEqual(buffered, [])


class SendWithoutDelayTests(TestCase):
    """:func:`send_without_delay` on what is not a TCP connection: nothing, no error."""

    def test_transports_without_tcp_options(self):
        class UnixLike:
            def setTcpNoDelay(self, enabled):  # noqa: N802 (Twisted's name)
                raise OSError(95, "Operation not supported")

        self.assertFalse(send_without_delay(StringTransport()))
        self.assertFalse(send_without_delay(UnixLike()))
        wrapper = ProtocolWrapper(WrappingFactory(protocol.Factory()), _Recorder())
        wrapper.makeConnection(UnixLike())    # (a wrapper passes the call down)
        self.assertFalse(send_without_delay(wrapper))


class SnifferFuzzTests(TestCase):
    """Hostile first bytes in any chunking: the sniffer never raises, never loses or
    repeats a byte it hands on, and decides only as :func:`classify` says."""

    def test_hostile_heads_in_any_pieces(self):
        from hypothesis import HealthCheck, given, settings
        from hypothesis import strategies as st

        lines = st.sampled_from([
            b"GET / HTTP/1.1", b"GET /clientinfo HTTP/1.1", b"GET /%63lientinfo?x HTTP/1.1",
            b"POST / HTTP/1.1", b"GET / HTTP/1.0", b"GET http://h/ HTTP/1.1", b"GET  / HTTP/1.1",
            b"Upgrade: websocket", b"upgrade:WebSocket", b"Connection: Upgrade",
            b"Content-Length: 3", b"Transfer-Encoding: chunked", b" folded", b"Host : x",
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", b"Sec-WebSocket-Version: 13",
            b"Cookie: a=1", b"User-Agent: \xff\x00", b"X-Forwarded-For: 10.0.0.1, junk",
            b":", b"", b"\n", b"\r", b"\x81\x80\x00\x00\x00\x00"])
        good = st.sampled_from([b"Upgrade: websocket", b"Host: h", b"Connection: Upgrade",
                                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                                b"Sec-WebSocket-Version: 13", b"Cookie: a=1"])
        separators = st.sampled_from([b"\r\n", b"\n", b"\r\n\r\n", b"\n\n", b" "])
        jumbled = st.lists(st.tuples(lines, separators), max_size=10).map(
            lambda parts: b"".join(line + sep for line, sep in parts))
        # mostly well-formed heads, so that every outcome is reached often
        formed = st.tuples(
            st.sampled_from([b"GET /?user=kim HTTP/1.1", b"GET /clientinfo HTTP/1.1",
                             b"GET /a/b HTTP/1.1", b"HEAD /clientinfo HTTP/1.1"]),
            st.lists(st.one_of(good, good, good, lines), max_size=6),
            st.sampled_from([b"\r\n\r\n", b"\r\n\r\n", b"\n\n", b"\r\n", b""]),
            st.binary(max_size=30),
        ).map(lambda p: b"\r\n".join([p[0], *p[1]]) + p[2] + p[3])
        others = st.one_of(jumbled, st.binary(max_size=200),
                           st.tuples(jumbled, st.binary(max_size=50)).map(b"".join))
        raw = st.integers(0, 9).flatmap(lambda n: formed if n < 6 else others)

        @settings(max_examples=1500, deadline=None, derandomize=True,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
        @given(data=raw, cuts=st.lists(st.integers(min_value=1, max_value=40), max_size=20))
        def check(data, cuts):
            case = SnifferTests("test_an_idle_connection_is_closed_after_the_timeout")
            case.setUp()
            sniffer, transport = case.connect()
            pieces, rest = [], data
            for cut in cuts:
                pieces.append(rest[:cut])
                rest = rest[cut:]
            pieces.append(rest)
            for piece in pieces:
                if transport.disconnecting:
                    break          # (a real transport stops reading once it is closing)
                if piece:
                    transport.protocol.dataReceived(piece)
            end = data.find(b"\r\n\r\n")
            kind = classify(data[:end])[0] if end >= 0 else None
            decided = end >= 0 or b"\n\n" in data or len(data) > MAX_HEAD
            if case.websockets:
                [websocket] = case.websockets
                self.assertEqual(kind, UPGRADE)
                self.assertEqual(websocket.data, data)          # every byte, once, in order
                self.assertIs(transport.protocol, websocket)
                self.assertEqual(case.site.pending, 0)
            elif case.clientinfo.asked:
                self.assertEqual(kind, CLIENTINFO)
                self.assertTrue(transport.disconnecting)
                self.assertEqual(case.site.pending, 1)
            elif transport.protocol is sniffer:
                self.assertFalse(decided)                        # still reading the head
            else:
                self.assertTrue(decided)
                self.assertNotIn(kind, (UPGRADE, CLIENTINFO))   # twisted.web's
                self.assertEqual(case.site.pending, 1)
        check()
