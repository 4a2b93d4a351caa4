"""``[server] route_by_user``: a user's sockets all served by one worker
(wyseman.application.workers.routing)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.harness import (
    client_frame,
    routed_worker,
    upgrade_request,
    users_by_owner,
)
from tests.pgtest import fresh_database
from wyseman.application.workers.routing import owner_of, route_key
from wyseman.client.connection import ClientError, connect

TUPLE = {"action": "tuple", "view": "base.curr_eid()"}


class RouteKeyTests(SynchronousTestCase):
    def test_the_user_parameter_of_the_request_target(self):
        cases = [(b"GET /?user=alice&db=x HTTP/1.1\r\nHost: h\r\nUpgrade: websocket", b"alice"),
                 (b"GET /ws?db=%5B%5D&user=b%C3%B6b HTTP/1.1", b"b%C3%B6b"),
                 (b"GET /?token=t&user=u1&pub=p HTTP/1.1\r\n", b"u1"),
                 (b"GET /?user= HTTP/1.1\r\n", None), (b"GET /?user HTTP/1.1", None),
                 (b"GET /?username=x HTTP/1.1", None), (b"GET /user=x HTTP/1.1", None),
                 (b"GET / HTTP/1.1", None), (b"garbage", None), (b"", None)]
        for head, key in cases:
            self.assertEqual(route_key(head), key, head)

    def test_every_process_picks_the_same_owner(self):
        """``hash`` differs between processes (PYTHONHASHSEED); the owner must not."""
        names = [f"user{n}".encode() for n in range(40)]
        here = [owner_of(name, 3) for name in names]
        self.assertEqual(set(here), {0, 1, 2})        # every worker gets users
        script = ("import json, sys; from wyseman.application.workers.routing import owner_of; "
                  "print(json.dumps([owner_of(f'user{n}'.encode(), 3) for n in range(40)]))")
        for seed in ("1", "2"):
            out = subprocess.run([sys.executable, "-c", script], capture_output=True,
                                 check=True, env=dict(os.environ, PYTHONHASHSEED=seed))
            self.assertEqual(json.loads(out.stdout), here)


class _EarlyFrame(protocol.Protocol):
    """Sends the upgrade request and a request frame in one write, before any answer:
    the frame is read with the head (and passed on with it) or left in the socket."""

    def __init__(self, port: int, user: str) -> None:
        request = json.dumps({**TUPLE, "id": "early"}).encode()
        self.data = upgrade_request(port, f"user={user}") + client_frame(1, request)
        self.received = b""
        self.reply: defer.Deferred = defer.Deferred()

    def connectionMade(self) -> None:  # noqa: N802
        self.transport.write(self.data)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.received += data
        if b'"early"' in self.received and not self.reply.called:
            self.reply.callback(self.received)
            self.transport.loseConnection()


class RoutingTests(TestCase):
    """Two gateways in this process as workers 0 and 1 of two, on one database."""

    timeout = 60

    @defer.inlineCallbacks
    def setUp(self):
        self.db = fresh_database(self)
        self.directory = self.mktemp()
        os.makedirs(self.directory, mode=0o700)
        self.workers = []
        for index in range(2):
            worker = yield self.worker(index)
            self.workers.append(worker)

    def worker(self, index: int) -> defer.Deferred:
        return routed_worker(self, self.db, self.directory, index, auth={"insecure": True},
                             limits={"max_connections_per_user": 3})

    def holders(self, user: str) -> list[int]:
        """How many sockets of ``user`` each worker serves."""
        return [len(w.gateway.connections_of(user)) for w in self.workers]

    @defer.inlineCallbacks
    def login(self, worker: Any, user: str) -> Any:
        conn = yield connect(worker.url, user)       # (insecure: the user name only)
        self.addCleanup(conn.close)
        return conn

    @defer.inlineCallbacks
    def test_a_users_sockets_end_in_its_owner(self):
        users = users_by_owner(self.db)
        a, b = self.workers
        conns = []
        for user in users.values():
            for worker in (a, b, a):       # accepted by either: served by the owner
                conn = yield self.login(worker, user)
                conns.append(conn)
        self.assertEqual(self.holders(users[0]), [3, 0])
        self.assertEqual(self.holders(users[1]), [0, 3])
        for conn in conns:
            row = yield conn.request(TUPLE)
            self.assertTrue(row["curr_eid"])
        self.assertEqual((a.router.passed, b.router.passed), (2, 1))
        self.assertEqual((a.router.taken, b.router.taken), (1, 2))
        for worker in self.workers:        # nothing left counted as pending
            self.assertEqual(worker.ports[0].factory.pending, 0)

    @defer.inlineCallbacks
    def test_bytes_behind_the_request_go_along(self):
        users = users_by_owner(self.db)
        a = self.workers[0]
        client = _EarlyFrame(a.port, users[1])
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", a.port), client)
        received = yield client.reply
        self.assertTrue(received.startswith(b"HTTP/1.1 101"), received[:40])
        self.assertIn(b'"curr_eid"', received)
        self.assertEqual(a.router.passed, 1)

    @defer.inlineCallbacks
    def test_served_here_when_the_owner_cannot_take_it(self):
        users = users_by_owner(self.db)
        a, b = self.workers
        b.router.stop()                    # worker 1 is restarting, say
        conn = yield self.login(a, users[1])
        row = yield conn.request(TUPLE)
        self.assertTrue(row["curr_eid"])
        self.assertEqual(self.holders(users[1]), [1, 0])
        self.assertEqual((a.router.passed, a.router.kept), (0, 1))
        b.router.start()                   # back: routed again
        conn = yield self.login(a, users[1])
        yield conn.request(TUPLE)
        self.assertEqual(a.router.passed, 1)
        self.assertEqual(self.holders(users[1])[1], 1)

    @defer.inlineCallbacks
    def test_an_owner_restarted_since_the_last_pass_gets_the_next_one(self):
        users = users_by_owner(self.db)
        a, b = self.workers
        yield self.login(a, users[1])
        b.router.stop()                    # its successor listens on the same path
        b.router.start()
        yield self.login(a, users[1])
        self.assertEqual((a.router.passed, a.router.kept), (2, 0))
        self.assertEqual(self.holders(users[1]), [0, 2])

    @defer.inlineCallbacks
    def test_the_owner_checks_the_login(self):
        """A connection moves before its login is checked: the owner checks and counts
        it (here two gateways with counts of their own, ``max_connections_per_user`` 3;
        under a supervisor the count is the supervisor's anyway)."""
        users = users_by_owner(self.db)
        a, b = self.workers
        for worker in (a, b, a):
            yield self.login(worker, users[1])
        with self.assertRaises(ClientError) as refused:
            yield self.login(b, users[1])
        self.assertIn("503", str(refused.exception))
        self.assertEqual(self.holders(users[1]), [0, 3])

    @defer.inlineCallbacks
    def test_a_removed_socket_file_is_made_again(self):
        """A cleaner of old files in the temporary directory removes the routing
        directory: the owner's periodic check listens again."""
        import shutil
        users = users_by_owner(self.db)
        a, b = self.workers
        shutil.rmtree(self.directory)
        yield self.login(a, users[1])
        self.assertEqual((a.router.passed, a.router.kept), (0, 1))
        b.router._still_bound()            # (what its timer does every CHECK_EVERY s)
        self.assertEqual(os.stat(self.directory).st_mode & 0o777, 0o700)
        yield self.login(a, users[1])
        self.assertEqual((a.router.passed, a.router.kept), (1, 1))
        self.assertEqual(self.holders(users[1]), [1, 1])
        self.assertTrue(b.router._check.running)
