"""``haproxy:`` endpoints: the PROXY protocol header (v1, v2) names the client that
``/clientinfo``, the signed message and the bounds see (wyseman.ws.proxyproto)."""

from __future__ import annotations

import ipaddress
import json
import struct
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.harness import add_user, js_date, start_gateway, upgrade_request
from tests.pgtest import fresh_database
from wyseman.auth.credentials import signed_message
from wyseman.client import keys
from wyseman.config import ConfigError
from wyseman.provision import admin
from wyseman.ws import proxyproto
from wyseman.ws.proxyproto import ProxyHeaderError, parse_header

V2 = proxyproto.V2_SIGNATURE


def v2_header(source: str, port: int, command: int = 0x21, tlvs: bytes = b"") -> bytes:
    address = ipaddress.ip_address(source)
    if address.version == 4:
        body = address.packed + bytes([127, 0, 0, 1]) + struct.pack(">HH", port, 80)
        family = 0x11
    else:
        body = address.packed + ipaddress.IPv6Address("::1").packed + struct.pack(">HH", port, 80)
        family = 0x21
    body += tlvs
    return V2 + bytes([command, family]) + struct.pack(">H", len(body)) + body


class ParseTests(SynchronousTestCase):
    def test_version_1(self) -> None:
        source, length = parse_header(b"PROXY TCP4 192.0.2.7 10.0.0.1 5555 443\r\nGET /")
        self.assertEqual((source.host, source.port, source.type), ("192.0.2.7", 5555, "TCP"))
        self.assertEqual(length, len(b"PROXY TCP4 192.0.2.7 10.0.0.1 5555 443\r\n"))
        source, _ = parse_header(b"PROXY TCP6 2001:db8::7 ::1 1 443\r\n")
        self.assertEqual(source.host, "2001:db8::7")
        self.assertEqual(parse_header(b"PROXY UNKNOWN\r\n"), (None, 15))
        self.assertEqual(parse_header(b"PROXY UNKNOWN ff::1 ::1 1 2\r\n")[0], None)
        for partial in (b"", b"PRO", b"PROXY ", b"PROXY TCP4 192.0.2.7 10.0.0.1 5555 44"):
            self.assertIsNone(parse_header(partial), partial)

    def test_version_1_refusals(self) -> None:
        for bad in (b"GET / HTTP/1.1\r\n", b"PROXY TCP4 192.0.2.7 10.0.0.1 5555\r\n",
                    b"PROXY TCP4 ::1 10.0.0.1 5555 443\r\n",
                    b"PROXY TCP4 192.0.2.7 10.0.0.1 65536 443\r\n",
                    b"PROXY TCP4 192.0.2.7 10.0.0.1 0555 443\r\n",
                    b"PROXY UDP4 192.0.2.7 10.0.0.1 5555 443\r\n",
                    b"PROXY TCP4 " + b"9" * 200):
            with self.assertRaises(ProxyHeaderError, msg=bad):
                parse_header(bad)

    def test_version_2(self) -> None:
        header = v2_header("192.0.2.9", 4444, tlvs=b"\x01\x00\x02h2")
        source, length = parse_header(header + b"GET /")
        self.assertEqual((source.host, source.port, length), ("192.0.2.9", 4444, len(header)))
        source, _ = parse_header(v2_header("2001:db8::9", 1))
        self.assertEqual(source.host, "2001:db8::9")
        local = v2_header("192.0.2.9", 1, command=0x20)          # a health check
        self.assertEqual(parse_header(local), (None, len(local)))
        for cut in (1, 12, 15, len(header) - 1):
            self.assertIsNone(parse_header(header[:cut]), cut)

    def test_version_2_refusals(self) -> None:
        for bad in (v2_header("192.0.2.9", 1, command=0x31),        # version 3
                    v2_header("192.0.2.9", 1, command=0x22),        # unknown command
                    V2 + b"\x21\x12" + struct.pack(">H", 12) + b"\x00" * 12,   # UDP
                    V2 + b"\x21\x11" + struct.pack(">H", 4) + b"\x00" * 4,     # short
                    V2 + b"\x21\x11" + struct.pack(">H", 4000)):               # too long
            with self.assertRaises(ProxyHeaderError, msg=bad):
                parse_header(bad)


class ConfigTests(SynchronousTestCase):
    def test_a_proxy_endpoint_needs_trusted_proxies(self) -> None:
        db = {"dsn": "dbname=x"}
        with self.assertRaises(ConfigError) as ctx:
            from wyseman import config as cfg
            cfg.from_dict({"server": {"listen": "haproxy:tcp:4100"}, "database": db})
        self.assertIn("trusted_proxies", str(ctx.exception))
        with self.assertRaises(ConfigError) as ctx:
            cfg.from_dict({"server": {"listen": "haproxy:unix:/tmp/x",
                                      "trusted_proxies": ["127.0.0.1"]}, "database": db})
        self.assertIn("'haproxy:' before a 'tcp:'", str(ctx.exception))
        config = cfg.from_dict({"server": {"listen": "haproxy:tcp:4100:interface=127.0.0.1",
                                           "trusted_proxies": ["127.0.0.1"]},
                                "auth": {"insecure": True}, "database": db})
        from wyseman.application.service import GatewayService, derived_clientinfo, parse_listen
        spec = parse_listen(config.server.listen[0])
        self.assertEqual((spec.proxy, spec.kind, spec.port, spec.inner),
                         (True, "tcp", 4100, "tcp:4100:interface=127.0.0.1"))
        self.assertEqual(derived_clientinfo(spec), "haproxy:tcp:4099:interface=127.0.0.1")
        # the clients of a loopback PROXY port are the balancer's: no insecure logins
        service = GatewayService(config, lambda: defer.succeed(""))
        self.assertFalse(service._insecure_allowed(spec))


class _Raw(protocol.Protocol):
    """Writes ``data`` (more with ``then`` once connected), collects the answer until
    the server closes."""

    def __init__(self, data: bytes, tls: Any = None, then: bytes = b"") -> None:
        self.data, self.tls, self.then = data, tls, then
        self.received = b""
        self.done: defer.Deferred = defer.Deferred()

    def connectionMade(self) -> None:  # noqa: N802
        self.transport.write(self.data)
        if self.tls is not None:
            self.transport.startTLS(self.tls)
            self.transport.write(self.then)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.received += data
        if self.received.startswith(b"HTTP/1.1 101") and b"\r\n\r\n" in self.received:
            self.transport.loseConnection()

    def connectionLost(self, reason: Any) -> None:  # noqa: N802
        self.done.callback(self.received)


@defer.inlineCallbacks
def exchange(port: int, data: bytes, **options: Any) -> Any:
    raw = _Raw(data, **options)
    yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), raw)
    received = yield raw.done
    return received


def clientinfo_request(port: int) -> bytes:
    return f"GET /clientinfo HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()


def body(answer: bytes) -> Any:
    return json.loads(answer.partition(b"\r\n\r\n")[2])


class ProxyPortTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.db = fresh_database(self)

    def gateway(self, trusted: str = "127.0.0.1", listen: str = "haproxy:tcp:0:"
                "interface=127.0.0.1", **sections: Any) -> Any:
        return start_gateway(self, self.db, server={"listen": listen,
                                                    "trusted_proxies": [trusted]}, **sections)

    @defer.inlineCallbacks
    def test_clientinfo_and_the_signed_login_see_the_client_of_the_header(self) -> None:
        server = yield self.gateway()
        port = server.port
        answer = yield exchange(port, b"PROXY TCP4 192.0.2.7 127.0.0.1 5555 80\r\n"
                                + clientinfo_request(port))
        self.assertEqual(body(answer)["ip"], "::ffff:192.0.2.7")
        answer = yield exchange(port, v2_header("2001:db8::5", 6) + clientinfo_request(port))
        self.assertEqual(body(answer)["ip"], "2001:db8::5")
        # a key login signed for the address the header names passes; for the balancer's
        # address (what the socket's peer is) it does not
        user = add_user(self.db)
        private = keys.generate_private_jwk()
        token = admin.issue_ticket(self.db.dsn, user).token
        head = b"PROXY TCP4 192.0.2.7 127.0.0.1 5555 80\r\n"
        pub = keys.pub_param(keys.public_jwk(private))
        answer = yield exchange(port, head + upgrade_request(
            port, f"user={user}&token={token}&pub={pub}"))
        self.assertTrue(answer.startswith(b"HTTP/1.1 101"), answer[:200])
        for ip, status in (("::ffff:127.0.0.1", b"403"), ("::ffff:192.0.2.7", b"101")):
            date = js_date(datetime.now(UTC))
            sign = keys.sign(private, signed_message(ip, None, None, date))
            answer = yield exchange(port, head + upgrade_request(
                port, f"user={user}&sign={sign}&date={date}"))
            self.assertEqual(answer.split(b" ", 2)[1], status, (ip, answer[:200]))

    @defer.inlineCallbacks
    def test_connections_without_a_header_or_from_others_are_closed(self) -> None:
        warnings: list[str] = []

        def observe(event: dict) -> None:
            if event.get("log_namespace") == "wyseman.proxy":
                warnings.append(event["why"])
        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        server = yield self.gateway()
        self.assertEqual((yield exchange(server.port, clientinfo_request(server.port))), b"")
        self.assertEqual(warnings, ["no PROXY protocol header"])
        other = yield self.gateway(trusted="10.0.0.0/8")
        for _ in range(2):
            answer = yield exchange(other.port, b"PROXY TCP4 192.0.2.7 127.0.0.1 5555 80\r\n"
                                    + clientinfo_request(other.port))
            self.assertEqual(answer, b"")
        self.assertEqual(warnings[1:], ["not in [server] trusted_proxies"])   # logged once

    @defer.inlineCallbacks
    def test_a_proxy_tls_port_reads_the_header_before_tls(self) -> None:
        from tests.tlsutil import TestCA
        directory = Path(self.mktemp()).resolve()
        directory.mkdir(parents=True)
        ca = TestCA.create()
        cert, key, _ = ca.issue(directory, "server")
        server = yield self.gateway(listen="haproxy:tls:0:interface=127.0.0.1",
                                    tls={"cert": str(cert), "key": str(key)})
        options = optionsForClientTLS("localhost", trustRoot=Certificate.loadPEM(ca.pem))
        answer = yield exchange(server.port, b"PROXY TCP4 198.51.100.3 127.0.0.1 7 443\r\n",
                                tls=options, then=clientinfo_request(server.port))
        self.assertEqual(body(answer)["ip"], "::ffff:198.51.100.3")

    @defer.inlineCallbacks
    def test_the_bound_per_address_counts_the_client_not_the_balancer(self) -> None:
        server = yield self.gateway(limits={"max_pending_per_address": 1})
        port = server.port
        # one client holds its one pending place (a request not yet complete) ...
        holder = _Raw(b"PROXY TCP4 192.0.2.1 127.0.0.1 1 80\r\nGET /clientinfo HTTP/1.1\r\n")
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), holder)
        # ... a second connection of that client is closed, another client is served
        answer = yield exchange(port, b"PROXY TCP4 192.0.2.1 127.0.0.1 2 80\r\n"
                                + clientinfo_request(port))
        self.assertEqual(answer, b"")
        answer = yield exchange(port, b"PROXY TCP4 192.0.2.2 127.0.0.1 3 80\r\n"
                                + clientinfo_request(port))
        self.assertEqual(body(answer)["ip"], "::ffff:192.0.2.2")
        holder.transport.loseConnection()
        yield holder.done

    @defer.inlineCallbacks
    def test_workers_read_the_header_on_their_shared_port(self) -> None:
        from tests.harness import make_config
        from wyseman.application.workers.supervisor import WorkerSupervisor
        config = make_config(self.db, server={"workers": 2, "listen": "haproxy:tcp:0:"
                                              "interface=127.0.0.1",
                                              "trusted_proxies": ["127.0.0.1"]})
        supervisor = WorkerSupervisor(config, lambda: defer.succeed(self.db.dsn), reactor)
        yield supervisor.startService()
        self.addCleanup(supervisor.stopService)
        self.assertTrue(supervisor.listen[0].startswith("haproxy:tcp:"), supervisor.listen)
        port = int(supervisor.listen[0].split(":")[2])
        for source in ("192.0.2.11", "192.0.2.12", "192.0.2.13"):
            answer = yield exchange(port, f"PROXY TCP4 {source} 127.0.0.1 9 80\r\n".encode()
                                    + clientinfo_request(port))
            self.assertEqual(body(answer)["ip"], "::ffff:" + source)
