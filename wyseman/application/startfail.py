"""Why a server could not start, as one line, and a process that then exits non-zero.

A start that cannot work (the database unreachable, a port in use, a certificate
missing) must end the process with a status a service manager sees (systemd's
``Restart=on-failure``, a container's restart policy) and one line naming the cause
and the setting to look at, not a traceback whose last line is the reason.
"""

from __future__ import annotations

import atexit
import os
import sys
from typing import Any

from twisted.internet.error import CannotListenError

from wyseman.config import Config, ConfigError


class StartError(Exception):
    """A start that cannot work, with its one-line reason (naming the config key)."""


def one_line(text: str) -> str:
    """``text`` (libpq messages span several lines) as one line."""
    parts = [part.strip() for part in str(text).splitlines() if part.strip()]
    return "; ".join(parts)


def reason(failure: Any, config: Config | None = None) -> str | None:
    """The one-line reason of a failed start, or None for an unexpected error (a bug,
    whose traceback is what helps)."""
    from wyseman.application.tls import TLSConfigError
    from wyseman.db.pool import DatabaseUnavailable
    from wyseman.provision.cluster import ClusterError
    error = failure.value
    if isinstance(error, (StartError, ConfigError, TLSConfigError)):
        return one_line(str(error))
    if isinstance(error, CannotListenError):
        where = f"{error.interface or '*'}:{error.port}"
        why = getattr(error.socketError, "strerror", None) or error.socketError
        return f"cannot listen on {where}: {one_line(str(why))} ([server] listen)"
    if isinstance(error, ClusterError):
        return f"embedded PostgreSQL: {one_line(str(error))} ([database] embedded)"
    import psycopg2
    if isinstance(error, (DatabaseUnavailable, psycopg2.OperationalError)):
        key = "[database] embedded" if config is not None and config.embedded \
            else "[database] dsn"
        target = ""
        if config is not None and not config.embedded and config.database.dsn:
            target = f" ({describe_dsn(config.database.dsn)})"
        return f"cannot connect to the database{target}: {one_line(str(error))} ({key})"
    return None


def describe_dsn(dsn: str) -> str:
    """A DSN as it may be logged: host, port, database and user, never a password."""
    from wyseman.db.pg import dsn_params
    try:
        params = dsn_params(dsn)
    except Exception:
        return "an unparsable DSN"
    shown = [f"{key}={params[key]}" for key in ("host", "port", "dbname", "user")
             if params.get(key)]
    return " ".join(shown) or "libpq defaults"


def exit_nonzero_at_exit(status: int = 1) -> None:
    """Make this process end with ``status`` once everything else is done (twistd
    returns 0 after a reactor stopped by a failed start; its own clean-up still runs)."""
    def leave() -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    atexit.register(leave)


def stop_reactor(reactor: Any) -> None:
    """Stop ``reactor`` once, whoever asks first (a second ``stop`` raises)."""
    from twisted.internet.error import ReactorNotRunning
    if not reactor.running:
        reactor.callWhenRunning(stop_reactor, reactor)
        return
    try:
        reactor.stop()
    except ReactorNotRunning:
        pass
