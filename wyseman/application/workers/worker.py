"""One worker process of :mod:`wyseman.application.workers.supervisor`
(``python -m wyseman.application.workers.worker``).

It reads one JSON line from stdin (config document, admin DSN, worker number),
serves the config's ports with SO_REUSEPORT as a :class:`GatewayService`, writes
``ready`` on fd 3 once it listens (and asks the supervisor about replayed login
signatures there, answers on fd 4), logs one line per event to stdout, and stops
on SIGTERM or when stdin closes (the supervisor is gone).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, cast

from twisted.internet import defer, protocol, stdio
from twisted.logger import ILogObserver, Logger, formatEvent, globalLogBeginner
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure

log = Logger(namespace="wyseman.worker")


class _Lifeline(protocol.Protocol):
    """stdin: its end means the supervisor is gone."""

    def __init__(self, on_lost: Any) -> None:
        self.on_lost = on_lost

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:  # noqa: N802
        self.on_lost()


class SupervisorChannel(LineOnlyReceiver):
    """Control lines to the supervisor (fd 3) and its answers (fd 4): ``ready``, the
    shared replay cache (``check`` has the signature of ReplayCache.check) and the shared
    count of each user's connections (``reserve``/``release``, as LocalSlots)."""

    delimiter = b"\n"

    def __init__(self) -> None:
        self._pending: dict[int, defer.Deferred] = {}
        self._next = 0

    def ready(self) -> None:
        self.sendLine(b"ready")

    def check(self, user: str, sign: str, now: float) -> defer.Deferred:
        from wyseman.auth.credentials import ReplayCache
        return self._ask(b"replay", ReplayCache.key(user, sign).hex().encode())

    def reserve(self, user: str) -> defer.Deferred:
        """Count a connection of ``user`` against ``[limits] max_connections_per_user``
        in all the workers → True, or False if that would exceed it (wyseman.gateway.userslots)."""
        d = self._ask(b"slot", user.encode("utf-8").hex().encode())
        d.addCallback(lambda outcome: outcome == "ok")
        return d

    def release(self, user: str) -> None:
        self.sendLine(b"free " + user.encode("utf-8").hex().encode())

    def _ask(self, kind: bytes, argument: bytes) -> defer.Deferred:
        self._next += 1
        d: defer.Deferred = defer.Deferred()
        self._pending[self._next] = d
        self.sendLine(b"%s %d %s" % (kind, self._next, argument))
        return d

    def lineReceived(self, line: bytes) -> None:  # noqa: N802
        number, _, outcome = line.partition(b" ")
        d = self._pending.pop(int(number), None) if number.isdigit() else None
        if d is not None:
            d.callback(outcome.decode("ascii", "replace"))

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:  # noqa: N802
        pending, self._pending = self._pending, {}
        for d in pending.values():
            d.errback(RuntimeError("supervisor gone: cannot check the replay cache or "
                                   "count the user's connections"))


def _line_observer(event: dict) -> None:
    """``level namespace: text`` on stdout (the supervisor adds time and worker number)."""
    text = formatEvent(event)
    failure = event.get("log_failure")
    if failure is not None:
        text += "\n" + failure.getTraceback()
    level = event.get("log_level")
    name = level.name if level is not None else "info"
    for number, line in enumerate(text.splitlines() or [""]):
        prefix = f"{name} {event.get('log_namespace', '-')}: " if number == 0 else f"{name}   "
        sys.stdout.write(prefix + line + "\n")
    sys.stdout.flush()


def main() -> int:
    payload = json.loads(sys.stdin.buffer.readline() or b"null")
    if not isinstance(payload, dict):
        print("error wyseman.application.workers.worker: no configuration on stdin", flush=True)
        return 2
    # (a function of the event is an ILogObserver; plain mypy cannot see zope interfaces)
    globalLogBeginner.beginLoggingTo([cast(ILogObserver, _line_observer)],
                                     redirectStandardIO=False)

    from wyseman.application.mainloop import global_reactor
    from wyseman.application.service import GatewayService
    from wyseman.application.workers.routing import Router
    from wyseman.config import ConfigError, from_dict
    from wyseman.gateway.actions import ActionRegistry
    from wyseman.gateway.cluster import host_id_for

    reactor = global_reactor()
    channel = SupervisorChannel()
    # (the ignores: Twisted's stdio picks the class by platform; mypy sees the Windows one,
    # which takes no stdin/stdout)
    stdio.StandardIO(channel, stdin=4, stdout=3)  # type: ignore[call-arg]
    try:
        config = from_dict(payload["config"], payload["source"], Path(payload["base_dir"]))
        route = payload.get("route")
        router = (Router(reactor, route["dir"], payload["worker"], route["workers"])
                  if route else None)
        # the supervisor keeps one replay cache and per-user count for its workers, unless
        # the database keeps them for every host (then each worker is a host of its own)
        shared = config.cluster.shared_state == "postgres"
        service = GatewayService(config, lambda: defer.succeed(payload["admin_dsn"]), reactor,
                                 ActionRegistry.from_config(config), reuse_port=True,
                                 replay=None if shared else channel,
                                 user_slots=None if shared else channel, router=router,
                                 host_id=host_id_for(config, payload["worker"]))
    except ConfigError as exc:
        log.error("{error}", error=str(exc))
        return 2
    started: list[bool] = []

    def ready(_: Any) -> None:
        started.append(True)
        channel.ready()
    service.ready.addCallbacks(ready, lambda _: None)

    def lost() -> None:
        if reactor.running:
            reactor.stop()
    stdio.StandardIO(_Lifeline(lost), stdin=0,  # type: ignore[call-arg]
                     stdout=os.open(os.devnull, os.O_WRONLY))
    reactor.callWhenRunning(service.startService)
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()
    return 0 if started else 1


if __name__ == "__main__":
    sys.exit(main())
