"""The whole login decision, in the order of docs/protocol.md, 4.1 "Order of the checks":
a transport hands over what its client asked (:class:`LoginRequest`) and gets back an
:class:`Admitted` login or a :class:`~wyseman.auth.login.Refusal`, whatever the reason.

The checks that need no credentials (request shape, origin, capacity) come first; then
the credentials (:class:`~wyseman.auth.login.Authenticator`); then the races a login
can lose while it is checked, which only the decision as a whole can see:

- the user's connection bound (:class:`UserSlots`): counted when the credentials check
  out, not when the socket opens, so logins checked at the same time cannot all pass
  (with the shared state a key login's place is reserved by the credential check
  itself, with its signature: :attr:`~wyseman.auth.login.Login.place`);
- the client left meanwhile (a signature checked on a helper thread, a database
  lookup): its reserved place is given back, and nothing is opened for nobody;
- the user's key removed meanwhile (:class:`KeyChanges`): the removal closed the user's
  open sockets, not this one, so it is refused as if the key had gone before.

So "why was this login refused?" has one answer, here; the transport only turns a
:class:`Refusal` into its own words (an HTTP status for the WebSocket) and logs it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer

from wyseman.auth.keychanges import KeyChanges
from wyseman.auth.login import Authenticator, Handshake, Login, Refusal
from wyseman.auth.origins import OriginPolicy
from wyseman.auth.seams import UserSlots


class ClientLeft(Refusal):
    """The client went away while its login was checked: nobody reads the answer, so it
    is neither a credential failure nor worth a warning."""

    def __init__(self, ip: str) -> None:
        super().__init__(400, "Bad Request", f"{ip} left while its login was checked",
                         "client_left")


@dataclass(frozen=True)
class LoginRequest:
    """What a transport's client asked, reduced to what the decision looks at."""

    handshake: Handshake
    #: the browser page's origin and the host it named (None: not a browser / not sent)
    origin: str | None = None
    host: str | None = None
    #: headers the request repeated that must appear once (a signature covers them)
    repeated_headers: tuple[str, ...] = ()


class Admitted:
    """An accepted login and the connection place it holds: :meth:`release` it when the
    connection ends (idempotent)."""

    __slots__ = ("_slots", "login")

    def __init__(self, login: Login, slots: UserSlots | None) -> None:
        self.login = login
        self._slots = slots

    def release(self) -> None:
        slots, self._slots = self._slots, None
        if slots is not None:
            slots.release(self.login.user)


class Admission:
    """Decides every login of this process, whichever transport it came on."""

    def __init__(self, authenticator: Authenticator, *, origins: OriginPolicy,
                 user_slots: UserSlots, key_changes: KeyChanges,
                 keys_settled: Callable[[str], defer.Deferred[Any]],
                 at_capacity: Callable[[], bool],
                 prepare: Callable[[Login], Any] | None = None) -> None:
        """``keys_settled(user)``: fires once no re-read of the user's announced key
        changes is under way. ``at_capacity()``: whether the process holds its most
        connections. ``prepare(login)``: what must be ready before the connection opens
        (its LISTENs), run once its place is held, so that a client that leaves
        meanwhile is still refused; may return a Deferred."""
        self.authenticator = authenticator
        self.origins = origins
        self.user_slots = user_slots
        self.key_changes = key_changes
        self.keys_settled = keys_settled
        self.at_capacity = at_capacity
        self.prepare = prepare

    def admit(self, request: LoginRequest,
              gone: Callable[[], bool]) -> defer.Deferred[Admitted]:
        """Deferred of :class:`Admitted`, or failing with :class:`Refusal` (a
        :class:`ClientLeft` if ``gone()`` became true meanwhile)."""
        if request.repeated_headers:
            return defer.fail(Refusal(
                400, "Bad Request",
                "repeated " + "/".join(request.repeated_headers) + " header", "bad_headers"))
        problem = self.origins.problem(request.origin, request.host)
        if problem:
            return defer.fail(Refusal(403, "Forbidden", problem, "origin"))
        if self.at_capacity():
            return defer.fail(Refusal(503, "Too many connections (max_connections)",
                                      "max_connections reached", "capacity"))
        return self._admit(request.handshake, gone)

    @defer.inlineCallbacks
    def _admit(self, handshake: Handshake, gone: Callable[[], bool]) -> Any:
        seen = self.key_changes.count          # (see the key check at the end)
        login = yield self.authenticator.authenticate(handshake)
        granted = login.place     # (a key login with the shared state: asked already)
        if granted is None:
            if gone():
                raise ClientLeft(handshake.ip)
            try:
                granted = yield defer.maybeDeferred(self.user_slots.reserve, login.user)
            except Exception as exc:
                # (the count is kept elsewhere: the supervisor, or PostgreSQL for every host)
                raise Refusal(503, "Login check failed", f"could not count the connections "
                              f"of {login.user!r}: {exc}", "unavailable") from exc
        if not granted:
            raise Refusal(503, "Too many connections of this user (max_connections_per_user)",
                          f"max_connections_per_user for {login.user!r}", "user_capacity")
        admitted = Admitted(login, self.user_slots)
        try:
            if gone():
                raise ClientLeft(handshake.ip)
            if self.prepare is not None:
                yield defer.maybeDeferred(self.prepare, login)
            if gone():
                raise ClientLeft(handshake.ip)
            # a key change announced for this user is being read: its outcome decides
            yield self.keys_settled(login.user)
            if gone():
                raise ClientLeft(handshake.ip)
            if self.key_changes.gone_since(login.user, login.key_x, seen):
                raise Refusal(403, "Invalid Login", f"the key of {login.user!r} was removed "
                              "while its login was checked", "key_removed")
        except BaseException:
            admitted.release()
            raise
        return admitted
