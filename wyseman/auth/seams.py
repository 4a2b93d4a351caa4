"""What the login decision needs from outside, as typed seams: this process's own
implementations by default, a worker's shared ones (asked over its supervisor's pipe)
when there are several processes, or every host's (tables in PostgreSQL:
wyseman.gateway.cluster) with ``[cluster] shared_state = "postgres"``."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from twisted.internet import defer


class ReplayGuard(Protocol):
    """Remembers accepted signatures for twice the date window (a replay is refused)."""

    def check(self, user: str, sign: str, now: float) -> Any:
        """``NEW`` (now remembered), ``SEEN`` or ``FULL`` (wyseman.auth.credentials), or
        a Deferred of one."""
        ...


@runtime_checkable
class PlacingReplayGuard(ReplayGuard, Protocol):
    """A replay guard that can also reserve the user's connection place (counted by the
    :class:`UserSlots` the login decision holds places in) in the same step: where both
    are kept in the database, a key login then asks it once, not twice."""

    def check_placing(self, user: str, sign: str,
                      now: float) -> defer.Deferred[tuple[str, bool]]:
        """Deferred of (the outcome of :meth:`check`, whether one more connection of
        ``user`` is now counted): a place only with ``NEW``; whoever takes the login
        must release it."""
        ...


class SignatureVerifier(Protocol):
    """Checks a key login's signature, maybe on helper threads."""

    def verifying_key(self, conn_pub: object, message: bytes, sign: str) -> defer.Deferred[Any]:
        """Deferred of the stored key that verifies ``sign`` over ``message``, or of
        None."""
        ...


class UserSlots(Protocol):
    """Each user's open connections, counted from an accepted login to its close: this
    process's (``LocalSlots``) or, with workers, the supervisor's for all of them."""

    def reserve(self, user: str) -> Any:
        """Deferred of whether ``user`` may have one more connection (counted if so)."""
        ...

    def release(self, user: str) -> None:
        ...

    def count(self, user: str) -> Any:
        ...
