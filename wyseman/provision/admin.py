"""Administration: users, login tickets, and the admin DSN of a config.

Synchronous (psycopg2): used by the ``wyseman`` CLI and by start-up tooling. The
same functions work on the bootstrap schema (:mod:`wyseman.provision.bootstrap`) and on a
wyselib database; where the two differ (who creates the login role) the schema is
detected first.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import psycopg2.errors
from psycopg2 import sql as pgsql

from wyseman.config import Config
from wyseman.db.pg import dsn_with
from wyseman.provision.bootstrap import (
    SchemaKind,
    connect_sync,
    ensure_database_sync,
    fetch_one,
    schema_state,
)

#: Group role of every login user created here (made by the bootstrap schema).
USER_GROUP = "wyseman_user"

#: Defaults of wyclif ``bin/ticket`` for ticket links when the database has no value.
DEFAULT_TICKET_HOST = "localhost"
DEFAULT_TICKET_PORT = 54320


class AdminError(Exception):
    """An administrative request refused; the message is one line for the operator."""


# -- the admin connection of a config --------------------------------------------

def admin_dsn_sync(config: Config, started: list | None = None) -> str:
    """The libpq DSN of the admin connection described by ``config``.

    External database: ``[database] dsn``, with ``user`` replaced by
    ``[database] admin_user`` when that is set. Embedded: the cluster in
    ``[database] embedded`` is created and started if needed (and left running), the
    database ``[database] name`` is created if missing, and the DSN points at the
    cluster's Unix socket as ``admin_user`` (default: the superuser ``postgres``).
    ``started``: a list the cluster is added to if this call started it (the caller
    stops it when done). Blocks (pg_ctl, psycopg2): call it outside the reactor thread.
    """
    db = config.database
    if not config.embedded:
        return dsn_with(db.dsn, user=db.admin_user or None)
    from wyseman.provision.cluster import LocalCluster
    cluster = LocalCluster(config.resolve_path(db.embedded))
    cluster.init()
    if started is not None and not cluster.is_running():
        started.append(cluster)
    cluster.start()
    ensure_database_sync(cluster.dsn("postgres"), db.name)
    return cluster.dsn(db.name, user=db.admin_user or None)


# -- users -------------------------------------------------------------------------

def validate_username(username: str) -> str:
    """A PostgreSQL role name: 1 to 63 bytes of UTF-8, no NUL (it is always quoted)."""
    if not isinstance(username, str) or not username:
        raise AdminError("a user name must not be empty")
    if "\x00" in username:
        raise AdminError("a user name must not contain NUL")
    if len(username.encode("utf-8")) > 63:
        raise AdminError(f"user name {username!r} is longer than 63 bytes")
    return username


def _schema_kind(cur: Any) -> SchemaKind:
    kind = schema_state(cur).kind
    if kind is SchemaKind.NONE:
        raise AdminError("this database has no wyseman schema: run 'wyseman db init' first")
    return kind


def _role_exists(cur: Any, role: str) -> bool:
    cur.execute("select 1 from pg_catalog.pg_roles where rolname = %s", (role,))
    return cur.fetchone() is not None


def _entity_id(cur: Any, username: str) -> str | None:
    cur.execute("select id from base.ent where username = %s", (username,))
    row = cur.fetchone()
    return row[0] if row else None


def add_user(dsn: str, username: str, *, ent_name: str | None = None,
             login_role: bool = True) -> str:
    """Create user ``username``: an entity row and a LOGIN role of exactly that name.

    Returns the entity id (``p1000``). On the bootstrap schema the role is created
    here, in the same transaction, and made a member of ``wyseman_user``; with
    ``login_role=False`` no role is created (an existing role of that name is put in
    ``wyseman_user``). On a wyselib database only the entity is inserted: wyselib's
    trigger creates the role. Refuses a user that already exists, and (with
    ``login_role``) a role name that is already taken.
    """
    validate_username(username)
    name = ent_name if ent_name else username
    with connect_sync(dsn) as conn:
        with conn.cursor() as cur:
            kind = _schema_kind(cur)
            if _entity_id(cur, username) is not None:
                raise AdminError(f"user {username!r} already exists")
            role = pgsql.Identifier(username)
            if kind is SchemaKind.WYSEMAN:
                if _role_exists(cur, username):
                    if login_role:
                        raise AdminError(
                            f"a database role named {username!r} already exists; "
                            "register it without creating a role (--existing-role)")
                    cur.execute(pgsql.SQL("grant {} to {}").format(
                        pgsql.Identifier(USER_GROUP), role))
                elif login_role:
                    cur.execute(pgsql.SQL("create role {} login in role {}").format(
                        role, pgsql.Identifier(USER_GROUP)))
            cur.execute("insert into base.ent (ent_name, ent_type, username) "
                        "values (%s, 'p', %s) returning id", (name, username))
            entity = fetch_one(cur)[0]
        conn.commit()
    return entity


def remove_user(dsn: str, username: str, *, drop_role: bool = True) -> str:
    """Delete user ``username`` (entity, its tickets) and, by default, its login role.

    Returns the removed entity id. On a wyselib database wyselib's trigger drops the
    role. The role of the connected (admin) user is never dropped. A role that still
    owns objects or holds privileges elsewhere cannot be dropped: the whole removal
    is then refused and nothing changes.
    """
    validate_username(username)
    with connect_sync(dsn) as conn:
        with conn.cursor() as cur:
            kind = _schema_kind(cur)
            entity = _entity_id(cur, username)
            if entity is None:
                raise AdminError(f"no user {username!r}")
            cur.execute("delete from base.ent where id = %s", (entity,))
            cur.execute("select session_user")
            me = fetch_one(cur)[0]
            if (kind is SchemaKind.WYSEMAN and drop_role and username != me
                    and _role_exists(cur, username)):
                try:
                    cur.execute(pgsql.SQL("drop role {}").format(pgsql.Identifier(username)))
                except psycopg2.errors.DependentObjectsStillExist as exc:
                    detail = (exc.diag.message_detail or "").splitlines()
                    raise AdminError(
                        f"role {username!r} cannot be dropped: {exc.diag.message_primary}"
                        + (f" ({detail[0]})" if detail else "")
                        + "; nothing changed (use --keep-role to keep the role)") from None
        conn.commit()
    return entity


# -- tickets -------------------------------------------------------------------------

@dataclass(frozen=True)
class Ticket:
    """One login ticket as ``base.ticket_login`` issued it (docs/protocol.md, 4.3 "Ticket
    login").

    ``user`` is the username the ticket is for; ``issuer`` the database role that
    issued it (wyclif's ``-u``, the "admin" of :func:`format_ticket`).
    """

    token: str
    expires: datetime
    host: str | None
    port: int | None
    user: str
    addr: str | None = None
    boot: str | None = None
    issuer: str | None = None
    #: the server's libp2p multiaddrs (``/ip4/…/tcp/…/p2p/PEER``) for the JSON form's
    #: ``p2p`` member (docs/protocol.md, 16.1): clients that know them dial libp2p first
    p2p: tuple[str, ...] = ()


def issue_ticket(dsn: str, username: str, host: str | None = None,
                 port: int | None = None, fallback_host: str | None = None,
                 fallback_port: int | None = None) -> Ticket:
    """Issue a one-time login ticket for ``username`` (valid 30 minutes).

    Runs ``base.ticket_login(base.user_id(username))`` like wyclif ``bin/ticket``;
    ``host``/``port`` override the values the database supplies (``base.parm``
    wyseman/host, wyseman/port); ``fallback_host``/``fallback_port`` are used where it
    supplies none. Works on wyselib 1.0.x, whose ticket view lacks
    ``addr``/``boot``.
    """
    validate_username(username)
    with connect_sync(dsn) as conn:
        with conn.cursor() as cur:
            _schema_kind(cur)
            cur.execute("select base.user_id(%s), session_user", (username,))
            entity, issuer = fetch_one(cur)
            if entity is None:
                raise AdminError(f"no user {username!r}")
            cur.execute("select count(*) from pg_catalog.pg_attribute "
                        "where attrelid = 'base.token_v_ticket'::regclass "
                        "and attname in ('addr', 'boot') and not attisdropped")
            p2p = fetch_one(cur)[0] == 2
            # expires::timestamptz: wyselib stores a zone-less timestamp made in this
            # session's time zone, which the cast reads back correctly.
            cur.execute("select token, expires::timestamptz, host, port"
                        + (", addr, boot" if p2p else ", null, null")
                        + " from base.ticket_login(%s)", (entity,))
            token, expires, db_host, db_port, addr, boot = fetch_one(cur)
        conn.commit()
    return Ticket(token=token, expires=expires,
                  host=next((h for h in (host, db_host, fallback_host) if h is not None), None),
                  port=next((p for p in (port, db_port, fallback_port) if p is not None), None),
                  user=username, addr=addr, boot=boot, issuer=issuer)


def js_date_json(moment: datetime) -> str:
    """A datetime as JavaScript's ``Date#toJSON``: UTC, milliseconds, ``Z``."""
    if moment.tzinfo is None:
        moment = moment.astimezone()  # naive: local time, as node-pg reads it
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


_SAFE_VALUE = re.compile(r"^[A-Za-z0-9._~-]*$")


def _q(value: Any) -> str:
    """A query-string value: verbatim when plain (what wyclif writes), else %-encoded."""
    text = str(value)
    return text if _SAFE_VALUE.match(text) else quote(text, safe="")


TICKET_FORMATS = ("json", "link", "web")


def format_ticket(ticket: Ticket, fmt: str = "json", *, admin_user: str | None,
                  http_port: int = 4000, spa_name: str = "wyatt", page: str | None = None,
                  scheme: str = "https", extra: str = "") -> str:
    """Render a ticket as wyclif ``bin/ticket`` does (web connection type).

    * ``json``: ``{"ticket":{"token","expires","host","port"[,"user"][,"p2p"]}}``,
      compact; ``user`` only when the ticket's user is not ``admin_user``; null/empty
      host and null port dropped; ``p2p`` (the server's libp2p multiaddrs, an extension
      the JS tools ignore) only when there are some.
    * ``link``: ``https://H/connect?token=T&user=U&host=H&port=P``.
    * ``web``: ``SCHEME://H:S/PAGE?token=T&user=U&host=H&port=P`` where PAGE is
      ``page`` (a path such as ``wysegi.html`` or ``console/``), else ``SPA.html``;
      ``extra`` (``&name=value…``) is appended to the query.

    Links fall back to host ``localhost`` and port 54320. Unlike wyclif, query values
    that are not plain (letters, digits, ``._~-``) are %-encoded; wylib decodes them.
    """
    host = ticket.host or DEFAULT_TICKET_HOST
    port = ticket.port or DEFAULT_TICKET_PORT
    query = f"token={_q(ticket.token)}&user={_q(ticket.user)}&host={_q(host)}&port={_q(port)}"
    if fmt == "json":
        body: dict[str, Any] = {"token": ticket.token, "expires": js_date_json(ticket.expires)}
        if ticket.host:
            body["host"] = ticket.host
        if ticket.port is not None:
            body["port"] = ticket.port
        if ticket.user != admin_user:
            body["user"] = ticket.user
        if ticket.p2p:
            body["p2p"] = list(ticket.p2p)
        return json.dumps({"ticket": body}, separators=(",", ":"), ensure_ascii=False)
    if fmt == "link":
        return f"https://{host}/connect?{query}"
    if fmt == "web":
        path = (page if page is not None else f"{spa_name}.html").lstrip("/")
        return f"{scheme}://{host}:{http_port}/{path}?{query}{extra}"
    raise ValueError(f"unknown ticket format {fmt!r} (expected one of {', '.join(TICKET_FORMATS)})")
