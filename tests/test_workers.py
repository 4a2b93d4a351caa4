"""``[server] workers = N``: worker processes on one port
(wyseman.application.workers.supervisor)."""

from __future__ import annotations

import os
import re
import signal
import socket
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool, readBody

from tests.harness import add_user, make_config, ticket_login
from tests.pgtest import fresh_database
from wyseman import config as cfg
from wyseman.application.service import makeService
from wyseman.application.workers.routing import owner_of
from wyseman.application.workers.supervisor import WorkerSupervisor
from wyseman.client.connection import ClientError, connect
from wyseman.config import ConfigError
from wyseman.ws.fanout import auto_threads

TUPLE = {"action": "tuple", "view": "base.curr_eid()"}


def consecutive_free_ports(count: int) -> int:
    """The first of ``count`` free consecutive loopback ports."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            first = probe.getsockname()[1]
        socks = []
        try:
            for port in range(first, first + count):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError("no free consecutive ports")


class WorkerConfigTests(TestCase):
    def config(self, **server: Any) -> cfg.Config:
        data = {"server": server, "database": {"dsn": "dbname=x"}}
        metrics = server.pop("metrics", None)
        if metrics is not None:
            data["metrics"] = {"listen": metrics}
        return cfg.from_dict(data)

    def test_default_is_one_process(self):
        self.assertEqual(self.config().server.workers, 1)

    def test_bad_counts_and_endpoints_refused(self):
        for server, expected in (
                ({"workers": 0}, "workers"),
                ({"workers": 1000}, "workers"),
                ({"workers": 2, "listen": "unix:/tmp/w.sock"}, "share only 'tcp:' and 'tls:'"),
                ({"workers": 2, "clientinfo_listen": ["unix:/tmp/c.sock"]}, "unix:/tmp/c.sock"),
                ({"workers": 2, "metrics": "tcp:0"}, "worker i serves PORT + i"),
                ({"workers": 2, "metrics": "unix:/tmp/m"}, "[metrics] listen")):
            with self.assertRaises(ConfigError, msg=server) as ctx:
                self.config(**server)
            self.assertIn(expected, str(ctx.exception))

    def test_actions_in_code_refused_with_workers(self):
        with self.assertRaises(ConfigError) as ctx:
            makeService(self.config(workers=2), actions=object())
        self.assertIn("[actions] handlers", str(ctx.exception))

    def test_make_service_picks_the_supervisor(self):
        top = makeService(self.config(workers=3))
        supervisor = top.getServiceNamed("gateway")
        self.assertIsInstance(supervisor, WorkerSupervisor)
        self.assertEqual(supervisor.count, 3)


def _gauge(text: str, name: str) -> float:
    """``name``'s value, summed over its labels."""
    values = re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M)
    assert values, text
    return sum(float(v) for v in values)


class WorkerProcessTests(TestCase):
    timeout = 180

    @defer.inlineCallbacks
    def start(self, workers: int = 2, server: Any = None, **sections: Any) -> Any:
        self.db = fresh_database(self)
        self.metrics_port = consecutive_free_ports(workers)
        config = make_config(self.db, server={"workers": workers, **(server or {})}, metrics={
            "listen": f"tcp:{self.metrics_port}:interface=127.0.0.1"}, **sections)
        supervisor = WorkerSupervisor(config, lambda: defer.succeed(self.db.dsn), reactor)
        yield supervisor.startService()
        self.addCleanup(self.stopped, supervisor)
        port = int(supervisor.listen[0].split(":")[1])
        supervisor.url = f"ws://127.0.0.1:{port}"
        self.http = HTTPConnectionPool(reactor, persistent=False)
        return supervisor

    @defer.inlineCallbacks
    def stopped(self, supervisor: WorkerSupervisor) -> Any:
        pids = [w.transport.pid for w in supervisor.workers
                if w is not None and w.transport.pid is not None]   # (not stopped yet)
        yield supervisor.stopService()
        self.assertTrue(all(w is None or w.ended.called for w in supervisor.workers))
        for pid in pids:   # reaped: no such process any more
            self.assertRaises(ProcessLookupError, os.kill, pid, 0)

    @defer.inlineCallbacks
    def scrape(self, index: int) -> Any:
        response = yield Agent(reactor, pool=self.http).request(
            b"GET", f"http://127.0.0.1:{self.metrics_port + index}/metrics".encode())
        body = yield readBody(response)
        return body.decode()

    @defer.inlineCallbacks
    def test_workers_share_the_port_and_a_dead_one_is_replaced(self):
        supervisor = yield self.start(workers=2)
        pids = {w.transport.pid for w in supervisor.workers}
        self.assertEqual(len(pids), 2)
        self.assertNotIn(os.getpid(), pids)
        # each worker sends notifications and checks signatures on the cores left to it,
        # not on all of them
        worker_config = supervisor._payload["config"]
        self.assertEqual((worker_config["server"]["workers"],
                          worker_config["server"]["fanout_threads"],
                          worker_config["auth"]["verify_threads"]),
                         (1, auto_threads(2), auto_threads(2)))

        connections = []
        for _ in range(16):   # a user each: a ticket login replaces the user's key
            conn = yield ticket_login(self, supervisor, self.db, add_user(self.db))
            row = yield conn.request(TUPLE)
            self.assertTrue(row["curr_eid"])
            connections.append(conn)
        # every worker has its own metrics page; the kernel spread the sockets over both
        counts = []
        for index in range(2):
            text = yield self.scrape(index)
            counts.append(_gauge(text, "wyseman_connections"))
        self.assertEqual(sum(counts), 16)
        self.assertTrue(all(count > 0 for count in counts), counts)

        dead = supervisor.workers[0].transport.pid
        replaced = supervisor.when_ready(0)
        os.kill(dead, signal.SIGKILL)
        new_pid = yield replaced
        self.assertNotEqual(new_pid, dead)
        self.assertEqual(supervisor.workers[0].transport.pid, new_pid)
        # the survivor kept its sockets; new logins work (on either worker)
        alive = 0
        for conn in connections:
            try:
                yield conn.request(TUPLE, timeout=10)
                alive += 1
            except Exception:
                pass
        self.assertEqual(alive, counts[1])
        for _ in range(4):
            conn = yield ticket_login(self, supervisor, self.db, add_user(self.db))
            row = yield conn.request(TUPLE)
            self.assertTrue(row["curr_eid"])

    @defer.inlineCallbacks
    def test_route_by_user_keeps_a_users_sockets_in_one_worker(self):
        supervisor = yield self.start(workers=2, server={"route_by_user": True},
                                      auth={"insecure": True})
        route_dir = supervisor._route_dir
        self.assertEqual(os.stat(route_dir).st_mode & 0o777, 0o700)
        users: dict[int, str] = {}
        while len(users) < 2:
            user = add_user(self.db, "r")
            users.setdefault(owner_of(user.encode(), 2), user)
        for index, count in ((0, 6), (1, 2)):
            for _ in range(count):      # the kernel hands them to either worker
                conn = yield connect(supervisor.url, users[index])
                self.addCleanup(conn.close)
                row = yield conn.request(TUPLE)
                self.assertTrue(row["curr_eid"])
        counts, routed = [], []
        for index in range(2):
            text = yield self.scrape(index)
            counts.append(_gauge(text, "wyseman_connections"))
            routed.append({outcome: _gauge(text, "wyseman_routed_connections"
                                           + rf'\{{outcome="{outcome}"\}}')
                           for outcome in ("passed", "taken", "kept")})
        self.assertEqual(counts, [6, 2])
        # what one worker passed on, the other took; the owner was always there
        self.assertEqual((routed[0]["passed"], routed[0]["taken"]),
                         (routed[1]["taken"], routed[1]["passed"]))
        self.assertEqual(routed[0]["kept"] + routed[1]["kept"], 0)
        yield self.stopped(supervisor)
        self.assertFalse(os.path.exists(route_dir))

    @defer.inlineCallbacks
    def try_connections(self, url, user, tries):
        """``tries`` logins of ``user`` one after another → (the connections opened,
        closed at cleanup; the refusals' texts)."""
        opened, refused = [], []
        for _ in range(tries):
            try:
                conn = yield connect(url, user)
            except ClientError as exc:
                refused.append(str(exc))
                continue
            self.addCleanup(conn.close)
            opened.append(conn)
        return opened, refused

    @defer.inlineCallbacks
    def test_a_users_connection_bound_holds_across_the_workers(self):
        """max_connections_per_user is the user's bound, whichever workers the kernel hands
        the sockets to; a worker's connections stop counting when it dies."""
        supervisor = yield self.start(workers=2, auth={"insecure": True},
                                      limits={"max_connections_per_user": 2})
        user = add_user(self.db)
        opened, refused = yield self.try_connections(supervisor.url, user, 6)
        self.assertEqual((len(opened), len(refused)), (2, 4))
        self.assertTrue(all("503" in reason for reason in refused), refused)
        self.assertEqual(supervisor.user_slots.count(user), 2)
        counts = []
        for index in range(2):
            text = yield self.scrape(index)
            counts.append(int(_gauge(text, "wyseman_connections")))
        busy = 0 if counts[0] else 1
        replaced = supervisor.when_ready(busy)
        os.kill(supervisor.workers[busy].transport.pid, signal.SIGKILL)
        yield replaced
        self.assertEqual(supervisor.user_slots.count(user), 2 - counts[busy])
        conn = yield connect(supervisor.url, user)   # room again
        self.addCleanup(conn.close)

    @defer.inlineCallbacks
    def test_with_shared_state_in_postgres_the_workers_count_there(self):
        """shared_state = "postgres": each worker is a host of the shared tables (not the
        supervisor's count); the bound holds across them, and a worker killed with its
        connections is replaced by one of the same name, which clears their places."""
        supervisor = yield self.start(workers=2, auth={"insecure": True},
                                      limits={"max_connections_per_user": 2},
                                      cluster={"shared_state": "postgres", "host_id": "wk"})
        self.assertEqual(self.db.run("select host_id from wyseman_shared.host order by 1"),
                         [("wk/0",), ("wk/1",)])
        user = add_user(self.db)
        opened, refused = yield self.try_connections(supervisor.url, user, 6)
        self.assertEqual((len(opened), len(refused)), (2, 4))
        self.assertTrue(all("503" in reason for reason in refused), refused)
        self.assertEqual(supervisor.user_slots.count(user), 0)     # not the supervisor's
        rows = dict(self.db.run("select host_id, count from wyseman_shared.user_slot "
                                "where username = %s", (user,)))
        self.assertEqual(sum(rows.values()), 2)
        busy = int(max(rows, key=rows.get).split("/")[1])
        replaced = supervisor.when_ready(busy)
        os.kill(supervisor.workers[busy].transport.pid, signal.SIGKILL)
        yield replaced
        self.assertEqual(dict(self.db.run("select host_id, count from wyseman_shared.user_slot "
                                          "where username = %s", (user,))),
                         {k: v for k, v in rows.items() if k != f"wk/{busy}"})
        conn = yield connect(supervisor.url, user)   # room again
        self.addCleanup(conn.close)

    def test_a_signed_login_url_is_accepted_once_by_all_workers(self):
        """The replay cache is the supervisor's: replaying a URL that one worker accepted
        is refused by the other worker too. Replays go on until both workers have refused
        one (the kernel picks the worker), so each has seen the other's acceptance."""
        return self.replayed_on_both_workers()

    @defer.inlineCallbacks
    def test_with_shared_state_the_replay_cache_is_the_databases(self):
        """The same with shared_state = "postgres": the workers check the table."""
        yield self.replayed_on_both_workers(cluster={"shared_state": "postgres"})
        self.assertEqual(self.db.run("select count(*) from wyseman_shared.replay"), [(1,)])

    @defer.inlineCallbacks
    def replayed_on_both_workers(self, **sections):
        from datetime import UTC, datetime

        from tests.harness import js_date, raw_upgrade
        from wyseman.auth.credentials import signed_message
        from wyseman.client import keys
        from wyseman.provision import admin

        supervisor = yield self.start(workers=2, **sections)
        port = int(supervisor.listen[0].split(":")[1])
        from wyseman.client.connection import connect
        user = add_user(self.db)
        private = keys.generate_private_jwk()   # registered by a ticket login
        token = admin.issue_ticket(self.db.dsn, user).token
        conn = yield connect(supervisor.url, user, token=token, new_key=private)
        yield conn.close()
        date = js_date(datetime.now(UTC))
        sign = keys.sign(private, signed_message("::ffff:127.0.0.1", None, None, date))
        query = f"user={user}&sign={sign}&date={date}"
        statuses = []
        refused_by: list[float] = [0, 0]
        while min(refused_by) == 0 and len(statuses) < 60:
            status, _ = yield raw_upgrade(port, query)
            statuses.append(status)
            for index in range(2):
                text = yield self.scrape(index)
                match = re.search(
                    r'^wyseman_handshakes_total\{outcome="refused",reason="replay",'
                    r'transport="websocket"\} (\S+)$',
                    text, re.M)
                refused_by[index] = float(match.group(1)) if match else 0
        self.assertEqual(statuses.count(101), 1, statuses)
        self.assertEqual(statuses[0], 101)
        self.assertTrue(all(count > 0 for count in refused_by), (statuses, refused_by))
        self.assertEqual(set(statuses[1:]), {403})

    @defer.inlineCallbacks
    def test_tls_workers_and_certificate_reload_signal(self):
        from pathlib import Path

        from twisted.internet.ssl import Certificate, optionsForClientTLS

        from tests.tlsutil import TestCA
        from wyseman.client import keys
        from wyseman.client.connection import connect
        from wyseman.provision import admin

        directory = Path(self.mktemp()).resolve()
        directory.mkdir(parents=True)
        ca = TestCA.create()
        cert, key, _ = ca.issue(directory, "server")
        self.db = fresh_database(self)
        config = make_config(self.db, server={"workers": 2, "listen": "tls:0:interface=127.0.0.1"},
                             tls={"cert": str(cert), "key": str(key)})
        supervisor = WorkerSupervisor(config, lambda: defer.succeed(self.db.dsn), reactor)
        yield supervisor.startService()
        self.addCleanup(self.stopped, supervisor)
        port = int(supervisor.listen[0].split(":")[1])
        options = optionsForClientTLS("localhost", trustRoot=Certificate.loadPEM(ca.pem))
        for _ in range(2):
            user = add_user(self.db)
            token = admin.issue_ticket(self.db.dsn, user).token
            conn = yield connect(f"wss://localhost:{port}", user, token=token,
                                 new_key=keys.generate_private_jwk(), tls_options=options)
            self.addCleanup(conn.close)
            row = yield conn.request(TUPLE)
            self.assertTrue(row["curr_eid"])
        # SIGHUP reaches the workers: each says (through the supervisor's log) that it
        # re-read the certificate, and stays up
        from twisted.logger import globalLogPublisher
        reloaded: set[int] = set()
        both: defer.Deferred = defer.Deferred()

        def observe(event: dict) -> None:
            if "certificate reloaded" in str(event.get("line", "")):
                reloaded.add(event["worker"])
                if len(reloaded) == 2 and not both.called:
                    both.callback(None)
        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        pids = [w.transport.pid for w in supervisor.workers]
        supervisor.signal_workers("HUP")
        yield both
        row = yield conn.request(TUPLE)
        self.assertTrue(row["curr_eid"])
        self.assertEqual([w.transport.pid for w in supervisor.workers], pids)

    @defer.inlineCallbacks
    def test_a_worker_that_cannot_start_fails_the_start(self):
        db = fresh_database(self)
        config = make_config(db, server={"workers": 2},
                             database={"dsn": "host=127.0.0.1 port=1 dbname=nothing",
                                       "connect_timeout": 2})
        supervisor = WorkerSupervisor(config, lambda: defer.succeed(
            "host=127.0.0.1 port=1 dbname=nothing connect_timeout=2"), reactor,
            stop_reactor_on_failure=False)
        supervisor.startService()
        with self.assertRaises(RuntimeError) as ctx:
            yield supervisor.ready
        self.assertIn("failed to start", str(ctx.exception))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)   # said why, once
        yield supervisor.stopService()
        self.assertTrue(all(w is None or w.ended.called for w in supervisor.workers))
