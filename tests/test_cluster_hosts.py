"""Two gateway processes (``twistd -n wyseman``) on 127.0.0.2 and 127.0.0.3, one
database, ``[cluster] shared_state = "postgres"``: what a balancer in front of two hosts
would see."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.trial.unittest import SkipTest, TestCase

from tests.harness import ProcessOutput, add_user, checkout_pythonpath, upgrade_request
from tests.harness import _RawHTTP as RawHTTP
from tests.pgtest import fresh_database
from wyseman.auth.credentials import js_date, signed_message
from wyseman.client import keys
from wyseman.client.connection import ClientError, connect
from wyseman.provision import admin

ROOT = Path(__file__).resolve().parent.parent
ADDRESSES = ("127.0.0.2", "127.0.0.3")


def free_port_on(addresses: tuple[str, ...]) -> int:
    """A port free on each of ``addresses``."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind((addresses[0], 0))
            port = probe.getsockname()[1]
        try:
            for address in addresses[1:]:
                with socket.socket() as other:
                    other.bind((address, port))
            return port
        except OSError:
            continue
    raise RuntimeError("no port free on every address")


@defer.inlineCallbacks
def upgrade_status(host: str, port: int, query: str) -> Any:
    raw = RawHTTP(upgrade_request(port, query))
    yield connectProtocol(TCP4ClientEndpoint(reactor, host, port), raw)
    data = yield raw.done
    return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0


class TwoProcessTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        try:
            with socket.socket() as probe:
                probe.bind((ADDRESSES[1], 0))
        except OSError:
            raise SkipTest("127.0.0.3 is not a local address here") from None
        self.db = fresh_database(self)
        self.port = free_port_on(ADDRESSES)

    @defer.inlineCallbacks
    def gateway(self, address: str, name: str) -> Any:
        """A gateway process listening on ``address``; killed at cleanup if still there."""
        directory = Path(self.mktemp()).resolve()
        directory.mkdir(parents=True)
        config = directory / "wyseman.toml"
        config.write_text(
            f'[server]\nlisten = "tcp:{self.port}:interface={address}"\n'
            'clientinfo_listen = []\n'
            f'[database]\ndsn = {json.dumps(self.db.dsn)}\npool_size = 2\n'
            '[auth]\ninsecure = true\n'
            '[limits]\nmax_connections_per_user = 1\n'
            f'[cluster]\nshared_state = "postgres"\nhost_id = "{name}"\nlease = 1\n'
            'cleanup_interval = 1\n')
        output = ProcessOutput()
        transport = reactor.spawnProcess(
            output, sys.executable,
            [sys.executable, "-c", "import sys; from twisted.scripts.twistd import run; "
             "sys.argv[0] = 'twistd'; run()", "-n", "--pidfile=", "wyseman", "--config",
             str(config)],
            env=dict(os.environ, PYTHONPATH=checkout_pythonpath()), path=str(ROOT))

        def stop() -> Any:
            if output.ended.called:
                return None
            transport.signalProcess("TERM")
            return output.ended
        self.addCleanup(stop)
        yield output.wait_for("listening on")
        output.transport = transport
        output.url = f"ws://{address}:{self.port}"
        output.address = address
        return output

    @defer.inlineCallbacks
    def test_a_signed_url_used_on_one_host_is_refused_by_the_other(self) -> None:
        a = yield self.gateway(ADDRESSES[0], "proc-a")
        b = yield self.gateway(ADDRESSES[1], "proc-b")
        user = add_user(self.db)
        private = keys.generate_private_jwk()
        token = admin.issue_ticket(self.db.dsn, user).token
        conn = yield connect(a.url, user, token=token, new_key=private)
        yield conn.close()
        from twisted.web.client import Agent, readBody
        response = yield Agent(reactor).request(
            b"GET", f"http://{a.address}:{self.port}/clientinfo".encode())
        ip = json.loads((yield readBody(response)))["ip"]
        from datetime import UTC, datetime
        date = js_date(datetime.now(UTC))
        query = (f"user={user}&sign={keys.sign(private, signed_message(ip, None, None, date))}"
                 f"&date={date}")
        self.assertEqual((yield upgrade_status(a.address, self.port, query)), 101)
        self.assertEqual((yield upgrade_status(b.address, self.port, query)), 403)

    @defer.inlineCallbacks
    def test_a_killed_host_frees_its_places_when_its_lease_ends(self) -> None:
        a = yield self.gateway(ADDRESSES[0], "proc-a")
        b = yield self.gateway(ADDRESSES[1], "proc-b")
        user = add_user(self.db)
        held = yield connect(a.url, user)
        self.addCleanup(held.close)
        with self.assertRaises(ClientError) as ctx:
            yield connect(b.url, user)
        self.assertIn("503", str(ctx.exception))
        os.kill(a.transport.pid, signal.SIGKILL)      # no word to anyone
        self.assertEqual((yield a.ended), -signal.SIGKILL)
        # the lease (1 s) runs out in PostgreSQL, another process: poll with a deadline
        deadline = time.monotonic() + 10
        while True:
            try:
                conn = yield connect(b.url, user)
                break
            except ClientError as exc:
                self.assertIn("503", str(exc))
                self.assertLess(time.monotonic(), deadline, "the place was never freed")
                yield task.deferLater(reactor, 0.2, lambda: None)
        self.addCleanup(conn.close)
        # b's cleanup (every second) removes the dead host and its count
        deadline = time.monotonic() + 10
        while self.db.run("select count(*) from wyseman_shared.host "
                          "where host_id = 'proc-a'") != [(0,)]:
            self.assertLess(time.monotonic(), deadline, "proc-a was never removed")
            yield task.deferLater(reactor, 0.2, lambda: None)
        self.assertEqual(self.db.run("select host_id, count from wyseman_shared.user_slot "
                                     "where username = %s", (user,)), [("proc-b", 1)])
