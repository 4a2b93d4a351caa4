"""The libp2p transport (docs/protocol.md, 15) against a real gateway and PostgreSQL: the
Python client dials ``/wyseman/1.0.0``, logs in by ticket and by key, sends requests and
receives notifications; refusals carry the WebSocket's status and reason; hostile input
closes only its own stream."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import sys
from datetime import UTC, datetime, timedelta

from twisted.internet import defer, reactor
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.harness import (
    ProcessOutput,
    add_user,
    checkout_pythonpath,
    start_gateway,
    wyseman_cli,
)
from tests.pgtest import fresh_database
from wyseman import config as cfg
from wyseman.client import keys
from wyseman.client.connection import ClientError, connect
from wyseman.p2p.wire import MAX_VARINT_BYTES, FrameError, FrameReader, encode_varint, frame
from wyseman.provision import admin

try:
    from wyseman.client import p2p as client_p2p
    from wyseman.client.p2p import LoginRefused, connect_best, connect_p2p, send_raw_p2p
    from wyseman.p2p import node
except ImportError as exc:     # the wyseman[p2p] extra is not installed
    MISSING = f"the wyseman[p2p] extra (py-libp2p) is not installed: {exc}"
else:
    MISSING = None


#: a client process that logs in over libp2p by ticket, says so, and waits
FROZEN_CLIENT = """
import sys
from twisted.internet import defer, task
from wyseman.client import keys
from wyseman.client.p2p import connect_p2p

@defer.inlineCallbacks
def main(reactor, address, user, token):
    conn = yield connect_p2p(address, user, token=token, new_key=keys.generate_private_jwk())
    print("logged in", flush=True)
    yield conn.closed

task.react(main, sys.argv[1:])
"""

class FramingTests(SynchronousTestCase):
    """The length prefix: bounded before anything is buffered for it."""

    def test_messages_cut_at_their_lengths_whatever_the_chunks(self):
        data = frame(b"{}") + frame(b"x" * 300) + frame(b"")
        for size in (1, 2, 7, len(data)):
            reader = FrameReader(1000)
            out = []
            for i in range(0, len(data), size):
                out += reader.feed(data[i:i + size])
            self.assertEqual(out, [b"{}", b"x" * 300, b""])
            self.assertEqual(reader.buffered, 0)

    def test_varint_encoding(self):
        self.assertEqual(encode_varint(0), b"\x00")
        self.assertEqual(encode_varint(300), b"\xac\x02")
        self.assertEqual(encode_varint(2 ** 63), b"\x80" * 9 + b"\x01")

    def test_length_over_the_limit_refused_before_the_body(self):
        reader = FrameReader(1024)
        with self.assertRaises(FrameError) as caught:
            reader.feed(encode_varint(1025))
        self.assertIn("over the limit", str(caught.exception))

    def test_an_unfinished_prefix_already_too_large_is_refused(self):
        with self.assertRaises(FrameError):
            FrameReader(1024).feed(b"\xff\xff\xff")

    def test_a_prefix_over_ten_bytes_is_refused(self):
        reader = FrameReader(2 ** 70)
        with self.assertRaises(FrameError) as caught:
            reader.feed(b"\x80" * MAX_VARINT_BYTES + b"\x01")
        self.assertIn("longer than 10 bytes", str(caught.exception))


class ConfigTests(SynchronousTestCase):
    def test_p2p_section_defaults_off(self):
        config = cfg.from_dict({"database": {"dsn": "dbname=x"}})
        self.assertEqual(config.p2p.listen, ())
        self.assertEqual(config.p2p.key_file, "p2p.key")
        self.assertFalse(config.p2p.mdns)

    def test_listen_must_be_tcp_multiaddrs(self):
        with self.assertRaises(cfg.ConfigError) as caught:
            cfg.from_dict({"database": {"dsn": "dbname=x"},
                           "p2p": {"listen": ["tcp:4001"]}})
        self.assertIn("[p2p] listen", str(caught.exception))

    def test_not_with_workers(self):
        with self.assertRaises(cfg.ConfigError) as caught:
            cfg.from_dict({"database": {"dsn": "dbname=x"}, "server": {"workers": 2},
                           "p2p": {"listen": ["/ip4/127.0.0.1/tcp/0"]}})
        self.assertIn("workers", str(caught.exception))

    def test_without_the_extra_one_clear_line(self):
        import builtins

        from wyseman.application.service import check_p2p
        config = cfg.from_dict({"database": {"dsn": "dbname=x"},
                                "p2p": {"listen": ["/ip4/127.0.0.1/tcp/0"]}})
        real_import = builtins.__import__

        def no_libp2p(name, *args, **kwargs):
            if name in ("wyseman.p2p.node", "libp2p") or (
                    name == "wyseman.p2p" and "node" in (args[2] or ())):
                raise ImportError("No module named 'libp2p'")
            return real_import(name, *args, **kwargs)
        self.patch(builtins, "__import__", no_libp2p)
        with self.assertRaises(cfg.ConfigError) as caught:
            check_p2p(config)
        text = str(caught.exception)
        self.assertIn("[p2p] listen: needs the wyseman[p2p] extra", text)
        self.assertNotIn("\n", text)


def dead_port() -> int:
    """A TCP port on 127.0.0.1 where nothing listens (bound, then let go)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class TicketMultiaddrTests(SynchronousTestCase):
    """The ``p2p`` member of tickets and key files (docs/protocol.md, 16.1, 16.2)."""

    ADDRESS = "/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWexample"

    def ticket(self, **members):
        body = {"token": "T", "host": "h", "port": 1, "user": "u", **members}
        return json.dumps({"ticket": body})

    def test_written_and_read_back(self):
        issued = admin.Ticket("T", datetime.now(UTC), "h", 1, "u", p2p=(self.ADDRESS,))
        text = admin.format_ticket(issued, admin_user="postgres")
        self.assertEqual(json.loads(text)["ticket"]["p2p"], [self.ADDRESS])
        self.assertEqual(keys.parse_ticket(text).p2p, (self.ADDRESS,))
        plain = admin.format_ticket(admin.Ticket("T", datetime.now(UTC), "h", 1, "u"),
                                    admin_user="postgres")
        self.assertNotIn("p2p", json.loads(plain)["ticket"])
        self.assertEqual(keys.parse_ticket(plain).p2p, ())

    def test_bounded_and_checked(self):
        for bad in ("/ip4/1.2.3.4/tcp/1", [1], ["no-slash/p2p/x"],
                    ["/ip4/1.2.3.4/tcp/1"], ["/" + "x" * 600 + "/p2p/P"],
                    [self.ADDRESS] * 17):
            with self.assertRaises(keys.KeyFileError, msg=repr(bad)[:60]):
                keys.parse_ticket(self.ticket(p2p=bad))

    def test_kept_in_key_files(self):
        path = self.mktemp()
        site = keys.Site("h", 1, "u", keys.generate_private_jwk(), (self.ADDRESS,))
        keys.save_key_file(path, [site])
        with open(path) as handle:
            self.assertEqual(json.load(handle)["login"]["p2p"], [self.ADDRESS])
        self.assertEqual(keys.load_key_file(path)[0].p2p, (self.ADDRESS,))
        keys.save_key_file(path, [keys.Site("h", 1, "u", site.key)])
        with open(path) as handle:
            self.assertNotIn("p2p", json.load(handle)["login"])


class MdnsRecordTests(SynchronousTestCase):
    """What ``[p2p] mdns`` announces (the multicast itself: tests/test_p2p_mdns.py)."""

    PEER = "12D3KooWMZnoqoghVdvTYwJkyHdicBEYK5qVAD5VVSCtCgBabF2Y"

    def setUp(self):
        if MISSING:
            raise self.skipTest(MISSING)

    def adapters(self):
        import ifaddr
        return [
            ifaddr.Adapter("lo", "lo", [ifaddr.IP("127.0.0.1", 8, "lo"),
                                        ifaddr.IP(("::1", 0, 0), 128, "lo")], index=1),
            ifaddr.Adapter("eth0", "eth0", [ifaddr.IP("192.0.2.7", 24, "eth0"),
                                            ifaddr.IP(("fe80::7", 0, 2), 64, "eth0"),
                                            ifaddr.IP(("2001:db8::7", 0, 0), 64, "eth0")],
                           index=2)]

    def test_only_the_listen_addresses_and_their_interfaces(self):
        interfaces, multiaddrs = node.mdns_records(
            ["/ip4/127.0.0.1/tcp/4001", "/ip6/::1/tcp/4002"], self.PEER, self.adapters())
        self.assertEqual(interfaces, ["127.0.0.1", "::1"])
        self.assertEqual(multiaddrs, [f"/ip4/127.0.0.1/tcp/4001/p2p/{self.PEER}",
                                      f"/ip6/::1/tcp/4002/p2p/{self.PEER}"])

    def test_a_wildcard_stands_for_every_address_of_its_family(self):
        """Not ``/ip4/0.0.0.0/…`` as it is (what py-libp2p's own mDNS announces): no
        peer can dial that. IPv6 link-local addresses are left out (no zone)."""
        _, v4 = node.mdns_records(["/ip4/0.0.0.0/tcp/4001"], self.PEER, self.adapters())
        self.assertEqual(v4, [f"/ip4/127.0.0.1/tcp/4001/p2p/{self.PEER}",
                              f"/ip4/192.0.2.7/tcp/4001/p2p/{self.PEER}"])
        interfaces, v6 = node.mdns_records(["/ip6/::/tcp/4001"], self.PEER,
                                           self.adapters())
        self.assertEqual(interfaces, ["::1", "2001:db8::7"])
        self.assertEqual(v6, [f"/ip6/::1/tcp/4001/p2p/{self.PEER}",
                              f"/ip6/2001:db8::7/tcp/4001/p2p/{self.PEER}"])

    def test_the_txt_record_has_one_dnsaddr_string_per_address(self):
        """The libp2p mDNS spec's form, which js-libp2p and go-libp2p read: each string
        ``dnsaddr=…`` (py-libp2p's own mDNS writes ``dnsaddr2=…`` for the second, which
        they ignore). The SRV port is the listen port."""
        first = f"/ip4/127.0.0.1/tcp/4001/p2p/{self.PEER}"
        second = f"/ip4/127.0.0.2/tcp/4002/p2p/{self.PEER}"
        announcement = node.Announcement(["127.0.0.1", "127.0.0.2"], [first, second])
        strings = [f"dnsaddr={first}".encode(), f"dnsaddr={second}".encode()]
        self.assertEqual(announcement.info.text,
                         b"".join(bytes([len(s)]) + s for s in strings))
        self.assertEqual(announcement.info.type, "_p2p._udp.local.")
        self.assertEqual(announcement.info.name, f"{announcement.name}._p2p._udp.local.")
        self.assertEqual(len(announcement.name), 63)
        self.assertEqual(announcement.info.port, 4001)
        self.assertEqual(announcement.info.parsed_addresses(), ["127.0.0.1", "127.0.0.2"])


class KeyFileTests(SynchronousTestCase):
    def setUp(self):
        if MISSING:
            raise self.skipTest(MISSING)

    def test_created_0600_and_kept(self):
        path = self.mktemp()
        from pathlib import Path
        key, created = node.load_or_create_key(Path(path))
        self.assertTrue(created)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        again, created = node.load_or_create_key(Path(path))
        self.assertFalse(created)
        self.assertEqual(again, key)
        self.assertEqual(node.peer_id_of(key), node.peer_id_of(again))
        self.assertTrue(node.peer_id_of(key).startswith("12D3KooW"))   # Ed25519

    def test_readable_by_others_refused(self):
        from pathlib import Path
        path = Path(self.mktemp())
        node.load_or_create_key(path)
        path.chmod(0o644)
        with self.assertRaises(node.P2PKeyError) as caught:
            node.load_or_create_key(path)
        self.assertIn("chmod 600", str(caught.exception))


class P2PGatewayTests(TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def setUp(self):
        if MISSING:
            raise self.skipTest(MISSING)
        self.db = fresh_database(self)
        self.user = add_user(self.db, "pp")
        self.bystander = add_user(self.db, "by")
        self.key_file = os.path.abspath(self.mktemp())
        self.server = yield self.start(limits={"max_message_size": 4096, "max_frame_size": 4096})
        self.address = self.server.p2p.addresses[0]

    def start(self, **sections):
        sections.setdefault("p2p", {"listen": ["/ip4/127.0.0.1/tcp/0"],
                                    "key_file": self.key_file})
        return start_gateway(self, self.db, **sections)

    @defer.inlineCallbacks
    def ticket(self, listen=(), user=None):
        """A ticket login (it stores a new key: the user's key sessions are closed)."""
        user = user or self.user
        private = keys.generate_private_jwk()
        token = admin.issue_ticket(self.db.dsn, user).token
        conn = yield connect_p2p(self.address, user, token=token, new_key=private,
                                 listen=listen)
        self.addCleanup(conn.close)
        return private, conn

    @defer.inlineCallbacks
    def key_login(self, private, listen=(), **options):
        conn = yield connect_p2p(self.address, self.user, key=private, listen=listen,
                                 **options)
        self.addCleanup(conn.close)
        return conn

    @defer.inlineCallbacks
    def refused(self, **options):
        try:
            conn = yield connect_p2p(self.address, **options)
        except LoginRefused as exc:
            return exc
        yield conn.close()
        self.fail("the login was accepted")

    # -- logins, requests, notifications ------------------------------------------------
    @defer.inlineCallbacks
    def test_ticket_login_then_select(self):
        _, conn = yield self.ticket()
        row = yield conn.request({"action": "tuple", "view": "base.curr_eid()"})
        expected = self.db.run("select id from base.ent where username = %s", (self.user,))
        self.assertEqual(row["curr_eid"], expected[0][0])
        self.db.run("create table public.p2p_t (n int, t text); "
                    "insert into public.p2p_t values (1, 'one'), (2, 'two'); "
                    "grant select on public.p2p_t to wyseman_user")
        rows = yield conn.request({"action": "select", "view": "public.p2p_t",
                                   "where": {"t": "two"}})
        self.assertEqual(rows, [{"n": 2, "t": "two"}])


    @defer.inlineCallbacks
    def test_key_login_and_notification(self):
        private, first = yield self.ticket()
        yield first.close()
        conn = yield self.key_login(private, listen=["app_p2p"])
        got = defer.Deferred()
        conn.on_notify("app_p2p", got.callback)
        self.db.run("""select pg_notify('app_p2p', '{"n": 1}')""")
        data = yield got
        self.assertEqual(data, {"n": 1})
        self.assertEqual(self.server.gateway.metrics.handshakes.labels(
            "accepted", "key", "libp2p")._value.get(), 1)

    @defer.inlineCallbacks
    def test_same_notification_on_a_websocket_and_a_libp2p_stream(self):
        private, ticketed = yield self.ticket()
        yield ticketed.close()
        stream = yield self.key_login(private, listen=["app_both"])
        socket = yield connect(self.server.url, self.user, key=private, listen=["app_both"],
                               clientinfo_url=self.server.clientinfo_url)
        self.addCleanup(socket.close)
        received = [defer.Deferred(), defer.Deferred()]
        stream.on_notify("app_both", received[0].callback)
        socket.on_notify("app_both", received[1].callback)
        self.db.run("""select pg_notify('app_both', '{"to": "both"}')""")
        data = yield defer.gatherResults(received)
        self.assertEqual(data, [{"to": "both"}, {"to": "both"}])
        # the metrics tell the transports apart
        metrics = self.server.gateway.metrics
        self.assertEqual([metrics.connections.labels(t)._value.get()
                          for t in ("websocket", "libp2p")], [1, 1])
        self.assertEqual([metrics.handshakes.labels("accepted", "key", t)._value.get()
                          for t in ("websocket", "libp2p")], [1, 1])

    @defer.inlineCallbacks
    def test_key_removed_closes_the_session_with_4001(self):
        private, ticketed = yield self.ticket()
        yield ticketed.close()
        conn = yield self.key_login(private)
        # a new ticket login stores another key: the stream's key is gone
        yield self.ticket()
        code, reason = yield conn.closed
        self.assertEqual((code, reason), (4001, "credentials changed"))

    # -- refusals ---------------------------------------------------------------------
    @defer.inlineCallbacks
    def test_replayed_key_login_refused(self):
        """The same signed login again from the same client identity (its peer id, so
        the signature verifies): the replay cache refuses it. From another identity it
        does not even verify."""
        private, ticketed = yield self.ticket()
        yield ticketed.close()
        identity = node.new_key()
        sent = []
        original = keys.p2p_login

        def recorded(*args, **kwargs):
            sent.append(original(*args, **kwargs))
            return sent[-1]
        self.patch(keys, "p2p_login", recorded)
        conn = yield self.key_login(private, identity=identity)
        yield conn.close()
        self.patch(keys, "p2p_login", lambda *args, **kwargs: sent[0])
        refusal = yield self.refused(user=self.user, key=private, identity=identity)
        self.assertEqual((refusal.status, refusal.reason, refusal.kind),
                         (403, "Invalid Login", "replay"))
        refusal = yield self.refused(user=self.user, key=private)
        self.assertEqual((refusal.status, refusal.reason, refusal.kind),
                         (403, "Invalid Login", "bad_signature"))

    @defer.inlineCallbacks
    def test_login_signed_for_another_peer_refused(self):
        private, ticketed = yield self.ticket()
        yield ticketed.close()
        original = keys.p2p_login

        def for_another(private_key, user, server_peer, client_peer, *rest):
            return original(private_key, user, server_peer, "12D3KooWsomeoneElse", *rest)
        self.patch(keys, "p2p_login", for_another)
        refusal = yield self.refused(user=self.user, key=private)
        self.assertEqual((refusal.status, refusal.reason, refusal.kind),
                         (403, "Invalid Login", "bad_signature"))

    @defer.inlineCallbacks
    def test_stale_date_refused(self):
        private, ticketed = yield self.ticket()
        yield ticketed.close()
        refusal = yield self.refused(user=self.user, key=private,
                                     now=datetime.now(UTC) - timedelta(minutes=5))
        self.assertEqual((refusal.status, refusal.reason, refusal.kind),
                         (400, "Invalid Date Stamp", "stale_date"))

    @defer.inlineCallbacks
    def test_unknown_user_refused(self):
        refusal = yield self.refused(user="nobody_here", key=keys.generate_private_jwk())
        self.assertEqual((refusal.status, refusal.reason, refusal.kind),
                         (403, "Invalid Login", "no_key"))
        token = admin.issue_ticket(self.db.dsn, self.user).token
        refusal = yield self.refused(user="nobody_here", token=token,
                                     new_key=keys.generate_private_jwk())
        self.assertEqual((refusal.status, refusal.kind), (403, "bad_token"))

    @defer.inlineCallbacks
    def test_channel_not_allowed_refused(self):
        private, ticketed = yield self.ticket()
        yield ticketed.close()
        refusal = yield self.refused(user=self.user, key=private, listen=["secret"])
        self.assertEqual((refusal.status, refusal.reason, refusal.kind),
                         (403, "Channel not allowed", "channel"))

    @defer.inlineCallbacks
    def test_per_user_cap_counts_websockets_and_streams_together(self):
        yield self.server.stopService()
        self.server = yield self.start(limits={"max_connections_per_user": 1})
        self.address = self.server.p2p.addresses[0]
        private, stream = yield self.ticket()
        refused = None
        try:
            socket = yield connect(self.server.url, self.user, key=private,
                                   clientinfo_url=self.server.clientinfo_url)
        except Exception as exc:
            refused = exc
        else:
            socket.close()
        self.assertIn("503", str(refused))
        refusal = yield self.refused(user=self.user, key=private)
        self.assertEqual((refusal.status, refusal.kind), (503, "user_capacity"))
        self.assertTrue(stream.connected)

    # -- libp2p first, the WebSocket as the fallback (15.6) ----------------------------------
    def warnings(self):
        """The client's log warnings from now on (the fallback says why it moved on)."""
        from twisted.logger import LogLevel, formatEvent, globalLogPublisher
        seen = []

        def observer(event):
            if event.get("log_namespace") == "wyseman.client" and \
                    event.get("log_level") == LogLevel.warn:
                seen.append(formatEvent(event))
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        return seen

    @defer.inlineCallbacks
    def test_libp2p_first_when_it_works(self):
        token = admin.issue_ticket(self.db.dsn, self.user).token
        conn = yield connect_best(self.user, p2p=[self.address], url=self.server.url,
                                  token=token, new_key=keys.generate_private_jwk())
        self.addCleanup(conn.close)
        self.assertEqual(conn.via, self.address)
        row = yield conn.request({"action": "tuple", "view": "base.curr_eid()"})
        self.assertTrue(row["curr_eid"])

    @defer.inlineCallbacks
    def test_dead_or_wrong_multiaddrs_fall_back_to_the_websocket(self):
        """Nothing listening at one address, another peer at the other: both given up on
        with the reason logged, then the WebSocket, where the ticket (not spent by the
        failed dials) logs in."""
        warned = self.warnings()
        peer = self.address.rsplit("/p2p/", 1)[1]
        dead = f"/ip4/127.0.0.1/tcp/{dead_port()}/p2p/{peer}"
        other = node.peer_id_of(node.new_key())
        wrong = self.address.rsplit("/p2p/", 1)[0] + f"/p2p/{other}"
        token = admin.issue_ticket(self.db.dsn, self.user).token
        conn = yield connect_best(self.user, p2p=[dead, wrong], url=self.server.url,
                                  token=token, new_key=keys.generate_private_jwk())
        self.addCleanup(conn.close)
        self.assertEqual(conn.via, self.server.url)
        row = yield conn.request({"action": "tuple", "view": "base.curr_eid()"})
        self.assertTrue(row["curr_eid"])
        self.assertEqual(len(warned), 2, warned)
        self.assertIn(f"libp2p {dead} not usable", warned[0])
        self.assertIn("trying the next multiaddr", warned[0])
        self.assertIn(f"libp2p {wrong} not usable", warned[1])
        self.assertIn(f"trying the WebSocket {self.server.url}", warned[1])

    @defer.inlineCallbacks
    def test_nothing_usable_names_every_failure(self):
        dead = f"/ip4/127.0.0.1/tcp/{dead_port()}/p2p/{self.address.rsplit('/p2p/', 1)[1]}"
        self.warnings()
        with self.assertRaises(ClientError) as caught:
            yield connect_best(self.user, p2p=[dead], key=keys.generate_private_jwk())
        self.assertIn(dead, str(caught.exception))

    @defer.inlineCallbacks
    def test_a_refused_login_is_not_retried_over_the_websocket(self):
        tried = []
        self.patch(client_p2p, "connect", lambda *args, **kwargs: tried.append(args))
        warned = self.warnings()
        with self.assertRaises(LoginRefused) as caught:
            yield connect_best(self.user, p2p=[self.address], url=self.server.url,
                               key=keys.generate_private_jwk())
        self.assertEqual((caught.exception.status, caught.exception.kind), (403, "no_key"))
        self.assertEqual((tried, warned), ([], []))

    # -- hostile input ----------------------------------------------------------------
    @defer.inlineCallbacks
    def raw_stream(self):
        """A stream that has sent nothing yet, and what it receives."""
        received = []
        ended = defer.Deferred()

        class Raw:
            def __init__(self, stream):
                self.stream = stream

            def data_received(self, data):
                received.append(data)

            def connection_lost(self, reason):
                if not ended.called:
                    ended.callback(b"".join(received))
        dialled = yield node.dial(reactor, self.address, "/wyseman/1.0.0", Raw)
        self.addCleanup(dialled.close)
        return dialled.stream, ended

    def messages(self, data):
        reader = FrameReader(1 << 20)
        return [json.loads(m) for m in reader.feed(data)]

    @defer.inlineCallbacks
    def assert_others_unaffected(self, conn):
        row = yield conn.request({"action": "tuple", "view": "base.curr_eid()"})
        self.assertTrue(row["curr_eid"])
        late = yield self.ticket(user=self.bystander)
        row = yield late[1].request({"action": "tuple", "view": "base.curr_eid()"})
        self.assertTrue(row["curr_eid"])

    @defer.inlineCallbacks
    def test_slow_reader_cut_at_max_outbound_bytes(self):
        """A client that logs in on a channel and stops reading while notifications
        pour in: once more than max_outbound_bytes wait for it, its stream is reset
        (counted as a slow consumer); another session goes on: its requests are
        answered and its own channel's notifications arrive."""
        yield self.server.stopService()
        self.server = yield self.start(limits={"max_outbound_bytes": 64 * 1024})
        self.address = self.server.p2p.addresses[0]
        _, reader = yield self.ticket(user=self.bystander, listen=["app_calm"])
        calm = defer.Deferred()
        reader.on_notify("app_calm", calm.callback)
        received, accepted, lost = [], defer.Deferred(), defer.Deferred()
        cut = defer.Deferred()
        metrics = self.server.gateway.metrics
        counted = metrics.slow_consumer

        def slow_consumer(transport):
            counted(transport)
            if not cut.called:
                cut.callback(None)
        self.patch(metrics, "slow_consumer", slow_consumer)

        class Slow:
            def __init__(self, stream):
                self.stream = stream

            def data_received(self, data):
                received.append(data)
                if not accepted.called:
                    self.stream.pause_reading()     # the login's answer: read no more
                    accepted.callback(data)

            def connection_lost(self, reason):
                lost.callback(reason)
        dialled = yield node.dial(reactor, self.address, "/wyseman/1.0.0", Slow)
        self.addCleanup(dialled.close)
        token = admin.issue_ticket(self.db.dsn, self.user).token
        pub = keys.pub_param(keys.public_jwk(keys.generate_private_jwk()))
        dialled.stream.write(frame(json.dumps({"user": self.user, "token": token,
                                               "pub": pub, "listen": ["app_flood"]}).encode()))
        answer = yield accepted
        self.assertEqual(self.messages(answer)[0]["login"], "accepted")
        # 400 notifications of ~7.9 KB (3 MB): far over the muxer's window and the budget
        self.db.run("select pg_notify('app_flood', json_build_object('n', i, 'pad', "
                    "repeat('x', 7900))::text) from generate_series(1, 400) i")
        yield cut
        # reading again, the client finds its stream reset, short of the 3 MB
        dialled.stream.resume_reading()
        yield lost
        self.assertEqual(
            self.server.gateway.metrics.slow_consumers.labels("libp2p")._value.get(), 1)
        self.assertLess(sum(map(len, received)), 3 * 1024 * 1024)
        self.db.run("""select pg_notify('app_calm', '{"still": "here"}')""")
        data = yield calm
        self.assertEqual(data, {"still": "here"})
        yield self.assert_others_unaffected(reader)

    @defer.inlineCallbacks
    def test_streams_beyond_max_pending_connections_are_reset(self):
        """Two streams logging in (they send nothing): a third is reset at once, having
        received nothing; the two may still log in."""
        from wyseman.p2p import server as p2p_server
        yield self.server.stopService()
        self.server = yield self.start(limits={"max_pending_connections": 2})
        self.address = self.server.p2p.addresses[0]
        arrived = [defer.Deferred(), defer.Deferred()]
        original = p2p_server.P2PConnection.__init__

        def counted(connection, server, stream):
            original(connection, server, stream)
            next(d for d in arrived if not d.called).callback(connection)
        self.patch(p2p_server.P2PConnection, "__init__", counted)
        first, first_ended = yield self.raw_stream()
        second, _ = yield self.raw_stream()
        yield defer.gatherResults(arrived)       # the server counts both as pending
        self.assertEqual(self.server.p2p.pending, 2)
        try:
            _, third_ended = yield self.raw_stream()
        except ConnectionError:       # reset while the dial was still finishing
            pass
        else:
            data = yield third_ended
            self.assertEqual(data, b"")
        self.assertEqual(self.server.gateway.metrics.handshakes.labels(
            "refused", "pending", "libp2p")._value.get(), 1)
        token = admin.issue_ticket(self.db.dsn, self.user).token
        pub = keys.pub_param(keys.public_jwk(keys.generate_private_jwk()))
        first.write(frame(json.dumps({"user": self.user, "token": token,
                                      "pub": pub}).encode()))
        first.close()
        data = yield first_ended
        self.assertEqual(self.messages(data)[0]["login"], "accepted")

    @defer.inlineCallbacks
    def test_streams_from_one_address_beyond_max_pending_per_address_are_reset(self):
        """Two streams logging in from 127.0.0.1 (each from a peer id of its own, which
        costs nothing to make): a third from that address is reset although the server
        has pending places left; once the two are logged in, the address may log in
        again."""
        from wyseman.p2p import server as p2p_server
        yield self.server.stopService()
        self.server = yield self.start(limits={"max_pending_per_address": 2,
                                               "max_pending_connections": 50})
        self.address = self.server.p2p.addresses[0]
        arrived = [defer.Deferred(), defer.Deferred()]
        original = p2p_server.P2PConnection.__init__

        def counted(connection, server, stream):
            original(connection, server, stream)
            waiting = [d for d in arrived if not d.called]
            if waiting:
                waiting[0].callback(connection)
        self.patch(p2p_server.P2PConnection, "__init__", counted)
        said = []

        def observe(event):
            if event.get("log_namespace") == "wyseman.p2p":
                said.append(formatEvent(event))
        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        first, first_ended = yield self.raw_stream()
        second, second_ended = yield self.raw_stream()
        yield defer.gatherResults(arrived)
        self.assertEqual(self.server.p2p.pending_by_network, {"127.0.0.1": 2})
        for _ in range(2):
            try:
                _, more_ended = yield self.raw_stream()
            except ConnectionError:       # reset while the dial was still finishing
                pass
            else:
                self.assertEqual((yield more_ended), b"")
        self.assertEqual(self.server.gateway.metrics.handshakes.labels(
            "refused", "pending_address", "libp2p")._value.get(), 2)
        # one line when the resets start, one when they end
        self.assertEqual([line for line in said if "resetting new" in line], [
            "resetting new libp2p streams from 127.0.0.1: 2 of its streams are logging in "
            "([limits] max_pending_per_address)"])
        for stream, ended in ((first, first_ended), (second, second_ended)):
            token = admin.issue_ticket(self.db.dsn, self.user).token
            pub = keys.pub_param(keys.public_jwk(keys.generate_private_jwk()))
            stream.write(frame(json.dumps({"user": self.user, "token": token,
                                           "pub": pub}).encode()))
            stream.close()
            self.assertEqual(self.messages((yield ended))[0]["login"], "accepted")
        self.assertEqual(self.server.p2p.pending_by_network, {})
        self.assertIn("accepting libp2p streams from 127.0.0.1 again (2 reset)", said)
        _, conn = yield self.ticket(user=self.bystander)
        row = yield conn.request({"action": "tuple", "view": "base.curr_eid()"})
        self.assertTrue(row["curr_eid"])

    @defer.inlineCallbacks
    def test_garbage_before_login(self):
        _, other = yield self.ticket(user=self.bystander)
        stream, ended = yield self.raw_stream()
        stream.write(frame(b"\x00\xffnot json at all"))
        data = yield ended
        self.assertEqual(self.messages(data), [{"login": "refused", "status": 400,
                                                "reason": "Bad Request",
                                                "kind": "bad_login"}])
        yield self.assert_others_unaffected(other)

    @defer.inlineCallbacks
    def test_frame_over_the_size_limit_after_login(self):
        _, conn = yield self.ticket()
        _, other = yield self.ticket(user=self.bystander)
        send_raw_p2p(conn, encode_varint(4097) + b"x" * 100)
        code, reason = yield conn.closed
        self.assertEqual(code, 1009)
        self.assertIn("over the limit of 4096", reason)
        yield self.assert_others_unaffected(other)

    @defer.inlineCallbacks
    def test_huge_varint_before_login(self):
        _, other = yield self.ticket(user=self.bystander)
        stream, ended = yield self.raw_stream()
        stream.write(b"\xff" * 64)
        data = yield ended
        [closing] = self.messages(data)
        self.assertEqual(closing["action"], "close")
        self.assertIn(closing["code"], (1002, 1009))
        yield self.assert_others_unaffected(other)

    @defer.inlineCallbacks
    def test_no_login_within_the_handshake_timeout(self):
        yield self.server.stopService()
        self.server = yield self.start(limits={"open_handshake_timeout": 0.2})
        self.address = self.server.p2p.addresses[0]
        stream, ended = yield self.raw_stream()
        data = yield ended
        self.assertEqual(self.messages(data)[0]["kind"], "login_timeout")

    @defer.inlineCallbacks
    def test_a_peer_that_stops_answering_is_dropped_by_the_heartbeat(self):
        """A client process logged in and then frozen (SIGSTOP: its TCP connection
        stays up, the kernel still acknowledges, but nothing answers): its session
        ends once a heartbeat probe goes unanswered for ``ping_timeout``; a live
        client probed by the same heartbeat stays and is answered."""
        yield self.server.stopService()
        self.server = yield self.start(limits={"ping_interval": 0.5, "ping_timeout": 1.0})
        self.address = self.server.p2p.addresses[0]
        _, live = yield self.ticket(user=self.bystander)
        from wyseman.p2p import server as p2p_server
        ended: dict[str, defer.Deferred] = {}
        original = p2p_server.P2PConnection.connection_lost

        def lost(connection, reason):
            original(connection, reason)
            session = getattr(connection, "session", None)
            if session is not None and session.user in ended \
                    and not ended[session.user].called:
                ended[session.user].callback(reason)
        self.patch(p2p_server.P2PConnection, "connection_lost", lost)
        ended[self.user] = defer.Deferred()
        ended[self.bystander] = defer.Deferred()
        token = admin.issue_ticket(self.db.dsn, self.user).token
        output = ProcessOutput()
        child = reactor.spawnProcess(output, sys.executable, [
            sys.executable, "-c", FROZEN_CLIENT, self.address, self.user, token],
            env=dict(os.environ, PYTHONPATH=checkout_pythonpath()))

        def end_child():
            if not output.ended.called:
                child.signalProcess("KILL")
                child.signalProcess(signal.SIGCONT)
            return output.ended.addErrback(lambda _: None)
        self.addCleanup(end_child)
        yield output.wait_for("logged in")
        child.signalProcess(signal.SIGSTOP)
        reason = yield ended[self.user].addTimeout(30, reactor)
        self.assertIsInstance(reason, str)
        self.assertFalse(ended[self.bystander].called)
        row = yield live.request({"action": "tuple", "view": "base.curr_eid()"})
        self.assertTrue(row["curr_eid"])
        self.assertTrue(live.connected)

    @defer.inlineCallbacks
    def test_stopping_the_service_ends_sessions_and_the_trio_run(self):
        _, conn = yield self.ticket()
        loop = node.TrioLoop._current
        self.assertIsNotNone(loop)
        stopping = self.server.stopService()
        code, reason = yield conn.closed
        self.assertEqual((code, reason), (1001, "server shutting down"))
        yield stopping
        yield loop.done if loop.users == 0 else defer.succeed(None)
        self.assertEqual(self.server.gateway.connection_count, 0)

    @defer.inlineCallbacks
    def test_the_peer_id_is_kept_across_restarts(self):
        """A client that kept the server's multiaddr (with its peer id) logs in again
        after a restart on the same port: the dial checks the peer id in the Noise
        handshake, so it works only because the identity was kept."""
        first = self.address.rsplit("/p2p/", 1)[1]
        private, conn = yield self.ticket()
        yield conn.close()
        yield self.server.stopService()
        port = self.address.split("/tcp/")[1].split("/")[0]
        self.server = yield self.start(p2p={"listen": [f"/ip4/127.0.0.1/tcp/{port}"],
                                            "key_file": self.key_file})
        self.assertEqual(self.server.p2p.addresses[0], self.address)
        self.assertEqual(self.address.rsplit("/p2p/", 1)[1], first)
        again = yield self.key_login(private)
        row = yield again.request({"action": "tuple", "view": "base.curr_eid()"})
        self.assertTrue(row["curr_eid"])


class P2PCommandTests(TestCase):
    """``wyseman p2p id`` and the client commands with ``--p2p``, as separate processes."""

    timeout = 120

    @defer.inlineCallbacks
    def server_and_config(self, db, also_listen=()):
        """A gateway serving libp2p, and a config file for the commands that names its
        address (and ``also_listen``) and its key file → (directory, the server's
        multiaddr, the config's path)."""
        from pathlib import Path
        workdir = Path(self.mktemp()).resolve()
        workdir.mkdir()
        self.server = yield start_gateway(self, db, p2p={
            "listen": ["/ip4/127.0.0.1/tcp/0"], "key_file": str(workdir / "server.key")})
        address = self.server.p2p.addresses[0]
        port = address.split("/tcp/")[1].split("/")[0]
        listen = json.dumps([f"/ip4/127.0.0.1/tcp/{port}", *also_listen])
        config = workdir / "wyseman.toml"
        config.write_text(f'[database]\ndsn = "{db.dsn}"\n[p2p]\n'
                          f'listen = {listen}\nkey_file = "server.key"\n')
        return workdir, address, config

    @defer.inlineCallbacks
    def test_id_login_query(self):
        if MISSING:
            raise self.skipTest(MISSING)

        db = fresh_database(self)
        user = add_user(db, "cli")
        db.run("create table public.p2p_note (body text); "
               "grant all on public.p2p_note to wyseman_user; "
               "insert into public.p2p_note values ('over libp2p')")
        workdir, address, config = yield self.server_and_config(db)
        out, err, code = yield wyseman_cli("p2p", "id", "--config", str(config))
        self.assertEqual(code, 0, err)
        self.assertEqual(out.decode().splitlines()[1], address)

        ticket = admin.issue_ticket(db.dsn, user)
        ticket_file = workdir / "ticket.json"
        ticket_file.write_text(admin.format_ticket(ticket, "json", admin_user="postgres"))
        key_file = workdir / "me.key.json"
        out, err, code = yield wyseman_cli("login", "--ticket", str(ticket_file),
                                           "--key-out", str(key_file), "--p2p", address)
        self.assertEqual(code, 0, err)
        self.assertIn(f"logged in as {user} at {address}".encode(), out)
        out, err, code = yield wyseman_cli(
            "query", "--key", str(key_file), "--p2p", address,
            '{"action": "select", "view": "public.p2p_note"}')
        self.assertEqual(code, 0, err)
        self.assertEqual(json.loads(out), [{"body": "over libp2p"}])
        self.assertEqual(self.server.gateway.metrics.handshakes.labels(
            "accepted", "key", "libp2p")._value.get(), 1)
        # a refused login: one line saying why
        db.run("update base.ent set conn_pub = null where username = %s", (user,))
        out, err, code = yield wyseman_cli(
            "query", "--key", str(key_file), "--p2p", address,
            '{"action": "tuple", "view": "x"}')
        self.assertEqual(code, 1)
        self.assertIn(b"the server refused: 403 Invalid Login (no_key)", err)
        self.assertEqual(err.count(b"\n"), 1, err)

    @defer.inlineCallbacks
    def test_ticket_names_the_multiaddr_and_login_uses_it(self):
        """``wyseman ticket`` with ``[p2p] listen`` puts the full multiaddr in the ticket;
        ``wyseman login --ticket`` then logs in over libp2p without being told, and keeps
        the multiaddr in the key file, which ``query`` dials: the key file's WebSocket
        port is dead, so only libp2p can answer. ``--no-p2p`` uses the WebSocket."""
        if MISSING:
            raise self.skipTest(MISSING)

        db = fresh_database(self)
        user = add_user(db, "tk")
        workdir, address, config = yield self.server_and_config(
            db, also_listen=["/ip4/0.0.0.0/tcp/9"])
        ticket_file = workdir / "ticket.json"
        out, err, code = yield wyseman_cli("ticket", user, "--config", str(config),
                                           "--host", "127.0.0.1", "--port",
                                           str(dead_port()), "-o", str(ticket_file))
        self.assertEqual(code, 0, err)
        # the wildcard interface: the ticket's host in its place
        peer = address.rsplit("/p2p/", 1)[1]
        self.assertEqual(json.loads(ticket_file.read_text())["ticket"]["p2p"],
                         [address, f"/ip4/127.0.0.1/tcp/9/p2p/{peer}"])
        key_file = workdir / "me.key.json"
        out, err, code = yield wyseman_cli("login", "--ticket", str(ticket_file),
                                           "--key-out", str(key_file))
        self.assertEqual(code, 0, err)
        self.assertIn(f"logged in as {user} at {address}".encode(), out)
        self.assertEqual(keys.load_key_file(key_file)[0].p2p[0], address)
        out, err, code = yield wyseman_cli(
            "query", "--key", str(key_file), '{"action": "tuple", "view": "base.curr_eid()"}')
        self.assertEqual(code, 0, err)
        self.assertTrue(json.loads(out)["curr_eid"])
        out, err, code = yield wyseman_cli(
            "query", "--key", str(key_file), "--no-p2p",
            '{"action": "tuple", "view": "base.curr_eid()"}')
        self.assertEqual(code, 1, out)
        self.assertNotIn(b"libp2p", err)

    def test_ticket_leaves_out_what_cannot_be_dialled(self):
        """No key file yet: no multiaddr (a ticket does not invent the server's
        identity); with one, a wildcard without an IP host and port 0 are left out."""
        if MISSING:
            raise self.skipTest(MISSING)
        from pathlib import Path

        from wyseman.application.cli import ticket_multiaddrs
        workdir = Path(self.mktemp()).resolve()
        workdir.mkdir()
        config = cfg.from_dict({"database": {"dsn": "dbname=x"}, "p2p": {
            "listen": ["/ip4/0.0.0.0/tcp/4001", "/ip4/127.0.0.1/tcp/0",
                       "/ip6/::1/tcp/4002"], "key_file": str(workdir / "k")}})
        self.assertEqual(ticket_multiaddrs(config, "127.0.0.1"), ())
        self.assertFalse((workdir / "k").exists())
        key, _ = node.load_or_create_key(workdir / "k")
        peer = node.peer_id_of(key)
        self.assertEqual(ticket_multiaddrs(config, "h.example"), (f"/ip6/::1/tcp/4002/p2p/{peer}",))
        self.assertEqual(ticket_multiaddrs(config, "192.0.2.1"),
                         (f"/ip4/192.0.2.1/tcp/4001/p2p/{peer}", f"/ip6/::1/tcp/4002/p2p/{peer}"))
