"""A local PostgreSQL cluster: initdb, start, stop, with the binaries of the
``pgserver`` wheel (or of the system).

Why not ``pgserver.get_server``: it blocks, registers ``atexit`` handlers,
takes a global lock file and kills other postmasters that share the data
path; a server process needs an explicit start/stop it controls (and the test
suite needs to stop and restart one cluster). We reuse the wheel's binaries and
nothing else. The methods here block (they run ``pg_ctl -w``); the Twisted
service calls them in a thread.

When run as root, PostgreSQL refuses to start; the cluster then belongs to an
unprivileged system user (``wyseman-pg``, created on demand) and the
directories above the data directory get the traverse bit so that user can
reach it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from twisted.logger import Logger

log = Logger(namespace="wyseman.embedded")

RUN_AS_ROOT_USER = "wyseman-pg"


class ClusterError(RuntimeError):
    """A cluster could not be created, started or stopped; the message says why."""


def find_bindir() -> Path:
    """Directory with initdb/pg_ctl/postgres: ``WYSEMAN_PG_BINDIR``, the pgserver wheel,
    or the system's ``pg_config --bindir`` / PATH."""
    env = os.environ.get("WYSEMAN_PG_BINDIR")
    if env:
        return Path(env)
    # Locate the wheel without importing it: its import has side effects (runtime dirs).
    spec = importlib.util.find_spec("pgserver")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            bindir = Path(location) / "pginstall" / "bin"
            if (bindir / "pg_ctl").exists():
                return bindir
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True)
        if out.returncode == 0 and (Path(out.stdout.strip()) / "pg_ctl").exists():
            return Path(out.stdout.strip())
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    raise ClusterError(
        "no PostgreSQL binaries found: install the embedded extra "
        "(pip install 'wyseman[embedded]') or set WYSEMAN_PG_BINDIR")


def _ensure_system_user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    result = subprocess.run(
        [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
        capture_output=True, text=True)
    if result.returncode != 0:
        raise ClusterError(f"cannot create system user {name!r}: {result.stderr.strip()}")
    log.warn("running as root: created the system user {name!r} to own the embedded "
             "PostgreSQL (PostgreSQL refuses to run as root)", name=name)
    return pwd.getpwnam(name)


def _grant_traverse(path: Path) -> None:
    """Give 'others' the execute bit on every parent, so the cluster owner can reach it."""
    for parent in reversed(path.resolve().parents):
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            os.chmod(parent, mode | stat.S_IXOTH)
            log.warn("running as root: added the execute bit for others to {path} so "
                     "that the embedded PostgreSQL's user can reach its data directory",
                     path=str(parent))


@dataclass
class LocalCluster:
    """One PostgreSQL data directory on this machine.

    It listens on a Unix socket in ``socket_dir`` (short path, mode 0700) and,
    if ``port`` is set, on TCP 127.0.0.1:port too. Authentication is ``trust``
    for local connections only, so every role can log in without a password from
    this machine's socket: that is how the gateway opens per-role sessions.
    """

    data_dir: Path
    bindir: Path = field(default_factory=find_bindir)
    port: int = 5432
    listen_tcp: bool = False
    socket_dir: Path | None = None
    superuser: str = "postgres"
    extra_settings: Sequence[str] = ()

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).resolve()
        self._owner = None
        if os.geteuid() == 0:
            self._owner = _ensure_system_user(RUN_AS_ROOT_USER)
        if self.socket_dir is None:
            # Unix socket paths are limited to ~107 bytes: use a short, stable directory.
            digest = hashlib.sha1(str(self.data_dir).encode()).hexdigest()[:12]
            self.socket_dir = Path(tempfile.gettempdir()) / f"wyseman-pg-{digest}"

    # -- helpers ---------------------------------------------------------
    def _run(self, args: list[str], timeout: float = 120) -> str:
        kwargs: dict = {}
        if self._owner is not None:
            kwargs.update(user=self._owner.pw_uid, group=self._owner.pw_gid,
                          extra_groups=[], cwd="/")
        env = dict(os.environ, LC_ALL="C", LANG="C")
        try:
            result = subprocess.run(args, capture_output=True, text=True, timeout=timeout,
                                    env=env, **kwargs)
        except subprocess.TimeoutExpired:
            raise ClusterError(f"{Path(args[0]).name} did not finish in {timeout:.0f}s") from None
        except OSError as exc:
            raise ClusterError(f"cannot run {args[0]}: {exc.strerror or exc}") from None
        if result.returncode != 0:
            detail = (result.stderr or result.stdout).strip().splitlines()[-5:]
            raise ClusterError(f"{Path(args[0]).name} failed: " + " | ".join(detail))
        return result.stdout

    def _chown(self, path: Path) -> None:
        if self._owner is not None:
            stat_now = path.stat()
            if (stat_now.st_uid, stat_now.st_gid) != (self._owner.pw_uid, self._owner.pw_gid):
                os.chown(path, self._owner.pw_uid, self._owner.pw_gid)
                log.info("running as root: {path} now belongs to {user!r}", path=str(path),
                         user=self._owner.pw_name)

    @property
    def initialized(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    @property
    def log_file(self) -> Path:
        return self.data_dir / "server.log"

    # -- life cycle -----------------------------------------------------
    def init(self) -> bool:
        """Create the cluster if the directory holds none; True if it was created."""
        if self.initialized:
            return False
        self.data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.data_dir, 0o700)
        self._chown(self.data_dir)
        if self._owner is not None:
            _grant_traverse(self.data_dir)
        self._run([str(self.bindir / "initdb"), "-D", str(self.data_dir), "-U", self.superuser,
                   "--auth-local=trust", "--auth-host=reject", "--encoding=UTF8",
                   "--locale=C", "--no-instructions"])
        with open(self.data_dir / "pg_hba.conf", "w") as hba:
            hba.write("# written by wyseman: local socket only, trust\n"
                      "local all all trust\n"
                      "host all all 127.0.0.1/32 trust\n"
                      "host all all ::1/128 trust\n")
        self._chown(self.data_dir / "pg_hba.conf")
        return True

    def is_running(self) -> bool:
        try:
            self._run([str(self.bindir / "pg_ctl"), "-D", str(self.data_dir), "status"])
            return True
        except ClusterError:
            return False

    def postmaster_pid(self) -> int | None:
        """The running server's process id (its ``postmaster.pid``), or None."""
        try:
            return int((self.data_dir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def start(self) -> None:
        """Start the server and wait until it accepts connections (idempotent)."""
        if not self.initialized:
            raise ClusterError(f"{self.data_dir}: no cluster here (run init first)")
        if self.is_running():
            return
        assert self.socket_dir is not None
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.socket_dir, 0o700)
        self._chown(self.socket_dir)
        listen = "127.0.0.1" if self.listen_tcp else ""
        options = [f"-c listen_addresses='{listen}'", f"-c port={self.port}",
                   f"-c unix_socket_directories='{self.socket_dir}'",
                   "-c timezone=UTC", "-c max_connections=300"]
        options += [f"-c {setting}" for setting in self.extra_settings]
        try:
            self._run([str(self.bindir / "pg_ctl"), "-D", str(self.data_dir), "-w", "-t", "60",
                       "-l", str(self.log_file), "-o", " ".join(options), "start"])
        except ClusterError as exc:
            raise ClusterError(f"{exc}; server log: {self.log_file}") from None

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (idempotent); ``fast`` rolls back open transactions."""
        if self.initialized and self.is_running():
            self._run([str(self.bindir / "pg_ctl"), "-D", str(self.data_dir), "-w", "-t", "60",
                       "-m", mode, "stop"])

    def remove(self) -> None:
        """Stop and delete the data and socket directories."""
        self.stop("immediate")
        shutil.rmtree(self.data_dir, ignore_errors=True)
        if self.socket_dir is not None:
            shutil.rmtree(self.socket_dir, ignore_errors=True)

    def dsn(self, dbname: str = "postgres", user: str | None = None) -> str:
        """libpq connection string for this cluster's Unix socket."""
        return (f"host={self.socket_dir} port={self.port} dbname={dbname} "
                f"user={user or self.superuser}")

    def run_psql(self, sql: str, dbname: str = "postgres") -> str:
        """Run SQL with psql (for tooling and tests)."""
        return self._run([str(self.bindir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1",
                          "-d", self.dsn(dbname), "-c", sql])
