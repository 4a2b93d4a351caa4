"""The gateway under test, in its own process: ``python -m benchmarks.server_proc CONFIG``.

``CONFIG`` is a JSON file (or inline JSON text) with

* ``config``: the wyseman configuration as a dict (what :func:`wyseman.config.from_dict`
  takes); ``[database] dsn`` is the admin connection;
* ``log_file``: where the Twisted log goes (at info level, as ``twistd`` logs);
* ``profile_file`` (optional): SIGUSR1 starts cProfile, SIGUSR2 stops it and writes the
  stats there (pstats format);
* ``control`` (optional, true): commands are read from stdin, one a line; ``pools``
  answers one line ``POOLS <json>``: every user role's pool (``open``, ``in_use``,
  ``idle``, ``waiting``) and the total (what the soak test compares with
  ``pg_stat_activity``; a single process only).

No ``twistd``: a :class:`GatewayService` (or, with ``[server] workers`` > 1, a
:class:`~wyseman.application.workers.supervisor.WorkerSupervisor` and its worker
processes) is started
and ``reactor.run()`` runs until SIGTERM/SIGINT. Once the ports are open, one line
``READY <port> <pid>`` goes to stdout.
"""

from __future__ import annotations

import cProfile
import json
import os
import signal
import sys
from typing import Any

from benchmarks import raise_fd_limit


def _load(arg: str) -> dict[str, Any]:
    if arg.lstrip().startswith("{"):
        return json.loads(arg)
    with open(arg, encoding="utf-8") as handle:
        return json.load(handle)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m benchmarks.server_proc CONFIG_JSON", file=sys.stderr)
        return 2
    spec = _load(argv[0])
    raise_fd_limit()

    # Imported after the limit is raised: the reactor's poller may size itself early.
    from twisted.internet import defer, reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from wyseman import config as cfg
    from wyseman.application.service import GatewayService
    from wyseman.gateway.actions import ActionRegistry

    log_file = open(spec.get("log_file") or os.devnull, "a", encoding="utf-8")
    globalLogBeginner.beginLoggingTo([textFileLogObserver(log_file)],
                                     redirectStandardIO=False)

    config = cfg.from_dict(spec["config"], source="benchmark")
    dsn = config.database.dsn
    if config.server.workers > 1:
        from wyseman.application.workers.supervisor import WorkerSupervisor
        service: Any = WorkerSupervisor(config, lambda: defer.succeed(dsn), reactor)
    else:
        service = GatewayService(config, lambda: defer.succeed(dsn), reactor, ActionRegistry())

    profiler: list[cProfile.Profile] = []
    profile_file = spec.get("profile_file")

    def start_profile(*_: Any) -> None:
        if not profiler:
            profiler.append(cProfile.Profile())
            profiler[0].enable()

    def stop_profile(*_: Any) -> None:
        if profiler:
            prof = profiler.pop()
            prof.disable()
            if profile_file:
                prof.dump_stats(profile_file)
            print("PROFILED", flush=True)

    if profile_file:
        signal.signal(signal.SIGUSR1, lambda *_: reactor.callFromThread(start_profile))
        signal.signal(signal.SIGUSR2, lambda *_: reactor.callFromThread(stop_profile))

    if spec.get("control"):
        _control(service, reactor)

    exit_code = [0]

    def started(_: Any) -> None:
        if config.server.workers > 1:
            port = int(service.listen[0].split(":")[1])
        else:
            port = service.ports[0].getHost().port
            p2p = getattr(service, "p2p", None)
            for address in (p2p.addresses if p2p is not None else ()):
                print(f"P2P {address}", flush=True)
        print(f"READY {port} {os.getpid()}", flush=True)

    def failed(failure: Any) -> None:
        print(f"FAILED {failure.getErrorMessage()}", flush=True)
        exit_code[0] = 1
        if reactor.running:
            reactor.stop()

    def start() -> None:
        # startService logs a failure and stops the reactor itself; ``ready`` tells us.
        service.ready.addCallbacks(started, failed)
        service.startService()

    parent = os.getppid()

    def orphaned() -> None:  # the runner died without stopping us: do not linger
        if os.getppid() != parent and reactor.running:
            reactor.stop()

    from twisted.internet.task import LoopingCall
    LoopingCall(orphaned).start(1.0, now=False)
    reactor.addSystemEventTrigger("before", "shutdown",
                                  lambda: service.stopService() if service.running else None)
    reactor.callWhenRunning(start)
    reactor.run()
    log_file.close()
    return exit_code[0]


def pool_report(service: Any) -> dict[str, Any]:
    """The user pools of a started :class:`GatewayService`: role → counts, and the total
    (``wyseman_pool_connections``)."""
    pools = service.gateway.db.users
    roles = {role: {"open": pool.open_count, "in_use": pool.in_use, "idle": pool.stats.idle,
                    "waiting": pool.stats.waiting}
             for role, pool in list(pools.pools.items())}
    return {"roles": roles, "total": pools.open_connections}


def _control(service: Any, reactor: Any) -> None:
    """Answer the commands of stdin (see the module's docstring)."""
    from twisted.internet import stdio
    from twisted.protocols.basic import LineReceiver

    class Control(LineReceiver):
        delimiter = b"\n"

        def lineReceived(self, line: bytes) -> None:  # noqa: N802 (Twisted name)
            command = line.strip().decode("utf-8", "replace")
            if command == "pools":
                try:
                    answer = json.dumps(pool_report(service))
                except Exception as exc:  # (not started, or a supervisor)
                    answer = json.dumps({"error": f"{type(exc).__name__}: {exc}"})
                self.sendLine(b"POOLS " + answer.encode())
            elif command:
                self.sendLine(b"UNKNOWN " + line)

    stdio.StandardIO(Control(), reactor=reactor)


if __name__ == "__main__":
    sys.exit(main())
