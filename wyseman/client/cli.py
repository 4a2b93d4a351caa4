"""Client commands of the ``wyseman`` CLI: keygen, login, query, listen.

They talk to a server like any client (no database access), so they work
against our server and the Node one alike.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from collections.abc import Callable
from typing import Any, Protocol, cast

from twisted.internet import defer

from wyseman.client import keys

PASSPHRASE_ENV = "WYSEMAN_PASSPHRASE"


def _passphrase(args: argparse.Namespace, confirm: bool = False) -> str | None:
    if os.environ.get(PASSPHRASE_ENV):
        return os.environ[PASSPHRASE_ENV]
    if not getattr(args, "passphrase", False):
        return None
    first = getpass.getpass("passphrase: ")
    if confirm and getpass.getpass("again: ") != first:
        raise keys.KeyFileError("the passphrases differ")
    return first


def _site_url(site: keys.Site, args: argparse.Namespace) -> str:
    if args.url:
        return args.url
    return f"{'wss' if args.tls else 'ws'}://{site.host or '127.0.0.1'}:{site.port or 54320}"


def _tls_options(args: argparse.Namespace, host: str) -> Any:
    if not args.ca:
        return None
    from twisted.internet.ssl import Certificate, optionsForClientTLS
    with open(args.ca, "rb") as pem:
        return optionsForClientTLS(host, trustRoot=Certificate.loadPEM(pem.read()))


def _clientinfo(args: argparse.Namespace, url: str) -> str:
    from urllib.parse import urlsplit
    parts = urlsplit(url)
    scheme = "https" if parts.scheme == "wss" else "http"
    port = args.http_port or parts.port
    return f"{scheme}://{parts.hostname}:{port}/clientinfo"


class _MainLoop(Protocol):
    """The global reactor as :func:`run_reactor` drives it: Twisted types it by its zope
    interfaces, whose methods plain mypy reads as if their first parameter were ``self``
    (and whose ``run`` has no ``installSignalHandlers``)."""

    running: bool

    def run(self, installSignalHandlers: bool = True) -> None:  # noqa: N803
        ...

    def stop(self) -> None:
        ...

    def callWhenRunning(self, callable: Callable[..., Any],  # noqa: N802
                        *args: Any, **kwargs: Any) -> Any:
        ...

    def addSystemEventTrigger(self, phase: str, eventType: str,  # noqa: N802, N803
                              callable: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        ...


def run_reactor(work: Callable[[Any], Any]) -> int:
    """Run ``work(reactor)`` (a coroutine function) to completion; its int is the status."""
    from twisted.internet import reactor as global_reactor
    reactor = cast(_MainLoop, global_reactor)
    outcome: dict[str, Any] = {}

    def start() -> None:
        d = defer.ensureDeferred(work(reactor))

        def done(code: Any) -> None:
            if "code" not in outcome:       # (not after Ctrl-C: the reactor stops)
                outcome["code"] = code if isinstance(code, int) else 0

        def failed(failure: Any) -> None:
            if "code" in outcome:
                return
            outcome["code"] = 1
            text = failure.getErrorMessage() or failure.type.__name__
            sys.stderr.write(f"wyseman: error: {text}\n")
        d.addCallbacks(done, failed)
        d.addBoth(lambda _: reactor.stop() if reactor.running and not outcome.get(
            "interrupted") else None)

    def interrupted() -> None:
        """Ctrl-C (or SIGTERM) stopped the reactor: one line and status 130."""
        if "code" not in outcome:
            outcome["code"], outcome["interrupted"] = 130, True
            sys.stderr.write("wyseman: interrupted\n")
    reactor.callWhenRunning(start)
    reactor.addSystemEventTrigger("before", "shutdown", interrupted)
    reactor.run(installSignalHandlers=True)
    return outcome.get("code", 130)


def _multiaddrs(args: argparse.Namespace, known: tuple[str, ...]) -> list[str]:
    """The libp2p addresses to try first: none with ``--no-p2p``, else those the ticket
    or key file names (``--p2p`` is handled apart: that address only, no fallback)."""
    return [] if args.no_p2p else list(known)


def _connect_with_key(reactor: Any, args: argparse.Namespace, listen: list[str]) -> Any:
    from wyseman.client.connection import connect
    site = keys.load_key_file(args.key, _passphrase(args))[0]
    if args.p2p:
        from wyseman.client.p2p import connect_p2p
        return connect_p2p(args.p2p, site.user, key=site.key, listen=listen, reactor=reactor)
    url = _site_url(site, args)
    tls_options = _tls_options(args, site.host or "127.0.0.1")
    multiaddrs = _multiaddrs(args, site.p2p)
    if multiaddrs:
        from wyseman.client.p2p import connect_best
        return connect_best(site.user, p2p=multiaddrs, url=url, key=site.key, listen=listen,
                            reactor=reactor, clientinfo_url=_clientinfo(args, url),
                            tls_options=tls_options)
    return connect(url, site.user, key=site.key, listen=listen, reactor=reactor,
                   clientinfo_url=_clientinfo(args, url), tls_options=tls_options)


# -- commands --------------------------------------------------------------------------

def keygen(args: argparse.Namespace) -> int:
    site = keys.Site(args.host, args.port, args.user, keys.generate_private_jwk())
    keys.save_key_file(args.output, [site], _passphrase(args, confirm=True))
    print(f"new P-521 key for {args.user}@{args.host}:{args.port} written to {args.output}")
    return 0


def login(args: argparse.Namespace) -> int:
    with open(args.ticket, encoding="utf-8") as handle:
        ticket = keys.parse_ticket(handle.read())
    user = args.user or ticket.user
    if not user:
        raise keys.KeyFileError("the ticket names no user: give --user")
    host, port = ticket.host or "127.0.0.1", ticket.port or 54320
    if os.path.exists(args.key_out) and not args.force:
        # a ticket login registers a new key: the old one stops working, and the user's
        # sockets logged in with it are closed
        raise keys.KeyFileError(f"{args.key_out} exists: logging in replaces the key it "
                                "holds (give --force to overwrite it)")
    passphrase = _passphrase(args, confirm=True)

    async def work(reactor: Any) -> int:
        from wyseman.client.p2p import connect_best, connect_p2p
        private = keys.generate_private_jwk()
        if args.p2p:
            conn = await connect_p2p(args.p2p, user, token=ticket.token, new_key=private,
                                     reactor=reactor)
        else:
            url = args.url or f"{'wss' if args.tls else 'ws'}://{host}:{port}"
            conn = await connect_best(user, p2p=_multiaddrs(args, ticket.p2p), url=url,
                                      token=ticket.token, new_key=private, reactor=reactor,
                                      tls_options=_tls_options(args, host))
        # the multiaddrs go into the key file, for the later logins to dial first
        kept = () if args.no_p2p else (ticket.p2p or ((args.p2p,) if args.p2p else ()))
        keys.save_key_file(args.key_out, [keys.Site(host, port, user, private, kept)],
                           passphrase)
        await conn.close()
        print(f"logged in as {user} at {conn.via}; key saved to {args.key_out}")
        return 0
    return run_reactor(work)


def query(args: argparse.Namespace) -> int:
    try:
        request = json.loads(args.request)
    except ValueError as exc:
        raise keys.KeyFileError(f"the request is not JSON: {exc}") from None
    if not isinstance(request, dict):
        raise keys.KeyFileError("the request must be a JSON object")

    async def work(reactor: Any) -> int:
        from wyseman.client.connection import RequestError
        conn = await _connect_with_key(reactor, args, [])
        try:
            data = await conn.request(request)
        except RequestError as exc:
            sys.stderr.write(f"wyseman: {exc.code}: {exc.message}\n")
            if exc.detail:
                sys.stderr.write(f"  detail: {exc.detail}\n")
            return 1
        finally:
            await conn.close()
        print(json.dumps(data, indent=2, ensure_ascii=False))
        return 0
    return run_reactor(work)


def listen(args: argparse.Namespace) -> int:
    async def work(reactor: Any) -> int:
        conn = await _connect_with_key(reactor, args, args.channels)
        for channel in args.channels:
            conn.on_notify(channel, lambda data, channel=channel: print(
                json.dumps({"channel": channel, "data": data}, ensure_ascii=False), flush=True))
        print(f"listening on {', '.join(args.channels)} at {conn.via} (Ctrl-C stops)",
              file=sys.stderr)
        code, reason = await conn.closed
        print(f"connection closed ({code}): {reason}", file=sys.stderr)
        return 1
    return run_reactor(work)


# -- argparse ----------------------------------------------------------------------------

def _connection_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", help="server URL (default: ws://HOST:PORT of the key file)")
    transport = parser.add_mutually_exclusive_group()
    transport.add_argument("--p2p", metavar="MULTIADDR",
                           help="connect over libp2p to MULTIADDR only "
                                "(/ip4/…/tcp/…/p2p/PEER, see `wyseman p2p id`; needs the "
                                "wyseman[p2p] extra). Without it, the multiaddrs of the "
                                "ticket or key file are tried first, then the WebSocket")
    transport.add_argument("--no-p2p", action="store_true",
                           help="use the WebSocket only, even when the ticket or key file "
                                "names libp2p multiaddrs")
    parser.add_argument("--tls", action="store_true", help="use wss:// with HOST:PORT")
    parser.add_argument("--ca", metavar="PEM", help="CA certificate to verify the server with")
    parser.add_argument("--http-port", type=int, metavar="PORT",
                        help="port of /clientinfo (default: the WebSocket port; the Node "
                             "server's UI usually serves it on the port below)")
    parser.add_argument("--passphrase", action="store_true",
                        help=f"the key file is encrypted: ask for the passphrase "
                             f"(or set ${PASSPHRASE_ENV})")


def add_client_commands(subparsers: argparse._SubParsersAction,
                        common: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser("keygen", help="create a P-521 key file")
    p.add_argument("--user", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=54320)
    p.add_argument("-o", "--output", required=True, metavar="FILE")
    p.add_argument("--passphrase", action="store_true", help="encrypt the key file")
    p.set_defaults(handler=keygen)

    p = subparsers.add_parser("login", help="first login with a ticket; saves a key file")
    p.add_argument("--ticket", required=True, metavar="FILE", help="JSON ticket or link")
    p.add_argument("--key-out", required=True, metavar="FILE")
    p.add_argument("--force", action="store_true",
                   help="overwrite an existing key file (its key stops working)")
    p.add_argument("--user", help="user name, if the ticket has none")
    _connection_options(p)
    p.set_defaults(handler=login)

    p = subparsers.add_parser("query", help="send one request with a key file")
    p.add_argument("--key", required=True, metavar="FILE")
    p.add_argument("request", help='JSON request, e.g. \'{"action":"select","view":"v"}\'')
    _connection_options(p)
    p.set_defaults(handler=query)

    p = subparsers.add_parser("listen", help="print notifications of channels")
    p.add_argument("--key", required=True, metavar="FILE")
    p.add_argument("channels", nargs="+", metavar="CHANNEL")
    _connection_options(p)
    p.set_defaults(handler=listen)
