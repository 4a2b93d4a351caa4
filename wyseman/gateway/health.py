"""``GET /healthz`` on the metrics port: can this server serve? For load balancers and
orchestrators (on the operators' port, as ``/metrics``: nothing unauthenticated is added to
the clients' ports).

``200 {"status": "ok"}`` once the database (the admin connection) answered a
``select 1``; ``503 {"status": "unavailable"}`` if it did not within
:data:`TIMEOUT_SECONDS`. The reason goes to the log, not to the unauthenticated
caller. Checks are shared: requests that arrive while one runs wait for it, and its
outcome is reused for :attr:`HealthCheck.cache_seconds`, so a flood of health checks
costs PostgreSQL at most one ``select 1`` a second.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import resource, server

log = Logger(namespace="wyseman.health")

#: a check not answered within this many seconds counts as a failure
TIMEOUT_SECONDS = 5.0
#: an outcome is reused for this many seconds
CACHE_SECONDS = 1.0


class HealthCheck:
    """Runs ``ping`` (a Deferred that fires once the database answered) for the health
    endpoint, at most one at a time and once per ``cache_seconds``."""

    def __init__(self, ping: Callable[[], defer.Deferred[Any]], clock: Any,
                 timeout: float = TIMEOUT_SECONDS, cache_seconds: float = CACHE_SECONDS) -> None:
        self._ping = ping
        self._clock = clock
        self.timeout = timeout
        self.cache_seconds = cache_seconds
        self._waiters: list[defer.Deferred[Any]] = []
        self._last: tuple[float, bool] | None = None   # (when, healthy)
        self.healthy: bool | None = None               # the last outcome, for the log

    def check(self) -> defer.Deferred[Any]:
        """Deferred of True (the database answered) or False; never fails."""
        now = self._clock.seconds()
        if self._last is not None and now - self._last[0] < self.cache_seconds:
            return defer.succeed(self._last[1])
        waiter: defer.Deferred[Any] = defer.Deferred()
        self._waiters.append(waiter)
        if len(self._waiters) == 1:             # nobody is checking yet
            d = defer.maybeDeferred(self._ping)
            d.addTimeout(self.timeout, self._clock)
            d.addCallbacks(lambda _: True, self._failed)
            d.addCallback(self._done)
        return waiter

    def _failed(self, failure: Any) -> bool:
        if self.healthy is not False:
            log.warn("health check: database unavailable: {why}",
                     why=failure.getErrorMessage() or failure.type.__name__)
        return False

    def _done(self, healthy: bool) -> None:
        if healthy and self.healthy is False:
            log.info("health check: database available again")
        self.healthy = healthy
        self._last = (self._clock.seconds(), healthy)
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(healthy)


_OK = orjson.dumps({"status": "ok"})
_UNAVAILABLE = orjson.dumps({"status": "unavailable"})


class HealthResource(resource.Resource):
    """The ``/healthz`` page of a :class:`HealthCheck`."""

    isLeaf = True

    def __init__(self, health: HealthCheck) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.health = health

    def render_GET(self, request: server.Request) -> Any:  # noqa: N802
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))

        def answer(healthy: bool) -> None:
            if gone:                            # the caller hung up meanwhile
                return
            body = _OK if healthy else _UNAVAILABLE
            request.setResponseCode(200 if healthy else 503)
            request.setHeader(b"content-type", b"application/json")
            request.setHeader(b"cache-control", b"no-store")
            request.setHeader(b"content-length", b"%d" % len(body))
            request.write(body)
            request.finish()
        self.health.check().addCallback(answer)
        return server.NOT_DONE_YET
