"""The statements on the ``wyseman_shared`` tables (provision/schema/008_shared_state.sql,
009_shared_login.sql and 010_shared_calls.sql): what several gateway hosts on one database share
(``[cluster] shared_state = "postgres"``), each one statement on the admin connection.

The policy (what to do with an answer, when to renew, what to log) is the gateway's
(:mod:`wyseman.gateway.cluster`); this module only says it in SQL.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from twisted.internet import defer

from wyseman.db.database import Database

#: the objects the shared state needs (a database `wyseman db init` made before version 6,
#: or a wyselib database, lacks some or all of them)
SCHEMA_CHECK_SQL = """
select to_regclass('wyseman_shared.replay') is not null
   and to_regclass('wyseman_shared.user_slot') is not null
   and to_regprocedure('wyseman_shared.host_sync(text, double precision, text[], integer[])')
       is not null
   and to_regprocedure('wyseman_shared.host_calls(text, text[], bytea[], '
                       'double precision[], double precision[], integer, text[], integer[])')
       is not null"""

# The record and the check at once: a row inserted (or an expired one taken over) is a
# signature not seen before; no row back is a replay. (An expired row is not yet deleted
# between two cleanups: it must not refuse a signature, it only says it was seen long ago.)
_REPLAY_SQL = """
insert into wyseman_shared.replay as r (username, sign_hash, expires)
     values (%(u)s, %(h)s, to_timestamp(%(e)s))
on conflict (username, sign_hash) do update set expires = excluded.expires
      where r.expires < to_timestamp(%(n)s)
  returning 1"""

# How many replay rows there are, counting no further than the bound (a cheap check).
_REPLAY_ROWS_SQL = "select count(*) from (select 1 from wyseman_shared.replay limit %(m)s) r"

# What a host has to say since its previous call, in one round trip: the releases of the
# connections that closed, and for each key login the replay record-and-check above and,
# if the signature was new, the reservation below (010_shared_calls.sql). Prepared on the
# admin connection (it runs at every login: PostgreSQL then neither parses nor plans it
# again); the plain text is for a connection where preparing fails.
_HOST_CALLS_PREPARED = """
select news, grants from wyseman_shared.host_calls(
    $1::text, $2::text[], $3::bytea[], $4::float8[], $5::float8[], $6::integer,
    $7::text[], $8::integer[])"""
_HOST_CALLS_SQL = """
select news, grants from wyseman_shared.host_calls(
    %(h)s, %(u)s::text[], %(s)s::bytea[], %(n)s::float8[], %(e)s::float8[], %(m)s,
    %(cu)s::text[], %(cc)s::integer[])"""

_RESERVE_SQL = "select wyseman_shared.slot_reserve(%(h)s, %(u)s, %(m)s)"
_RENEW_SQL = "select wyseman_shared.host_renew(%(h)s, %(l)s)"
_SYNC_SQL = "select wyseman_shared.host_sync(%(h)s, %(l)s, %(u)s::text[], %(c)s::integer[])"
_LEAVE_SQL = "select wyseman_shared.host_leave(%(h)s)"
_CLEANUP_SQL = "select replays, hosts from wyseman_shared.cleanup(to_timestamp(%(n)s))"
_USER_COUNT_SQL = """
select coalesce(sum(s.count), 0)::int
  from wyseman_shared.user_slot s join wyseman_shared.host h on h.host_id = s.host_id
 where s.username = %(u)s and h.lease_until > clock_timestamp()"""


#: what to do about it
SCHEMA_MISSING = ("[cluster] shared_state = \"postgres\" needs the wyseman_shared schema of "
                  "version 6: run `wyseman db init` (or, on a wyselib database, apply "
                  "wyseman/provision/schema/008_shared_state.sql, 009_shared_login.sql and "
                  "010_shared_calls.sql as the admin role)")


class SharedSchemaMissing(Exception):
    """The database has no ``wyseman_shared`` schema of version 6 or later."""


class SharedTables:
    """The shared tables, through ``db``'s admin pool."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def _one(self, sql: str, params: Mapping[str, Any]) -> defer.Deferred[Any]:
        """The first value of the first row (None without one)."""
        d = self.db.run_admin(lambda conn: conn.execute(sql, params))
        return d.addCallback(lambda result: result.rows[0][0] if result.rows else None)

    def check_schema(self) -> defer.Deferred[Any]:
        """Fires once the objects are found; fails with :class:`SharedSchemaMissing`."""
        def check(found: Any) -> None:
            if not found:
                raise SharedSchemaMissing(SCHEMA_MISSING)
        return self._one(SCHEMA_CHECK_SQL, {}).addCallback(check)

    def record_signature(self, user: str, sign_hash: bytes, now: float,
                         expires: float) -> defer.Deferred[Any]:
        """Deferred of True: not seen before (now recorded until ``expires``, seconds
        since the epoch); False: a replay."""
        d = self._one(_REPLAY_SQL, {"u": user, "h": sign_hash, "e": expires, "n": now})
        return d.addCallback(lambda row: row is not None)

    def host_calls(self, host: str, logins: Sequence[tuple[str, bytes, float, float]],
                   most: int, closed: Mapping[str, int]) -> defer.Deferred[Any]:
        """In one statement: ``closed[user]`` connections of each user closed on
        ``host`` (its places freed), then for each login (user, signature digest, now,
        expires) :meth:`record_signature` and, if the signature was new, :meth:`reserve`:
        Deferred of a list of (new, granted), in the order of ``logins``."""
        users = sorted(closed)
        values = (host, [login[0] for login in logins], [login[1] for login in logins],
                  [login[2] for login in logins], [login[3] for login in logins], most,
                  users, [closed[u] for u in users])
        params = dict(zip(("h", "u", "s", "n", "e", "m", "cu", "cc"), values, strict=True))
        d = self.db.run_admin(lambda conn: conn.execute_prepared(
            _HOST_CALLS_PREPARED, values, (_HOST_CALLS_SQL, params)))
        return d.addCallback(lambda result: list(zip(result.rows[0][0], result.rows[0][1],
                                                     strict=True)))

    def replay_rows(self, most: int) -> defer.Deferred[Any]:
        """Deferred of the number of replay rows, at most ``most``."""
        return self._one(_REPLAY_ROWS_SQL, {"m": most})

    def reserve(self, host: str, user: str, most: int) -> defer.Deferred[Any]:
        """Deferred of True if ``user`` had fewer than ``most`` connections on the live
        hosts (one more now counted on ``host``)."""
        return self._one(_RESERVE_SQL, {"h": host, "u": user, "m": most}).addCallback(bool)

    def renew(self, host: str, lease: float) -> defer.Deferred[Any]:
        """Deferred of whether ``host``'s previous lease was still alive."""
        return self._one(_RENEW_SQL, {"h": host, "l": lease}).addCallback(bool)

    def sync(self, host: str, lease: float, counts: Mapping[str, int]) -> defer.Deferred[Any]:
        """Replace ``host``'s counts by ``counts`` and renew its lease; Deferred of whether
        the previous lease was alive."""
        users = list(counts)
        d = self._one(_SYNC_SQL, {"h": host, "l": lease, "u": users,
                                  "c": [counts[u] for u in users]})
        return d.addCallback(bool)

    def leave(self, host: str) -> defer.Deferred[Any]:
        """``host`` and its counts deleted: its places are free at once."""
        return self._one(_LEAVE_SQL, {"h": host})

    def cleanup(self, now: float) -> defer.Deferred[Any]:
        """Deferred of (replay rows expired by ``now``, hosts whose lease ended): deleted."""
        d = self.db.run_admin(lambda conn: conn.execute(_CLEANUP_SQL, {"n": now}))
        return d.addCallback(lambda result: tuple(result.rows[0]))

    def user_count(self, user: str) -> defer.Deferred[Any]:
        """Deferred of ``user``'s connections over the live hosts."""
        return self._one(_USER_COUNT_SQL, {"u": user})
