"""``[server] busy_poll_us``: the reactor polls without blocking for a while before it
sleeps (wyseman.tuning.busypoll)."""

from __future__ import annotations

import os
import select
import socket

from twisted.internet import defer, reactor
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.harness import add_user, make_config, start_gateway, ticket_login
from tests.pgtest import fresh_database
from wyseman.application.workers.supervisor import WorkerSupervisor
from wyseman.tuning import affinity, busypoll


class _Recording:
    """An epoll stand-in: answers ``poll`` from a script (empty once it runs out) and
    records each call's timeout; every call moves the test's clock on."""

    def __init__(self, clock: list[float], answers: list[list[tuple[int, int]]],
                 step: float) -> None:
        self.clock, self.answers, self.step = clock, answers, step
        self.timeouts: list[float] = []
        self.register = self.unregister = self.modify = self.close = self.fileno = None

    def poll(self, timeout: float = -1, maxevents: int = -1) -> list[tuple[int, int]]:
        self.timeouts.append(timeout)
        self.clock[0] += self.step
        return self.answers.pop(0) if self.answers else []


class SpinningPollerTests(SynchronousTestCase):
    def spinning(self, spin: float, answers=(), step: float = 0.0001):
        clock = [0.0]
        poller = _Recording(clock, list(answers), step)
        return busypoll.SpinningPoller(poller, spin, clock=lambda: clock[0]), poller

    def test_what_is_ready_is_answered_at_once(self):
        spinning, poller = self.spinning(0.001, [[(5, select.EPOLLIN)]])
        self.assertEqual(spinning.poll(1.0, 8), [(5, select.EPOLLIN)])
        self.assertEqual(poller.timeouts, [0])

    def test_a_poll_that_may_not_block_does_not_spin(self):
        spinning, poller = self.spinning(0.001)
        self.assertEqual(spinning.poll(0, 8), [])
        self.assertEqual(poller.timeouts, [0])

    def test_an_event_during_the_spin_ends_it_without_blocking(self):
        spinning, poller = self.spinning(0.001, [[], [], [], [(7, select.EPOLLIN)]])
        self.assertEqual(spinning.poll(-1, 8), [(7, select.EPOLLIN)])
        self.assertEqual(poller.timeouts, [0, 0, 0, 0])

    def test_after_the_spin_it_blocks_for_what_is_left_of_the_timeout(self):
        spinning, poller = self.spinning(0.0005, step=0.0001)
        self.assertEqual(spinning.poll(0.05, 8), [])
        spins, last = poller.timeouts[:-1], poller.timeouts[-1]
        self.assertEqual(set(spins), {0})
        self.assertGreaterEqual(len(spins), 5)      # (the spin lasted its 0.5 ms)
        self.assertAlmostEqual(last, 0.05 - 0.0001 * (len(spins) - 1), places=9)

    def test_the_spin_never_outlasts_the_timeout(self):
        spinning, poller = self.spinning(1.0, step=0.0001)
        spinning.poll(0.0003, 8)                  # (a timer due in 0.3 ms)
        self.assertEqual(poller.timeouts[-1], 0.0)
        self.assertLessEqual(len(poller.timeouts), 6)
        spinning, poller = self.spinning(0.0003, step=0.0001)
        spinning.poll(-1, 8)                      # (no timer: block once the spin is over)
        self.assertEqual(poller.timeouts[-1], -1)

    def test_the_default_depends_on_a_core_of_its_own(self):
        self.assertEqual(busypoll.configured_us(None, ()), 0)
        self.assertEqual(busypoll.configured_us(None, (1,)), busypoll.DEFAULT_US)
        self.assertEqual(busypoll.configured_us(0, (1,)), 0)
        self.assertEqual(busypoll.configured_us(50, ()), 50)


class InstallTests(SynchronousTestCase):
    def test_a_real_epoll_reactor_serves_through_it(self):
        """Twisted's epoll reactor adds, changes and removes readers through the wrapper,
        and a ready socket is read in the iteration that finds it."""
        from twisted.internet.epollreactor import EPollReactor
        own = EPollReactor()
        self.addCleanup(own._poller.close)
        self.assertTrue(busypoll.install(own, 100))
        self.assertIsInstance(own._poller, busypoll.SpinningPoller)
        self.assertEqual(own._poller.spin, 0.0001)
        left, right = socket.socketpair()
        self.addCleanup(left.close)
        self.addCleanup(right.close)
        read = []

        class Reader:
            def fileno(self):
                return left.fileno()

            def doRead(self):  # noqa: N802
                read.append(left.recv(100))

            def logPrefix(self):  # noqa: N802
                return "reader"

        reader = Reader()
        own.addReader(reader)
        right.send(b"ping")
        own.doIteration(1.0)
        self.assertEqual(read, [b"ping"])
        own.removeReader(reader)
        busypoll.uninstall(own)
        self.assertIs(type(own._poller), select.epoll)

    def test_other_reactors_and_zero_leave_polling_alone(self):
        memory = MemoryReactorClock()
        with capturedLogs() as events:
            self.assertFalse(busypoll.install(memory, 200))
            self.assertFalse(busypoll.install(reactor, 0))
        said = [formatEvent(e) for e in events]
        self.assertEqual(len(said), 1, said)
        self.assertIn("busy_poll_us ignored: it needs Twisted's epoll reactor", said[0])
        self.assertNotIsInstance(getattr(reactor, "_poller", None), busypoll.SpinningPoller)


class GatewayTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        if type(getattr(reactor, "_poller", None)) is not select.epoll:
            self.skipTest("needs Twisted's epoll reactor")

    @defer.inlineCallbacks
    def test_a_gateway_polls_while_it_runs_and_stops_when_it_stops(self):
        db = fresh_database(self)
        server = yield start_gateway(self, db, server={"busy_poll_us": 300})
        self.assertIsInstance(reactor._poller, busypoll.SpinningPoller)
        self.assertEqual(reactor._poller.spin, 0.0003)
        conn = yield ticket_login(self, server, db, add_user(db))
        row = yield conn.request({"action": "tuple", "view": "base.curr_eid()"})
        self.assertTrue(row["curr_eid"])
        yield conn.close()
        yield server.stopService()
        self.assertIs(type(reactor._poller), select.epoll)

    @defer.inlineCallbacks
    def test_pinned_it_polls_unless_told_not_to(self):
        if not hasattr(os, "sched_getaffinity"):
            self.skipTest("no CPU affinity on this system (Linux only)")
        self.addCleanup(affinity.restore)
        cpu = sorted(os.sched_getaffinity(0))[-1]
        db = fresh_database(self)
        server = yield start_gateway(self, db, server={"cpu_affinity": [cpu]})
        self.assertEqual(reactor._poller.spin, busypoll.DEFAULT_US / 1e6)
        yield server.stopService()
        self.assertIs(type(reactor._poller), select.epoll)
        server = yield start_gateway(self, db, server={"cpu_affinity": [cpu],
                                                       "busy_poll_us": 0})
        self.assertIs(type(reactor._poller), select.epoll)
        yield server.stopService()


class WorkerPayloadTests(SynchronousTestCase):
    def payload(self, db, **server):
        import json
        supervisor = WorkerSupervisor(make_config(db, server=server), lambda: None, reactor)
        supervisor._payload = {"config": {"server": dict(server)}}
        return [json.loads(supervisor._worker_payload(i))["config"]["server"]
                for i in range(server["workers"])]

    def test_workers_sharing_a_cpu_do_not_poll(self):
        db = fresh_database(self)
        shared = self.payload(db, workers=2, cpu_affinity=[0])
        self.assertEqual([w.get("busy_poll_us") for w in shared], [0, 0])
        own = self.payload(db, workers=2, cpu_affinity=[0, 1])
        self.assertEqual([w.get("busy_poll_us") for w in own], [None, None])
        told = self.payload(db, workers=2, cpu_affinity=[0], busy_poll_us=80)
        self.assertEqual([w.get("busy_poll_us") for w in told], [80, 80])
