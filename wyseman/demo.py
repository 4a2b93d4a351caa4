"""``wyseman demo``: a working server on an embedded PostgreSQL, a demo user, a ticket.

It writes ``demo/wyseman.toml`` on first use (embedded cluster in ``demo/pgdata``,
plain ``ws://127.0.0.1:54320``), starts the server, creates the user if missing,
prints a one-time ticket and serves until interrupted (Ctrl-C stops the server
and the embedded PostgreSQL cleanly).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

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
allow = ["wyseman", "wylib"]
"""


def demo_config(path: Path | None) -> cfg.Config:
    if path is None:
        path = Path("demo") / "wyseman.toml"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(DEMO_CONFIG)
    config = cfg.load(path)
    if not config.embedded:
        raise cfg.ConfigError(f"{path}: the demo needs [database] embedded")
    return config


def _ticket_text(dsn: str, user: str, config: cfg.Config) -> str:
    from wyseman.db import admin
    try:
        admin.add_user(dsn, user)
        created = f"created user {user!r}"
    except admin.AdminError as exc:
        if "exists" not in str(exc):
            raise
        created = f"user {user!r} exists"
    from wyseman.service import parse_listen
    port = parse_listen(config.server.listen[0]).port or 54320
    ticket = admin.issue_ticket(dsn, user, host="127.0.0.1", port=port)
    return "\n".join([
        f"wyseman demo: {created}; one-time ticket (valid until {ticket.expires}):",
        admin.format_ticket(ticket, "json", admin_user="postgres"),
        admin.format_ticket(ticket, "link", admin_user="postgres"),
        f"Log in with the Python client:  wyseman login --ticket TICKET.json "
        f"--key-out {user}.key.json",
        f"WebSocket ws://127.0.0.1:{port}/ , /clientinfo on the same port and on {port - 1}."
        " Ctrl-C stops the server.",
    ])


def run(config_path: str | None = None, user: str = "demo") -> int:
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from wyseman.service import makeService

    config = demo_config(Path(config_path) if config_path else None)
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)],
                                     redirectStandardIO=False)
    top = makeService(config)
    gateway_service = top.getServiceNamed("gateway")
    embedded = top.getServiceNamed("embedded-postgres")
    status = {"code": 0}

    @defer.inlineCallbacks
    def announce(_: Any) -> Any:
        text = yield threads.deferToThread(_ticket_text, embedded.cluster.dsn(
            config.database.name), user, config)
        print(text, flush=True)

    def failed(failure: Any) -> None:
        status["code"] = 1
        print(f"wyseman demo: {failure.getErrorMessage()}", file=sys.stderr)
        if reactor.running:
            reactor.stop()

    gateway_service.ready.addCallback(announce).addErrback(failed)
    from wyseman.sighup import stop_on_hangup
    reactor.callWhenRunning(stop_on_hangup, reactor)   # a closed terminal stops it cleanly
    reactor.callWhenRunning(top.startService)
    reactor.addSystemEventTrigger("before", "shutdown", top.stopService)
    reactor.run()
    return status["code"]
