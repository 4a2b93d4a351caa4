"""The txpostgres adapter when the server hangs up during the start-up handshake (what a
PostgreSQL going down does to connections being opened): the connect fails, and nothing
is logged as an unhandled error."""

from __future__ import annotations

from twisted.internet import defer, reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import SynchronousTestCase, TestCase

from wyseman.db import pg


class _HangUp(Protocol):
    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.transport.loseConnection()


class StartupHangupTests(TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def test_a_hang_up_during_start_up_fails_the_connect_quietly(self):
        port = reactor.listenTCP(0, Factory.forProtocol(_HangUp), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        dsn = f"host=127.0.0.1 port={port.getHost().port} dbname=x user=x"
        for _ in range(5):
            with self.assertRaises(pg.OperationalError):
                yield pg.connect(dsn, connect_timeout=5)
        # (trial fails the test if anything was logged as an unhandled error)


class NotifyOrderTests(SynchronousTestCase):
    """NOTIFYs reach the observers in the order PostgreSQL sent them, even when a second
    batch arrives while the first is still being handed out (a long fan-out)."""

    def test_a_later_batch_never_overtakes_an_earlier_one(self) -> None:
        from collections import namedtuple

        from twisted.internet import task

        clock = task.Clock()
        cooperator = task.Cooperator(scheduler=lambda work: clock.callLater(0, work))
        connection = pg._LossAwareConnection(reactor=clock, cooperator=cooperator)
        notify = namedtuple("notify", "channel payload pid")

        class Driver:
            notifies: list = []
            closed = False
        connection._connection = Driver()
        seen: list[str] = []
        working: list[defer.Deferred] = []

        def observer(n: notify) -> defer.Deferred:
            """Its work on a notification ends when the test says (a long fan-out)."""
            seen.append(n.payload)
            working.append(defer.Deferred())
            return working[-1]
        connection.addNotifyObserver(observer)

        def arrive(*payloads: str) -> None:
            connection._connection.notifies.extend(notify("c", p, 1) for p in payloads)
            connection.checkForNotifies()
            clock.advance(0)

        arrive("n1", "n2", "n3")
        self.assertEqual(seen, ["n1"])                # its observer is at work on it
        arrive("n4", "n5")                            # meanwhile, another batch
        while working:
            working.pop(0).callback(None)
            clock.advance(0)
        self.assertEqual(seen, ["n1", "n2", "n3", "n4", "n5"])
        arrive("n6")                                  # after the queue ran dry
        working.pop(0).callback(None)
        self.assertEqual(seen[-1], "n6")
