"""wss:// with a test CA: verified logins, hostname checks, bad files, reload."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

from OpenSSL import SSL
from twisted.internet import defer, protocol, reactor, tcp
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.interfaces import IHandshakeListener, IOpenSSLClientConnectionCreator
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.protocols.tls import _AggregateSmallWrites
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from tests.harness import add_user, make_config, start_gateway
from tests.pgtest import fresh_database
from tests.tlsutil import TestCA
from wyseman.application.service import GatewayService
from wyseman.client import keys
from wyseman.client.connection import ClientError, connect
from wyseman.config import ConfigError
from wyseman.provision import admin
from wyseman.ws import fanout, twisted_io


@implementer(IOpenSSLClientConnectionCreator)
class _MaxVersionClient:
    """A client TLS connection capped at ``max_version``; any cipher (SECLEVEL 0), so a
    refusal comes from the server and not from this client's own OpenSSL defaults."""

    def __init__(self, max_version: int) -> None:
        self.max_version = max_version

    def clientConnectionForTLS(self, tls_protocol):  # noqa: N802 (Twisted interface)
        context = SSL.Context(SSL.TLS_METHOD)
        context.set_max_proto_version(self.max_version)
        context.set_cipher_list(b"DEFAULT:@SECLEVEL=0")
        context.set_verify(SSL.VERIFY_NONE, lambda *args: True)
        connection = SSL.Connection(context, None)
        connection.set_app_data(tls_protocol)
        connection.set_connect_state()
        connection.set_tlsext_host_name(b"localhost")
        return connection


class _Trickle:
    """A socket whose ``send`` takes at most ``most`` bytes a call."""

    def __init__(self, sock, most: int) -> None:
        self._sock = sock
        self._most = most
        self.calls = 0

    def send(self, data) -> int:
        self.calls += 1
        return self._sock.send(bytes(data[:self._most]))

    def __getattr__(self, name):
        return getattr(self._sock, name)


def _tcp_connection(gateway_side):
    """The TCP connection under a gateway protocol's TLS transport."""
    connection = gateway_side.transport
    while not isinstance(connection, tcp.Server):
        connection = connection.transport
    return connection


@implementer(IHandshakeListener)
class _Handshake(protocol.Protocol):
    """Fires ``done`` with the negotiated version name, or with the failure."""

    def __init__(self) -> None:
        self.done: defer.Deferred = defer.Deferred()

    def handshakeCompleted(self) -> None:  # noqa: N802
        if not self.done.called:
            self.done.callback(self.transport.getHandle().get_protocol_version_name())
        self.transport.loseConnection()

    def connectionLost(self, reason) -> None:  # noqa: N802
        if not self.done.called:
            self.done.errback(reason)


@defer.inlineCallbacks
def tls_handshake(port: int, max_version: int):
    """→ the negotiated TLS version name; fails if the handshake does."""
    handshake = _Handshake()
    endpoint = wrapClientTLS(_MaxVersionClient(max_version),
                             TCP4ClientEndpoint(reactor, "127.0.0.1", port))
    yield connectProtocol(endpoint, handshake)
    version = yield handshake.done
    return version


class TLSTests(TestCase):
    timeout = 60

    def setUp(self):
        self.dir = Path(self.mktemp()).resolve()
        self.dir.mkdir(parents=True)
        self.ca = TestCA.create()
        self.db = fresh_database(self)

    def client_options(self, hostname="localhost"):
        return optionsForClientTLS(hostname, trustRoot=Certificate.loadPEM(self.ca.pem))

    @defer.inlineCallbacks
    def server(self, cert, key):
        server = yield start_gateway(
            self, self.db, server={"listen": "tls:0:interface=127.0.0.1"},
            tls={"cert": str(cert), "key": str(key)})
        server.wss = f"wss://localhost:{server.port}"
        server.clientinfo = f"https://localhost:{server.port}/clientinfo"
        return server

    @defer.inlineCallbacks
    def test_ticket_and_key_login_over_wss(self):
        cert, key, _ = self.ca.issue(self.dir, "server")
        server = yield self.server(cert, key)
        user = add_user(self.db)
        private = keys.generate_private_jwk()
        token = admin.issue_ticket(self.db.dsn, user).token
        first = yield connect(server.wss, user, token=token, new_key=private,
                              tls_options=self.client_options())
        yield first.close()
        second = yield connect(server.wss, user, key=private, clientinfo_url=server.clientinfo,
                               tls_options=self.client_options())
        self.addCleanup(second.close)
        row = yield second.request({"action": "tuple", "view": "base.curr_eid()"})
        self.assertTrue(row["curr_eid"])

    @defer.inlineCallbacks
    def test_notification_fan_out_to_tls_sockets(self):
        """The threaded fan-out writes straight to plain TCP sockets only: a TLS socket
        gets the frame through its TLS transport (raw bytes would break the session)."""
        cert, key, _ = self.ca.issue(self.dir, "server")
        server = yield start_gateway(
            self, self.db, server={"listen": "tls:0:interface=127.0.0.1",
                                   "fanout_threads": 2},
            tls={"cert": str(cert), "key": str(key)})
        server.gateway.fanout.min_parallel = 1       # the threaded path, for two sockets
        user = add_user(self.db)
        private = keys.generate_private_jwk()
        token = admin.issue_ticket(self.db.dsn, user).token
        wss = f"wss://localhost:{server.port}"
        first = yield connect(wss, user, token=token, new_key=private, listen=["app_tls"],
                              tls_options=self.client_options())
        self.addCleanup(first.close)
        second = yield connect(wss, user, key=private, listen=["app_tls"],
                               clientinfo_url=f"https://localhost:{server.port}/clientinfo",
                               tls_options=self.client_options())
        self.addCleanup(second.close)
        got = [defer.Deferred(), defer.Deferred()]
        first.on_notify("app_tls", got[0].callback)
        second.on_notify("app_tls", got[1].callback)
        protocols = list(server.gateway.all_connections())
        self.assertEqual(len(protocols), 2)
        self.assertEqual([p.direct_send() for p in protocols], [None, None])
        # each socket's frame goes through its TLS layer at once, not aggregated for
        # the next turn of the loop
        aggregated = []
        flush = _AggregateSmallWrites.flush

        def spied(aggregator):
            aggregated.extend(aggregator._buffer)
            return flush(aggregator)
        self.patch(_AggregateSmallWrites, "flush", spied)
        self.db.run("""notify app_tls, '{"n": 1}'""")
        self.assertEqual((yield defer.gatherResults(got)), [{"n": 1}, {"n": 1}])
        self.assertEqual(aggregated, [])
        row = yield second.request({"action": "tuple", "view": "base.curr_eid()"})
        self.assertTrue(row["curr_eid"])   # the TLS session goes on

    @defer.inlineCallbacks
    def test_fan_out_threads_send_tls_records(self):
        """With fan-out threads, the reactor thread makes each TLS socket's record, and
        the records are shared out between it and the helper thread to send. What a
        socket does not take at once is buffered and arrives whole; a session that does
        not take the frame gets it the usual way. Every session goes on afterwards."""
        cert, key, _ = self.ca.issue(self.dir, "server")
        server = yield start_gateway(
            self, self.db, server={"listen": "tls:0:interface=127.0.0.1",
                                   "fanout_threads": 2},
            tls={"cert": str(cert), "key": str(key)})
        server.gateway.fanout.min_parallel = 1       # the threaded path, for a few sockets
        user = add_user(self.db)
        private = keys.generate_private_jwk()
        token = admin.issue_ticket(self.db.dsn, user).token
        wss = f"wss://localhost:{server.port}"
        clients = [(yield connect(wss, user, token=token, new_key=private,
                                  listen=["app_tls"], tls_options=self.client_options()))]
        for _ in range(3):
            clients.append((yield connect(
                wss, user, key=private, listen=["app_tls"],
                clientinfo_url=f"https://localhost:{server.port}/clientinfo",
                tls_options=self.client_options())))
        for client in clients:
            self.addCleanup(client.close)
        got = [defer.Deferred() for _ in clients]
        for client, arrived in zip(clients, got, strict=True):
            client.on_notify("app_tls", arrived.callback)
        protocols = list(server.gateway.all_connections())
        self.assertEqual(len(protocols), 4)
        tcp_of = {gateway_side: _tcp_connection(gateway_side) for gateway_side in protocols}
        trickled, refused = protocols[1], protocols[2]
        tcp_of[trickled].socket = _Trickle(tcp_of[trickled].socket, 100)
        sealed_by, sent_by, refusals = {}, [], []
        seal, send_records = fanout.seal, fanout._send_records

        def thread() -> str:
            return threading.current_thread().name.split("_")[0]

        def spied_seal(target, data):
            if target.connection is tcp_of[refused]:
                refusals.append(target)
                return None               # as a session that wants to read first
            sealed_by[target.connection] = thread()
            return seal(target, data)

        def spied_send(sends, records):
            sent_by.extend(thread() for _ in sends)
            return send_records(sends, records)
        self.patch(fanout, "seal", spied_seal)
        self.patch(fanout, "_send_records", spied_send)
        payload = json.dumps({"text": "x" * 3000})
        self.db.run("select pg_notify('app_tls', %s)", (payload,))
        self.assertEqual((yield defer.gatherResults(got)), [json.loads(payload)] * 4)
        self.assertEqual(len(refusals), 1)
        # every other socket's record made in the fan-out, by the reactor thread, and
        # sent by it (the first and third) and by the helper (the second)
        self.assertEqual(set(sealed_by), {tcp_of[p] for p in protocols} - {tcp_of[refused]})
        self.assertEqual(set(sealed_by.values()), {"MainThread"})
        self.assertEqual(sorted(sent_by), ["MainThread", "MainThread", "wyseman-fanout"])
        # the trickled socket's record (over 3 KB) went 100 bytes a call, and whole
        self.assertGreater(tcp_of[trickled].socket.calls, 30)
        for client in clients:
            row = yield client.request({"action": "tuple", "view": "base.curr_eid()"})
            self.assertTrue(row["curr_eid"])   # each TLS session goes on

    @defer.inlineCallbacks
    def test_tls_records_go_straight_to_the_socket(self):
        """The TLS layer's records (handshake, encrypted frames) are sent as they are
        made, not left for the reactor's next writable event (no startWriting on the
        server's connections); what a socket does not take at once is buffered as usual
        and arrives whole."""
        cert, key, _ = self.ca.issue(self.dir, "server")
        server = yield self.server(cert, key)
        buffered: list[object] = []
        start_writing = tcp.Server.startWriting

        def spied(transport):
            buffered.append(transport)
            return start_writing(transport)
        self.patch(tcp.Server, "startWriting", spied)
        user = add_user(self.db)
        private = keys.generate_private_jwk()
        token = admin.issue_ticket(self.db.dsn, user).token
        first = yield connect(server.wss, user, token=token, new_key=private,
                              tls_options=self.client_options())
        self.addCleanup(first.close)
        meta = {"action": "meta", "view": "base.ent_v"}
        whole = yield first.request(meta)
        self.assertEqual(buffered, [])
        # a socket that takes 100 bytes a call: the rest of each record is buffered
        [gateway_side] = list(server.gateway.all_connections())
        connection = _tcp_connection(gateway_side)
        connection.socket = _Trickle(connection.socket, 100)
        self.assertEqual((yield first.request(meta)), whole)
        self.assertGreater(len(json.dumps(whole)), 1000)
        self.assertIn(connection, buffered)

    @defer.inlineCallbacks
    def test_nagle_is_off_at_both_ends_of_a_wss_connection(self):
        """TCP_NODELAY on the gateway's socket and the client's: with Nagle on, the
        login's ``101`` waited behind the unacknowledged session tickets for the peer's
        delayed ACK (40 ms a login)."""
        cert, key, _ = self.ca.issue(self.dir, "server")
        server = yield self.server(cert, key)
        user = add_user(self.db)
        token = admin.issue_ticket(self.db.dsn, user).token
        client = yield connect(server.wss, user, token=token,
                               new_key=keys.generate_private_jwk(),
                               tls_options=self.client_options())
        self.addCleanup(client.close)
        [gateway_side] = list(server.gateway.all_connections())
        client_side = client._protocol.transport
        while not isinstance(client_side, tcp.Client):
            client_side = client_side.transport
        for connection in (_tcp_connection(gateway_side), client_side):
            self.assertTrue(connection.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    @defer.inlineCallbacks
    def test_replies_leave_in_their_turn_through_the_quick_tls_layer(self):
        """A wss connection's TLS layer is the quick one, and a request's reply is
        encrypted and sent in the turn it is written: Twisted's aggregation of small
        writes (a timer per connection, the record made a turn later) is not used."""
        cert, key, _ = self.ca.issue(self.dir, "server")
        server = yield self.server(cert, key)
        user = add_user(self.db)
        token = admin.issue_ticket(self.db.dsn, user).token
        client = yield connect(server.wss, user, token=token,
                               new_key=keys.generate_private_jwk(),
                               tls_options=self.client_options())
        self.addCleanup(client.close)
        [gateway_side] = list(server.gateway.all_connections())
        self.assertIsInstance(gateway_side.transport, twisted_io.QuickTLSTransport)
        aggregated: list[bytes] = []
        aggregate = _AggregateSmallWrites.write

        def spied(aggregator, data):
            aggregated.append(data)
            return aggregate(aggregator, data)
        self.patch(_AggregateSmallWrites, "write", spied)
        for _ in range(3):
            row = yield client.request({"action": "tuple", "view": "base.curr_eid()"})
            self.assertTrue(row["curr_eid"])
        self.assertEqual(aggregated, [])

    @defer.inlineCallbacks
    def test_wrong_hostname_refused_by_client(self):
        cert, key, _ = self.ca.issue(self.dir, "other", hostname="other.example")
        server = yield self.server(cert, key)
        with self.assertRaises(ClientError):
            yield connect(server.wss, "nobody", token="x", new_key=keys.generate_private_jwk(),
                          tls_options=self.client_options())

    def test_bad_certificate_files_stop_the_start(self):
        cert, key, _ = self.ca.issue(self.dir, "server")
        _, other_key, _ = self.ca.issue(self.dir, "other")
        (self.dir / "garbage.key").write_text("garbage")
        cases = [(self.dir / "missing.pem", key, "missing.pem", "cannot read"),
                 (cert, self.dir / "missing.key", "missing.key", "cannot read"),
                 (cert, other_key, "other.key", "does not match"),
                 (cert, self.dir / "garbage.key", "garbage.key", "not a PEM private key"),
                 (key, key, "server.key", "no PEM certificate")]
        for cert_path, key_path, file_name, expected in cases:
            config = make_config(self.db, server={"listen": "tls:0"},
                                 tls={"cert": str(cert_path), "key": str(key_path)})
            with self.assertRaises(ConfigError) as ctx:
                GatewayService(config, lambda: defer.succeed(self.db.dsn), reactor)
            self.assertIn(file_name, str(ctx.exception))
            self.assertIn(expected, str(ctx.exception))

    @defer.inlineCallbacks
    def test_reload_keeps_connections_and_serves_new_certificate(self):
        cert, key, first_serial = self.ca.issue(self.dir, "server")
        server = yield self.server(cert, key)
        user = add_user(self.db)
        private = keys.generate_private_jwk()
        token = admin.issue_ticket(self.db.dsn, user).token
        before = yield connect(server.wss, user, token=token, new_key=private,
                               tls_options=self.client_options())
        self.addCleanup(before.close)
        self.assertEqual(
            before._protocol.transport.getPeerCertificate().get_serial_number(), first_serial)
        _, _, second_serial = self.ca.issue(self.dir, "server")  # overwrites the files
        self.assertTrue(server.tls.reload())
        after = yield connect(server.wss, user, key=private, clientinfo_url=server.clientinfo,
                              tls_options=self.client_options())
        self.addCleanup(after.close)
        self.assertEqual(
            after._protocol.transport.getPeerCertificate().get_serial_number(), second_serial)
        row = yield before.request({"action": "tuple", "view": "base.curr_eid()"})
        self.assertTrue(row["curr_eid"])
        (self.dir / "server.key").write_text("garbage")
        self.assertFalse(server.tls.reload())  # bad files: the current certificate stays

    @defer.inlineCallbacks
    def test_tls_1_1_refused_by_the_server(self):
        cert, key, _ = self.ca.issue(self.dir, "server")
        server = yield self.server(cert, key)
        # control: the same client, allowed up to 1.2, gets through (so the failure
        # below is the server's minimum, not this client's OpenSSL)
        version = yield tls_handshake(server.port, SSL.TLS1_2_VERSION)
        self.assertEqual(version, "TLSv1.2")
        with self.assertRaises(SSL.Error) as ctx:
            yield tls_handshake(server.port, SSL.TLS1_1_VERSION)
        self.assertIn("alert protocol version", str(ctx.exception))

    def test_minimum_tls_version(self):
        from OpenSSL import SSL

        from wyseman.application.tls import ReloadableContextFactory
        cert, key, _ = self.ca.issue(self.dir, "server")
        options = ReloadableContextFactory(cert, key).getContext().set_options(0)
        self.assertTrue(options & SSL.OP_NO_TLSv1 and options & SSL.OP_NO_TLSv1_1)
        self.assertFalse(options & SSL.OP_NO_TLSv1_2)
        strict = ReloadableContextFactory(cert, key, min_version="1.3").getContext()
        self.assertTrue(strict.set_options(0) & SSL.OP_NO_TLSv1_2)

    @defer.inlineCallbacks
    def test_a_returning_client_resumes_its_session(self):
        """With ``[tls] session_tickets`` (the default) a client's second connection
        (its WebSocket after its /clientinfo fetch) resumes the first's TLS session;
        without, every connection is a full handshake."""
        import socket
        import ssl

        from twisted.internet import threads
        cert, key, _ = self.ca.issue(self.dir, "server")
        context = ssl.create_default_context(cadata=self.ca.pem.decode())

        def two_fetches(port: int) -> list[bool]:
            session, reused = None, []
            for _ in range(2):
                with socket.create_connection(("127.0.0.1", port)) as raw, \
                        context.wrap_socket(raw, server_hostname="localhost",
                                            session=session) as tls:
                    tls.sendall(b"GET /clientinfo HTTP/1.1\r\nHost: localhost\r\n\r\n")
                    while tls.recv(65536):        # (TLS 1.3 tickets come after the
                        pass                      # handshake: read to the end)
                    reused.append(tls.session_reused)
                    session = tls.session
            return reused

        on = yield self.server(cert, key)
        self.assertEqual((yield threads.deferToThread(two_fetches, on.port)), [False, True])
        off = yield start_gateway(
            self, self.db, server={"listen": "tls:0:interface=127.0.0.1"},
            tls={"cert": str(cert), "key": str(key), "session_tickets": False})
        port = off.ports[0].getHost().port
        self.assertEqual((yield threads.deferToThread(two_fetches, port)), [False, False])

    @defer.inlineCallbacks
    def test_sighup_reloads_the_certificate(self):
        import os
        import signal
        cert, key, _ = self.ca.issue(self.dir, "server")
        server = yield self.server(cert, key)
        reloaded = defer.Deferred()
        reload = server.tls.reload

        def reloading():
            result = reload()
            reloaded.callback(result)
            return result
        server.tls.reload = reloading
        os.kill(os.getpid(), signal.SIGHUP)
        self.assertTrue((yield reloaded))
