"""The front door over real sockets against real PostgreSQL: logins, refusals,
/clientinfo, channels, limits."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, readBody

from tests.harness import (
    RawWebSocket,
    _RawHTTP,
    add_user,
    client_frame,
    http_get,
    js_date,
    key_logins,
    raw_upgrade,
    start_gateway,
    upgrade_request,
)
from tests.pgtest import fresh_database
from wyseman.auth.credentials import signed_message
from wyseman.client import keys
from wyseman.client.connection import ClientError, connect, fetch_clientinfo
from wyseman.provision import admin


def b64url(data: bytes) -> str:
    import base64
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()




class LoginTests(TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def setUp(self):
        self.db = fresh_database(self)
        self.user = add_user(self.db, "alice")
        self.server = yield start_gateway(self, self.db)

    def ticket(self, user=None):
        return admin.issue_ticket(self.db.dsn, user or self.user).token

    def stored_key(self, user=None):
        rows = self.db.run("select conn_pub from base.ent where username = %s",
                           (user or self.user,))
        return rows[0][0]

    @defer.inlineCallbacks
    def ticket_login(self):
        private = keys.generate_private_jwk()
        conn = yield connect(self.server.url, self.user, token=self.ticket(), new_key=private)
        self.addCleanup(conn.close)
        return private, conn

    @defer.inlineCallbacks
    def test_ticket_then_key_login(self):
        private, first = yield self.ticket_login()
        stored = self.stored_key()
        self.assertEqual(stored["default"]["x"], private["x"])
        yield first.close()
        second = yield connect(self.server.url, self.user, key=private,
                               clientinfo_url=self.server.clientinfo_url)
        self.addCleanup(second.close)
        self.assertTrue(second.connected)

    @defer.inlineCallbacks
    def test_sockets_close_when_key_replaced_or_user_removed(self):
        _, first = yield self.ticket_login()
        second = yield connect(self.server.url, self.user, token=self.ticket(),
                               new_key=keys.generate_private_jwk())
        self.addCleanup(second.close)
        code, reason = yield first.closed
        self.assertEqual((code, reason), (4001, "credentials changed"))
        self.assertTrue(second.connected)
        admin.remove_user(self.db.dsn, self.user)
        code, _ = yield second.closed
        self.assertEqual(code, 4001)

    @defer.inlineCallbacks
    def test_token_is_one_time(self):
        token = self.ticket()
        private = keys.generate_private_jwk()
        conn = yield connect(self.server.url, self.user, token=token, new_key=private)
        yield conn.close()
        pub = keys.pub_param(keys.public_jwk(keys.generate_private_jwk()))
        status, body = yield raw_upgrade(self.server.port,
                                         f"user={self.user}&token={token}&pub={pub}")
        self.assertEqual((status, body), (403, "Invalid Login"))
        # the second key was not stored
        self.assertEqual(self.stored_key()["default"]["x"], private["x"])

    @defer.inlineCallbacks
    def test_expired_token(self):
        token = self.ticket()
        self.db.run("update base.token set expires = now() - interval '1 minute' "
                    "where token = %s", (token,))
        pub = keys.pub_param(keys.public_jwk(keys.generate_private_jwk()))
        status, _ = yield raw_upgrade(self.server.port,
                                      f"user={self.user}&token={token}&pub={pub}")
        self.assertEqual(status, 403)
        self.assertIsNone(self.stored_key())

    @defer.inlineCallbacks
    def test_malformed_pub_refused_and_token_kept(self):
        token = self.ticket()
        bad = b64url(json.dumps({"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA"}).encode())
        status, _ = yield raw_upgrade(self.server.port,
                                      f"user={self.user}&token={token}&pub={bad}")
        self.assertEqual(status, 403)
        used = self.db.run("select used from base.token where token = %s", (token,))
        self.assertEqual(used, [(None,)])  # D23: the token was not spent on a bad key

    def signed_query(self, private, *, date=None, ip="::ffff:127.0.0.1", user_agent=None,
                     user=None):
        date = date or js_date(datetime.now(UTC))
        message = signed_message(ip, None, user_agent, date)
        sign = keys.sign(private, message)
        return f"user={user or self.user}&sign={sign}&date={date}"

    @defer.inlineCallbacks
    def registered_key(self):
        private, conn = yield self.ticket_login()
        yield conn.close()
        return private

    @defer.inlineCallbacks
    def test_key_login_refusals(self):
        private = yield self.registered_key()
        now = datetime.now(UTC)
        good = yield self.signed_query(private)
        status, _ = yield raw_upgrade(self.server.port, good)
        self.assertEqual(status, 101)
        # replay of the very same signed URL (D2)
        status, body = yield raw_upgrade(self.server.port, good)
        self.assertEqual((status, body), (403, "Invalid Login"))
        # tampered: signed for another user agent than the one sent
        tampered = yield self.signed_query(private, user_agent="other")
        status, _ = yield raw_upgrade(self.server.port, tampered,
                                      {"User-Agent": "mine"})
        self.assertEqual(status, 403)
        # stale and future dates: 400 before any key lookup
        for moment in (now - timedelta(minutes=5), now + timedelta(minutes=5)):
            query = yield self.signed_query(private, date=js_date(moment))
            status, body = yield raw_upgrade(self.server.port, query)
            self.assertEqual((status, body), (400, "Invalid Date Stamp"))
        # unparseable date (D5)
        status, _ = yield raw_upgrade(self.server.port,
                                      f"user={self.user}&sign={'A' * 176}&date=tomorrow")
        self.assertEqual(status, 400)
        # signature by another key
        other = keys.generate_private_jwk()
        query = yield self.signed_query(other)
        status, _ = yield raw_upgrade(self.server.port, query)
        self.assertEqual(status, 403)
        # unknown user
        query = yield self.signed_query(private, user="nobody_here")
        status, _ = yield raw_upgrade(self.server.port, query)
        self.assertEqual(status, 403)
        # short signature
        status, _ = yield raw_upgrade(
            self.server.port, f"user={self.user}&sign=AAAA&date={js_date(now)}")
        self.assertEqual(status, 403)

    @defer.inlineCallbacks
    def test_missing_and_malformed_credentials(self):
        cases = [
            ("", 401),                                        # nothing at all
            (f"user={self.user}", 401),                       # insecure mode is off
            (f"user={self.user}&token=abc", 401),             # token without pub
            (f"user={self.user}&user=x", 400),                # repeated key
            (f"user={self.user}&db=%%%", 400),                # db not base64
            (f"user={self.user}&db={b64url(b'[null]')}", 400),  # D11
            (f"user={self.user}&db={b64url(b'not json')}", 400),
            (f"user={self.user}&token=abc&pub=***", 403),     # pub not base64
        ]
        for query, expected in cases:
            status, _ = yield raw_upgrade(self.server.port, query)
            self.assertEqual(status, expected, query)

    @defer.inlineCallbacks
    def test_channel_not_allowed(self):
        private = yield self.registered_key()
        with self.assertRaises(ClientError):
            yield connect(self.server.url, self.user, key=private, listen=["secret"],
                          clientinfo_url=self.server.clientinfo_url)
        conn = yield connect(self.server.url, self.user, key=private, listen=["app_x"],
                             clientinfo_url=self.server.clientinfo_url)
        yield conn.close()

    @defer.inlineCallbacks
    def test_clientinfo(self):
        info = yield fetch_clientinfo(self.server.clientinfo_url)
        self.assertEqual(info["ip"], "::ffff:127.0.0.1")
        self.assertEqual(list(info), ["ip", "userAgent", "date"]
                         if "userAgent" in info else ["ip", "date"])
        stamp = datetime.strptime(info["date"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
        self.assertLess(abs((datetime.now(UTC) - stamp).total_seconds()), 5)
        agent = Agent(reactor)
        from twisted.web.http_headers import Headers
        response = yield agent.request(
            b"GET", self.server.clientinfo_url.encode(),
            Headers({b"cookie": [b"a=1"], b"user-agent": [b"ua/1"]}))
        body = json.loads((yield readBody(response)))
        self.assertEqual(list(body), ["ip", "cookie", "userAgent", "date"])
        self.assertEqual((body["cookie"], body["userAgent"]), ("a=1", "ua/1"))


    @defer.inlineCallbacks
    def test_plain_http_gets_426_and_no_versions(self):
        """A request without ``Upgrade`` gets 426, as from the Node server's ws, and not
        Autobahn's status page: that page names the Autobahn version, and its
        ``?redirect=URL`` made the gateway an open redirector."""
        for path in ("/?redirect=https%3A%2F%2Fevil.example%2F", "/", "/anything?x=1"):
            status, headers, body = yield http_get(self.server.port, path)
            self.assertEqual(status, 426, path)
            self.assertTrue(headers.startswith("http/1.1 426 upgrade required\r\n"), headers)
            self.assertIn("\r\nupgrade: websocket\r\n", headers)
            self.assertNotIn("location:", headers)
            self.assertNotIn(b"autobahn", body.lower())
        # twisted.web does not name itself and its version either
        status, headers, _ = yield http_get(self.server.port, "/clientinfo")
        self.assertEqual(status, 200)
        self.assertIn("server: wyseman\r\n", headers + "\r\n")


    @defer.inlineCallbacks
    def test_unsupported_version_names_the_supported_ones(self):
        """RFC 6455 §4.4: a refused version is answered with the versions we speak."""
        raw = _RawHTTP((f"GET /?user={self.user} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                        "Sec-WebSocket-Version: 99\r\n\r\n").encode())
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.server.port), raw)
        head = (yield raw.done).partition(b"\r\n\r\n")[0].decode("latin-1").lower()
        self.assertTrue(head.startswith("http/1.1 400 bad request\r\n"), head)
        self.assertIn("\r\nsec-websocket-version: ", head)
        self.assertIn("13", head.split("sec-websocket-version: ", 1)[1].split("\r\n")[0])


class ConnectionLogTests(TestCase):
    """[server] log_connections: a line per login and per disconnect, or none."""

    timeout = 60

    @defer.inlineCallbacks
    def logged(self, **server: Any) -> Any:
        from twisted.logger import capturedLogs, formatEvent

        from tests.harness import unregistered
        db = fresh_database(self)
        user = add_user(db)
        gateway = yield start_gateway(self, db, server=server)
        with capturedLogs() as events:
            conn = yield connect(gateway.url, user, token=admin.issue_ticket(db.dsn, user).token,
                                 new_key=keys.generate_private_jwk())
            gone = unregistered(gateway.gateway)
            yield conn.close()
            yield gone
        lines = [formatEvent(e) for e in events if e.get("log_namespace") == "wyseman.ws"]
        accepted = gateway.gateway.metrics.handshakes.labels(
            "accepted", "ticket", "websocket")._value.get()
        return user, lines, accepted

    @defer.inlineCallbacks
    def test_each_login_and_disconnect_is_logged(self):
        user, lines, accepted = yield self.logged()
        self.assertEqual(len(lines), 2, lines)
        self.assertRegex(lines[0], rf"^login {user} \(ticket\) from \S+$")
        self.assertRegex(lines[1], rf"^disconnect {user} from \S+ \(code 1000, ")
        self.assertEqual(accepted, 1)

    @defer.inlineCallbacks
    def test_off_nothing_is_logged_but_logins_are_counted(self):
        _, lines, accepted = yield self.logged(log_connections=False)
        self.assertEqual(lines, [])
        self.assertEqual(accepted, 1)


class InsecureModeTests(TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def test_insecure_only_when_enabled_and_user_exists(self):
        db = fresh_database(self)
        user = add_user(db, "bob")
        server = yield start_gateway(self, db, auth={"insecure": True})
        status, _ = yield raw_upgrade(server.port, f"user={user}")
        self.assertEqual(status, 101)
        status, _ = yield raw_upgrade(server.port, "user=postgres_not_an_entity")
        self.assertEqual(status, 401)

    @defer.inlineCallbacks
    def test_insecure_ignored_on_public_interface(self):
        db = fresh_database(self)
        user = add_user(db, "bob")
        server = yield start_gateway(
            self, db, auth={"insecure": True},
            server={"listen": "tcp:0:interface=0.0.0.0"})
        status, _ = yield raw_upgrade(server.port, f"user={user}")
        self.assertEqual(status, 401)


class OriginTests(TestCase):
    """D3: a browser page from another site cannot open a socket."""

    timeout = 60

    @defer.inlineCallbacks
    def test_same_host_by_default(self):
        db = fresh_database(self)
        server = yield start_gateway(self, db)
        status, _ = yield raw_upgrade(server.port, "user=x", {"Origin": "https://evil.example"})
        self.assertEqual(status, 403)
        # the same host on another port passes the origin check (and then lacks credentials)
        status, _ = yield raw_upgrade(server.port, "user=x", {"Origin": "http://127.0.0.1:4000"})
        self.assertEqual(status, 401)
        status, _ = yield raw_upgrade(server.port, "user=x")  # no Origin: not a browser
        self.assertEqual(status, 401)

    @defer.inlineCallbacks
    def test_configured_origins(self):
        db = fresh_database(self)
        server = yield start_gateway(
            self, db, server={"allowed_origins": ["https://app.example"]})
        status, _ = yield raw_upgrade(server.port, "user=x", {"Origin": "https://app.example"})
        self.assertEqual(status, 401)
        status, _ = yield raw_upgrade(server.port, "user=x", {"Origin": "http://127.0.0.1"})
        self.assertEqual(status, 403)


class _Collector(protocol.Protocol):
    def __init__(self) -> None:
        self.data = bytearray()
        self.expected = 0
        self.complete: defer.Deferred = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.data += data
        if len(self.data) >= self.expected and not self.complete.called:
            self.complete.callback(bytes(self.data))


class DirectWriteTests(TestCase):
    """write_now: frames go to a plain TCP socket at once, what does not fit is buffered
    by Twisted as usual, and the byte order is kept."""

    timeout = 30

    @defer.inlineCallbacks
    def test_small_frames_leave_nothing_buffered_big_ones_arrive_whole(self):
        from twisted.internet import endpoints

        from wyseman.ws.twisted_io import write_now

        accepted: defer.Deferred = defer.Deferred()

        class Accept(protocol.Protocol):
            def connectionMade(self) -> None:  # noqa: N802
                accepted.callback(self.transport)

        port = yield endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            protocol.Factory.forProtocol(Accept))
        self.addCleanup(port.stopListening)
        collector = _Collector()
        yield endpoints.connectProtocol(
            endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), collector)
        server = yield accepted
        self.addCleanup(collector.transport.loseConnection)
        self.addCleanup(server.loseConnection)

        write_now(server, b"small frame")
        self.assertEqual((server.dataBuffer, server._tempDataBuffer), (b"", []))  # sent
        big = bytes(range(256)) * (16 * 1024 * 1024 // 256)      # more than the socket takes
        write_now(server, big)
        buffered = len(server.dataBuffer) + server._tempDataLen
        self.assertTrue(0 < buffered < len(big))     # part sent at once, the rest queued
        write_now(server, b"tail")                   # behind the queued bytes, not before
        collector.expected = len(b"small frame") + len(big) + 4
        received = yield collector.complete
        self.assertEqual(received, b"small frame" + big + b"tail")


class FrameParsingTests(TestCase):
    """The short cut for small whole text frames (GatewayProtocol.processData) next to
    Autobahn's own parser: fragments, control frames, bad UTF-8, unmasked frames."""

    timeout = 30

    @defer.inlineCallbacks
    def setUp(self):
        self.db = fresh_database(self)
        self.user = add_user(self.db, "frames")
        self.server = yield start_gateway(self, self.db, auth={"insecure": True})

    def open(self, frames: bytes, wanted: Any = lambda received: False) -> Any:
        from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
        client = RawWebSocket(self.server.port, self.user, frames, wanted)
        return connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.server.port),
                               client).addCallback(lambda _: client)

    @defer.inlineCallbacks
    def test_short_frames_between_fragments_and_pings(self):
        from autobahn.websocket.protocol import WebSocketProtocol
        begun = []
        original = WebSocketProtocol.onFrameBegin

        def counting(protocol_self):
            begun.append(protocol_self.current_frame.opcode)
            return original(protocol_self)
        self.patch(WebSocketProtocol, "onFrameBegin", counting)

        def request(n):
            return json.dumps({"id": n, "action": "no_such_action"}).encode()
        second = request(2)
        frames = (client_frame(1, request(1)) + client_frame(9, b"ping!")
                  + client_frame(1, second[:7], fin=False) + client_frame(0, second[7:])
                  + client_frame(1, request(3)) + client_frame(1, request(4)))
        client = yield self.open(frames, lambda got: sum(op == 1 for op, _ in got) == 4)
        received = yield client.enough
        client.transport.loseConnection()
        yield client.closed
        replies = sorted(json.loads(payload)["id"] for op, payload in received if op == 1)
        self.assertEqual(replies, [1, 2, 3, 4])
        for op, payload in received:
            if op == 1:
                self.assertIn("error", json.loads(payload))
        self.assertIn((10, b"ping!"), received)            # the pong
        self.assertEqual(begun, [9, 1, 0])  # only the ping and the fragments took Autobahn's way

    @defer.inlineCallbacks
    def test_requests_that_cannot_be_echoed_are_answered_and_free_their_place(self):
        deep = "[" * 300 + "]" * 300
        unanswerable = [
            f'{{"id": {deep}, "action": "tuple", "view": "base.curr_eid()"}}',
            f'{{"id": {deep}, "action": "no_such_action", "view": "x"}}',
            f'{{"id": 7, "action": "select", "view": "base.ent_v", "where": {deep}}}',
        ]
        frames = b"".join(client_frame(1, unanswerable[n % 3].encode()) for n in range(40))
        frames += client_frame(1, json.dumps({"id": 1, "action": "tuple",
                                              "view": "base.curr_eid()"}).encode())
        client = yield self.open(frames, lambda got: sum(op == 1 for op, _ in got) == 41)
        received = yield client.enough
        client.transport.loseConnection()
        yield client.closed
        replies = [json.loads(payload) for op, payload in received if op == 1]
        last = [r for r in replies if r.get("id") == 1]
        self.assertEqual(len(last), 1)
        self.assertIn("curr_eid", last[0]["data"])
        others = [r for r in replies if r.get("id") != 1]
        self.assertEqual(len(others), 40)
        for reply in others:
            self.assertIn("error", reply)
            if "id" not in reply:        # the id could not be echoed: said so
                self.assertEqual(reply["error"]["code"], "!wm.lang:badMessage", reply)
        self.assertEqual(len([r for r in others if r.get("id") == 7]), 13)

    @defer.inlineCallbacks
    def test_short_frame_with_invalid_utf8_closes_1007(self):
        client = yield self.open(client_frame(1, b'{"id": 1, "x": "\xff\xfe"}'))
        received = yield client.closed
        closes = [payload for op, payload in received if op == 8]
        self.assertEqual([int.from_bytes(c[:2], "big") for c in closes], [1007])
        self.assertFalse([payload for op, payload in received if op == 1])

    @defer.inlineCallbacks
    def test_unmasked_short_frame_closes_1002(self):
        client = yield self.open(client_frame(1, b'{"id": 1}', masked=False))
        received = yield client.closed
        closes = [payload for op, payload in received if op == 8]
        self.assertEqual([int.from_bytes(c[:2], "big") for c in closes], [1002])


def hold_authentication(gateway: Any) -> tuple[defer.Deferred, defer.Deferred, list]:
    """The gateway's next login check runs, but its outcome waits: → (fires when the check
    began, fire it with the login to let the check end, [the real check's Deferred])."""
    asked, gate, checks = defer.Deferred(), defer.Deferred(), []
    authenticate = gateway.authenticator.authenticate

    def held(handshake: Any) -> defer.Deferred:
        checks.append(authenticate(handshake))
        asked.callback(None)
        return gate
    gateway.authenticator.authenticate = held
    return asked, gate, checks


class _LeavingClient(protocol.Protocol):
    """Sends an upgrade request; ``lost`` fires when the connection is gone."""

    def __init__(self, port: int, user: str) -> None:
        self.request = upgrade_request(port, f"user={user}")
        self.lost: defer.Deferred = defer.Deferred()

    def connectionMade(self) -> None:  # noqa: N802
        self.transport.write(self.request)

    def connectionLost(self, reason: Any) -> None:  # noqa: N802
        self.lost.callback(None)


class LeftDuringLoginTests(TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def test_a_client_gone_before_its_login_is_checked_is_not_opened(self):
        """The login's check ends after the client left: no onOpen, nothing counted, no
        heartbeat timer left behind (trial fails a test that leaves one)."""
        from wyseman.ws.protocol import GatewayProtocol
        db = fresh_database(self)
        user = add_user(db)
        server = yield start_gateway(self, db, auth={"insecure": True})
        gateway = server.gateway
        asked, gate, checks = hold_authentication(gateway)
        opened, closed = [], defer.Deferred()
        on_open, on_close = GatewayProtocol.onOpen, GatewayProtocol.onClose
        self.patch(GatewayProtocol, "onOpen", lambda p: (opened.append(p), on_open(p)))

        def closing(p: Any, *args: Any) -> None:
            on_close(p, *args)
            if not closed.called:
                closed.callback(p)
        self.patch(GatewayProtocol, "onClose", closing)
        client = _LeavingClient(server.port, user)
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", server.port), client)
        yield asked                       # the server is checking the login now
        client.transport.loseConnection()
        yield client.lost
        yield closed                      # and has seen the client go
        login = yield checks[0]
        gate.callback(login)              # the check ends: too late
        self.assertEqual(opened, [])
        self.assertEqual((gateway.connection_count, len(gateway.connections_of(user))), (0, 0))
        self.assertEqual(gateway.user_slots.count(user), 0)   # counted, then let go


class KeyRemovedDuringLoginTests(TestCase):
    """A key removed while a login with it is being checked: the removal's notification
    closes the user's open sockets, and the login in flight must not open after it."""

    timeout = 30

    @defer.inlineCallbacks
    def held_login(self, change: str) -> Any:
        """A key login whose check is held until the gateway has read the stored keys
        again after ``change`` (SQL run with the user's name as %s, whose NOTIFY on
        ``wyseman_auth`` reaches the gateway); → [the login's Deferred]."""
        db = fresh_database(self)
        user = add_user(db)
        server = yield start_gateway(self, db)
        gateway = server.gateway
        private = keys.generate_private_jwk()
        token = admin.issue_ticket(db.dsn, user).token
        first = yield connect(server.url, user, token=token, new_key=private)
        yield first.close()
        asked, gate, checks = hold_authentication(gateway)
        login = connect(server.url, user, key=private, clientinfo_url=server.clientinfo_url)
        yield asked
        checked = yield checks[0]         # the stored key read, the signature good
        hinted = hinted_once(self, gateway)
        db.run(change, (user,))
        yield hinted                      # the gateway is reading the keys again
        gate.callback(checked)
        self.gateway, self.user = gateway, user
        return [login]

    @defer.inlineCallbacks
    def test_the_login_is_refused(self):
        [login] = yield self.held_login(
            "update base.ent set conn_pub = null where username = %s")
        with self.assertRaises(ClientError) as refused:
            yield login
        self.assertIn("403", str(refused.exception))
        self.assertEqual(len(self.gateway.connections_of(self.user)), 0)
        self.assertEqual(self.gateway.user_slots.count(self.user), 0)

    @defer.inlineCallbacks
    def test_a_forged_removal_does_not_matter(self):
        [login] = yield self.held_login(
            "select pg_notify('wyseman_auth', json_build_object('user', %s::text, "
            "'keys', '[]'::json)::text)")
        conn = yield login
        self.addCleanup(conn.close)
        row = yield conn.request({"action": "tuple", "view": "base.curr_eid()"})
        self.assertTrue(row["curr_eid"])


def hinted_once(testcase: Any, gateway: Any) -> defer.Deferred:
    """Fires when the gateway next takes a ``wyseman_auth`` hint (its re-read under way)."""
    hinted: defer.Deferred = defer.Deferred()
    recheck = gateway._recheck

    def spy(user: str) -> None:
        recheck(user)
        if not hinted.called:
            hinted.callback(user)
    testcase.patch(gateway, "_recheck", spy)
    return hinted


class ForgedKeyChangeTests(TestCase):
    """Any role that may NOTIFY can send on ``wyseman_auth``: the gateway takes it as a
    hint and believes only the keys stored in the database."""

    timeout = 30

    @defer.inlineCallbacks
    def setUp(self):
        self.db = fresh_database(self)
        self.user = add_user(self.db, "alice")
        self.other = add_user(self.db, "mallory")
        self.server = yield start_gateway(self, self.db)
        self.gateway = self.server.gateway
        # the ticket login stores a key, whose trigger sends a hint of its own: wait for
        # it, so that it is not counted among a test's hints
        arrived: defer.Deferred = defer.Deferred()
        recheck = self.gateway._recheck

        def first(user: str) -> None:
            recheck(user)
            if not arrived.called:
                arrived.callback(None)
        self.gateway._recheck = first
        self.conn = yield self.key_login(self.user)
        yield arrived
        del self.gateway._recheck
        yield self.gateway.key_checks_idle()

    @defer.inlineCallbacks
    def key_login(self, user: str) -> Any:
        token = admin.issue_ticket(self.db.dsn, user).token
        conn = yield connect(self.server.url, user, token=token,
                             new_key=keys.generate_private_jwk())
        self.addCleanup(conn.close)
        return conn

    def notify_as_other_role(self, payloads: list[str],
                             taken_all: Any = None) -> defer.Deferred:
        """NOTIFY from another login role, as any user of the database could; fires when
        the gateway has taken every hint (``taken_all()`` is called then) and its re-reads
        have ended."""
        taken: defer.Deferred = defer.Deferred()
        recheck, count = self.gateway._recheck, [0]

        def spy(user: str) -> None:
            recheck(user)
            count[0] += 1
            if count[0] == len(payloads):
                taken.callback(None)
        self.patch(self.gateway, "_recheck", spy)
        notifies = "; ".join(f"select pg_notify('wyseman_auth', {quoted(p)})"
                             for p in payloads)
        self.db.run(f"set role {self.other}; {notifies}; reset role")
        if taken_all is not None:
            taken.addCallback(lambda _: taken_all())
        return taken.addCallback(lambda _: self.gateway.key_checks_idle())

    @defer.inlineCallbacks
    def test_a_forged_notification_closes_nothing_a_real_removal_does(self):
        yield self.notify_as_other_role([json.dumps({"user": self.user, "keys": []})])
        row = yield self.conn.request({"action": "tuple", "view": "base.curr_eid()"})
        self.assertTrue(row["curr_eid"])
        self.assertTrue(self.conn.connected)
        self.db.run("update base.ent set conn_pub = null where username = %s", (self.user,))
        code, reason = yield self.conn.closed
        self.assertEqual((code, reason), (4001, "credentials changed"))

    @defer.inlineCallbacks
    def test_a_flood_of_hints_is_coalesced_and_closes_nothing(self):
        import wyseman.gateway.hub as gateway_module
        self.patch(gateway_module, "AUTH_RECHECKS_MAX", 3)
        reads, held = [], []
        conn_pub = self.gateway.db.conn_pub

        def reading(user: str) -> defer.Deferred:
            """Each read waits until every hint has come (however the notifications
            arrive, in one read of the LISTEN socket or one by one)."""
            reads.append(user)
            if held is None:
                return conn_pub(user)
            waiting: defer.Deferred = defer.Deferred()
            held.append((waiting, user))
            return waiting

        def release() -> None:
            nonlocal held
            waiting, held = held, None
            for d, user in waiting:
                conn_pub(user).chainDeferred(d)
        self.patch(self.gateway.db, "conn_pub", reading)
        seen = self.gateway.key_changes.count
        # the same user many times (coalesced) and many users (beyond the cap)
        # (distinct payloads: PostgreSQL delivers identical ones of a transaction once)
        payloads = [json.dumps({"user": self.user, "n": n}) for n in range(50)] + [
            json.dumps({"user": f"nobody{n}"}) for n in range(20)]
        yield self.notify_as_other_role(payloads, taken_all=release)
        row = yield self.conn.request({"action": "tuple", "view": "base.curr_eid()"})
        self.assertTrue(row["curr_eid"])
        self.assertTrue(self.conn.connected)
        # 50 hints of one user: one read, one more for the hints during it, and the
        # flood's checks of every key socket (once, and again for the hints it dropped
        # meanwhile); 20 users past the cap of 3: 2 reads
        self.assertLessEqual(reads.count(self.user), 4)
        self.assertLessEqual(len(reads), 6)
        # the logins being checked during the flood were refused, to be safe
        self.assertTrue(self.gateway.key_changes.gone_since(self.user, "any", seen))
        # and a real removal after it is still seen
        self.db.run("update base.ent set conn_pub = null where username = %s", (self.user,))
        code, _ = yield self.conn.closed
        self.assertEqual(code, 4001)


def quoted(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


class ListenGapTests(TestCase):
    """Key changes announced while the LISTEN connection was down are missed: when it is
    back, the open key sockets are checked against the stored keys."""

    timeout = 30

    @defer.inlineCallbacks
    def test_a_key_removed_during_the_gap_closes_its_sockets(self):
        db = fresh_database(self)
        user, other = add_user(db), add_user(db)
        server = yield start_gateway(self, db, auth={"insecure": True})
        gateway = server.gateway
        conns = {}
        for name in (user, other):
            token = admin.issue_ticket(db.dsn, name).token
            conns[name] = yield connect(server.url, name, token=token,
                                        new_key=keys.generate_private_jwk())
            self.addCleanup(conns[name].close)
        plain = yield connect(server.url, user)     # (insecure: no key to lose)
        self.addCleanup(plain.close)
        # the key goes while nobody listens: no notification reaches the gateway
        db.run("alter table base.ent disable trigger user; "
               "update base.ent set conn_pub = null where username = %s; "
               "alter table base.ent enable trigger user", (user,))
        seen = gateway.key_changes.count
        yield gateway.listener_reconnected()                      # the LISTEN is back
        code, reason = yield conns[user].closed
        self.assertEqual((code, reason), (4001, "credentials changed"))
        self.assertTrue(conns[other].connected)                   # its key is still there
        self.assertTrue(plain.connected)
        # a login that began before the gap ended is refused when it would open
        self.assertTrue(gateway.key_changes.gone_since(other, "any", seen))
        self.assertFalse(gateway.key_changes.gone_since(other, "any",
                                                        gateway.key_changes.count))

    def test_the_service_hears_of_the_reconnect(self):
        return self._wired()

    @defer.inlineCallbacks
    def _wired(self):
        db = fresh_database(self)
        server = yield start_gateway(self, db)
        calls = []
        self.patch(server.gateway, "listener_reconnected", lambda: calls.append(1))
        server.gateway.db.listener._on_reconnect()
        self.assertEqual(calls, [1])


class OutageTests(TestCase):
    """Logins refused because the database is down are not failed logins: once it is
    back, a correct login is accepted at once, not refused for ``failure_window``."""

    timeout = 30

    @defer.inlineCallbacks
    def test_refusals_during_an_outage_do_not_lock_the_address_out(self):
        from tests.pgtest import base_dsn, run_sync
        db = fresh_database(self)
        user = add_user(db)
        server = yield start_gateway(self, db, auth={"max_failures": 3})
        pub = keys.pub_param(keys.public_jwk(keys.generate_private_jwk()))
        # the database refuses connections, and the gateway's connections are cut
        run_sync(base_dsn(), f'alter database "{db.name}" allow_connections false')
        self.addCleanup(run_sync, base_dsn(),
                        f'alter database "{db.name}" allow_connections true')
        run_sync(base_dsn(), "select pg_terminate_backend(pid) from pg_stat_activity "
                             "where datname = %s and pid <> pg_backend_pid()", (db.name,))
        for _ in range(6):
            status, body = yield raw_upgrade(server.port, f"user={user}&token=x&pub={pub}")
            self.assertEqual((status, body), (503, "The database is unavailable"))
        run_sync(base_dsn(), f'alter database "{db.name}" allow_connections true')
        conn = yield connect(server.url, user, token=admin.issue_ticket(db.dsn, user).token,
                             new_key=keys.generate_private_jwk())
        self.addCleanup(conn.close)
        self.assertTrue(conn.connected)
        # wrong credentials still count
        for _ in range(3):
            status, _ = yield raw_upgrade(server.port, f"user={user}&token=x&pub={pub}")
            self.assertEqual(status, 403)
        status, _ = yield raw_upgrade(server.port, f"user={user}&token=x&pub={pub}")
        self.assertEqual(status, 429)


class StopTests(TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def test_stopping_closes_every_socket_with_going_away(self):
        db = fresh_database(self)
        user = add_user(db)
        server = yield start_gateway(self, db)
        conns = yield key_logins(self, server, db, user, 3)
        yield server.stopService()
        for conn in conns:
            code, reason = yield conn.closed
            self.assertEqual((code, reason), (1001, "server shutting down"))
        self.assertEqual(server.gateway.all_connections(), [])


class _NeverReads(RawWebSocket):
    """Logs in, then stops reading for good (a small receive buffer: the server's pongs
    pile up on its side) and writes ``frames``."""

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self.upgraded:
            return
        head, sep, _ = (self.buffer + data).partition(b"\r\n\r\n")
        if not sep:
            self.buffer += data
            return
        assert head.startswith(b"HTTP/1.1 101"), head
        self.upgraded = True
        import socket
        self.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.transport.pauseProducing()
        self.transport.write(self.frames)


class PingFloodTests(TestCase):
    """A peer that pings and never reads the pongs is cut like a slow consumer, and
    the server keeps one pong for it, not one per ping."""

    timeout = 60

    @defer.inlineCallbacks
    def test_a_peer_that_pings_without_reading_is_cut(self):
        from tests.harness import unregistered
        db = fresh_database(self)
        user = add_user(db, "pinger")
        server = yield start_gateway(self, db, auth={"insecure": True},
                                     limits={"max_outbound_bytes": 65536})
        gateway = server.gateway
        gone = unregistered(gateway)
        ping = client_frame(9, b"p" * 125)
        client = _NeverReads(server.port, user, ping * 200_000, lambda received: False)
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", server.port), client)
        self.addCleanup(lambda: client.transport.abortConnection())
        yield gone                                   # the server let go of it
        self.assertEqual(gateway.metrics.slow_consumers.labels("websocket")._value.get(), 1)
        self.assertEqual(gateway.all_connections(), [])


class RefusalLogTests(TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def test_a_refused_login_is_logged_once_with_reason_and_peer(self):
        from twisted.logger import capturedLogs, formatEvent
        db = fresh_database(self)
        user = add_user(db)
        server = yield start_gateway(self, db)
        channels = b64url(b'["nope"]')
        for query, expected in ((f"user={user}&token=x&pub=y", "403 Invalid Login"),
                                (f"user={user}&db={channels}&token=x&pub=y",
                                 "403 Channel not allowed")):
            with capturedLogs() as events:
                yield raw_upgrade(server.port, query)
            said = [formatEvent(e) for e in events
                    if e.get("log_namespace", "").startswith(("wyseman", "autobahn"))]
            self.assertEqual(len(said), 1, said)
            self.assertIn(f"refused {expected} to ::ffff:127.0.0.1", said[0])
