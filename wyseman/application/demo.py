"""``wyseman demo``: a working server on an embedded PostgreSQL, a demo user, a ticket.

It writes ``demo/wyseman.toml`` on first use (embedded cluster in ``demo/pgdata``,
plain ``ws://127.0.0.1:54320``), starts the server, creates the user if missing,
prints a one-time ticket and serves until interrupted (Ctrl-C stops the server
and the embedded PostgreSQL cleanly).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, cast

from twisted.internet import defer, threads

from wyseman import config as cfg

DEMO_CONFIG = """\
# Written by `wyseman demo`. Edit freely; see docs/configuration.md.
[server]
listen = "tcp:54320:interface=127.0.0.1"

[database]
embedded = "pgdata"
name = "wyseman"

[channels]
allow = ["wyseman", "wylib", "demo"]

[web]
# the server's own web console, at /console/ on the server's port
console = "/console"
"""


#: the demo's config for ``--tls``: the same, on ``tls:`` with the local CA's certificate
DEMO_TLS_CONFIG = DEMO_CONFIG.replace(
    "# Written by `wyseman demo`.", "# Written by `wyseman demo --tls`.").replace(
    'listen = "tcp:54320:interface=127.0.0.1"\n',
    'listen = "tls:54320:interface=127.0.0.1"\n\n'
    "# The certificate is for localhost, 127.0.0.1 and ::1, from the local CA in tls/ca.pem.\n"
    '[tls]\ncert = "tls/cert.pem"\nkey = "tls/key.pem"\n')


def demo_config(path: Path | None, tls: bool = False) -> cfg.Config:
    """The demo's config: ``path``, or the one in ``./demo`` (written on first use;
    ``tls``: ``demo/tls.toml``, with a local CA and certificate made in ``demo/tls``)."""
    if path is None:
        path = Path("demo") / ("tls.toml" if tls else "wyseman.toml")
        path.parent.mkdir(parents=True, exist_ok=True)
        if tls:
            from wyseman.localca import ensure_local_tls
            ensure_local_tls(path.parent / "tls")
        if not path.exists():
            path.write_text(DEMO_TLS_CONFIG if tls else DEMO_CONFIG)
    config = cfg.load(path)
    if not config.embedded:
        raise cfg.ConfigError(f"{path}: the demo needs [database] embedded")
    return config


def install_sample_app(dsn: str) -> None:
    """The sample application (``wyseman/provision/demo_app.sql``): a ``demo.note_v`` view
    every user may read and write, its meta/lang texts, a NOTIFY on channel ``demo`` for
    each change. Idempotent."""
    from importlib import resources

    from wyseman.provision.bootstrap import connect_sync
    sql = (resources.files("wyseman.provision") / "demo_app.sql").read_text(encoding="utf-8")
    with connect_sync(dsn) as conn:
        with conn.cursor() as cursor:
            cursor.execute(sql)
        conn.commit()


def _serve_tickets_at(dsn: str, host: str, port: int) -> None:
    """Tickets issued later (``wyseman ticket``) name where this demo really serves."""
    from wyseman.provision.bootstrap import connect_sync
    with connect_sync(dsn) as conn:
        with conn.cursor() as cursor:
            cursor.execute("update base.parm set v_text = %s where module = 'wyseman' "
                           "and parm = 'host'", (host,))
            cursor.execute("update base.parm set v_int = %s where module = 'wyseman' "
                           "and parm = 'port'", (port,))
        conn.commit()


def _ticket_text(dsn: str, user: str, config: cfg.Config, port: int,
                 secure: bool = False) -> str:
    """Set up the sample app and ``user``, save a ticket next to the config, and say
    what to do next (every command printed works as it is, from this directory)."""
    import os

    from wyseman.provision import admin
    install_sample_app(dsn)
    try:
        admin.add_user(dsn, user)
        created = f"created user {user!r}"
    except admin.AdminError as exc:
        if "exists" not in str(exc):
            raise
        created = f"user {user!r} exists"
    _serve_tickets_at(dsn, "127.0.0.1", port)
    ticket = admin.issue_ticket(dsn, user, host="127.0.0.1", port=port)
    folder = Path(config.source).parent
    ticket_file = folder / "ticket.json"
    # a credential: created private
    fd = os.open(ticket_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(admin.format_ticket(ticket, "json", admin_user="postgres") + "\n")
    key_file = folder / f"{user}.key.json"
    cfg_flag = "" if Path(config.source) == Path("demo") / "wyseman.toml" \
        else f" --config {config.source}"
    ca = folder / "tls" / "ca.pem"
    tls_flags = f" --tls --ca {ca}" if secure else ""
    scheme, http = ("wss", "https") if secure else ("ws", "http")
    import json
    select = json.dumps({"action": "select", "view": "demo.note_v",
                         "fields": ["id", "title", "done"]}, separators=(",", ":"))
    change = json.dumps({"action": "insert", "view": "demo.note_v",
                         "fields": {"title": "Buy milk"}}, separators=(",", ":"))
    query = f"wyseman query --key {key_file}{tls_flags} '{select}'"
    insert = f"wyseman query --key {key_file}{tls_flags} '{change}'"
    trust = [
        f"The certificate comes from a CA of this machine, {ca}: trust it to use browser "
        "apps (which sign key logins only over wss://):",
        f"  Chromium/Chrome: Settings > Privacy and security > Security > Manage "
        f"certificates > Authorities > Import {ca}",
        f"  Firefox: Settings > Privacy & Security > Certificates > View Certificates > "
        f"Authorities > Import {ca}",
    ] if secure else [
        "Plain ws:// serves ticket logins and these command-line clients; the stock JS "
        "client (wylib's apps) signs key logins only over wss://: try `wyseman demo --tls`.",
    ]
    console = []
    if config.web.console:
        link = admin.format_ticket(ticket, "web", admin_user="postgres", http_port=port,
                                   page=config.web.console.lstrip("/") + "/", scheme=http,
                                   extra="&listen=demo")
        console = [
            "Web console, with the same one-time ticket (a user has one key: log in either "
            "in the browser or from the command line, and `wyseman ticket` for the other; "
            "later visits log in by the key the browser keeps):",
            "  " + link,
        ]
    return "\n".join([
        f"wyseman demo: {created}; serving {scheme}://127.0.0.1:{port} ({http} /clientinfo "
        f"on {port} and {port - 1}); Ctrl-C stops the server and its PostgreSQL.",
        *trust,
        *console,
        f"One-time ticket for {user!r} (valid until {ticket.expires}), saved to "
        f"{ticket_file}:",
        "  " + admin.format_ticket(ticket, "link", admin_user="postgres"),
        "Next, in another terminal in this directory:",
        f"  wyseman login --ticket {ticket_file} --key-out {key_file}{tls_flags}",
        f"  {query}",
        f"  wyseman listen --key {key_file}{tls_flags} demo",
        f"  {insert}      (the listener hears of it)",
        f"  wyseman{cfg_flag} ticket {user}      (a new ticket)",
        f"  wyseman{cfg_flag} psql      (psql on the demo's database)",
        f"  wyseman{cfg_flag} notify demo '{{\"hello\": \"world\"}}'",
        "See docs/tutorial.md for your own first application.",
    ])


def run(config_path: str | None = None, user: str = "demo", tls: bool = False) -> int:
    from twisted.logger import ILogObserver, globalLogBeginner, textFileLogObserver

    from wyseman.application.mainloop import global_reactor
    from wyseman.application.service import makeService

    reactor = global_reactor()
    config = demo_config(Path(config_path) if config_path else None, tls)
    # (a FileLogObserver is an ILogObserver; plain mypy cannot see zope interfaces)
    globalLogBeginner.beginLoggingTo([cast(ILogObserver, textFileLogObserver(sys.stdout))],
                                     redirectStandardIO=False)
    top = makeService(config)
    gateway_service = top.getServiceNamed("gateway")
    embedded = top.getServiceNamed("embedded-postgres")
    status = {"code": 0}

    @defer.inlineCallbacks
    def announce(_: Any) -> Any:
        port = gateway_service.ports[0].getHost().port   # the port it really serves
        secure = config.server.listen[0].startswith("tls:")
        text = yield threads.deferToThread(_ticket_text, embedded.cluster.dsn(
            config.database.name), user, config, port, secure)
        print(text, flush=True)

    def failed(failure: Any) -> None:
        from wyseman.application import startfail
        status["code"] = 1
        why = startfail.reason(failure, config) or failure.getErrorMessage()
        print(f"wyseman demo: error: {why}", file=sys.stderr)
        startfail.stop_reactor(reactor)

    gateway_service.ready.addCallback(announce).addErrback(failed)
    from wyseman.application.sighup import stop_on_hangup
    reactor.callWhenRunning(stop_on_hangup, reactor)   # a closed terminal stops it cleanly
    reactor.callWhenRunning(top.startService)
    reactor.addSystemEventTrigger("before", "shutdown", top.stopService)
    reactor.run()
    return status["code"]
