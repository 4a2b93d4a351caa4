"""``[server] workers = N``: N processes serve the same ports (docs/operations.md, "Scaling").

The supervisor (this process) owns the embedded PostgreSQL, if any, and starts N
worker processes (:mod:`wyseman.application.workers.worker`). Each worker binds the configured
``tcp:``/``tls:`` ports with SO_REUSEPORT, so the kernel spreads new connections
over them, and has its own pools and its own LISTEN connection: a worker is a
whole gateway, as two gateways on one database already are (tests/test_service).

The supervisor hands each worker its config (the TOML document, with port 0
replaced by the port the supervisor reserved, and the metrics port + i) and the
admin DSN on its stdin, and keeps that pipe open: a worker whose supervisor is
gone sees the pipe close and stops. Workers log to their stdout, which the
supervisor relays. fd 3 (worker → supervisor) and fd 4 (back) carry control
lines: the worker's ``ready``, and its questions to the one replay cache that all
workers share (a signed login URL is accepted once per supervisor, not once per
worker). A worker that dies is
started again after a back-off; SIGHUP (certificate reload) is passed on.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from typing import Any, Protocol, cast

from twisted.internet import defer, error, protocol
from twisted.logger import Logger, LogLevel

from wyseman.application.service import (
    StartingService,
    _tls_factory,
    check_cpu_affinity,
    derived_clientinfo,
    parse_listen,
    reuse_port_socket,
)
from wyseman.application.sighup import SighupHandler
from wyseman.auth.credentials import ReplayCache
from wyseman.config import Config, ConfigError
from wyseman.gateway.userslots import UserSlots
from wyseman.tuning.affinity import auto_threads

log = Logger(namespace="wyseman.supervisor")

READY = b"ready"
STOP_GRACE = 10.0          # seconds a worker gets to close its sockets before SIGKILL
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
HEALTHY_AFTER = 60.0       # a worker up this long resets the back-off


_LEVELS = frozenset({"debug", "info", "warn", "error", "critical"})


def _with_port(text: str, port: int) -> str:
    spec = parse_listen(text)
    interface = spec.interface.replace(":", "\\:")
    return (("haproxy:" if spec.proxy else "") + f"{spec.kind}:{port}"
            + (f":interface={interface}" if interface else ""))


def _cancel_if_active(result: Any, call: Any) -> Any:
    if call.active():
        call.cancel()
    return result


def _user(hex_name: bytes) -> str | None:
    """A user name sent as UTF-8 in hex on the control channel; None if malformed."""
    try:
        return bytes.fromhex(hex_name.decode("ascii")).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None


class _Process(Protocol):
    """A worker's process as the supervisor drives it: Twisted's IProcessTransport, whose
    methods plain mypy reads as if their first parameter were ``self``."""

    pid: int | None

    def write(self, data: bytes) -> None:
        """To the worker's stdin."""
        ...

    def writeToChild(self, childFD: int, data: bytes) -> None:  # noqa: N802, N803
        ...

    def closeStdin(self) -> None:  # noqa: N802
        ...

    def signalProcess(self, signalID: str | int) -> None:  # noqa: N802, N803
        ...


class _WorkerProtocol(protocol.ProcessProtocol):
    def __init__(self, supervisor: WorkerSupervisor, index: int) -> None:
        self.supervisor = supervisor
        self.index = index
        self.buffers: dict[int, bytes] = {1: b"", 2: b"", 3: b""}
        self.ready = False
        self.ended: defer.Deferred = defer.Deferred()

    @property
    def process(self) -> _Process:
        """The worker's process (``spawnProcess`` connects it before anything here runs)."""
        assert self.transport is not None
        return cast(_Process, self.transport)

    def childDataReceived(self, fd: int, data: bytes) -> None:  # noqa: N802
        buffer = self.buffers.get(fd, b"") + data
        *lines, rest = buffer.split(b"\n")
        self.buffers[fd] = rest[-65536:]
        for line in lines:
            if fd == 3:
                self._control(line)
            else:
                self._relay(line.decode("utf-8", "replace"))

    def _control(self, line: bytes) -> None:
        """A line from the worker's control channel: ``ready``, ``replay ID HEX`` or
        ``slot ID HEX`` (answered on its fd 4 with ``ID OUTCOME``), ``free HEX``."""
        if line == READY:
            if not self.ready:
                self.ready = True
                self.supervisor._worker_ready(self)
            return
        parts = line.split(b" ")
        if len(parts) == 3 and parts[0] == b"slot":
            user = _user(parts[2])
            if user is not None:
                ok = self.supervisor.user_slots.reserve(user, holder=self)
                self.process.writeToChild(4, parts[1] + (b" ok\n" if ok else b" full\n"))
                return
        if len(parts) == 2 and parts[0] == b"free":
            user = _user(parts[1])
            if user is not None:
                self.supervisor.user_slots.release(user, holder=self)
                return
        if len(parts) == 3 and parts[0] == b"replay":
            try:
                key = bytes.fromhex(parts[2].decode("ascii"))
            except ValueError:
                key = None
            if key:
                outcome = self.supervisor.replay.check_key(key, self.supervisor.reactor.seconds())
                self.process.writeToChild(4, parts[1] + b" " + outcome.encode() + b"\n")
                return
        log.warn("worker {worker}: unexpected control line {line!r}", worker=self.index,
                 line=line[:100])

    def _relay(self, line: str) -> None:
        """``LEVEL rest`` (a worker's lines) at that level; anything else at info."""
        level_name, _, text = line.partition(" ")
        if level_name in _LEVELS:
            level = LogLevel.levelWithName(level_name)
        else:
            level, text = LogLevel.info, line
        log.emit(level, "worker {worker}: {line}", worker=self.index, line=text,
                 pid=self.process.pid if self.transport else None)

    def processEnded(self, reason: Any) -> None:  # noqa: N802
        for fd in (1, 2):
            if self.buffers[fd]:
                self._relay(self.buffers[fd].decode("utf-8", "replace"))
        self.supervisor.user_slots.release_holder(self)   # its sockets are gone
        self.ended.callback(None)   # (the reason is a Failure: not this Deferred's error)
        self.supervisor._worker_ended(self, reason)


class WorkerSupervisor(StartingService):
    """Starts, watches and stops ``config.server.workers`` gateway processes."""

    name = "gateway"  # type: ignore[assignment]  # (Twisted: unannotated `name = None`)
    failure_message = "wyseman workers could not start"

    def __init__(self, config: Config, admin_dsn: Callable[[], defer.Deferred],
                 reactor: Any = None, executable: str = sys.executable, *,
                 stop_reactor_on_failure: bool = True) -> None:
        super().__init__(config, admin_dsn, reactor)
        reactor = self.reactor
        self.executable = executable
        self.stop_reactor_on_failure = stop_reactor_on_failure
        _tls_factory(config)   # check the certificate files now, as GatewayService does
        self.count = config.server.workers
        # One replay cache for all workers: a signed login URL accepted by one worker is
        # refused by every other (the workers ask here, over a pipe).
        self.replay = ReplayCache.for_window(config.auth.date_window)
        # ... and one count of each user's connections (max_connections_per_user is the
        # user's bound, not each worker's)
        self.user_slots = UserSlots(config.limits.max_connections_per_user)
        self.workers: list[_WorkerProtocol | None] = [None] * self.count
        self._reserved: list[Any] = []
        self._payload: dict[str, Any] = {}
        #: ``[server] route_by_user``: the directory of the workers' Unix sockets (0700)
        self._route_dir: str | None = None
        self._stopping = False
        self._backoff = [BACKOFF_FIRST] * self.count
        self._started_at = [0.0] * self.count
        self._restarts: dict[int, Any] = {}
        self._sighup = SighupHandler(reactor, lambda: self.signal_workers("HUP"))
        self._ready_waiters: list[tuple[int, defer.Deferred]] = []
        #: the ports actually served (port 0 in the config → the port reserved for it)
        self.listen: list[str] = []

    # -- start -----------------------------------------------------------------------
    @defer.inlineCallbacks
    def _start(self) -> Any:
        check_cpu_affinity(self.config)   # (each worker is pinned by itself)
        dsn = yield self._admin_dsn()
        raw = json.loads(json.dumps(self.config.raw))   # a copy we can change
        server = raw.setdefault("server", {})
        self.listen = [self._reserve(text) for text in self.config.server.listen]
        server["listen"] = self.listen
        clientinfo: Sequence[str] | None = self.config.server.clientinfo_listen
        if clientinfo is None:
            clientinfo = [d for d in (derived_clientinfo(parse_listen(t))
                                      for t in self.config.server.listen) if d]
        server["clientinfo_listen"] = [self._reserve(text) for text in clientinfo]
        server["workers"] = 1
        server["fanout_threads"] = (self.config.server.fanout_threads
                                    or auto_threads(self.count))
        raw.setdefault("auth", {})["verify_threads"] = (self.config.auth.verify_threads
                                                         or auto_threads(self.count))
        if self.config.server.route_by_user:
            self._route_dir = tempfile.mkdtemp(prefix="wyseman-route-")
        self._payload = {"config": raw, "source": self.config.source,
                         "base_dir": str(self.config.base_dir), "admin_dsn": dsn}
        waiting = [self.when_ready(index) for index in range(self.count)]
        for index in range(self.count):
            self._spawn(index)
        try:
            yield defer.gatherResults(waiting, consumeErrors=True)
        except defer.FirstError as first:
            first.subFailure.raiseException()
        if self.config.tls.cert:
            self._sighup.install()   # certificate reload: passed on to every worker
        log.info("{count} workers serving {listen}", count=self.count, listen=self.listen)
        self.ready.callback(self)
        return self

    def _reserve(self, text: str) -> str:
        """Port 0 → a port every worker can bind: hold it bound (not listening, so the
        kernel never hands this socket a connection) with SO_REUSEPORT."""
        spec = parse_listen(text)
        if spec.port:
            return text
        sock = reuse_port_socket(spec)
        self._reserved.append(sock)
        return _with_port(text, sock.getsockname()[1])

    def _worker_payload(self, index: int) -> bytes:
        payload = json.loads(json.dumps(self._payload))
        metrics = self.config.metrics.listen
        if metrics:
            spec = parse_listen(metrics)
            assert spec.port is not None
            payload["config"].setdefault("metrics", {})["listen"] = _with_port(
                metrics, spec.port + index)
        cpus = self.config.server.cpu_affinity
        if cpus:   # one CPU each, in turn
            payload["config"]["server"]["cpu_affinity"] = [cpus[index % len(cpus)]]
            if len(cpus) < self.count and self.config.server.busy_poll_us is None:
                # workers sharing a CPU: one's polling would take the others' turns
                payload["config"]["server"]["busy_poll_us"] = 0
        payload["worker"] = index
        if self._route_dir is not None:
            payload["route"] = {"dir": self._route_dir, "workers": self.count}
        return json.dumps(payload).encode("utf-8") + b"\n"

    def _spawn(self, index: int) -> None:
        self._restarts.pop(index, None)
        worker = _WorkerProtocol(self, index)
        self.workers[index] = worker
        self._started_at[index] = self.reactor.seconds()
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        # whatever this process can import (wyseman, custom action modules), so can a worker
        env["PYTHONPATH"] = os.pathsep.join(p or os.getcwd() for p in sys.path)
        self.reactor.spawnProcess(worker, self.executable,
                                  [self.executable, "-m", "wyseman.application.workers.worker"],
                                  env=env,
                                  childFDs={0: "w", 1: "r", 2: "r", 3: "r", 4: "w"})
        worker.process.write(self._worker_payload(index))
        log.info("worker {worker} started (pid {pid})", worker=index, pid=worker.process.pid)

    def when_ready(self, index: int) -> defer.Deferred:
        """Fires when worker ``index`` (the current or its next incarnation) is ready;
        fails if it ends first while the supervisor is starting."""
        d: defer.Deferred = defer.Deferred()
        self._ready_waiters.append((index, d))
        return d

    def _worker_ready(self, worker: _WorkerProtocol) -> None:
        log.info("worker {worker} ready", worker=worker.index)
        waiters, self._ready_waiters = self._ready_waiters, []
        for index, d in waiters:
            if index == worker.index:
                d.callback(worker.process.pid)
            else:
                self._ready_waiters.append((index, d))

    # -- a worker ended ----------------------------------------------------------------
    def _worker_ended(self, worker: _WorkerProtocol, reason: Any) -> None:
        index = worker.index
        if self.workers[index] is worker:
            self.workers[index] = None
        code = getattr(reason.value, "exitCode", None)
        signal_number = getattr(reason.value, "signal", None)
        if self._stopping:
            log.info("worker {worker} stopped", worker=index)
            return
        how = f"signal {signal_number}" if signal_number else f"exit code {code}"
        if not self.ready.called:
            log.error("worker {worker} failed to start ({how})", worker=index, how=how)
            self._fail_waiters(index, RuntimeError(f"worker {index} failed to start ({how})"))
            return
        up = self.reactor.seconds() - self._started_at[index]
        if up >= HEALTHY_AFTER:
            self._backoff[index] = BACKOFF_FIRST
        delay = self._backoff[index]
        self._backoff[index] = min(delay * 2, BACKOFF_MAX)
        log.error("worker {worker} ended ({how}) after {up:.1f} s; restarting in {delay} s",
                  worker=index, how=how, up=up, delay=delay)
        self._restarts[index] = self.reactor.callLater(delay, self._spawn, index)

    def _fail_waiters(self, index: int, exc: Exception) -> None:
        waiters, self._ready_waiters = self._ready_waiters, []
        for waiting_index, d in waiters:
            if waiting_index == index:
                d.errback(exc)
            else:
                self._ready_waiters.append((waiting_index, d))

    def _start_failed(self, failure: Any) -> None:
        if self._stopping:   # stopped while starting: not a failure to report
            if not self.ready.called:
                self.ready.errback(failure)
                self.ready.addErrback(lambda _: None)
            return
        self._stop_workers()
        super()._start_failed(failure)

    # -- signals and stop ---------------------------------------------------------------
    def signal_workers(self, name: str) -> None:
        for worker in self.workers:
            if worker is not None:
                try:
                    worker.process.signalProcess(name)
                except error.ProcessExitedAlready:
                    pass

    def _stop_workers(self) -> defer.Deferred:
        self._stopping = True
        for call in self._restarts.values():
            if call.active():
                call.cancel()
        self._restarts.clear()
        ending = []
        for worker in self.workers:
            if worker is None or worker.ended.called:
                continue
            ending.append(worker.ended)
            worker.process.closeStdin()   # the lifeline: a worker stops when it closes
            try:
                worker.process.signalProcess("TERM")
            except error.ProcessExitedAlready:
                continue
            kill = self.reactor.callLater(STOP_GRACE, self._kill, worker)
            worker.ended.addCallback(_cancel_if_active, kill)
        for _, d in self._ready_waiters:
            d.errback(defer.CancelledError("supervisor stopping"))
        self._ready_waiters = []
        return defer.DeferredList(ending)

    @staticmethod
    def _kill(worker: _WorkerProtocol) -> None:
        log.warn("worker {worker} did not stop in time: killing it", worker=worker.index)
        try:
            worker.process.signalProcess("KILL")
        except error.ProcessExitedAlready:
            pass

    @defer.inlineCallbacks
    def stopService(self) -> Any:  # noqa: N802
        super().stopService()
        self._sighup.remove()
        yield self._stop_workers()
        reserved, self._reserved = self._reserved, []
        for sock in reserved:
            sock.close()
        if self._route_dir is not None:
            shutil.rmtree(self._route_dir, ignore_errors=True)
            self._route_dir = None


def check_embedding(actions: Any) -> None:
    """Handlers registered in code live in this process only: workers load the config's."""
    if actions is not None:
        raise ConfigError("[server] workers > 1: custom actions must be named in the config "
                          "([actions] handlers), not passed to makeService")
