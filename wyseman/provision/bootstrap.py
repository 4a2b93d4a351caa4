"""The bootstrap schema: what a database needs for the gateway when it has no wyselib.

The SQL lives in ``wyseman/provision/schema/*.sql`` (applied in file-name order, as one
transaction); it is the minimum runtime contract of docs/protocol.md, 12 "Database
contract", in wyselib's shapes. This module applies it, and refuses to touch a database
that already has wyselib's schema: mixing the two would replace wyselib's functions with
ours.

These functions block (psycopg2, synchronous): they are for the CLI and for start-up
tooling, which call them outside the reactor or in a thread.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any

import psycopg2
import psycopg2.errors
import psycopg2.extensions
from psycopg2 import sql as pgsql


def fetch_one(cursor: psycopg2.extensions.cursor) -> tuple[Any, ...]:
    """The one row a statement that always answers one returned."""
    row = cursor.fetchone()
    if row is None:
        raise RuntimeError("a statement that answers one row answered none")
    return row


#: Version written to ``wm.wyseman_schema`` by the SQL files (the last that writes one:
#: 010_shared_calls.sql). A database of an earlier version gets the whole schema again.
SCHEMA_VERSION = 6

#: Text of the comment our ``base.token_valid`` carries (003_base_token.sql).
TOKEN_VALID_MARKER = "wyseman-python bootstrap"

# Serializes concurrent bootstraps of one database (two servers starting at once).
_LOCK_SQL = "select pg_advisory_xact_lock(hashtext('wyseman bootstrap'))"


class InitStatus(enum.Enum):
    CREATED = "created"
    UPGRADED = "upgraded"
    ALREADY_CURRENT = "already_current"
    WYSELIB_DETECTED = "wyselib_detected"


@dataclass(frozen=True)
class InitResult:
    """What :func:`init_database_sync` did; ``message`` is a sentence for the operator."""

    status: InitStatus
    message: str
    version: int | None = None

    @property
    def changed(self) -> bool:
        return self.status in (InitStatus.CREATED, InitStatus.UPGRADED)

    def __str__(self) -> str:
        return self.message


class SchemaKind(enum.Enum):
    NONE = "none"          # neither wyselib nor ours: bootstrap may run
    WYSEMAN = "wyseman"    # ours (version table present, no foreign markers)
    WYSELIB = "wyselib"    # someone else's login schema: leave it alone


@dataclass(frozen=True)
class SchemaState:
    kind: SchemaKind
    version: int | None = None
    reason: str = ""


def schema_files() -> list[str]:
    """Names of the bootstrap SQL files, in the order they are applied."""
    folder = resources.files("wyseman.provision") / "schema"
    return sorted(entry.name for entry in folder.iterdir() if entry.name.endswith(".sql"))


def schema_sql() -> str:
    """The whole bootstrap as one SQL text (idempotent; no transaction control inside)."""
    folder = resources.files("wyseman.provision") / "schema"
    parts = []
    for name in schema_files():
        parts.append(f"-- ==== {name} ====\n" + (folder / name).read_text(encoding="utf-8"))
    return "\n".join(parts)


@contextmanager
def connect_sync(dsn: str, autocommit: bool = False) -> Iterator[psycopg2.extensions.connection]:
    """A psycopg2 connection that is closed (rolled back unless committed) on exit."""
    conn = psycopg2.connect(dsn)
    try:
        conn.autocommit = autocommit
        yield conn
    finally:
        conn.close()


_STATE_SQL = """
select to_regclass('wm.wyseman_schema') is not null,
       to_regclass('base.ent') is not null,
       to_regclass('wm.releases') is not null,
       to_regclass('wm.objects') is not null,
       (select count(*) from pg_catalog.pg_proc p
          join pg_catalog.pg_namespace n on n.oid = p.pronamespace
         where n.nspname = 'base' and p.proname = 'token_valid'
           and coalesce(obj_description(p.oid, 'pg_proc'), '') not like %(marker)s)
"""


def schema_state(cursor: psycopg2.extensions.cursor) -> SchemaState:
    """Classify the database the cursor is connected to.

    wyselib is recognised by any of: wyseman's own bookkeeping tables
    (``wm.releases``, ``wm.objects``), a ``base.ent`` without our version table, or a
    ``base.token_valid`` that lacks our marker comment.
    """
    cursor.execute(_STATE_SQL, {"marker": TOKEN_VALID_MARKER + "%"})
    ours, has_ent, releases, objects, foreign_token_valid = fetch_one(cursor)
    reasons = []
    if releases:
        reasons.append("wm.releases exists")
    if objects:
        reasons.append("wm.objects exists")
    if has_ent and not ours:
        reasons.append("base.ent exists without wm.wyseman_schema")
    if foreign_token_valid:
        reasons.append("base.token_valid is not ours")
    if reasons:
        return SchemaState(SchemaKind.WYSELIB, reason="; ".join(reasons))
    if ours:
        cursor.execute("select max(version) from wm.wyseman_schema")
        return SchemaState(SchemaKind.WYSEMAN, version=fetch_one(cursor)[0])
    return SchemaState(SchemaKind.NONE)


def init_database_sync(dsn: str) -> InitResult:
    """Apply the bootstrap schema unless it is current or the database has wyselib's.

    Everything happens in one transaction under an advisory lock, so a failure leaves
    the database as it was and two concurrent calls cannot interleave.
    """
    with connect_sync(dsn) as conn:
        with conn.cursor() as cur:
            cur.execute(_LOCK_SQL)
            state = schema_state(cur)
            if state.kind is SchemaKind.WYSELIB:
                conn.rollback()
                return InitResult(InitStatus.WYSELIB_DETECTED,
                                  f"wyselib schema detected ({state.reason}); nothing changed")
            if state.version is not None and state.version >= SCHEMA_VERSION:
                conn.rollback()
                return InitResult(InitStatus.ALREADY_CURRENT,
                                  f"wyseman schema version {state.version} is current; "
                                  "nothing changed", state.version)
            cur.execute(schema_sql())
        conn.commit()
    if state.version is None:
        return InitResult(InitStatus.CREATED,
                          f"wyseman schema version {SCHEMA_VERSION} created", SCHEMA_VERSION)
    return InitResult(InitStatus.UPGRADED,
                      f"wyseman schema upgraded from version {state.version} to "
                      f"{SCHEMA_VERSION}", SCHEMA_VERSION)


def bootstrap_sql_sync(dsn: str) -> InitResult:
    """Same as :func:`init_database_sync` (the name the test support uses)."""
    return init_database_sync(dsn)


def ensure_database_sync(server_dsn: str, name: str) -> bool:
    """Create database ``name`` on the server of ``server_dsn`` if missing; True if created.

    ``server_dsn`` must reach an existing database (``postgres``) as a role that may
    create databases.
    """
    with connect_sync(server_dsn, autocommit=True) as conn:
        with conn.cursor() as cur:
            cur.execute("select 1 from pg_catalog.pg_database where datname = %s", (name,))
            if cur.fetchone():
                return False
            try:
                cur.execute(pgsql.SQL("create database {} encoding 'UTF8' template template0")
                            .format(pgsql.Identifier(name)))
            except psycopg2.errors.DuplicateDatabase:
                return False  # created concurrently
            except psycopg2.errors.UniqueViolation:
                return False  # the same race, detected in pg_database's unique index
    return True
