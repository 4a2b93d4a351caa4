"""The txpostgres adapter when the server hangs up during the start-up handshake (what a
PostgreSQL going down does to connections being opened): the connect fails, and nothing
is logged as an unhandled error."""

from __future__ import annotations

from twisted.internet import defer, reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase

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
