"""Limits and liveness: message size, slow consumers, connection caps, heartbeat."""

from __future__ import annotations

import gc
import json
import weakref

from autobahn.twisted.websocket import WebSocketServerProtocol
from twisted.internet import defer, protocol, reactor, task
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from tests.harness import (
    add_user,
    http_get,
    raw_upgrade,
    start_gateway,
    ticket_login,
    unregistered,
)
from tests.pgtest import fresh_database
from wyseman.client import keys
from wyseman.client.connection import ClientError, connect
from wyseman.provision import admin
from wyseman.ws.protocol import GatewayFactory

SLOW = """
create function public.nap() returns int language sql as $$ select 1 from pg_sleep(0.1) $$;
grant execute on function public.nap() to wyseman_user;
"""
BIG = """
create function public.big(n int) returns text language sql as $$ select repeat('x', n) $$;
grant execute on function public.big(int) to wyseman_user;
"""


class LimitTests(TestCase):
    timeout = 90

    def login(self, server, db, user):
        return ticket_login(self, server, db, user)

    @defer.inlineCallbacks
    def test_oversized_message_closes_with_1009(self):
        db = fresh_database(self)
        user = add_user(db)
        server = yield start_gateway(self, db, limits={"max_message_size": 4096,
                                                       "max_frame_size": 4096})
        conn = yield self.login(server, db, user)
        conn.send_raw(b'{"view": "' + b"x" * 8000 + b'"}')
        code, _ = yield conn.closed
        self.assertEqual(code, 1009)

    @defer.inlineCallbacks
    def test_reply_larger_than_max_message_size_is_delivered(self):
        """max_message_size bounds what a client may send, not the replies it asked for."""
        db = fresh_database(self)
        db.run(BIG)
        user = add_user(db)
        server = yield start_gateway(self, db, limits={"max_message_size": 4096,
                                                       "max_frame_size": 4096})
        conn = yield self.login(server, db, user)
        row = yield conn.request({"action": "tuple", "view": "public.big(int)",
                                  "params": [100_000]})
        self.assertEqual(row["big"], "x" * 100_000)

    @defer.inlineCallbacks
    def test_slow_consumer_is_cut(self):
        db = fresh_database(self)
        db.run(BIG)
        user = add_user(db)
        server = yield start_gateway(self, db, limits={"max_outbound_bytes": 1_000_000})
        conn = yield self.login(server, db, user)
        cut = unregistered(server.gateway, 1)
        transport = conn._protocol.transport
        transport.pauseProducing()  # the client stops reading
        for n in range(60):
            conn.send_raw(b'{"id": %d, "action": "tuple", "view": "public.big(int)", '
                          b'"params": [1000000]}' % n)
        yield cut                        # the server gave up on us...
        transport.resumeProducing()
        yield conn.closed                # ...and the client sees the connection gone
        self.assertEqual(server.gateway.metrics.slow_consumers.labels("websocket")._value.get(), 1)
        self.assertEqual(server.gateway.connection_count, 0)

    @defer.inlineCallbacks
    def test_connections_per_user(self):
        db = fresh_database(self)
        user = add_user(db)
        server = yield start_gateway(self, db, limits={"max_connections_per_user": 2})
        private = keys.generate_private_jwk()
        token = admin.issue_ticket(db.dsn, user).token
        first = yield connect(server.url, user, token=token, new_key=private)
        self.addCleanup(first.close)
        second = yield connect(server.url, user, key=private,
                               clientinfo_url=server.clientinfo_url)
        self.addCleanup(second.close)
        with self.assertRaises(ClientError) as ctx:
            yield connect(server.url, user, key=private, clientinfo_url=server.clientinfo_url)
        self.assertIn("503", str(ctx.exception))
        yield second.close()
        third = yield connect(server.url, user, key=private, clientinfo_url=server.clientinfo_url)
        yield third.close()


class HeartbeatTests(TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def open_socket(self):
        """A logged-in socket on a StringTransport whose heartbeat runs on a fake clock
        (ping every 10 s, 5 s to answer)."""
        db = fresh_database(self)
        user = add_user(db)
        server = yield start_gateway(self, db, auth={"insecure": True},
                                     limits={"ping_interval": 10, "ping_timeout": 5})
        clock = MemoryReactorClock()
        factory = GatewayFactory(server.gateway, insecure_allowed=True, clock=clock)
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 4000))
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 4000))
        protocol.makeConnection(transport)
        opened = defer.Deferred()
        protocol.onOpen = lambda: (type(protocol).onOpen(protocol), opened.callback(None))
        protocol.dataReceived(
            (f"GET /?user={user} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
             "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
             "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        yield opened
        self.assertIn(b"101 Switching Protocols", transport.value())
        transport.clear()
        return server, clock, protocol, transport

    def ping_payload(self, clock, transport):
        """Let the ping interval pass; the payload of the ping that went out."""
        transport.clear()
        clock.advance(10.5)
        sent = transport.value()
        self.assertEqual(sent[:1], b"\x89", sent)
        self.assertEqual(len(sent), 2 + sent[1])
        return sent[2:]

    @defer.inlineCallbacks
    def test_answered_pings_keep_the_socket(self):
        from tests.harness import client_frame
        server, clock, protocol, transport = yield self.open_socket()
        parsed = []   # first bytes of the frames that went through Autobahn's parser

        def autobahn_parser(protocol_, original=WebSocketServerProtocol.processData):
            if protocol_.current_frame is None:
                parsed.append(protocol_.data[:1])
            return original(protocol_)
        self.patch(WebSocketServerProtocol, "processData", autobahn_parser)
        for split in (False, True, False):
            pong = client_frame(0xA, self.ping_payload(clock, transport))
            if split:   # in two reads: Autobahn's parser, not the short cut
                protocol.dataReceived(pong[:3])
                protocol.dataReceived(pong[3:])
            else:       # with the client's own ping behind it in the same read
                transport.clear()
                protocol.dataReceived(pong + client_frame(0x9, b"hi"))
                self.assertEqual(transport.value(), b"\x8a\x02hi")   # answered
            self.assertIsNone(protocol.autoPingPending)
            self.assertIsNone(protocol.autoPingTimeoutCall)
            clock.advance(6)                  # past the timeout: still open
            self.assertFalse(transport.disconnecting)
        # the client's pings and the split pong took Autobahn's way, whole pongs ours
        self.assertEqual(parsed, [b"\x89", b"\x8a", b"\x89"])
        transport.clear()
        clock.advance(4)                      # the next ping, 10 s after the last pong
        self.assertEqual(transport.value()[:1], b"\x89")
        protocol.connectionLost(Failure(ConnectionDone()))

    @defer.inlineCallbacks
    def test_wrong_pong_does_not_count(self):
        from tests.harness import client_frame
        server, clock, protocol, transport = yield self.open_socket()
        payload = self.ping_payload(clock, transport)
        protocol.dataReceived(client_frame(0xA, payload[:-1] + bytes([payload[-1] ^ 1])))
        self.assertEqual(protocol.autoPingPending, payload)
        clock.advance(6)
        self.assertTrue(transport.disconnecting or transport.disconnected)
        protocol.connectionLost(Failure(ConnectionDone()))

    @defer.inlineCallbacks
    def test_silent_peer_is_dropped(self):
        server, clock, protocol, transport = yield self.open_socket()
        clock.advance(10.5)
        self.assertEqual(transport.value()[:1], b"\x89")  # a ping frame went out
        self.assertFalse(transport.disconnecting)
        clock.advance(6)                                  # no pong within the timeout
        self.assertTrue(transport.disconnecting or transport.disconnected)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(server.gateway.connection_count, 0)


class AdmissionTests(TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def test_repeated_failures_are_rate_limited(self):
        db = fresh_database(self)
        server = yield start_gateway(self, db, auth={"max_failures": 3, "failure_window": 60})
        statuses = []
        for _ in range(5):
            status, _ = yield raw_upgrade(server.port, "user=nobody&token=x&pub=AAAA")
            statuses.append(status)
        self.assertEqual(statuses, [403, 403, 403, 429, 429])

    @defer.inlineCallbacks
    def test_requests_in_flight_are_capped(self):
        db = fresh_database(self)
        db.run(SLOW)
        user = add_user(db)
        server = yield start_gateway(self, db, limits={"max_in_flight": 2})
        conn = yield ticket_login(self, server, db, user)
        dispatcher = server.gateway.dispatcher
        handle_then, state = dispatcher.handle_then, {"now": 0, "most": 0}

        def counting(session, payload, reply):
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])

            def done(frame):
                state["now"] -= 1
                return reply(frame)
            handle_then(session, payload, done)
        dispatcher.handle_then = counting
        replies = yield defer.gatherResults([
            conn.request({"action": "tuple", "view": "public.nap()"}) for _ in range(6)])
        self.assertEqual(len(replies), 6)
        self.assertEqual(state["most"], 2)   # reading paused while two were running

    @defer.inlineCallbacks
    def test_frames_waiting_behind_the_cap_are_answered_in_turn(self):
        """Frames that arrived in one read while the in-flight cap was reached wait, and
        are answered one after the other once a slot frees: thousands of quick error
        replies behind a slow request must not nest a call each (and overflow the
        stack); every frame gets its reply, in order, and the socket goes on."""
        db = fresh_database(self)
        db.run(SLOW)
        server = yield start_gateway(self, db, limits={"max_in_flight": 1})
        conn = yield ticket_login(self, server, db, add_user(db))
        count, seen, done = 3000, [], defer.Deferred()
        original = conn._message

        def message(payload):
            seen.append(payload)
            if len(seen) == count + 1:
                done.callback(None)
            original(payload)
        conn._message = message
        slow = json.dumps({"id": "slow", "action": "tuple", "view": "public.nap()"})
        conn._protocol.transport.write(   # one write: they arrive in one read
            _client_frame(slow.encode()) + _client_frame(b"x") * count)
        yield done
        self.assertEqual(json.loads(seen[0])["id"], "slow")
        self.assertTrue(all(b"not JSON" in payload for payload in seen[1:]))
        row = yield conn.request({"action": "tuple", "view": "base.curr_eid()"})
        self.assertTrue(row["curr_eid"])

    @defer.inlineCallbacks
    def test_a_connection_that_sends_no_request_is_closed(self):
        """An idle connection may not hold a socket for long before its request is in:
        open_handshake_timeout, not twisted.web's 60 s."""
        db = fresh_database(self)
        server = yield start_gateway(self, db, limits={"open_handshake_timeout": 0.5})
        closed: defer.Deferred = defer.Deferred()

        class Idle(protocol.Protocol):
            def connectionLost(self, reason):  # noqa: N802
                closed.callback(None)
        started = reactor.seconds()
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", server.port), Idle())
        yield closed                          # the server hung up (we sent nothing)
        self.assertLess(reactor.seconds() - started, 30)
        # an upgraded socket is not subject to it: a request that takes a second (the
        # client silent meanwhile) is answered, and the socket stays open
        db.run("create function public.nap1() returns int language sql "
               "as $$ select 1 from pg_sleep(1) $$; "
               "grant execute on function public.nap1() to wyseman_user")
        user = add_user(db)
        conn = yield ticket_login(self, server, db, user)
        row = yield conn.request({"action": "tuple", "view": "public.nap1()"})
        self.assertEqual(row, {"nap1": 1})
        self.assertTrue(conn.connected)

    @defer.inlineCallbacks
    def test_clientinfo_on_the_port_below(self):
        from tests.harness import make_config
        from wyseman.application.service import GatewayService
        from wyseman.client.connection import fetch_clientinfo
        db = fresh_database(self)
        port = find_free_pair()
        config = make_config(db, server={"listen": f"tcp:{port}:interface=127.0.0.1",
                                         "clientinfo_listen": None})
        service = GatewayService(config, lambda: defer.succeed(db.dsn), reactor)
        yield service.startService()
        self.addCleanup(service.stopService)
        info = yield fetch_clientinfo(f"http://127.0.0.1:{port - 1}/clientinfo")
        self.assertEqual(info["ip"], "::ffff:127.0.0.1")
        from twisted.web.client import Agent, readBody
        response = yield Agent(reactor).request(b"GET", f"http://127.0.0.1:{port - 1}/?user=x"
                                                .encode())
        yield readBody(response)
        self.assertEqual(response.code, 404)  # only /clientinfo is served there


def find_free_pair() -> int:
    """A port P such that P and P − 1 are both free on 127.0.0.1."""
    import socket
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        try:
            with socket.socket() as low:
                low.bind(("127.0.0.1", port - 1))
            return port
        except OSError:
            continue
    raise RuntimeError("no free pair of ports")


class PendingConnectionTests(TestCase):
    """[limits] max_pending_connections: connections still speaking HTTP are bounded;
    upgraded WebSockets do not count against it."""

    timeout = 60

    @defer.inlineCallbacks
    def test_at_the_bound_the_oldest_make_room_for_new_logins(self):
        db = fresh_database(self)
        server = yield start_gateway(self, db, limits={"max_pending_connections": 2})
        site = server.ports[0].factory
        idle = []

        @defer.inlineCallbacks
        def connect_idle():
            lost: defer.Deferred = defer.Deferred()
            conn = yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", server.port),
                                         _Watch(lost))
            idle.append((conn, lost))
        for _ in range(2):                    # two connections that send nothing
            yield connect_idle()
        # (the server counts a connection once it has accepted it: the third below is
        # accepted after these two, as the listening socket hands them over in order)
        yield connect_idle()
        yield idle[0][1]                       # the oldest was closed to make room
        self.assertEqual(site.pending, 2)
        metric = server.gateway.metrics.handshakes.labels(
            "refused", "pending", "websocket")._value.get()
        self.assertEqual(metric, 1)
        # idle connections holding every place do not keep logins out
        conns = []
        for _ in range(3):
            user = add_user(db)
            conns.append((yield ticket_login(self, server, db, user)))
        for conn in conns:
            self.assertTrue(conn.connected)
        yield defer.gatherResults([lost for _, lost in idle])   # every idle one went
        self.assertEqual(site.pending, 0)      # the logins' sockets count no more

    @defer.inlineCallbacks
    def test_a_trickling_request_is_cut_off(self):
        """A client that sends a byte now and then is never idle, but it may speak HTTP
        for twice open_handshake_timeout at most."""
        db = fresh_database(self)
        server = yield start_gateway(self, db, limits={"open_handshake_timeout": 0.5})
        lost: defer.Deferred = defer.Deferred()
        conn = yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", server.port),
                                     _Watch(lost))
        conn.transport.write(b"GET /?user=x HTTP/1.1\r\nX-Slow: ")
        trickle = task.LoopingCall(conn.transport.write, b"a")   # every 0.2 s: never idle
        trickle.start(0.2)
        started = reactor.seconds()
        try:
            yield lost                          # closed by the server
        finally:
            trickle.stop()
        self.assertLess(reactor.seconds() - started, 5)

    @defer.inlineCallbacks
    def test_a_request_body_is_cut_off(self):
        """Clients send no body: a large or chunked one is not read (let alone spooled to
        disk); the connection is closed at once."""
        db = fresh_database(self)
        server = yield start_gateway(self, db, limits={"open_handshake_timeout": 300})
        site = server.ports[0].factory
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", server.port)
        for head in ("POST /clientinfo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000",
                     "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked"):
            lost: defer.Deferred = defer.Deferred()
            released = self.next_release(site)
            conn = yield connectProtocol(endpoint, _Watch(lost))
            conn.transport.write(head.encode() + b"\r\n\r\n" + b"x" * 1000)
            yield defer.gatherResults([lost, released])   # (idle timeout: 300 s)
        status, _, _ = yield http_get(server.port, "/clientinfo")
        self.assertEqual(status, 200)

    @defer.inlineCallbacks
    def test_an_upgraded_connections_http_channel_is_let_go(self):
        """Once its connection is a WebSocket, the HTTP channel is freed at once (no
        reference cycle through the site's hook keeps it for the garbage collector)."""
        db = fresh_database(self)
        server = yield start_gateway(self, db)
        site = server.ports[0].factory
        channels = []
        build = site.buildProtocol

        def recording(addr):
            channel = build(addr)
            channels.append(weakref.ref(channel))
            return channel
        site.buildProtocol = recording
        conn = yield ticket_login(self, server, db, add_user(db))
        self.assertTrue(conn.connected)
        self.assertEqual(len(channels), 1)
        gc.disable()                           # freed by reference counting alone
        self.addCleanup(gc.enable)
        yield conn.request({"action": "tuple", "view": "base.curr_eid()"})
        self.assertIsNone(channels[0]())
        # nor a channel that served /clientinfo and closed
        released = self.next_release(site)
        status, _, _ = yield http_get(server.port, "/clientinfo")
        self.assertEqual(status, 200)
        yield released
        self.assertEqual(len(channels), 2)
        self.assertIsNone(channels[1]())
        self.assertEqual(site.pending, 0)

    @defer.inlineCallbacks
    def test_one_address_cannot_take_every_pending_place(self):
        """[limits] max_pending_per_address: the connections one client leaves idle are
        bounded well below max_pending_connections; a trusted proxy is exempt."""
        db = fresh_database(self)
        server = yield start_gateway(self, db, limits={"max_pending_per_address": 2})
        site = server.ports[0].factory
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", server.port)
        idle = []
        for _ in range(2):
            lost: defer.Deferred = defer.Deferred()
            idle.append(((yield connectProtocol(endpoint, _Watch(lost))), lost))
        refused: defer.Deferred = defer.Deferred()
        yield connectProtocol(endpoint, _Watch(refused))
        yield refused                                   # closed by the server at once
        self.assertEqual((site.pending, site.by_address), (2, {"127.0.0.1": 2}))
        metrics = server.gateway.metrics.handshakes
        self.assertEqual(metrics.labels("refused", "pending_address", "websocket")._value.get(), 1)
        self.assertEqual(metrics.labels("refused", "pending", "websocket")._value.get(), 0)
        # one goes: this address may log in again
        released = self.next_release(site)
        idle[0][0].transport.loseConnection()
        yield released
        conn = yield ticket_login(self, server, db, add_user(db))
        self.assertTrue(conn.connected)
        self.assertEqual(site.by_address, {"127.0.0.1": 1})
        idle[1][0].transport.loseConnection()
        yield idle[1][1]

        # the same address as a trusted proxy: only max_pending_connections counts
        proxied = yield start_gateway(self, db, limits={"max_pending_per_address": 1},
                                      server={"trusted_proxies": ["127.0.0.0/8"]})
        site = proxied.ports[0].factory
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", proxied.port)
        conns = []
        for _ in range(3):
            conns.append((yield connectProtocol(endpoint, _Watch(defer.Deferred()))))
        conn = yield ticket_login(self, proxied, db, add_user(db))
        self.assertTrue(conn.connected)
        self.assertEqual((site.pending, site.by_address), (3, {}))
        for c in conns:
            lost = c.lost
            c.transport.loseConnection()
            yield lost

    def next_release(self, site):
        """Fires when the site next lets go of a connection."""
        released: defer.Deferred = defer.Deferred()
        original = site.release

        def release(channel):
            original(channel)
            site.release = original
            # (once the call that released it has returned, and dropped the channel)
            reactor.callLater(0, released.callback, None)
        site.release = release
        return released


def _client_frame(payload: bytes) -> bytes:
    """One masked text frame as a client sends it (a zero mask: the payload as it is)."""
    assert len(payload) < 126
    return bytes([0x81, 0x80 | len(payload)]) + b"\0\0\0\0" + payload


class _Watch(protocol.Protocol):
    def __init__(self, lost: defer.Deferred) -> None:
        self.lost = lost

    def connectionLost(self, reason):  # noqa: N802
        self.lost.callback(None)


class PendingBoundUnitTests(TestCase):
    """GatewaySite's bounds on connections still speaking HTTP, without a server."""

    def site(self, **kwargs):
        from twisted.web.resource import Resource

        from wyseman.ws.httpbounds import GatewaySite
        self.refusals = []
        options = {"max_pending": 100, "per_address": 2,
                   "on_refused": self.refusals.append, **kwargs}
        return GatewaySite(Resource(), reactor=MemoryReactorClock(), **options)

    def connect(self, site, host, family=IPv4Address):
        channel = site.buildProtocol(family("TCP", host, 40000))
        channel.makeConnection(StringTransport())
        return channel

    def test_address_keys(self):
        from twisted.internet.address import IPv6Address, UNIXAddress

        from wyseman.ws.httpbounds import address_key
        self.assertEqual(address_key(IPv4Address("TCP", "192.0.2.7", 1)), "192.0.2.7")
        self.assertEqual(address_key(IPv6Address("TCP", "::ffff:192.0.2.7", 1)),
                         "192.0.2.7")
        # one /64 is one client: it gets a whole one from its provider
        self.assertEqual(address_key(IPv6Address("TCP", "2001:db8:1:2:aa::5", 1)),
                         "2001:db8:1:2::/64")
        self.assertEqual(address_key(IPv6Address("TCP", "fe80::1%eth0", 1)), "fe80::/64")
        self.assertIsNone(address_key(UNIXAddress(b"/run/wyseman.sock")))

    def test_each_address_has_its_own_bound(self):
        from wyseman.ws.httpbounds import _Refused
        site = self.site()
        first = [self.connect(site, "192.0.2.1") for _ in range(2)]
        refused = self.connect(site, "192.0.2.1")
        self.assertIsInstance(refused, _Refused)
        self.assertTrue(refused.transport.disconnecting)
        self.assertEqual(self.refusals, ["pending_address"])
        other = self.connect(site, "192.0.2.2")     # another client is not affected
        self.assertNotIsInstance(other, _Refused)
        self.assertEqual(site.by_address, {"192.0.2.1": 2, "192.0.2.2": 1})
        # IPv6 clients in one /64 share a bound
        from twisted.internet.address import IPv6Address
        self.connect(site, "2001:db8::1", IPv6Address)
        self.connect(site, "2001:db8::2", IPv6Address)
        self.assertIsInstance(self.connect(site, "2001:db8::3", IPv6Address), _Refused)
        self.assertNotIsInstance(self.connect(site, "2001:db8:0:1::3", IPv6Address),
                                 _Refused)
        # a connection that goes makes room; the count of a gone address is dropped
        first[0].connectionLost(Failure(ConnectionDone()))
        self.assertNotIsInstance(self.connect(site, "192.0.2.1"), _Refused)
        other.connectionLost(Failure(ConnectionDone()))
        self.assertNotIn("192.0.2.2", site.by_address)
        self.assertEqual(site.pending, 5)   # 2 + 1 + 3 IPv6, one went, one came, one went

    def test_trusted_proxies_and_zero(self):
        import ipaddress

        from wyseman.ws.httpbounds import _Refused
        site = self.site(max_pending=4, exempt=[ipaddress.ip_network("10.0.0.0/8")])
        for _ in range(4):
            self.assertNotIsInstance(self.connect(site, "10.1.2.3"), _Refused)
        self.assertEqual(site.by_address, {})
        # the endpoint-wide bound still holds for them: the oldest makes room
        oldest = site._by_age and next(iter(site._by_age)).protocol
        self.assertNotIsInstance(self.connect(site, "10.1.2.3"), _Refused)
        self.assertTrue(oldest.transport.disconnecting)
        self.assertEqual(site.pending, 4)
        self.assertEqual(self.refusals, ["pending"])
        unbounded = self.site(per_address=0)
        for _ in range(5):
            self.assertNotIsInstance(self.connect(unbounded, "192.0.2.1"), _Refused)

    def test_refusals_are_logged_when_they_start_and_end(self):
        from twisted.logger import capturedLogs
        site = self.site(max_pending=3)
        with capturedLogs() as events:
            kept = [self.connect(site, "192.0.2.1") for _ in range(2)]
            for _ in range(50):
                self.connect(site, "192.0.2.1")
            self.connect(site, "192.0.2.9")
            newest = [self.connect(site, f"192.0.2.{n}") for n in range(100, 120)]
            kept[0].connectionLost(Failure(ConnectionDone()))   # (shed already)
            for channel in newest[-3:]:
                channel.connectionLost(Failure(ConnectionDone()))
        from twisted.logger import formatEvent
        lines = [formatEvent(e) for e in events]
        self.assertEqual(lines, [
            "refusing new connections from 192.0.2.1: 2 of its connections still speak "
            "HTTP ([limits] max_pending_per_address)",
            "3 connections still speak HTTP ([limits] max_pending_connections): closing "
            "the oldest for each new one",
            "accepting connections from 192.0.2.1 again (50 refused)",
            "fewer connections speak HTTP again (20 closed to make room)",
        ])
        self.assertEqual(len(self.refusals), 70)
        self.assertEqual(site.pending, 0)
