"""What a start checks before it touches the network, for ``wyseman config check``.

A config that parses can still not start on this machine: a ``[web] root`` that is not a
directory, a certificate file missing or
not matching its key, a handler module not importable, an endpoint string Twisted does
not take, CPUs the process may not use, no PostgreSQL binaries for an embedded
database. ``config check`` runs these same checks, so that "ok" means the server will
start (given its database answers: ``--connect`` tries that too).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from wyseman.config import Config, ConfigError

if TYPE_CHECKING:
    from wyseman.application.tls import ReloadableContextFactory


def check_startable(config: Config) -> None:
    """:raises ConfigError: (naming the file and key) what would stop the start."""
    from wyseman.application.service import (
        _tls_factory,
        check_cpu_affinity,
        check_p2p,
        check_web,
    )
    check_cpu_affinity(config)
    check_web(config)
    check_p2p(config)
    tls = _tls_factory(config)
    _check_endpoints(config, tls)
    _check_handlers(config)
    if config.embedded:
        from wyseman.provision.cluster import ClusterError, find_bindir
        try:
            find_bindir()
        except ClusterError as exc:
            raise ConfigError(f"{config.source}: [database] embedded: {exc}") from None


def _check_endpoints(config: Config, tls: ReloadableContextFactory | None) -> None:
    from twisted.internet.testing import MemoryReactor

    from wyseman.application.service import _endpoint, derived_clientinfo, parse_listen
    texts = [("[server] listen", t) for t in config.server.listen]
    clientinfo: Sequence[str] | None = config.server.clientinfo_listen
    if clientinfo is None:
        clientinfo = [d for d in (derived_clientinfo(parse_listen(t))
                                  for t in config.server.listen) if d]
    texts += [("[server] clientinfo_listen", t) for t in clientinfo]
    if config.metrics.listen:
        texts.append(("[metrics] listen", config.metrics.listen))
    for key, text in texts:
        try:
            spec = parse_listen(text)
            if spec.kind == "tls" and tls is None:
                raise ConfigError("needs a [tls] certificate")
            _endpoint(MemoryReactor(), spec, tls)   # parsed as the start parses it
        except ConfigError as exc:
            raise ConfigError(f"{config.source}: {key}: {exc}") from None


def _check_handlers(config: Config) -> None:
    from wyseman.gateway.actions import ActionRegistry
    try:
        ActionRegistry.from_config(config)
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"{config.source}: [actions] handlers: {exc}") from None


def try_connect(config: Config) -> str:
    """Connect to the configured database once (``--connect``) → what was reached.
    :raises ConfigError: it could not be reached."""
    from wyseman.application.startfail import describe_dsn, one_line
    from wyseman.provision.admin import admin_dsn_sync
    if config.embedded:
        return "embedded: started with the server"
    dsn = admin_dsn_sync(config)
    import psycopg2
    shared = config.cluster.shared_state == "postgres"
    try:
        timeout = max(1, round(config.database.connect_timeout or 10))
        conn = psycopg2.connect(dsn, connect_timeout=timeout)
        try:
            if shared:
                from wyseman.db.shared import SCHEMA_CHECK_SQL
                with conn.cursor() as cur:
                    cur.execute(SCHEMA_CHECK_SQL)
                    row = cur.fetchone()
                    found = bool(row and row[0])
        finally:
            conn.close()
    except psycopg2.Error as exc:
        raise ConfigError(f"{config.source}: [database] dsn: cannot connect "
                          f"({describe_dsn(dsn)}): {one_line(str(exc))}") from None
    if shared and not found:
        from wyseman.db.shared import SCHEMA_MISSING
        raise ConfigError(f"{config.source}: {SCHEMA_MISSING}")
    return (f"database reached ({describe_dsn(dsn)})"
            + ("; shared state tables found" if shared else ""))
