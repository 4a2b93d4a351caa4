"""The ``wyseman`` command: database set-up, users, tickets, config checks.

Subcommands are contributed by *adders*: functions that take the argparse
subparsers object and the shared parent parser (which carries ``--config``) and add
one command each, setting ``handler`` to a function ``(args) -> int``. To add a
command (``demo``, ``login``, ``query``, ``listen``, ``keygen``…) write an adder and
decorate it with :func:`subcommand`, or append it to :data:`SUBCOMMANDS`; nothing
else here needs to change. Handlers may raise any error in :data:`OPERATOR_ERRORS`:
:func:`main` reports it as one line on stderr with exit status 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, cast

import psycopg2

from wyseman import config as config_module
from wyseman.client.keys import KeyFileError
from wyseman.config import Config, ConfigError
from wyseman.db.pg import dsn_with
from wyseman.provision.admin import (
    TICKET_FORMATS,
    AdminError,
    add_user,
    admin_dsn_sync,
    format_ticket,
    issue_ticket,
    remove_user,
)
from wyseman.provision.bootstrap import init_database_sync
from wyseman.provision.cluster import ClusterError

if TYPE_CHECKING:
    from twisted.logger import ILogObserver

PROG = "wyseman"
DEFAULT_CONFIG = "wyseman.toml"
CONFIG_ENV = "WYSEMAN_CONFIG"

#: Errors that are the operator's to fix: reported in one line, no traceback.
OPERATOR_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError, ClusterError, AdminError, KeyFileError, psycopg2.Error, OSError)

#: Set to show the traceback of an unexpected error instead of one line.
DEBUG_ENV = "WYSEMAN_DEBUG"

Handler = Callable[[argparse.Namespace], int]
Adder = Callable[[argparse._SubParsersAction, argparse.ArgumentParser], None]

# ---------------------------------------------------------------------------
# The subcommand registry: the lead adds `demo` and the client commands here.

SUBCOMMANDS: list[Adder] = []


def subcommand(adder: Adder) -> Adder:
    """Register a subcommand adder (decorator); commands appear in registration order."""
    SUBCOMMANDS.append(adder)
    return adder


def add_subcommands(subparsers: argparse._SubParsersAction,
                    common: argparse.ArgumentParser) -> None:
    """Add every registered subcommand to ``subparsers``."""
    for adder in SUBCOMMANDS:
        adder(subparsers, common)


# ---------------------------------------------------------------------------
# helpers for handlers

#: the config ``wyseman demo`` writes, used when there is no ./wyseman.toml
DEMO_CONFIG = os.path.join("demo", "wyseman.toml")


def load_config(args: argparse.Namespace) -> Config:
    """The config named by ``--config``, ``$WYSEMAN_CONFIG``, or ``./wyseman.toml``;
    without any of them, the demo's (``./demo/wyseman.toml``) if there is one."""
    path = (getattr(args, "config", None) or getattr(args, "top_config", None)
            or os.environ.get(CONFIG_ENV))
    if path is None:
        path = DEFAULT_CONFIG
        if not os.path.exists(path) and os.path.exists(DEMO_CONFIG):
            path = DEMO_CONFIG
    return config_module.load(path)


#: embedded clusters this command started: stopped again when it ends, so that a
#: command never leaves a PostgreSQL running that no server owns
_STARTED_CLUSTERS: list = []


def admin_dsn(config: Config) -> str:
    """The admin DSN (starting an embedded cluster if needed, for this command only),
    with the connect timeout."""
    timeout = config.database.connect_timeout
    dsn = admin_dsn_sync(config, _STARTED_CLUSTERS)
    return dsn_with(dsn, connect_timeout=max(1, round(timeout))) if timeout else dsn


def _warnings_to_stderr(event: dict) -> None:
    """A command's warnings (what it changed as root, say) are the user's to read: the
    server logs them, a command prints them."""
    from twisted.logger import LogLevel, formatEvent
    level = event.get("log_level")
    if level is not None and level >= LogLevel.warn and \
            str(event.get("log_namespace", "")).startswith("wyseman"):
        sys.stderr.write(f"{PROG}: warning: {formatEvent(event)}\n")


def _stop_started_clusters() -> None:
    while _STARTED_CLUSTERS:
        _STARTED_CLUSTERS.pop().stop()


def _out(text: str) -> None:
    sys.stdout.write(text if text.endswith("\n") else text + "\n")


def one_line(error: BaseException) -> str:
    """An exception's text as one line (libpq messages span several)."""
    if isinstance(error, OSError) and error.strerror:
        where = f"{error.filename}: " if error.filename else ""
        text = f"{where}{error.strerror}"
    else:
        text = str(error) or type(error).__name__
    from wyseman.application.startfail import one_line as joined
    return joined(text) or type(error).__name__


# ---------------------------------------------------------------------------
# db

@subcommand
def _add_db(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    db = subparsers.add_parser("db", help="database set-up")
    actions = db.add_subparsers(dest="db_command", metavar="COMMAND", required=True)
    init = actions.add_parser(
        "init", parents=[common], help="create the wyseman schema (idempotent)",
        description="Create the bootstrap schema in the configured database (starting and "
                    "creating an embedded one if needed). A database that already has it, "
                    "or that has wyselib's schema, is left unchanged.")
    init.set_defaults(handler=_db_init)


def _db_init(args: argparse.Namespace) -> int:
    result = init_database_sync(admin_dsn(load_config(args)))
    _out(result.message)
    return 0


# ---------------------------------------------------------------------------
# user

@subcommand
def _add_user(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    user = subparsers.add_parser("user", help="add or remove users")
    actions = user.add_subparsers(dest="user_command", metavar="COMMAND", required=True)
    add = actions.add_parser(
        "add", parents=[common], help="add a user (entity and login role)",
        description="Create an entity and a LOGIN role named NAME, member of wyseman_user.")
    add.add_argument("name", metavar="NAME", help="user name = database role name")
    add.add_argument("--name", dest="ent_name", metavar="TEXT",
                     help="entity name (default: NAME)")
    add.add_argument("--existing-role", action="store_true",
                     help="do not create a role: NAME is an existing role (or none is wanted)")
    add.set_defaults(handler=_user_add)
    remove = actions.add_parser(
        "remove", parents=[common], help="remove a user, its tickets and its role")
    remove.add_argument("name", metavar="NAME")
    remove.add_argument("--keep-role", action="store_true",
                        help="keep the database role, remove only the entity")
    remove.set_defaults(handler=_user_remove)


def _user_add(args: argparse.Namespace) -> int:
    entity = add_user(admin_dsn(load_config(args)), args.name, ent_name=args.ent_name,
                      login_role=not args.existing_role)
    _out(f"user {args.name} added (entity {entity})")
    return 0


def _user_remove(args: argparse.Namespace) -> int:
    entity = remove_user(admin_dsn(load_config(args)), args.name,
                         drop_role=not args.keep_role)
    _out(f"user {args.name} removed (entity {entity})")
    return 0


# ---------------------------------------------------------------------------
# ticket

@subcommand
def _add_ticket(subparsers: argparse._SubParsersAction,
                common: argparse.ArgumentParser) -> None:
    ticket = subparsers.add_parser(
        "ticket", parents=[common], help="issue a one-time login ticket",
        description="Issue a login ticket for NAME (valid 30 minutes, one use), formatted "
                    "as wyclif's bin/ticket does.")
    ticket.add_argument("name", metavar="NAME", help="the user the ticket is for")
    ticket.add_argument("--format", "-F", choices=TICKET_FORMATS, default="json",
                        help="json (a ticket file for wylib), link, or web (a URL that "
                             "opens the app); default json")
    ticket.add_argument("-o", "--output", metavar="FILE",
                        help="write the ticket to FILE (mode 0600) instead of stdout")
    ticket.add_argument("--host", metavar="H", help="WebSocket host put into the ticket")
    ticket.add_argument("--port", metavar="P", type=int, help="WebSocket port put into the ticket")
    ticket.add_argument("--http-port", metavar="S", type=int,
                        help="HTTP port of the app page for --format web (default: the "
                             "server's first listen port when [web] serves pages, else "
                             "4000, wyclif's)")
    ticket.add_argument("--page", metavar="PATH",
                        help="the app page for --format web, e.g. wysegi.html or console/ "
                             "(default: the [web] console when configured, else "
                             "SPA-NAME.html)")
    ticket.add_argument("--no-p2p", action="store_true",
                        help="leave the server's libp2p multiaddrs ([p2p] listen) out of "
                             "a JSON ticket")
    ticket.add_argument("--spa-name", metavar="N", default="wyatt",
                        help="page name for --format web without --page (default wyatt)")
    ticket.set_defaults(handler=_ticket)


def _note(text: str) -> None:
    sys.stderr.write(f"{PROG}: {text}\n")


def ticket_multiaddrs(config: Config, host: str | None) -> tuple[str, ...]:
    """The multiaddrs a ticket gives of this config's libp2p listener (docs/protocol.md
    16.1): each ``[p2p] listen`` address with ``/p2p/PEER``, the peer id of the key file
    as ``wyseman p2p id`` prints it. A ticket is read elsewhere, so an address no one
    can dial is left out, with a note saying why: a wildcard interface (``0.0.0.0``,
    ``::``) unless the ticket's ``host`` is an address of that family (then that
    address), and port 0 (chosen at start). None at all when the key file does not
    exist yet (made at the server's first start, or by ``wyseman p2p id``; issuing a
    ticket does not invent the server's identity) or the p2p extra is missing."""
    import ipaddress
    from pathlib import Path
    path = Path(config.resolve_path(config.p2p.key_file))
    if not path.exists():
        _note(f"no libp2p address in the ticket: {path} does not exist yet (start the "
              "server or run `wyseman p2p id` once)")
        return ()
    try:
        from wyseman.p2p import node
    except ImportError:
        _note("no libp2p address in the ticket: the wyseman[p2p] extra is not installed")
        return ()
    try:
        key, _ = node.load_or_create_key(path)
    except node.P2PKeyError as exc:
        raise ConfigError(f"{config.source}: [p2p] key_file: {exc}") from None
    peer = node.peer_id_of(key)
    try:
        literal = ipaddress.ip_address(host) if host else None
    except ValueError:
        literal = None
    found = []
    for address in config.p2p.listen:
        parts = address.split("/")      # "", "ip4", "0.0.0.0", "tcp", "4001"
        if len(parts) < 5 or parts[4] == "0":
            _note(f"{address} left out of the ticket: port 0 is chosen at start")
            continue
        if parts[2] in ("0.0.0.0", "::"):
            family = 4 if parts[1] == "ip4" else 6
            if literal is None or literal.version != family:
                _note(f"{address} left out of the ticket: a wildcard interface (give "
                      f"--host an IPv{family} address to put in its place)")
                continue
            parts[2] = str(literal)
        found.append("/".join(parts) + f"/p2p/{peer}")
    return tuple(found)


def _ticket(args: argparse.Namespace) -> int:
    config = load_config(args)
    # where this config's server listens, for a database that names no host or port
    from wyseman.application.service import parse_listen
    spec = parse_listen(config.server.listen[0])
    served = spec.port if spec.port and spec.kind in ("tcp", "tls") else None
    ticket = issue_ticket(admin_dsn(config), args.name, host=args.host, port=args.port,
                          fallback_host=spec.interface or None, fallback_port=served)
    if config.p2p.listen and not args.no_p2p:
        ticket = dataclasses.replace(ticket, p2p=ticket_multiaddrs(config, ticket.host))
    web = config.web
    hosted = bool(web.root or web.mounts or web.console) and served is not None
    page = args.page
    if page is None and web.console and not web.root:
        page = web.console.lstrip("/") + "/"
    text = format_ticket(ticket, args.format,
                         admin_user=ticket.issuer or config.database.admin_user,
                         http_port=args.http_port or (served if hosted and served else 4000),
                         spa_name=args.spa_name, page=page,
                         scheme="http" if hosted and spec.kind == "tcp" else "https")
    if args.output:
        # The token is a credential: create the file private, then write.
        fd = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
    else:
        _out(text)
    return 0


# ---------------------------------------------------------------------------
# config

@subcommand
def _add_config(subparsers: argparse._SubParsersAction,
                common: argparse.ArgumentParser) -> None:
    conf = subparsers.add_parser("config", help="check a config file, print the reference")
    actions = conf.add_subparsers(dest="config_command", metavar="COMMAND", required=True)
    check = actions.add_parser(
        "check", parents=[common], help="check that a config file would start the server",
        description="Check everything the server checks at start without the network "
                    "(syntax, TLS files, endpoints, handler modules, CPUs, PostgreSQL "
                    "binaries for an embedded database). FILE: as the server finds it "
                    "(--config, $WYSEMAN_CONFIG, ./wyseman.toml).")
    check.add_argument("file", metavar="FILE", nargs="?")
    check.add_argument("--connect", action="store_true",
                       help="also connect to the configured database once")
    check.set_defaults(handler=_config_check)
    reference = actions.add_parser("reference", parents=[common],
                                   help="print the option reference (Markdown)")
    reference.set_defaults(handler=_config_reference)


def _config_check(args: argparse.Namespace) -> int:
    from wyseman.application.preflight import check_startable, try_connect
    config = config_module.load(args.file) if args.file else load_config(args)
    check_startable(config)
    if args.connect:
        _out(f"{config.source}: {try_connect(config)}")
    _out(f"{config.source}: ok")
    return 0


def _config_reference(args: argparse.Namespace) -> int:
    sys.stdout.write(config_module.render_reference())
    return 0


# ---------------------------------------------------------------------------
# p2p

@subcommand
def _add_p2p(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p2p = subparsers.add_parser("p2p", help="the libp2p transport ([p2p])")
    actions = p2p.add_subparsers(dest="p2p_command", metavar="COMMAND", required=True)
    ident = actions.add_parser(
        "id", parents=[common], help="print the server's peer id and full multiaddrs",
        description="Print the peer id of [p2p] key_file (created, mode 0600, if it does "
                    "not exist yet, as the server's first start would) and each [p2p] "
                    "listen address with /p2p/PEER: what clients dial.")
    ident.set_defaults(handler=_p2p_id)


def _p2p_id(args: argparse.Namespace) -> int:
    from wyseman.application.service import check_p2p
    config = load_config(args)
    if not config.p2p.listen:
        raise ConfigError(f"{config.source}: [p2p] listen: empty (the libp2p transport is "
                          "off)")
    check_p2p(config)
    from wyseman.p2p import node
    path = config.resolve_path(config.p2p.key_file)
    try:
        key, created = node.load_or_create_key(path)
    except node.P2PKeyError as exc:
        raise ConfigError(f"{config.source}: [p2p] key_file: {exc}") from None
    if created:
        sys.stderr.write(f"{PROG}: created the libp2p identity {path}\n")
    peer = node.peer_id_of(key)
    _out(f"peer id: {peer}")
    for address in config.p2p.listen:
        _out(f"{address}/p2p/{peer}")
    return 0


# ---------------------------------------------------------------------------
# psql, notify

@subcommand
def _add_psql(subparsers: argparse._SubParsersAction,
              common: argparse.ArgumentParser) -> None:
    psql = subparsers.add_parser(
        "psql", parents=[common], help="open psql on the configured database",
        description="Run psql as the admin role on the configured database (an embedded "
                    "one is started for the session if it is not running). Arguments "
                    "after -- go to psql, e.g. wyseman psql -- -c 'select 1'.")
    psql.add_argument("psql_args", nargs=argparse.REMAINDER, metavar="-- ARGS")
    psql.set_defaults(handler=_psql)
    notify = subparsers.add_parser(
        "notify", parents=[common], help="send a NOTIFY on the configured database",
        description="pg_notify(CHANNEL, PAYLOAD) as the admin role: every socket that "
                    "LISTENs to CHANNEL receives PAYLOAD (JSON is delivered as JSON).")
    notify.add_argument("channel", metavar="CHANNEL")
    notify.add_argument("payload", metavar="PAYLOAD", nargs="?", default="")
    notify.set_defaults(handler=_notify)


def _psql(args: argparse.Namespace) -> int:
    import shutil
    import subprocess
    config = load_config(args)
    dsn = admin_dsn(config)
    binary = None
    if config.embedded:
        from wyseman.provision.cluster import find_bindir
        candidate = find_bindir() / "psql"
        binary = str(candidate) if candidate.exists() else None
    binary = binary or shutil.which("psql")
    if binary is None:
        raise ConfigError("psql not found: install PostgreSQL's client (e.g. the "
                          "postgresql-client package)")
    extra = list(args.psql_args)
    if extra[:1] == ["--"]:
        extra = extra[1:]
    return subprocess.call([binary, dsn, *extra])


def _notify(args: argparse.Namespace) -> int:
    from wyseman.provision.bootstrap import connect_sync
    config = load_config(args)
    with connect_sync(admin_dsn(config), autocommit=True) as conn:
        with conn.cursor() as cursor:
            cursor.execute("select pg_notify(%s, %s)", (args.channel, args.payload))
    _out(f"notified {args.channel}")
    return 0


# ---------------------------------------------------------------------------
# demo

@subcommand
def _add_demo(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    demo = subparsers.add_parser(
        "demo", help="run a demo server on an embedded PostgreSQL and print a ticket",
        description="Start the server on an embedded PostgreSQL (demo/wyseman.toml is "
                    "written on first use unless --config names another embedded config), "
                    "create the demo user, print a one-time ticket and serve until Ctrl-C.")
    demo.add_argument("--config", metavar="FILE", help="an embedded config to use")
    demo.add_argument("--user", default="demo", help="user to create (default: demo)")
    demo.add_argument("--tls", action="store_true",
                      help="serve wss:// and https /clientinfo with a certificate from a "
                           "local CA made in demo/tls (config demo/tls.toml)")
    demo.set_defaults(handler=_demo)


def _demo(args: argparse.Namespace) -> int:
    from wyseman.application import demo
    return demo.run(args.config or args.top_config, args.user, args.tls)


# ---------------------------------------------------------------------------
# client commands (keygen, login, query, listen): wyseman/client/cli.py

@subcommand
def _add_client(subparsers: argparse._SubParsersAction,
                common: argparse.ArgumentParser) -> None:
    from wyseman.client.cli import add_client_commands
    add_client_commands(subparsers, common)


# ---------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    config_help = f"config file (default: ${CONFIG_ENV} or ./{DEFAULT_CONFIG})"
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="FILE", help=config_help)
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="wyseman: WebSocket gateway to PostgreSQL — administration commands.")
    # A separate dest: a subcommand's own --config default must not hide this one.
    parser.add_argument("--config", dest="top_config", metavar="FILE", help=config_help)
    from wyseman import __version__
    parser.add_argument("--version", action="version", version=f"wyseman {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_subcommands(subparsers, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 error, 2 usage)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # usage errors (2) and --help (0)
        return exc.code if isinstance(exc.code, int) else 2
    # (a function of the event is an ILogObserver; plain mypy cannot see zope interfaces)
    observer = None if args.handler is _demo else cast("ILogObserver", _warnings_to_stderr)
    if observer is not None:
        from twisted.logger import globalLogPublisher
        globalLogPublisher.addObserver(observer)
    try:
        try:
            return args.handler(args)
        finally:
            _stop_started_clusters()
            if observer is not None:
                globalLogPublisher.removeObserver(observer)
    except OPERATOR_ERRORS as exc:
        sys.stderr.write(f"{PROG}: error: {one_line(exc)}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: interrupted\n")
        return 130
    except Exception as exc:  # a bug: still one line, unless asked for the traceback
        if os.environ.get(DEBUG_ENV):
            raise
        sys.stderr.write(f"{PROG}: internal error: {type(exc).__name__}: {one_line(exc)} "
                         f"(set {DEBUG_ENV}=1 for details)\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
