"""``[server] cpu_affinity``: the reactor thread pinned, helper threads not
(wyseman.tuning.affinity), in one process and in worker processes."""

from __future__ import annotations

import os
import threading
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from tests.harness import add_user, make_config, start_gateway, ticket_login
from tests.pgtest import fresh_database
from wyseman import config as cfg
from wyseman.application.workers.supervisor import WorkerSupervisor
from wyseman.auth import credentials as cred
from wyseman.config import ConfigError
from wyseman.tuning import affinity


def cpus_or_skip(count: int = 2) -> list[int]:
    if not hasattr(os, "sched_getaffinity"):
        raise SkipTest("no CPU affinity on this system (Linux only)")
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < count:
        raise SkipTest(f"needs {count} CPUs to tell pinned from not pinned; has {len(cpus)}")
    return cpus


def thread_cpus(tid: int) -> set[int]:
    """The CPUs a thread (of any process) may run on, as Linux reports them."""
    with open(f"/proc/{tid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("Cpus_allowed_list:"):
                cpus: set[int] = set()
                for part in line.split(":", 1)[1].strip().split(","):
                    low, _, high = part.partition("-")
                    cpus.update(range(int(low), int(high or low) + 1))
                return cpus
    raise AssertionError(f"no Cpus_allowed_list for {tid}")


class AffinityUnitTests(SynchronousTestCase):
    def tearDown(self) -> None:
        affinity.restore()

    def test_describe(self) -> None:
        self.assertEqual(affinity.describe({0, 1, 2, 3, 6, 8, 9}), "0-3, 6, 8-9")
        self.assertEqual(affinity.describe([5]), "5")
        self.assertEqual(affinity.describe(()), "(none)")

    def test_a_cpu_this_process_may_not_use_is_refused(self) -> None:
        cpus = cpus_or_skip(1)
        with self.assertRaises(affinity.AffinityError) as ctx:
            affinity.check([cpus[-1] + 1])
        self.assertIn(f"CPU {cpus[-1] + 1} not available to this process (it may use "
                      f"{affinity.describe(cpus)})", str(ctx.exception))
        self.assertRaises(affinity.AffinityError, affinity.check, [])
        self.assertEqual(affinity.check([cpus[0]]), {cpus[0]})

    def test_only_the_reactor_thread_is_pinned(self) -> None:
        """Pinned in a thread of its own (the test's main thread stays as it is): the
        thread runs on the CPU asked for; a thread it starts inherits that, until it
        releases itself as a helper thread."""
        cpus = cpus_or_skip()
        seen: dict[str, Any] = {}

        def reactor_thread() -> None:
            seen["pinned"] = affinity.pin_reactor_thread([cpus[0]])
            seen["reactor"] = os.sched_getaffinity(0)

            def helper() -> None:
                seen["inherited"] = os.sched_getaffinity(0)
                affinity.release_helper_thread()
                seen["helper"] = os.sched_getaffinity(0)
            child = threading.Thread(target=helper)
            child.start()
            child.join()
            seen["available"] = affinity.available_cpus()
            affinity.restore()
            seen["restored"] = os.sched_getaffinity(0)
        thread = threading.Thread(target=reactor_thread)
        thread.start()
        thread.join()
        self.assertEqual(seen["pinned"], {cpus[0]})
        self.assertEqual(seen["reactor"], {cpus[0]})
        self.assertEqual(seen["inherited"], {cpus[0]})
        self.assertEqual(seen["helper"], set(cpus))
        self.assertEqual(seen["available"], set(cpus))   # the process's, not the thread's
        self.assertEqual(seen["restored"], set(cpus))
        self.assertEqual(os.sched_getaffinity(0), set(cpus))
        self.assertFalse(affinity.pinned())

    def test_config(self) -> None:
        def server(**options: Any) -> cfg.Config:
            return cfg.from_dict({"server": options, "database": {"dsn": "dbname=x"}})
        self.assertEqual(server().server.cpu_affinity, ())
        self.assertEqual(server(cpu_affinity=[1, 0]).server.cpu_affinity, (1, 0))
        for bad in (0, "0", [-1], [True], ["1"]):
            with self.assertRaises(ConfigError, msg=bad) as ctx:
                server(cpu_affinity=bad)
            self.assertIn("[server] cpu_affinity", str(ctx.exception))


class PinnedGatewayTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        self.cpus = cpus_or_skip()
        self.addCleanup(affinity.restore)   # whatever happens, the test runner unpinned

    @defer.inlineCallbacks
    def test_a_pinned_gateway_serves_and_its_helpers_use_every_cpu(self):
        db = fresh_database(self)
        cpu = self.cpus[-1]
        server = yield start_gateway(self, db, server={"cpu_affinity": [cpu]},
                                     auth={"verify_threads": 2})
        self.assertEqual(os.sched_getaffinity(0), {cpu})   # (this is the reactor thread)
        conn = yield ticket_login(self, server, db, add_user(db))
        row = yield conn.request({"action": "tuple", "view": "base.curr_eid()"})
        self.assertTrue(row["curr_eid"])
        # the signature checks' threads, started by the pinned thread, use every CPU
        on_checker = []
        check = cred.verifying_key

        def recording(*args):
            on_checker.append(os.sched_getaffinity(0))
            return check(*args)
        self.patch(cred, "verifying_key", recording)
        yield server.gateway.signatures.verifying_key(None, b"", "")
        self.assertEqual(on_checker, [set(self.cpus)])
        fanout = server.gateway.fanout
        if fanout.threads > 1:
            on_helper = fanout._helpers().submit(os.sched_getaffinity, 0).result(timeout=10)
            self.assertEqual(on_helper, set(self.cpus))
        # stopped: an embedding application's reactor thread is its own again
        yield server.stopService()
        self.assertEqual(os.sched_getaffinity(0), set(self.cpus))

    @defer.inlineCallbacks
    def test_a_cpu_that_is_not_there_stops_the_start(self):
        from wyseman.application.service import GatewayService
        db = fresh_database(self)
        config = make_config(db, server={"cpu_affinity": [self.cpus[-1] + 1]})
        service = GatewayService(config, lambda: defer.succeed(db.dsn), reactor)
        service.stop_reactor_on_failure = False
        from twisted.logger import capturedLogs, formatEvent
        with capturedLogs() as events:
            yield service.startService()
        failure = yield self.assertFailure(service.ready, ConfigError)
        self.assertIn(f"CPU {self.cpus[-1] + 1} not available", str(failure))
        self.assertEqual(service.ports, [])
        said = [formatEvent(e) for e in events if e.get("log_level").name == "error"]
        self.assertEqual(len(said), 1, [dict(e) for e in events])   # one line
        self.assertIn("wyseman could not start: ", said[0])
        self.assertEqual(os.sched_getaffinity(0), set(self.cpus))


class PinnedWorkerTests(TestCase):
    timeout = 180

    @defer.inlineCallbacks
    def test_each_worker_on_a_cpu_of_the_list_in_turn(self):
        cpus = cpus_or_skip()
        db = fresh_database(self)
        wanted = [cpus[1], cpus[0]]
        config = make_config(db, server={"workers": 3, "cpu_affinity": wanted})
        supervisor = WorkerSupervisor(config, lambda: defer.succeed(db.dsn), reactor)
        yield supervisor.startService()
        self.addCleanup(supervisor.stopService)
        for index, worker in enumerate(supervisor.workers):
            # a worker's main thread (its reactor's) has the worker's pid as thread id
            self.assertEqual(thread_cpus(worker.transport.pid),
                             {wanted[index % len(wanted)]}, index)
        self.assertEqual(os.sched_getaffinity(0), set(cpus))   # the supervisor: not pinned


class PinnedEmbeddedTests(TestCase):
    timeout = 180

    @defer.inlineCallbacks
    def test_the_embedded_postgresql_runs_off_the_reactor_threads_cpu(self):
        """With [server] cpu_affinity, the embedded PostgreSQL (its processes, and the
        backends it forks later) is kept on the other CPUs."""
        from pathlib import Path

        import psycopg2
        from twisted.internet import threads

        from wyseman.application.service import makeService
        cpus = cpus_or_skip()
        self.addCleanup(affinity.restore)
        root = Path(self.mktemp()).resolve()
        root.mkdir(parents=True)
        config = cfg.from_dict({
            "server": {"listen": "tcp:0:interface=127.0.0.1", "clientinfo_listen": [],
                       "cpu_affinity": [cpus[0]]},
            "database": {"embedded": "pgdata", "name": "pinned"},
        }, source="pinned.toml", base_dir=root)
        top = makeService(config)
        embedded = top.getServiceNamed("embedded-postgres")
        top.startService()
        self.addCleanup(lambda: embedded.cluster.remove())
        self.addCleanup(top.stopService)
        yield top.getServiceNamed("gateway").ready
        rest = set(cpus) - {cpus[0]}
        self.assertEqual(os.sched_getaffinity(0), {cpus[0]})
        self.assertEqual(thread_cpus(embedded.cluster.postmaster_pid()), rest)

        def backend_pid() -> tuple[int, set[int]]:
            with psycopg2.connect(embedded.cluster.dsn("pinned")) as conn:
                with conn.cursor() as cursor:
                    cursor.execute("select pg_backend_pid()")
                    pid = cursor.fetchone()[0]
                    return pid, thread_cpus(pid)
        pid, backend = yield threads.deferToThread(backend_pid)   # forked just now
        self.assertEqual(backend, rest, pid)
