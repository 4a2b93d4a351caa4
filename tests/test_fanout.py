"""Notification fan-out on several threads (wyseman.ws.fanout)."""

from __future__ import annotations

import json
import threading

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.harness import RawWebSocket as _RawWebSocket
from tests.harness import add_user, start_gateway
from tests.pgtest import fresh_database
from wyseman.client import keys
from wyseman.ws import fanout
from wyseman.ws.fanout import auto_threads
from wyseman.ws.protocol import GatewayProtocol

COUNT = 1000             # notifications, of PAYLOAD bytes each: 7 MB per socket
PAYLOAD = 7000


def texts(frames):
    """The text frames' payloads (a heartbeat ping may come in between)."""
    return [payload for opcode, payload in frames if opcode == 1]


class AutoThreadsTests(SynchronousTestCase):
    def test_cores_per_worker_at_most_four(self) -> None:
        for workers, cpus, threads in ((1, 1, 1), (1, 2, 2), (2, 2, 1), (3, 2, 1),
                                       (1, 32, 4), (8, 32, 4), (16, 32, 2)):
            self.assertEqual(auto_threads(workers, cpus), threads, (workers, cpus))


class ThreadedFanOutTests(TestCase):
    timeout = 90

    @defer.inlineCallbacks
    def setUp(self):
        self.db = fresh_database(self)
        self.user = add_user(self.db, "fan")
        self.server = yield start_gateway(
            self, self.db, auth={"insecure": True}, server={"fanout_threads": 3},
            channels={"allow": ["fan"]}, limits={"max_outbound_bytes": 64_000_000})
        self.server.gateway.fanout.min_parallel = 1   # (1,024 sockets and up otherwise)

    @defer.inlineCallbacks
    def subscriber(self):
        client = _RawWebSocket(self.server.port, self.user, b"",
                               lambda received: len(texts(received)) >= COUNT,
                               query=f"&db={keys.listen_param(['fan'])}")
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.server.port),
                              client)
        self.addCleanup(lambda: client.transport.loseConnection() or client.closed)
        yield client.opened
        return client

    def assert_all_in_order(self, client):
        received = texts(client.received)
        self.assertEqual(len(received), COUNT)
        for n, payload in enumerate(received, 1):
            message = json.loads(payload)
            self.assertEqual(message["channel"], "fan")
            self.assertEqual(message["data"], f"n{n}".ljust(PAYLOAD, "x"))

    @defer.inlineCallbacks
    def test_every_subscriber_gets_every_frame_whole_and_in_order(self):
        threads, rests = set(), []
        share, rest = fanout._send_share, GatewayProtocol.send_rest

        def recording_share(sends, data):
            threads.add(threading.current_thread().name.split("_")[0])
            return share(sends, data)

        def recording_rest(protocol, data, written):
            rests.append(written)
            return rest(protocol, data, written)
        self.patch(fanout, "_send_share", recording_share)
        self.patch(GatewayProtocol, "send_rest", recording_rest)

        readers = []
        for _ in range(6):
            readers.append((yield self.subscriber()))
        stalled = yield self.subscriber()
        # reads nothing for now: 7 MB is more than the kernel buffers, writes fall short
        stalled.transport.pauseProducing()
        self.db.run(f"select pg_notify('fan', rpad('n' || i, {PAYLOAD}, 'x')) "
                    f"from generate_series(1, {COUNT}) i")
        yield defer.gatherResults([client.enough for client in readers])
        self.assertLess(len(texts(stalled.received)), COUNT)
        stalled.transport.resumeProducing()
        yield stalled.enough
        for client in readers + [stalled]:
            self.assert_all_in_order(client)
        self.assertEqual(threads, {"MainThread", "wyseman-fanout"})
        self.assertTrue(rests, "no write fell short: the stalled socket was not exercised")
        self.assertEqual(self.server.gateway.metrics.notifications._value.get(), 7 * COUNT)

    @defer.inlineCallbacks
    def test_after_stopping_no_new_threads(self):
        fan = self.server.gateway.fanout
        client = yield self.subscriber()
        yield self.notify_and_wait(client, "before")
        self.assertIsNotNone(fan._pool)               # the helpers ran
        fan.close()
        self.assertIsNone(fan._pool)
        yield self.notify_and_wait(client, "after")
        self.assertIsNone(fan._pool)                   # sent without starting helpers again
        self.assertEqual([json.loads(p)["data"] for p in texts(client.received)],
                         ["before", "after"])

    def notify_and_wait(self, client, payload):
        """NOTIFY ``payload``; fires once ``client`` has received it."""
        count = len(texts(client.received)) + 1
        client.enough = defer.Deferred()
        client.wanted = lambda received: len(texts(received)) >= count
        self.db.run("select pg_notify('fan', %s)", (payload,))
        return client.enough
