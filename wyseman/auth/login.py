"""Who is connecting: the login decision of docs/protocol.md, 4.1 "Order of the checks",
without sockets.

:class:`Authenticator` takes what the upgrade request says (:class:`Handshake`)
and returns a Deferred of :class:`Login`, or fails with :class:`Refusal` carrying
the status code the JS clients expect, the reason sent to the client (the JS
server's words, nothing more) and a detailed reason for the log.
"""

from __future__ import annotations

import fnmatch
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from wyseman.auth import credentials as cred
from wyseman.auth.seams import PlacingReplayGuard, ReplayGuard, SignatureVerifier
from wyseman.auth.signatures import SignatureChecker
from wyseman.db import pg
from wyseman.db.pool import DatabaseUnavailable, PoolBusy, PoolClosed

log = Logger(namespace="wyseman.auth")

INVALID_LOGIN = (403, "Invalid Login")
INVALID_DATE = (400, "Invalid Date Stamp")
NO_CREDENTIALS = (401, "No login credentials")
BAD_REQUEST = (400, "Bad Request")


class Refusal(Exception):
    """A refused upgrade: ``status`` and ``reason`` go to the client, ``detail`` to the log."""

    def __init__(self, status: int, reason: str, detail: str, kind: str) -> None:
        super().__init__(f"{status} {reason}: {detail}")
        self.status = status
        self.reason = reason
        self.detail = detail
        self.kind = kind  # short label for metrics: bad_signature, stale_date, ...


#: Refusal kinds that mean wrong or missing credentials: the failed logins counted per
#: address (``max_failures``); every other refusal is the server's or the request's.
CREDENTIAL_FAILURES = frozenset({
    "bad_user", "bad_key", "bad_token", "bad_date", "stale_date", "no_key",
    "bad_signature", "replay", "unknown_user", "no_credentials"})


def refuse(code: tuple[int, str], detail: str, kind: str) -> Refusal:
    return Refusal(code[0], code[1], detail, kind)


@dataclass(frozen=True)
class PeerLogin:
    """A login sent as the first message of a libp2p stream (docs/protocol.md, 15.3)
    rather than in an upgrade's query: ``fields`` stand for the query's parameters
    (``user``, ``token``, ``pub``, ``sign``, ``date``; strings, validated by the
    transport), ``listen`` for the decoded ``db`` (checked here, as ``db`` is), and a
    key login signs :func:`~wyseman.auth.credentials.p2p_signed_message` of the two
    peer ids instead of the ``/clientinfo`` message."""

    fields: Mapping[str, str]
    listen: Any
    server_peer: str
    client_peer: str


@dataclass(frozen=True)
class Handshake:
    """What the upgrade request carries, already reduced to the parts we check."""

    query: str                 # raw query string (after '?')
    ip: str                    # client address as /clientinfo reports it
    cookie: str | None
    user_agent: str | None
    secure: bool               # the socket is TLS
    insecure_allowed: bool     # this endpoint may accept insecure logins
    #: a libp2p stream's login (then ``query``, ``cookie`` and ``user_agent`` are unused)
    peer: PeerLogin | None = None


@dataclass(frozen=True)
class Login:
    user: str
    listen: tuple[str, ...]
    method: str                # 'ticket', 'key' or 'insecure'
    key_x: str | None = None   # the public key used (its x), to close sockets when it goes
    #: the user's connection place, when the credential check reserved it already
    #: (:class:`~wyseman.auth.seams.PlacingReplayGuard`): True held (to be released by
    #: whoever takes this login), False refused; None: not asked
    place: bool | None = None


#: Channel on which the schema's trigger announces changed or removed credentials: the
#: server's own, never one a client may LISTEN to.
AUTH_CHANNEL = "wyseman_auth"


@dataclass
class ChannelPolicy:
    """Which channels a role may LISTEN to (exact names or fnmatch patterns); never the
    server's own :data:`AUTH_CHANNEL`, whatever a pattern matches."""

    allow: Sequence[str] = ()
    roles: Mapping[str, Sequence[str]] = field(default_factory=dict)

    def allowed(self, role: str, channel: str) -> bool:
        if channel == AUTH_CHANNEL:
            return False
        patterns = (*self.allow, *self.roles.get(role, ()))
        return any(channel == p or fnmatch.fnmatchcase(channel, p) for p in patterns)


class FailureLimiter:
    """Counts failed logins per address in a sliding window; over the limit → 429."""

    def __init__(self, limit: int, window: float, max_addresses: int = 100_000) -> None:
        self.limit = limit
        self.window = window
        self.max_addresses = max_addresses
        self._failures: dict[str, list[float]] = {}

    def blocked(self, address: str, now: float) -> bool:
        stamps = self._failures.get(address)
        if not stamps:
            return False
        while stamps and stamps[0] <= now - self.window:
            stamps.pop(0)
        if not stamps:
            del self._failures[address]
            return False
        return len(stamps) >= self.limit

    def failed(self, address: str, now: float) -> None:
        if address not in self._failures and len(self._failures) >= self.max_addresses:
            self._prune(now)
        self._failures.setdefault(address, []).append(now)

    def _prune(self, now: float) -> None:
        for address in list(self._failures):
            if self._failures[address][-1] <= now - self.window:
                del self._failures[address]
        while len(self._failures) >= self.max_addresses:  # still full: forget the oldest
            del self._failures[next(iter(self._failures))]


class Authenticator:
    """Decides logins; the database lookups go through ``db`` (a :class:`Database`)."""

    def __init__(self, db: Any, clock: Any, *, date_window: float = 60.0,
                 channels: ChannelPolicy | None = None, max_failures: int = 20,
                 failure_window: float = 60.0, replay: ReplayGuard | None = None,
                 signatures: SignatureVerifier | None = None) -> None:
        """``replay``: where accepted signatures are remembered, an object with
        ``check(user, sign, now)`` → outcome or Deferred of it (default: a
        :class:`~wyseman.auth.credentials.ReplayCache` of this process).
        ``signatures``: what checks them, an object with ``verifying_key(conn_pub,
        message, sign)`` → Deferred of the key or None (default: checked on this thread)."""
        self.db = db
        self.clock = clock
        self.date_window = date_window
        self.channels = channels or ChannelPolicy()
        self.limiter = FailureLimiter(max_failures, failure_window)
        # Accepted signatures are refused again for 2× the window (D2).
        self.replay = replay if replay is not None else cred.ReplayCache.for_window(date_window)
        #: a replay guard that reserves the user's place in the same step: the login
        #: then carries its place (:attr:`Login.place`)
        self.placing = self.replay if isinstance(self.replay, PlacingReplayGuard) else None
        self.signatures = signatures if signatures is not None else SignatureChecker(1, None)

    def authenticate(self, handshake: Handshake) -> defer.Deferred[Login]:
        now = self.clock.seconds()
        if self.limiter.blocked(handshake.ip, now):
            return defer.fail(Refusal(429, "Too Many Requests",
                                      "too many failed logins from this address",
                                      "rate_limited"))
        d = defer.maybeDeferred(self._decide, handshake, now)

        def failed(failure: Any) -> Any:
            # Only wrong credentials count towards the limit: a refusal for the server's
            # own reasons (the database down, a full cache, a bug) must not lock out the
            # correct logins that follow it.
            if failure.check(Refusal):
                if failure.value.kind in CREDENTIAL_FAILURES:
                    self.limiter.failed(handshake.ip, now)
                return failure
            # Anything unexpected (database down, bug): never hang the client (D4).
            if failure.check(DatabaseUnavailable, PoolClosed, PoolBusy) or \
                    pg.is_connection_error(failure):
                log.warn("login check for {ip}: the database is unavailable: {why}",
                         ip=handshake.ip, why=failure.getErrorMessage())
                return defer.fail(Refusal(503, "The database is unavailable",
                                          "the database is unavailable", "unavailable"))
            log.failure("login check failed for {ip}", failure, ip=handshake.ip)
            return defer.fail(Refusal(503, "Login check failed",
                                      f"login check failed: {failure.getErrorMessage()}",
                                      "error"))
        return d.addErrback(failed)

    @defer.inlineCallbacks
    def _decide(self, hs: Handshake, now: float) -> Any:
        if hs.peer is None:
            try:
                params = cred.parse_query(hs.query)
            except cred.CredentialError as exc:
                raise refuse(BAD_REQUEST, f"query: {exc.reason}", "bad_query")
        else:
            params = dict(hs.peer.fields)
        user = params.get("user") or ""
        token = params.get("token") or ""
        pub = params.get("pub") or ""
        sign = params.get("sign") or ""
        date = params.get("date") or ""
        try:
            if hs.peer is None:
                listen = cred.decode_listen(params.get("db") or None)
            else:
                listen = cred.check_channels(hs.peer.listen or [], "listen")
        except cred.CredentialError as exc:
            raise refuse(BAD_REQUEST, f"channels: {exc.reason}", "bad_channels")
        if user and len(user.encode()) > 63:
            raise refuse(INVALID_LOGIN, "user name longer than 63 bytes", "bad_user")
        if user:
            for channel in listen:
                if not self.channels.allowed(user, channel):
                    raise Refusal(403, "Channel not allowed",
                                  f"user {user!r} may not listen to {channel!r}", "channel")

        if user and token and pub:                                     # step 1: ticket
            try:
                pub_json, jwk = cred.decode_public_jwk(pub)
            except cred.CredentialError as exc:
                raise refuse(INVALID_LOGIN, f"ticket login: pub: {exc.reason}", "bad_key")
            valid = yield self.db.token_valid(user, token, pub_json)
            if not valid:
                raise refuse(INVALID_LOGIN, f"ticket login: token not valid for {user!r}",
                             "bad_token")
            return Login(user, listen, "ticket", jwk.get("x"))

        if user and sign and date:                                     # step 2: key
            try:
                stamp = cred.parse_client_date(date)
            except cred.CredentialError as exc:
                raise refuse(INVALID_DATE, f"key login: date: {exc.reason}", "bad_date")
            wall = datetime.fromtimestamp(now, UTC)
            if not cred.check_date_window(stamp, wall, self.date_window):
                raise refuse(INVALID_DATE, f"key login: date {date!r} outside the window",
                             "stale_date")
            conn_pub = yield self.db.conn_pub(user)
            if conn_pub is None:
                raise refuse(INVALID_LOGIN, f"key login: no key stored for {user!r}",
                             "no_key")
            if hs.peer is None:
                message = cred.signed_message(hs.ip, hs.cookie, hs.user_agent, date)
            else:
                message = cred.p2p_signed_message(hs.peer.server_peer, hs.peer.client_peer,
                                                  date)
            key = yield self.signatures.verifying_key(conn_pub, message, sign)
            if key is None:
                raise refuse(INVALID_LOGIN, f"key login: bad signature for {user!r}",
                             "bad_signature")
            place = None
            if self.placing is not None:
                outcome, place = yield self.placing.check_placing(user, sign, now)
            else:
                outcome = yield defer.maybeDeferred(self.replay.check, user, sign, now)
            if outcome == cred.FULL:
                raise refuse(INVALID_LOGIN, "key login: replay cache full, login refused",
                             "replay_cache_full")
            if outcome != cred.NEW:
                raise refuse(INVALID_LOGIN, f"key login: replayed signature for {user!r}",
                             "replay")
            return Login(user, listen, "key", key.get("x"), place)

        if user and not hs.secure and hs.insecure_allowed:             # step 3: insecure
            exists = yield self.db.user_exists(user)
            if not exists:
                raise refuse(NO_CREDENTIALS, f"insecure login: unknown user {user!r}",
                             "unknown_user")
            return Login(user, listen, "insecure")

        raise refuse(NO_CREDENTIALS, "no token or signature", "no_credentials")


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return host in ("localhost",)
