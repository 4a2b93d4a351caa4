"""``GET /healthz`` on the metrics port (wyseman.gateway.health): shared, cached, bounded
checks, and the page of a real server whose database goes away and comes back."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import defer, task
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.harness import http_get, start_gateway
from tests.pgtest import base_dsn, fresh_database, run_sync
from wyseman.gateway.health import HealthCheck


class Pings:
    """A stand-in for the database's ping whose answers the test gives."""

    def __init__(self) -> None:
        self.calls: list[defer.Deferred] = []

    def __call__(self) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self.calls.append(d)
        return d


class HealthCheckTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.pings = Pings()
        self.health = HealthCheck(self.pings, self.clock, timeout=5, cache_seconds=1)

    def test_concurrent_checks_share_one_ping(self) -> None:
        first, second = self.health.check(), self.health.check()
        self.assertEqual(len(self.pings.calls), 1)
        self.assertNoResult(first)
        self.pings.calls[0].callback(None)
        self.assertEqual((self.successResultOf(first), self.successResultOf(second)),
                         (True, True))

    def test_an_outcome_is_reused_for_a_second(self) -> None:
        self.health.check()
        self.pings.calls[0].callback(None)
        self.clock.advance(0.9)
        self.assertTrue(self.successResultOf(self.health.check()))
        self.assertEqual(len(self.pings.calls), 1)
        self.clock.advance(0.2)
        later = self.health.check()
        self.assertEqual(len(self.pings.calls), 2)
        self.pings.calls[1].errback(RuntimeError("connection refused"))
        self.assertFalse(self.successResultOf(later))

    def test_a_ping_that_hangs_counts_as_unavailable(self) -> None:
        check = self.health.check()
        self.clock.advance(4.9)
        self.assertNoResult(check)
        self.clock.advance(0.2)
        self.assertFalse(self.successResultOf(check))
        self.assertFalse(self.health.healthy)


@defer.inlineCallbacks
def health(port: int) -> Any:
    status, headers, body = yield http_get(port, "/healthz")
    assert "content-type: application/json" in headers, headers
    assert "cache-control: no-store" in headers, headers
    return status, json.loads(body)


class HealthPageTests(TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def test_reports_the_database(self):
        db = fresh_database(self)
        server = yield start_gateway(self, db, metrics={"listen": "tcp:0:interface=127.0.0.1"})
        server.gateway.health.cache_seconds = 0      # each request checks anew
        port = server.ports[-1].getHost().port        # the metrics port
        self.assertEqual((yield health(port)), (200, {"status": "ok"}))
        # not on the clients' port: there every path but /clientinfo is the WebSocket
        status, _, _ = yield http_get(server.port, "/healthz")
        self.assertNotEqual(status, 200)

        # The database refuses connections, and the gateway's admin connection is cut.
        run_sync(base_dsn(), f'alter database "{db.name}" allow_connections false')
        self.addCleanup(run_sync, base_dsn(),
                        f'alter database "{db.name}" allow_connections true')
        run_sync(base_dsn(), "select pg_terminate_backend(pid) from pg_stat_activity "
                             "where datname = %s and pid <> pg_backend_pid()", (db.name,))
        self.assertEqual((yield health(port)), (503, {"status": "unavailable"}))

        run_sync(base_dsn(), f'alter database "{db.name}" allow_connections true')
        self.assertEqual((yield health(port)), (200, {"status": "ok"}))
