"""Fast unit tests of small pure pieces: address rendering, listen specs, login
policies, value rendering."""

from __future__ import annotations

import ipaddress

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.trial.unittest import SynchronousTestCase

from wyseman.application.service import derived_clientinfo, parse_listen
from wyseman.auth.login import ChannelPolicy, FailureLimiter
from wyseman.auth.peer import client_ip
from wyseman.db import types

PROXY = [ipaddress.ip_network("10.0.0.0/8")]


class ClientAddressTests(SynchronousTestCase):
    def test_node_style_for_ipv4(self):
        self.assertEqual(client_ip(IPv4Address("TCP", "192.0.2.10", 1), None, []),
                         "::ffff:192.0.2.10")
        self.assertEqual(client_ip(IPv6Address("TCP", "::ffff:192.0.2.10", 1), None, []),
                         "::ffff:192.0.2.10")
        self.assertEqual(client_ip(IPv6Address("TCP", "2001:db8::1", 1), None, []),
                         "2001:db8::1")

    def test_plain_style(self):
        self.assertEqual(client_ip(IPv4Address("TCP", "192.0.2.10", 1), None, [], "plain"),
                         "192.0.2.10")
        self.assertEqual(
            client_ip(IPv6Address("TCP", "::ffff:192.0.2.10", 1), None, [], "plain"),
            "192.0.2.10")

    def test_forwarded_for_only_from_trusted_proxy(self):
        proxy = IPv4Address("TCP", "10.1.2.3", 1)
        stranger = IPv4Address("TCP", "203.0.113.5", 1)
        self.assertEqual(client_ip(proxy, "198.51.100.7", PROXY), "::ffff:198.51.100.7")
        self.assertEqual(client_ip(stranger, "198.51.100.7", PROXY), "::ffff:203.0.113.5")
        # the right-most untrusted hop wins: a client cannot inject an address
        self.assertEqual(client_ip(proxy, "1.1.1.1, 198.51.100.7, 10.9.9.9", PROXY),
                         "::ffff:198.51.100.7")
        self.assertEqual(client_ip(proxy, "garbage", PROXY), "::ffff:10.1.2.3")
        self.assertEqual(client_ip(proxy, "198.51.100.7", []), "::ffff:10.1.2.3")


class ListenSpecTests(SynchronousTestCase):
    def test_parse(self):
        spec = parse_listen("tcp:54320:interface=127.0.0.1")
        self.assertEqual((spec.kind, spec.port, spec.interface), ("tcp", 54320, "127.0.0.1"))
        self.assertTrue(spec.loopback)
        self.assertFalse(parse_listen("tcp:80").loopback)
        self.assertTrue(parse_listen("tls:443:interface=0.0.0.0").secure)
        self.assertTrue(parse_listen("unix:/tmp/s").loopback)
        self.assertEqual(parse_listen("8080").port, 8080)

    def test_clientinfo_port_is_one_below(self):
        self.assertEqual(derived_clientinfo(parse_listen(r"tcp:4100:interface=\:\:1")),
                         r"tcp:4099:interface=\:\:1")
        self.assertEqual(parse_listen(r"tcp:4100:interface=\:\:1").interface, "::1")
        self.assertTrue(parse_listen(r"tcp:4100:interface=\:\:1").loopback)
        self.assertEqual(derived_clientinfo(parse_listen("tls:443")), "tls:442")
        self.assertIsNone(derived_clientinfo(parse_listen("unix:/x")))
        self.assertIsNone(derived_clientinfo(parse_listen("tcp:0")))


class BacklogTests(SynchronousTestCase):
    def test_every_listener_gets_the_configured_backlog(self):
        from twisted.internet.testing import MemoryReactor
        from twisted.web.server import Site

        from wyseman.application.service import _endpoint
        reactor = MemoryReactor()
        for text in ("tcp:0:interface=127.0.0.1", "4100", "tcp6:0:interface=\\:\\:1"):
            _endpoint(reactor, parse_listen(text), None, 777).listen(Site(None))
        _endpoint(reactor, parse_listen("tcp:0:backlog=5"), None, 777).listen(Site(None))
        self.assertEqual([server[2] for server in reactor.tcpServers], [777, 777, 777, 5])
        _endpoint(reactor, parse_listen("tls:0"), object(), 777).listen(Site(None))
        self.assertEqual([server[3] for server in reactor.sslServers], [777])


class PolicyTests(SynchronousTestCase):
    def test_channels(self):
        policy = ChannelPolicy(("wylib", "app_*"), {"admin": ("wyseman",)})
        self.assertTrue(policy.allowed("alice", "wylib"))
        self.assertTrue(policy.allowed("alice", "app_orders"))
        self.assertFalse(policy.allowed("alice", "wyseman"))
        self.assertTrue(policy.allowed("admin", "wyseman"))
        self.assertFalse(policy.allowed("alice", "App_orders"))  # case-sensitive

    def test_the_credentials_channel_is_never_allowed(self):
        policy = ChannelPolicy(("*", "wyseman_*"), {"admin": ("wyseman_auth",)})
        self.assertTrue(policy.allowed("alice", "wyseman_orders"))
        self.assertFalse(policy.allowed("alice", "wyseman_auth"))
        self.assertFalse(policy.allowed("admin", "wyseman_auth"))

    def test_failure_limiter_window(self):
        limiter = FailureLimiter(limit=3, window=60)
        for t in (0, 1, 2):
            self.assertFalse(limiter.blocked("a", t))
            limiter.failed("a", t)
        self.assertTrue(limiter.blocked("a", 3))
        self.assertFalse(limiter.blocked("b", 3))
        self.assertFalse(limiter.blocked("a", 61))

    def test_failure_limiter_memory_bounded(self):
        limiter = FailureLimiter(limit=1, window=60, max_addresses=10)
        for n in range(50):
            limiter.failed(f"10.0.0.{n}", float(n))
        self.assertLessEqual(len(limiter._failures), 10)
        self.assertTrue(limiter.blocked("10.0.0.49", 49.5))


class ValueRenderingTests(SynchronousTestCase):
    def test_timestamps(self):
        ts = types._timestamp
        self.assertEqual(ts("2025-05-01 10:00:00+00", None), "2025-05-01T10:00:00.000Z")
        self.assertEqual(ts("2025-05-01 10:00:00.123456+00", None),
                         "2025-05-01T10:00:00.123Z")
        self.assertEqual(ts("2025-05-01 10:00:00.5", None), "2025-05-01T10:00:00.500Z")
        self.assertEqual(ts("2025-05-01 12:00:00+02", None), "2025-05-01T10:00:00.000Z")
        self.assertEqual(ts("2025-05-01 05:30:00-04:30", None), "2025-05-01T10:00:00.000Z")
        self.assertIsNone(ts("infinity", None))
        self.assertIsNone(ts("-infinity", None))

    def test_intervals(self):
        iv = types._interval
        self.assertEqual(iv("1 day 02:03:04.5", None),
                         {"days": 1, "hours": 2, "minutes": 3, "seconds": 4,
                          "milliseconds": 500})
        self.assertEqual(iv("00:00:00", None), {})
        self.assertEqual(iv("1 year 2 mons", None), {"years": 1, "months": 2})
        self.assertEqual(iv("-00:00:05", None), {"seconds": -5})

    def test_bytea_and_json(self):
        self.assertEqual(types._bytea("\\x00ff", None), {"type": "Buffer", "data": [0, 255]})
        raw = types._json('{"a": [1, 2]}', None)
        self.assertEqual(types.dumps({"d": raw}), b'{"d":{"a": [1, 2]}}')
        self.assertEqual(raw.parse(), {"a": [1, 2]})


class KeyChangesTests(SynchronousTestCase):
    """What a login in flight learns of the key changes announced meanwhile."""

    def test_a_change_after_the_login_began(self) -> None:
        from wyseman.auth.keychanges import KeyChanges
        changes = KeyChanges(kept=3)
        changes.record("ann", frozenset({"k1"}))
        seen = changes.count                                  # a login begins
        self.assertFalse(changes.gone_since("ann", "k2", seen))   # (the change was before)
        changes.record("ann", frozenset({"k1", "k3"}))
        self.assertFalse(changes.gone_since("ann", "k1", seen))   # kept
        self.assertTrue(changes.gone_since("ann", "k2", seen))    # not among the keys
        self.assertTrue(changes.gone_since("ann", None, seen))    # a login without a key
        self.assertFalse(changes.gone_since("bob", "k9", seen))   # another user's change
        self.assertFalse(changes.gone_since("ann", "k2", changes.count))

    def test_forgotten_changes_refuse_to_be_safe(self) -> None:
        from wyseman.auth.keychanges import KeyChanges
        changes = KeyChanges(kept=3)
        seen = changes.count
        for user in ("ann", "bob", "cid"):
            changes.record(user, frozenset())
        self.assertFalse(changes.gone_since("dan", "k", seen))    # three kept: none is dan's
        changes.record("eve", frozenset())                        # ann's change forgotten
        self.assertTrue(changes.gone_since("dan", "k", seen))     # may have been dan's
        self.assertTrue(changes.gone_since("ann", "k", seen))

    def test_missed_changes_refuse_the_logins_begun_before(self) -> None:
        from wyseman.auth.keychanges import KeyChanges
        changes = KeyChanges()
        changes.record("ann", frozenset({"k1"}))
        seen = changes.count
        changes.missed()                          # the LISTEN connection came back
        self.assertTrue(changes.gone_since("ann", "k1", seen))
        self.assertTrue(changes.gone_since("bob", "k9", seen))
        after = changes.count
        self.assertFalse(changes.gone_since("ann", "k1", after))
        changes.record("bob", frozenset({"k9"}))
        self.assertFalse(changes.gone_since("bob", "k9", after))
