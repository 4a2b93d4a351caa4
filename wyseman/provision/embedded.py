"""A Twisted service that runs an embedded PostgreSQL for the server's lifetime."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer, threads
from twisted.logger import Logger

from wyseman.provision.cluster import LocalCluster
from wyseman.tuning import affinity

log = Logger(namespace="wyseman.embedded")


class EmbeddedPostgresService(Service):
    """Starts the cluster in ``data_dir`` (creating it on first use) and stops it on shutdown.

    The server owns its data directory: a PostgreSQL found running there at start (left
    by a server that was killed, or by a command) is taken over and stopped with this
    server, like one it started. Run one server per data directory.

    Start-up and shutdown block in ``pg_ctl -w``, so they run in a thread; the
    ``ready`` Deferred fires once PostgreSQL accepts connections, and services
    that need the database wait on it.
    """

    name = "embedded-postgres"  # type: ignore[assignment]  # (Twisted: unannotated `name = None`)

    def __init__(self, data_dir: Path, database: str, admin_user: str = "",
                 keep_off: Iterable[int] = ()) -> None:
        """``keep_off``: CPUs PostgreSQL is kept off (the gateway's reactor thread's,
        ``[server] cpu_affinity``), if the process has others."""
        self.cluster = LocalCluster(Path(data_dir))
        self.database = database
        self.admin_user = admin_user or None
        self.keep_off = frozenset(keep_off)
        self.ready: defer.Deferred = defer.Deferred()
        self._started_by_us = False

    def startService(self) -> defer.Deferred:  # noqa: N802 (Twisted name)
        super().startService()
        d = threads.deferToThread(self._start_blocking)
        d.addCallbacks(self._started, self._failed)
        return d

    def _start_blocking(self) -> str:
        from wyseman.provision.bootstrap import ensure_database_sync, init_database_sync
        created = self.cluster.init()
        if self.cluster.is_running():
            # left by a server that did not stop (kill -9, a lost terminal) or by a
            # command: this server owns its data directory, so it takes it over
            log.warn("PostgreSQL was already running in {data_dir} (pid {pid}), left over "
                     "by an earlier run: using it; it stops with this server",
                     data_dir=str(self.cluster.data_dir), pid=self.cluster.postmaster_pid())
        self.cluster.start()
        self._started_by_us = True
        ensure_database_sync(self.cluster.dsn("postgres"), self.database)
        result = init_database_sync(self.cluster.dsn(self.database))
        dsn = self.cluster.dsn(self.database, user=self.admin_user)
        self._place()
        log.info("embedded PostgreSQL ready in {data_dir} ({state}); schema: {schema}",
                 data_dir=str(self.cluster.data_dir),
                 state="new cluster" if created else "existing cluster",
                 schema=getattr(result, "message", result))
        return dsn

    def _place(self) -> None:
        """PostgreSQL (postmaster, its processes, the backends it forks from now on) off
        the reactor thread's CPUs, so that the backends it wakes do not preempt it."""
        rest = affinity.available_cpus() - self.keep_off
        pid = self.cluster.postmaster_pid() if self.keep_off and rest else None
        if pid is None:
            return
        count = affinity.place_process_tree(pid, rest)
        log.info("embedded PostgreSQL ({count} processes) on CPU {cpus}, off the reactor "
                 "thread's ([server] cpu_affinity)", count=count,
                 cpus=affinity.describe(rest))

    def _started(self, dsn: str) -> str:
        self.ready.callback(dsn)
        return dsn

    def _failed(self, failure: Any) -> Any:
        from wyseman.provision.cluster import ClusterError
        if failure.check(ClusterError):     # said once, by the service that waits for it
            log.debug("embedded PostgreSQL failed to start: {why}",
                      why=failure.getErrorMessage())
        else:
            log.failure("embedded PostgreSQL failed to start", failure)
        if not self.ready.called:
            self.ready.errback(failure)
        return failure

    def stopService(self) -> defer.Deferred:  # noqa: N802 (Twisted name)
        super().stopService()
        if not self._started_by_us:
            return defer.succeed(None)
        log.info("stopping embedded PostgreSQL")
        d = threads.deferToThread(self.cluster.stop)
        d.addErrback(lambda failure: log.failure(
            "embedded PostgreSQL did not stop cleanly ({data_dir})", failure,
            data_dir=str(self.cluster.data_dir)))
        return d
