"""One throwaway PostgreSQL for the whole test run, and a fresh database per test.

Where the server comes from, in order:
- ``WYSEMAN_TEST_DSN``: an existing server (a superuser DSN; local roles must be
  able to log in without a password, e.g. ``trust`` on the socket);
- otherwise a cluster created in a temporary directory with the ``pgserver``
  wheel's binaries (or the system's, via ``WYSEMAN_PG_BINDIR`` / ``pg_config``),
  removed when the test process exits.

Each test gets its own database (copied from a template that already holds the
bootstrap schema) and its own role names, and both are dropped in cleanup, so
nothing leaks between tests.
"""

from __future__ import annotations

import atexit
import itertools
import os
import secrets
import socket
import tempfile
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extensions

from wyseman.db.pg import dsn_with
from wyseman.provision.cluster import ClusterError, LocalCluster

_cluster: LocalCluster | None = None
_base_dsn: str | None = None
_templates: dict[str, str] = {}
_counter = itertools.count(1)


def cluster() -> LocalCluster | None:
    """The test run's own cluster (None when WYSEMAN_TEST_DSN names an external one)."""
    base_dsn()
    return _cluster


def base_dsn() -> str:
    """Superuser DSN to the ``postgres`` database of the test server (started on first use)."""
    global _cluster, _base_dsn
    if _base_dsn is not None:
        return _base_dsn
    external = os.environ.get("WYSEMAN_TEST_DSN")
    if external:
        _base_dsn = external
        return _base_dsn
    root = Path(tempfile.mkdtemp(prefix="wyseman-test-pg-"))
    os.chmod(root, 0o755)
    # TCP on a free loopback port too, for tools that need TCP (pgbench -h, psql -h).
    _cluster = LocalCluster(root / "data", port=free_port(), listen_tcp=True,
                            socket_dir=root / "sock")
    _cluster.init()
    start_on_a_free_port(_cluster)
    atexit.register(_remove_cluster, root)
    _base_dsn = _cluster.dsn("postgres")
    return _base_dsn


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_on_a_free_port(cluster: LocalCluster, tries: int = 3) -> None:
    """Start ``cluster``; if it cannot (its TCP port, free when probed, was taken since:
    by another trial worker's cluster or a test server), again on another free port."""
    for attempt in range(1, tries + 1):
        try:
            cluster.start()
            return
        except ClusterError:
            if attempt == tries:
                raise
            cluster.port = free_port()


def _remove_cluster(root: Path) -> None:
    if _cluster is not None:
        _cluster.remove()
    import shutil
    shutil.rmtree(root, ignore_errors=True)


def connect_sync(dsn: str) -> psycopg2.extensions.connection:
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    return conn


def run_sync(dsn: str, statement: str, params: Any = None) -> list[tuple]:
    """Run one statement synchronously (for test set-up and checks)."""
    conn = connect_sync(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(statement, params)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


def _template(kind: str) -> str:
    """Name of a template database of ``kind`` ('empty' or 'bootstrap'), made once per run."""
    if kind in _templates:
        return _templates[kind]
    name = f"wyseman_tpl_{kind}_{os.getpid()}"
    base = base_dsn()
    run_sync(base, f'drop database if exists "{name}"')
    run_sync(base, f'create database "{name}" template template0 encoding \'UTF8\'')
    if kind == "bootstrap":
        from wyseman.provision.bootstrap import bootstrap_sql_sync
        bootstrap_sql_sync(dsn_with(base, dbname=name))
    _templates[kind] = name
    atexit.register(_drop_database, name)
    return name


def _drop_database(name: str) -> None:
    try:
        run_sync(base_dsn(), f'drop database if exists "{name}" with (force)')
    except psycopg2.Error:
        pass


class TestDatabase:
    """A database (and roles) owned by one test; dropped by :meth:`cleanup`."""

    def __init__(self, kind: str = "bootstrap") -> None:
        self.name = f"wt_{os.getpid()}_{next(_counter)}_{secrets.token_hex(3)}"
        self.roles: list[str] = []
        base = base_dsn()
        run_sync(base, f'create database "{self.name}" template "{_template(kind)}"')
        self.dsn = dsn_with(base, dbname=self.name)

    def role_name(self, prefix: str = "u") -> str:
        """A role name unique to this test (roles are cluster-wide); dropped at cleanup."""
        name = f"{prefix}_{secrets.token_hex(4)}"
        self.roles.append(name)
        return name

    def run(self, statement: str, params: Any = None) -> list[tuple]:
        return run_sync(self.dsn, statement, params)

    def user_dsn(self, role: str) -> str:
        return dsn_with(self.dsn, user=role)

    def cleanup(self) -> None:
        base = base_dsn()
        run_sync(base, f'drop database if exists "{self.name}" with (force)')
        for role in self.roles:
            # Roles may own objects in other databases only if a test leaked them.
            try:
                run_sync(base, f'drop role if exists "{role}"')
            except psycopg2.Error:
                pass


def fresh_database(testcase: Any, kind: str = "bootstrap") -> TestDatabase:
    """A :class:`TestDatabase` dropped when ``testcase`` finishes."""
    db = TestDatabase(kind)
    testcase.addCleanup(db.cleanup)
    return db
