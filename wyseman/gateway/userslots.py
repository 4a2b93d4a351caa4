"""``[limits] max_connections_per_user``: each user's connections, counted from the moment
a login is accepted.

A connection is counted when its login has been checked and before it opens (not when it
opens): logins of one user that are checked at the same time cannot all pass the bound
because none of them is open yet. With ``[server] workers`` the supervisor keeps the one
count of all the workers (:class:`UserSlots` with a holder per worker, asked over the
control pipe: :class:`wyseman.application.workers.worker.SupervisorChannel`), so that
the bound is the user's,
not each worker's.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from twisted.internet import defer


class UserSlots:
    """At most ``limit`` connections a user; ``holder`` tells apart who holds them (the
    workers of a supervisor), so that all of one holder's can be let go at once."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._counts: dict[str, int] = {}
        self._held: dict[Hashable, dict[str, int]] = {}

    def count(self, user: str) -> int:
        return self._counts.get(user, 0)

    def reserve(self, user: str, holder: Hashable = None) -> bool:
        """Count one more connection of ``user``: False (and nothing counted) if that
        would exceed the limit."""
        count = self._counts.get(user, 0)
        if count >= self.limit:
            return False
        self._counts[user] = count + 1
        held = self._held.setdefault(holder, {})
        held[user] = held.get(user, 0) + 1
        return True

    def release(self, user: str, holder: Hashable = None) -> None:
        """One connection of ``user`` closed (one that ``holder`` reserved; a release
        without a reservation is ignored)."""
        held = self._held.get(holder)
        if not held or user not in held:
            return
        self._drop(held, user, 1)
        if not held:
            del self._held[holder]

    def release_holder(self, holder: Hashable) -> int:
        """Everything ``holder`` had (a worker that ended: its sockets are gone); how
        many connections that was."""
        held = self._held.pop(holder, {})
        total = sum(held.values())
        for user, count in list(held.items()):
            self._drop(held, user, count)
        return total

    def _drop(self, held: dict[str, int], user: str, count: int) -> None:
        left = held[user] - count
        if left > 0:
            held[user] = left
        else:
            del held[user]
        total = self._counts[user] - count
        if total > 0:
            self._counts[user] = total
        else:
            del self._counts[user]


class LocalSlots:
    """The count of this process, with the interface a worker's channel to its
    supervisor has (a Deferred answer)."""

    def __init__(self, limit: int) -> None:
        self.slots = UserSlots(limit)

    def reserve(self, user: str) -> defer.Deferred[Any]:
        return defer.succeed(self.slots.reserve(user))

    def release(self, user: str) -> None:
        self.slots.release(user)

    def count(self, user: str) -> Any:
        return self.slots.count(user)
