"""File descriptors: what the limits imply, and the process's ``RLIMIT_NOFILE``.

Every open socket, pending HTTP connection and database connection takes a descriptor.
A soft limit below what ``[limits]`` allow (the common default is 1,024) does not fail
at start: it fails later, when accepts and database connects get ``EMFILE`` and new
logins are blocked for everyone until descriptors come free. So the start raises the
soft limit up to the hard one where that is enough, and says so when it is not.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass

from twisted.logger import Logger

from wyseman.config import Config

log = Logger(namespace="wyseman.service")

#: descriptors beyond the limits' sum: listening sockets, the admin and LISTEN
#: connections, log and certificate files, the helper threads' and PostgreSQL's pipes
SPARE_DESCRIPTORS = 64


def descriptors_needed(config: Config, endpoints: int) -> int:
    """What one serving process may hold open at once under ``config``'s limits, with
    ``endpoints`` listening endpoints."""
    limits = config.limits
    return (limits.max_connections + endpoints * limits.max_pending_connections
            + config.database.pool_total + SPARE_DESCRIPTORS)


@dataclass(frozen=True)
class Plan:
    """What to do about the soft limit: set it to ``soft`` (None: leave it), and
    whether even that is short of what the limits imply."""

    soft: int | None
    short: bool


def plan(needed: int, soft: int, hard: int) -> Plan:
    """The soft limit to set for ``needed`` descriptors, given the current ``soft`` and
    ``hard`` limits (``resource.RLIM_INFINITY`` for no hard limit)."""
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return Plan(None, False)
    if hard == resource.RLIM_INFINITY or hard >= needed:
        return Plan(needed, False)
    return Plan(hard if hard > soft else None, True)


def ensure_descriptors(config: Config, endpoints: int) -> None:
    """Raise this process's soft ``RLIMIT_NOFILE`` to what the limits need (up to the
    hard limit), logging what was done; warn when the hard limit is too low."""
    needed = descriptors_needed(config, endpoints)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    decided = plan(needed, soft, hard)
    if decided.soft is not None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (decided.soft, hard))
        log.info("open-file limit (RLIMIT_NOFILE) raised from {old} to {new}",
                 old=soft, new=decided.soft)
    if decided.short:
        log.warn("only {have} file descriptors (RLIMIT_NOFILE, hard limit {hard}) for "
                 "{needed} that [limits] allow (max_connections + max_pending_connections "
                 "per endpoint + [database] pool_total + {spare}): raise the limit "
                 "(systemd: LimitNOFILE=; a shell: ulimit -n) or lower those limits, or "
                 "logins fail once descriptors run out",
                 have=decided.soft or soft, hard=hard, needed=needed,
                 spare=SPARE_DESCRIPTORS)
