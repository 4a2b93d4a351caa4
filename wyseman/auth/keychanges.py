"""The key changes a login being checked must not miss.

A login reads the user's stored keys, checks the signature (maybe on a helper thread),
then opens; a key removed in between is announced by a ``wyseman_auth`` notification
that closes the user's *open* sockets only. :class:`KeyChanges` is the record the
gateway keeps of those announcements, so that the login decision
(:mod:`wyseman.auth.admission`) can refuse a login whose key went while it was checked.
"""

from __future__ import annotations

from collections import OrderedDict

#: key changes remembered for logins being checked (a login takes milliseconds: more
#: changes than this during one make it refused, to be safe)
AUTH_CHANGES_KEPT = 4096


class KeyChanges:
    """The ``wyseman_auth`` notifications seen (:attr:`count`), and the latest one of each
    of the ``kept`` users changed last.

    A login reads the user's stored keys, checks the signature on a helper thread, then
    opens; a key removed in between is announced by a notification that closes the user's
    open sockets only. So a login notes :attr:`count` before it reads the keys and asks
    :meth:`gone_since` before it opens."""

    def __init__(self, kept: int = AUTH_CHANGES_KEPT) -> None:
        self.kept = kept
        self.count = 0
        self._gap_ended_at = 0     # count when changes were last missed (see missed)
        self._latest: OrderedDict[str, tuple[int, frozenset[str]]] = OrderedDict()

    def announce(self) -> int:
        """A change was announced (its keys not read yet): → its number, for
        :meth:`record`."""
        self.count += 1
        return self.count

    def record(self, user: str, remaining: frozenset[str], at: int | None = None) -> None:
        """``user``'s keys are ``remaining`` (their x values) as read after the change
        announced as number ``at`` (:meth:`announce`; None: a change announced now)."""
        if at is None:
            at = self.announce()
        self._latest[user] = (at, remaining)
        self._latest.move_to_end(user)
        if len(self._latest) > self.kept:
            self._latest.popitem(last=False)

    def missed(self) -> None:
        """Changes may have been announced while nobody listened (the LISTEN connection
        was down): every login that began before now is refused (:meth:`gone_since`)."""
        self.count += 1
        self._gap_ended_at = self.count

    def gone_since(self, user: str, key_x: str | None, seen: int) -> bool:
        """Whether a change after the first ``seen`` took the key ``key_x`` (None: a login
        without a key, which any change of the user's keys ends, as for open sockets)."""
        if self.count == seen:
            return False
        if seen < self._gap_ended_at:
            return True
        latest = self._latest.get(user)
        if latest is None:   # no change of this user since, unless it was forgotten
            return self.count - seen > self.kept
        changed_at, remaining = latest
        return changed_at > seen and key_x not in remaining
