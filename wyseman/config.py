"""The configuration file: one TOML file, validated up front.

Every option is declared once, in :data:`OPTIONS`, with its type, default and
one line of documentation; validation, defaults and ``docs/configuration.md``
all come from that table, so they cannot drift apart. A file with an unknown
section or key, or a value of the wrong type, is refused with an error that
names the file and the key: a bad config never starts a half-working server.
"""

from __future__ import annotations

import copy
import ipaddress
import os
import re
import socket
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A configuration problem, worded for the operator: ``file: [section] key: problem``."""


# ---------------------------------------------------------------------------
# value checkers: each takes the raw TOML value and returns the clean value,
# or raises ValueError with the "expected ..." text.

Checker = Callable[[Any], Any]

_ENDPOINT_PREFIXES = ("tcp", "tcp6", "ssl", "tls", "unix", "systemd", "haproxy")


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("expected true or false")
    return value


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("expected a string")
    return value


def _int_range(low: int, high: int | None = None) -> Checker:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError("expected an integer")
        if value < low or (high is not None and value > high):
            upper = f" and {high}" if high is not None else ""
            raise ValueError(f"expected an integer >= {low}{upper}" if not upper
                             else f"expected an integer between {low}{upper}")
        return value
    return check


def _seconds(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("expected a number of seconds")
    if value < 0:
        raise ValueError("expected a number of seconds >= 0")
    return float(value)


def _choice(*choices: str) -> Checker:
    def check(value: Any) -> str:
        if value not in choices:
            raise ValueError("expected one of " + ", ".join(repr(c) for c in choices))
        return value
    return check


def _endpoint(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected endpoint string (e.g. 'tcp:54320:interface=127.0.0.1')")
    prefix = value.split(":", 1)[0]
    if prefix == "haproxy":
        inner = value.split(":", 1)[1] if ":" in value else ""
        if inner.split(":", 1)[0] not in ("tcp", "tcp6", "tls"):
            raise ValueError("expected 'haproxy:' before a 'tcp:', 'tcp6:' or 'tls:' endpoint "
                             "(the PROXY protocol header comes before TLS)")
        return value
    if prefix not in _ENDPOINT_PREFIXES and not prefix.isdigit():
        raise ValueError(
            "expected endpoint string starting with one of "
            + ", ".join(p + ":" for p in _ENDPOINT_PREFIXES)
        )
    return value


def _list_of(item: Checker, what: str, allow_single: bool = False) -> Checker:
    def check(value: Any) -> tuple:
        if allow_single and isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise ValueError(f"expected a list of {what}")
        out = []
        for index, element in enumerate(value):
            try:
                out.append(item(element))
            except ValueError as exc:
                raise ValueError(f"item {index + 1}: {exc}") from None
        return tuple(out)
    return check


def _network(value: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if not isinstance(value, str):
        raise ValueError("expected an IP address or network (e.g. '10.0.0.0/8')")
    try:
        return ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(f"expected an IP address or network, got {value!r}") from None


_CHANNEL_PATTERN = re.compile(r"^[^\x00]{1,63}$")


def _channel_pattern(value: Any) -> str:
    if not isinstance(value, str) or not _CHANNEL_PATTERN.match(value):
        raise ValueError("expected a channel name or glob pattern of 1 to 63 characters")
    return value


def _path(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("expected a file path")
    return value


_HOST_ID = re.compile(r"^[A-Za-z0-9._:@/+-]{1,63}$")


def _host_id(value: Any) -> str:
    if not isinstance(value, str) or (value and not _HOST_ID.match(value)):
        raise ValueError("expected up to 63 letters, digits or ._:@/+- (empty: derived)")
    return value


def _lease(value: Any) -> float:
    seconds = _seconds(value)
    if not 1 <= seconds <= 3600:
        raise ValueError("expected a number of seconds between 1 and 3600")
    return seconds


def _url_prefix(value: Any) -> str:
    """A URL path prefix of ``[web]`` (a mount, the console): clean and absolute (no
    empty, ``.`` or ``..`` segment, no ``%``: a request is matched segment by segment
    after decoding), kept without its trailing ``/``; not ``/`` (that is ``root``) nor
    under ``/clientinfo``."""
    if not isinstance(value, str):
        raise ValueError("expected a URL path prefix like \"/app\"")
    prefix = value.rstrip("/")
    segments = prefix.split("/")[1:]
    if (not value.startswith("/") or not segments
            or any(s in ("", ".", "..") or any(c in s for c in "%\\\x00?#")
                   for s in segments)):
        raise ValueError("expected a URL path prefix like \"/app\" "
                         "(no '.', '..', '%', '?' or '#' segments; \"/\" is [web] root)")
    if segments[0] == "clientinfo":
        raise ValueError("/clientinfo is the server's own path")
    return prefix


def _console_prefix(value: Any) -> str:
    return "" if value == "" else _url_prefix(value)


def _web_name(value: Any) -> str:
    if (not isinstance(value, str) or not value or value in (".", "..")
            or any(c in value for c in "/\\\x00")):
        raise ValueError("expected a file name (no '/')")
    return value


def _web_file(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("expected a file path relative to [web] root")
    parts = value.split("/")
    if value and (value.startswith("/") or "\x00" in value or "\\" in value
                  or any(part in ("", ".", "..") for part in parts)):
        raise ValueError("expected a file path relative to [web] root, without '..'")
    return value


def _multiaddr(value: Any) -> str:
    """A listen multiaddr, checked for its shape here (py-libp2p, an optional extra,
    parses it at start and in ``wyseman config check``)."""
    if not isinstance(value, str) or not re.match(r"^/ip[46]/[^/]+/tcp/[0-9]{1,5}$", value):
        raise ValueError("expected a multiaddr like '/ip4/127.0.0.1/tcp/4001'")
    return value


def _dotted(value: Any) -> str:
    if not isinstance(value, str) or not re.match(r"^[A-Za-z_][\w.]*(:[A-Za-z_]\w*)?$", value):
        raise ValueError("expected a dotted path 'package.module:function'")
    return value


# ---------------------------------------------------------------------------
# the options table

@dataclass(frozen=True)
class Option:
    section: str
    key: str
    #: None for the tables whose checks need the file's name ([channels] roles,
    #: [actions] handlers): :func:`from_dict` checks those itself
    check: Checker | None
    default: Any
    doc: str


def _o(section: str, key: str, check: Checker | None, default: Any, doc: str) -> Option:
    return Option(section, key, check, default, doc)


OPTIONS: tuple[Option, ...] = (
    # [server]
    _o("server", "listen", _list_of(_endpoint, "endpoint strings", allow_single=True),
       ("tcp:54320:interface=127.0.0.1",),
       "Endpoints the WebSocket server (and its `/clientinfo`) listens on: a Twisted endpoint "
       "string or a list of them. `tls:PORT[:interface=…]` uses the `[tls]` certificate. "
       "`haproxy:` before a `tcp:`, `tcp6:` or `tls:` endpoint: each connection starts with "
       "a PROXY protocol header (v1 or v2, HAProxy's `send-proxy`) naming the client, only "
       "from `trusted_proxies` (docs/operations.md#several-hosts)."),
    _o("server", "clientinfo_listen", _list_of(_endpoint, "endpoint strings", allow_single=True),
       None,
       "Extra endpoints serving only `GET /clientinfo` (the JS client fetches it from the "
       "WebSocket port − 1). Default: for each `tcp:`/`tls:` listen port P, the same interface "
       "and P − 1. An empty list turns the extra port off."),
    _o("server", "workers", _int_range(1, 256), 1,
       "Processes serving the listen ports. 1: this process. N > 1: N worker processes "
       "bind the same `tcp:`/`tls:` ports with SO_REUSEPORT (Linux, BSD) and the kernel "
       "spreads connections over them; each has its own pools and LISTEN connection, and is "
       "restarted if it dies. With `[metrics] listen` on port P, worker i serves metrics on "
       "P + i."),
    _o("server", "route_by_user", _bool, False,
       "With `workers` > 1: every WebSocket of one user (the login's `user` parameter) is "
       "served by one worker. The worker that accepts an upgrade for another worker's user "
       "passes the socket on (a Unix socket, `SCM_RIGHTS`) before answering; the client sees "
       "nothing of it. A user's reads that arrive together are answered by one statement "
       "(`[database] read_batch`) only within one process, so this pays when users hold "
       "several busy sockets each (on 2 cores, 10 users × 10 sockets: two workers served "
       "0.75–1.15× one worker's requests without it, 1.05–1.48× with it); with one socket "
       "per user "
       "it only adds the hop. A user with many sockets then uses one worker's core only. "
       "`tls:` ports are not routed (the TLS session stays in its process)."),
    _o("server", "fanout_threads", _int_range(0, 64), 0,
       "Threads that send a notification to its subscribers' sockets when there are 1,024 "
       "or more (the `send` calls, ~95 % of a plain fan-out, overlap on several cores; the "
       "GIL is released during each). Over TLS the reactor thread encrypts each socket's "
       "record first and the threads send them. 0: the cores each worker process has (the "
       "cores this process may use ÷ `workers`), at most 4. 1: the reactor thread alone."),
    _o("server", "log_connections", _bool, True,
       "Log each login and each disconnect (`login USER (key) from IP`, `disconnect …`): two "
       "lines per connection, ~10 % of the reactor thread's time when logins come by the "
       "thousand a second. Off: refusals, slow consumers and errors are still logged, and "
       "`wyseman_handshakes_total` still counts every login (as PgBouncer's "
       "`log_connections`/`log_disconnections`)."),
    _o("server", "cpu_affinity", _list_of(_int_range(0, 4095), "CPU numbers"), (),
       "CPUs the reactor thread (the one that serves the sockets) runs on, e.g. `[0]`. "
       "On a host that also runs PostgreSQL or other busy processes, a core of its own "
       "(the others kept to PostgreSQL: `taskset`, systemd `CPUAffinity=`) keeps them from "
       "preempting it; see docs/operations.md. With `workers` = N, worker i's reactor "
       "thread runs on the list's CPU i mod its length. Helper threads (`fanout_threads`, "
       "`[auth] verify_threads`) keep all the CPUs the process may use. Linux only. "
       "Empty: the kernel decides."),
    _o("server", "busy_poll_us", _int_range(0, 10_000), None,
       "Microseconds the reactor thread goes on asking for events without blocking "
       "before it sleeps. A thread that sleeps between one request's statement and "
       "PostgreSQL's answer, or between a reply and the client's next request, has to be "
       "woken for each (on a virtual machine, a trap to the hypervisor on both sides): "
       "with this on, nothing is woken while requests follow each other closely (see "
       "docs/performance.md). The core shows busy while it polls. Not set: 200 when the "
       "reactor thread has a core of its own (`cpu_affinity`; with `workers` = N, a CPU "
       "in the list for each worker), 0 (off) otherwise. Needs Twisted's epoll reactor "
       "(Linux's default)."),
    _o("server", "gc_freeze", _bool, True,
       "Once started, move the objects that exist then (the loaded code, ~60,000) out of "
       "Python's cyclic garbage collector's view (`gc.freeze()`): its full collections no "
       "longer walk them, which paused the server 15–25 ms about twice a second under load. "
       "Turn off if the embedding application manages the collector itself."),
    _o("server", "gc_threshold", _int_range(0, 10_000_000), 10_000,
       "Allocations between two collections of Python's youngest garbage-collector "
       "generation (`gc.set_threshold`; Python's default is 700, which under load promotes "
       "in-flight requests' objects and triggers long full collections). 0 leaves the "
       "process's setting alone."),
    _o("server", "allowed_origins", _list_of(_string, "origins"), (),
       "Origins (`https://app.example.com`) allowed to open a WebSocket from a browser. Empty: "
       "only an `Origin` whose host equals the `Host` header's host. `\"*\"` allows any. "
       "Requests without `Origin` (non-browser clients) are not affected."),
    _o("server", "trusted_proxies", _list_of(_network, "IP networks"), (),
       "Reverse proxies (addresses or networks) whose `X-Forwarded-For` header names the "
       "client. From any other peer that header is ignored. The only peers a `haproxy:` "
       "endpoint accepts."),
    _o("server", "listen_backlog", _int_range(1, 65535), 1024,
       "Length of each listening socket's queue of connections not yet accepted (the "
       "`listen()` backlog; the kernel caps it at `net.core.somaxconn`). Twisted's "
       "default of 50 drops connections in a burst of logins. An endpoint string's own "
       "`backlog=` takes precedence."),
    _o("server", "ip_style", _choice("node", "plain"), "node",
       "How an IPv4 client address appears in `/clientinfo` and in the signed message: "
       "`node` (`::ffff:192.0.2.1`, what the Node server reports) or `plain`."),


    # [tls]
    _o("tls", "cert", _path, "", "PEM certificate file for `tls:` endpoints."),
    _o("tls", "key", _path, "", "PEM private key file matching `cert`."),
    _o("tls", "chain", _path, "", "PEM file of intermediate certificates (optional)."),
    _o("tls", "min_version", _choice("1.2", "1.3"), "1.2", "Lowest TLS version accepted."),
    _o("tls", "session_tickets", _bool, True,
       "Give clients session tickets, so that a client that connects again (a browser's "
       "`/clientinfo` fetch, then its WebSocket; a reconnect) resumes its TLS session "
       "instead of a full handshake. The ticket keys are this process's, made at start "
       "and on each reload (`SIGHUP`): a resumption at another worker or after a reload "
       "is a full handshake. With TLS 1.3 a resumption still makes a new key exchange "
       "(forward secrecy kept); with TLS 1.2 a stolen ticket key would reveal the "
       "sessions it sealed until the next restart or reload: set `min_version = \"1.3\"` "
       "or turn this off if that matters."),

    # [database]
    _o("database", "dsn", _string, "",
       "libpq connection string of the admin connection (external PostgreSQL), e.g. "
       "`host=/run/postgresql dbname=erp user=admin`. Ignored keys: none."),
    _o("database", "embedded", _path, "",
       "Data directory of an embedded PostgreSQL (from the `pgserver` wheel) started and "
       "stopped with the server. Relative paths are relative to the config file."),
    _o("database", "name", _string, "wyseman",
       "Database name used with `embedded` (created on first start)."),
    _o("database", "admin_user", _string, "",
       "Role of the admin connection. Default: the DSN's user, or `postgres` when embedded."),
    _o("database", "session_mode", _choice("login", "authorization"), "login",
       "How requests run as the user: `login` opens connections logged in as the user's own "
       "role (pooled per role); `authorization` uses the admin connection's role as an "
       "authenticator and `SET SESSION AUTHORIZATION` (superuser required)."),
    _o("database", "session_dsn", _string, "",
       "libpq connection string for user sessions (`user=` is set per role). Default: `dsn`."),
    _o("database", "pool_size", _int_range(1, 1000), 4,
       "Most connections open per user role."),
    _o("database", "pool_total", _int_range(1, 100000), 200,
       "Most user-session connections open in all."),
    _o("database", "pool_queue", _int_range(0, 1000000), 1000,
       "Requests that may wait for a busy pool before further ones are refused."),
    _o("database", "pool_idle_timeout", _seconds, 300.0,
       "An idle pooled connection is closed after this many seconds."),
    _o("database", "pool_max_lifetime", _seconds, 3600.0,
       "A pooled connection is replaced after this many seconds."),
    _o("database", "connect_timeout", _seconds, 10.0,
       "Seconds to wait for a PostgreSQL connection."),
    _o("database", "statement_timeout", _seconds, 30.0,
       "Per-request `statement_timeout` in seconds (0 disables)."),
    _o("database", "prepared_statements", _bool, True,
       "Run `select`/`tuple`/`delete` requests as prepared statements of their session "
       "connection (SQL `PREPARE`/`EXECUTE`; PostgreSQL then skips parsing and planning: "
       "about half its CPU for a one-row lookup). Turn off behind a pooler in transaction "
       "mode (PgBouncer `pool_mode = transaction`), where a session's prepared statements "
       "do not follow it."),
    _o("database", "read_batch", _int_range(1, 256), 16,
       "Most reads (`select`/`tuple` of a view or table) of one role that run together as "
       "one statement: those that arrive in the same turn of the event loop, or wait for "
       "the role's busy connections. One PostgreSQL round trip for several requests. A "
       "read's errors stay its own (a failed batch runs its reads again one by one); a "
       "statement not yet seen, or seen taking over 100 ms, runs alone. The key lookups of "
       "logins that arrive together are batched the same way on the admin connection. 1 "
       "turns batching off."),

    # [auth]
    _o("auth", "date_window", _seconds, 60.0,
       "Seconds a signed login date may differ from the server clock (the JS `delta`); "
       "0 disables the check."),
    _o("auth", "insecure", _bool, False,
       "Accept connections that only name a `user`, with no token or signature, on plain "
       "`ws://` endpoints (the Node server's default behaviour, a remote-login hole). "
       "Only on loopback interfaces unless `insecure_on_public_interfaces` is also set."),
    _o("auth", "insecure_on_public_interfaces", _bool, False,
       "DANGEROUS: allow `insecure` on non-loopback endpoints."),
    _o("auth", "verify_threads", _int_range(0, 64), 0,
       "Threads that check key-login signatures (ECDSA P-521, ~0.5 ms of CPU each; the GIL "
       "is released meanwhile), so that the reactor thread goes on serving other sockets "
       "and logins use several cores. 0: the cores each worker process has (the cores this "
       "process may use ÷ `[server] workers`), at most 4. 1: the reactor thread checks them "
       "itself."),
    _o("auth", "max_failures", _int_range(1), 20,
       "Logins refused for wrong or missing credentials from one address within "
       "`failure_window` before further attempts from it are refused with 429. Refusals "
       "for the server's own reasons (the database unavailable, a channel not allowed, a "
       "full replay cache) do not count."),
    _o("auth", "failure_window", _seconds, 60.0,
       "Window in seconds for `max_failures`."),

    # [channels]
    _o("channels", "allow", _list_of(_channel_pattern, "channel names or patterns"), (),
       "Channels every authenticated user may LISTEN to (exact names or `fnmatch` patterns "
       "like `app_*`). A connection asking for another channel is refused (400)."),
    _o("channels", "roles", None, {},
       "Table of role name → list of extra channel names/patterns that role may LISTEN to."),
    _o("channels", "admin", _string, "wyseman",
       "Channel whose notifications mean the schema changed: the meta/lang caches are dropped."),

    # [limits]
    _o("limits", "max_message_size", _int_range(1024), 1048576,
       "Largest WebSocket message (bytes) a client may send; larger ones close the "
       "connection with code 1009."),
    _o("limits", "max_frame_size", _int_range(1024), 1048576,
       "Largest single WebSocket frame (bytes)."),
    _o("limits", "ping_interval", _seconds, 30.0,
       "Seconds between server pings (0 disables the heartbeat). On libp2p: seconds "
       "between probes of each connection (a `/ipfs/ping/1.0.0` stream, probed one "
       "connection after another)."),
    _o("limits", "ping_timeout", _seconds, 15.0,
       "A peer that does not answer a ping within this many seconds is dropped (on "
       "libp2p: its connection closed, with all its streams)."),
    _o("limits", "open_handshake_timeout", _seconds, 10.0,
       "Seconds a client has to complete the opening handshake; also the most a "
       "connection may stay idle before its HTTP request is complete (or between two "
       "requests on a kept-alive connection), where twisted.web would allow 60, and half "
       "the most it may speak HTTP in all before its WebSocket is open."),
    _o("limits", "max_connections", _int_range(1), 10000,
       "Most WebSocket connections open at once; further upgrades get 503. With `[server] "
       "workers` = N, each worker's bound (N × this in all)."),
    _o("limits", "max_pending_connections", _int_range(1), 1000,
       "Most connections on each endpoint that are still plain HTTP (request not yet in, "
       "`/clientinfo` kept alive, upgrade not yet done). At the bound, the one that has "
       "spoken HTTP the longest is closed for each new one (idle and trickling clients "
       "make room for logins, which take milliseconds). `max_connections` counts a "
       "connection from its upgrade on."),
    _o("limits", "max_pending_per_address", _int_range(0), 100,
       "Most of those connections (still plain HTTP) on each endpoint from one client "
       "address (IPv6: one /64 network), so that one client cannot take every pending "
       "place; further ones are closed as soon as they are accepted. Addresses in "
       "`[server] trusted_proxies` are exempt (list your reverse proxy there, or it counts "
       "as one client). On libp2p: streams still logging in from one client address, "
       "whatever peer ids they use; further ones are reset. 0: no per-address bound."),
    _o("limits", "max_connections_per_user", _int_range(1), 100,
       "Most open WebSocket connections per user; further ones get 503. A connection counts "
       "from the moment its login is accepted (logins checked at the same time cannot all "
       "pass). With `[server] workers` = N, the supervisor keeps the one count of all the "
       "workers (the bound is the user's, not each worker's; a worker that dies frees its "
       "connections' places). With `[cluster] shared_state = \"postgres\"`, the bound holds "
       "over every gateway host sharing the database."),
    _o("limits", "max_in_flight", _int_range(1), 32,
       "Requests of one connection being processed at once; reading from that socket pauses "
       "while the cap is reached."),
    _o("limits", "max_outbound_bytes", _int_range(1024), 16777216,
       "Bytes queued for a client that does not read (replies, notifications, and the "
       "pongs owed to its pings, of which only the latest is kept) before its TCP "
       "connection is cut (no close frame: it would not read one; "
       "`wyseman_slow_consumers_total`)."),

    _o("limits", "max_reply_rows", _int_range(0), 100_000,
       "Most rows a `select` may answer with; one that would return more is answered "
       "with `!wm.lang:tooManyRows` (the bound is pushed into the SQL as a `limit`, so "
       "PostgreSQL stops there and the rows past it are never read). A request's own "
       "`limit` up to this bound is used as it is. Also bounds the rows a `tuple` reads "
       "to count them. 0: no bound."),
    _o("limits", "max_reply_bytes", _int_range(0), 16_777_216,
       "Most characters of JSON rows a `select` may answer with; one that would return "
       "more gets `!wm.lang:replyTooLarge` (PostgreSQL stops sending rows once they pass "
       "it). Characters are bytes for ASCII text, up to four bytes for other text. Keep "
       "it at or below `max_outbound_bytes`. 0: no bound."),

    # [views]
    _o("views", "deny_schemas", _list_of(_string, "schema names"),
       ("pg_catalog", "information_schema", "pg_toast"),
       "Schemas whose relations and functions clients may never name in `view`."),
    _o("views", "allow_schemas", _list_of(_string, "schema names"), (),
       "If not empty, the only schemas clients may name in `view`."),

    # [actions]
    _o("actions", "handlers", None, {},
       "Table of `\"view:name\"` → `\"package.module:function\"`: custom action handlers."),
    _o("actions", "resource_max_bytes", _int_range(0), 16_777_216,
       "Largest resource (a report, an export) a custom action may publish for its "
       "request (`ctx.publish`, served at `/_wyseman/resources/…` on the gateway's ports); "
       "a larger one is refused with `!wm.lang:resourceTooLarge`."),
    _o("actions", "resource_total_bytes", _int_range(0), 268_435_456,
       "Most bytes of published resources this process holds at once; beyond, publishing "
       "is refused with `!wm.lang:resourcesFull` until some expire or their sessions "
       "close."),
    _o("actions", "resource_ttl", _seconds, 600.0,
       "Seconds a published resource stays readable at most (it goes earlier with the "
       "session that published it)."),

    # [web]
    _o("web", "root", _path, "",
       "Directory of a browser app served on the gateway's ports (the WebSocket ports' "
       "plain GETs and the `clientinfo_listen` ports), so that the page, `/clientinfo` and "
       "the WebSocket share one origin. Relative to the config file. Empty: no files are "
       "served (a plain GET gets 426 on a WebSocket port, 404 on a `/clientinfo` one). "
       "See docs/hosting.md."),
    _o("web", "mounts", None, {},
       "Table of URL path prefix → directory (`\"/wysegi\" = \"../wysegi/dist\"`), each "
       "served like `root` under its prefix. Prefixes start with `/`; `/clientinfo` is "
       "the server's."),
    _o("web", "index", _list_of(_web_name, "file names"), ("index.html",),
       "Files tried, in order, for a request naming a directory; a directory without one "
       "is 404 (never listed)."),
    _o("web", "spa_fallback", _web_file, "",
       "File under `root` (e.g. `index.html`) answered for a path under `root` that names "
       "no file and whose last segment has no extension (a single-page app's client-side "
       "routes). Empty: such paths are 404."),
    _o("web", "console", _console_prefix, "",
       "URL path (e.g. `\"/console\"`) where the server's own web console is served: a "
       "page that imports a ticket, logs in (later by the key it keeps in the browser), "
       "sends requests and shows notifications. Empty: not served. See docs/hosting.md."),
    _o("web", "cache_max_age", _int_range(0, 31_536_000), 0,
       "`Cache-Control: max-age` in seconds of served files. 0: `no-cache` (the browser "
       "revalidates each time; unchanged files are answered 304 by `ETag`)."),

    # [p2p]
    _o("p2p", "listen", _list_of(_multiaddr, "multiaddrs", allow_single=True), (),
       "Multiaddrs (`/ip4/ADDRESS/tcp/PORT`, `/ip6/…`) a libp2p host listens on, serving "
       "the `/wyseman/1.0.0` protocol (docs/protocol.md, 15) beside the WebSocket, with the "
       "same logins, requests and notifications. Needs the `wyseman[p2p]` extra "
       "(py-libp2p). Empty: no libp2p. `wyseman p2p id` prints the full addresses. The "
       "`[limits]` apply: `max_message_size`, `max_in_flight`, `max_outbound_bytes`, "
       "`open_handshake_timeout` (to send the login), `max_pending_connections` (streams "
       "logging in), `max_connections` and `max_connections_per_user` (counted with the "
       "WebSockets)."),
    _o("p2p", "key_file", _path, "p2p.key",
       "The server's libp2p identity (an Ed25519 private key, libp2p's protobuf form): "
       "created with mode 0600 on first start and kept, so the peer id stays the same "
       "across restarts. Relative to the config file. A file others may read is refused."),
    _o("p2p", "mdns", _bool, False,
       "Announce the host on the local network by mDNS (libp2p's mDNS discovery: service "
       "`_p2p._udp.local`, one TXT string `dnsaddr=MULTIADDR/p2p/PEER` per address), so "
       "that libp2p peers there (js-libp2p's `@libp2p/mdns`, go-libp2p) find its peer id "
       "and addresses without being told them. Only the interfaces of `listen` multicast, "
       "and only its addresses are announced; a wildcard (`0.0.0.0`, `::`) stands for "
       "every address of that family on the machine's interfaces. The server answers "
       "queries (UDP port 5353, shared with other responders such as Avahi) and does not "
       "look for peers. Announced about two seconds after the host listens (logged: "
       "`announcing … by mDNS on …`); a responder that cannot bind its sockets stops the "
       "start. See docs/configuration.md#mdns."),

    # [metrics]
    _o("metrics", "listen", _string, "",
       "Endpoint of the Prometheus metrics page `/metrics` and of the health check "
       "`/healthz` (e.g. `tcp:9100:interface=127.0.0.1`); empty turns both off."),

    # [cluster]
    _o("cluster", "shared_state", _choice("off", "postgres"), "off",
       "Where the replay cache (accepted key-login signatures) and each user's connection "
       "count (`[limits] max_connections_per_user`) are kept. `off`: in this process (with "
       "`[server] workers`, in the supervisor): right for one host. `postgres`: in tables "
       "of the database (schema `wyseman_shared`, made by `wyseman db init`), so that "
       "several gateway hosts behind one balancer refuse a signed login URL already used "
       "on another and count a user's connections over all of them. Costs a statement "
       "on the admin connection per key login (shared by the key logins that arrive "
       "while one is under way, and carrying the releases of the connections closed "
       "meanwhile; a release with no login to go with is sent on its own after 0.25 s), "
       "and a lease renewal every `lease` ÷ 3 seconds. See "
       "docs/operations.md#several-hosts."),
    _o("cluster", "host_id", _host_id, "",
       "This gateway's name in the shared tables; unique among the live gateways (each "
       "clears the rows of its own name when it starts). Empty: the host name and process "
       "id. With `[server] workers` = N, worker i is `host_id/i`."),
    _o("cluster", "lease", _lease, 15.0,
       "Seconds a host's connection counts stay valid without a renewal (renewed every "
       "`lease` ÷ 3 seconds): a host that dies without a word frees its users' places "
       "this long after its last renewal."),
    _o("cluster", "cleanup_interval", _lease, 30.0,
       "Seconds between two deletions of expired replay rows and of the counts of hosts "
       "whose lease ended."),

)

_BY_SECTION: dict[str, dict[str, Option]] = {}
for _opt in OPTIONS:
    _BY_SECTION.setdefault(_opt.section, {})[_opt.key] = _opt


# ---------------------------------------------------------------------------
# the result

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class ServerSection:
    """``[server]``: listening, processes, origins."""
    listen: tuple[str, ...]
    clientinfo_listen: tuple[str, ...] | None
    workers: int
    route_by_user: bool
    fanout_threads: int
    log_connections: bool
    cpu_affinity: tuple[int, ...]
    busy_poll_us: int | None
    gc_freeze: bool
    gc_threshold: int
    allowed_origins: tuple[str, ...]
    trusted_proxies: tuple[Network, ...]
    listen_backlog: int
    ip_style: str


@dataclass(frozen=True)
class TLSSection:
    """``[tls]``: the certificate of ``tls:`` endpoints."""
    cert: str
    key: str
    chain: str
    min_version: str
    session_tickets: bool


@dataclass(frozen=True)
class DatabaseSection:
    """``[database]``: where the data is and how sessions reach it."""
    dsn: str
    embedded: str
    name: str
    admin_user: str
    session_mode: str
    session_dsn: str
    pool_size: int
    pool_total: int
    pool_queue: int
    pool_idle_timeout: float
    pool_max_lifetime: float
    connect_timeout: float
    statement_timeout: float
    prepared_statements: bool
    read_batch: int


@dataclass(frozen=True)
class AuthSection:
    """``[auth]``: how logins are checked."""
    date_window: float
    insecure: bool
    insecure_on_public_interfaces: bool
    verify_threads: int
    max_failures: int
    failure_window: float


@dataclass(frozen=True)
class ChannelsSection:
    """``[channels]``: which NOTIFY channels clients may LISTEN to."""
    allow: tuple[str, ...]
    roles: Mapping[str, tuple[str, ...]]
    admin: str


@dataclass(frozen=True)
class LimitsSection:
    """``[limits]``: the bounds on every network input and reply."""
    max_message_size: int
    max_frame_size: int
    ping_interval: float
    ping_timeout: float
    open_handshake_timeout: float
    max_connections: int
    max_pending_connections: int
    max_pending_per_address: int
    max_connections_per_user: int
    max_in_flight: int
    max_outbound_bytes: int
    max_reply_rows: int
    max_reply_bytes: int


@dataclass(frozen=True)
class ViewsSection:
    """``[views]``: which schemas requests may name."""
    deny_schemas: tuple[str, ...]
    allow_schemas: tuple[str, ...]


@dataclass(frozen=True)
class ActionsSection:
    """``[actions]``: custom action handlers by ``(view, action name)``."""
    handlers: Mapping[tuple[str, str], str]
    resource_max_bytes: int
    resource_total_bytes: int
    resource_ttl: float


@dataclass(frozen=True)
class WebSection:
    """``[web]``: the browser app served on the gateway's ports (wyseman.ws.webroot)."""
    root: str
    mounts: Mapping[str, str]
    index: tuple[str, ...]
    spa_fallback: str
    console: str
    cache_max_age: int


@dataclass(frozen=True)
class P2PSection:
    """``[p2p]``: the libp2p transport (wyseman.p2p)."""
    listen: tuple[str, ...]
    key_file: str
    mdns: bool


@dataclass(frozen=True)
class MetricsSection:
    """``[metrics]``: the Prometheus page and health check."""
    listen: str


@dataclass(frozen=True)
class ClusterSection:
    """``[cluster]``: state shared by several gateway hosts on one database."""
    shared_state: str
    host_id: str
    lease: float
    cleanup_interval: float


#: the typed class of each section; its fields are exactly the section's OPTIONS
SECTION_TYPES: dict[str, type] = {
    "server": ServerSection, "tls": TLSSection, "database": DatabaseSection,
    "auth": AuthSection, "channels": ChannelsSection, "limits": LimitsSection,
    "views": ViewsSection, "actions": ActionsSection, "web": WebSection,
    "p2p": P2PSection, "metrics": MetricsSection, "cluster": ClusterSection,
}


def _check_section_types() -> None:
    """The table and the classes are declared apart: refuse to import if they drift."""
    if set(SECTION_TYPES) != set(_BY_SECTION):
        raise AssertionError(f"config sections {sorted(_BY_SECTION)} have typed classes "
                             f"{sorted(SECTION_TYPES)}")
    for name, cls in SECTION_TYPES.items():
        declared = [f.name for f in fields(cls)]
        if declared != list(_BY_SECTION[name]):
            raise AssertionError(f"[{name}]: OPTIONS {list(_BY_SECTION[name])} "
                                 f"but {cls.__name__} {declared}")


_check_section_types()


@dataclass(frozen=True)
class Config:
    """A validated configuration. Build it with :func:`load` or :func:`from_dict`."""

    server: ServerSection
    tls: TLSSection
    database: DatabaseSection
    auth: AuthSection
    channels: ChannelsSection
    limits: LimitsSection
    views: ViewsSection
    actions: ActionsSection
    web: WebSection
    p2p: P2PSection
    metrics: MetricsSection
    cluster: ClusterSection
    source: str = "<config>"
    base_dir: Path = field(default_factory=Path.cwd)
    #: the document it was built from (worker processes rebuild the config from it)
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def resolve_path(self, value: str) -> Path:
        """A path option, relative to the config file's directory."""
        path = Path(value).expanduser()
        return path if path.is_absolute() else self.base_dir / path

    @property
    def embedded(self) -> bool:
        return bool(self.database.embedded)


def _check_table_of_lists(source: str, where: str, value: Any, item: Checker,
                          what: str) -> dict[str, tuple]:
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: {where}: expected a table")
    out = {}
    checker = _list_of(item, what, allow_single=True)
    for key, sub in value.items():
        try:
            out[key] = checker(sub)
        except ValueError as exc:
            raise ConfigError(f"{source}: {where}.{key}: {exc}") from None
    return out


def _check_actions(source: str, value: Any) -> dict[tuple[str, str], str]:
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: [actions] handlers: expected a table")
    out = {}
    for key, target in value.items():
        view, sep, name = key.rpartition(":")
        if not sep or not view or not name:
            raise ConfigError(
                f"{source}: [actions] handlers.{key}: expected a key 'view:action_name'")
        try:
            out[(view, name)] = _dotted(target)
        except ValueError as exc:
            raise ConfigError(f"{source}: [actions] handlers.{key}: {exc}") from None
    return out


def _check_mounts(source: str, value: Any) -> dict[str, str]:
    """``[web] mounts``: each prefix a clean absolute URL path (no empty, ``.`` or ``..``
    segment, no ``%``: a request is matched segment by segment after decoding), kept
    without its trailing ``/``; not ``/`` (that is ``root``) nor under ``/clientinfo``."""
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: [web] mounts: expected a table")
    out: dict[str, str] = {}
    for key, directory in value.items():
        where = f"{source}: [web] mounts.{key!r}"
        try:
            prefix = _url_prefix(key)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        if prefix in out:
            raise ConfigError(f"{where}: the prefix {prefix!r} is mounted twice")
        if not isinstance(directory, str) or not directory:
            raise ConfigError(f"{where}: expected a directory path")
        out[prefix] = directory
    return out


def from_dict(data: Mapping[str, Any], source: str = "<config>",
              base_dir: Path | None = None) -> Config:
    """Validate a parsed TOML document and apply defaults (the only place they are applied)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a TOML table at the top")
    for name, value in data.items():
        if name not in _BY_SECTION:
            known = ", ".join(f"[{s}]" for s in _BY_SECTION)
            raise ConfigError(f"{source}: [{name}]: unknown section (known: {known})")
        if not isinstance(value, Mapping):
            raise ConfigError(f"{source}: [{name}]: expected a table")
    sections: dict[str, Any] = {}
    for name, options in _BY_SECTION.items():
        raw = data.get(name, {})
        for key in raw:
            if key not in options:
                raise ConfigError(
                    f"{source}: [{name}] {key}: unknown key (known: {', '.join(options)})")
        values: dict[str, Any] = {}
        for key, opt in options.items():
            where = f"[{name}] {key}"
            if key not in raw:
                default = opt.default
                values[key] = dict(default) if isinstance(default, dict) else default
                continue
            value = raw[key]
            if (name, key) == ("channels", "roles"):
                values[key] = _check_table_of_lists(
                    source, where, value, _channel_pattern, "channel names or patterns")
            elif (name, key) == ("actions", "handlers"):
                values[key] = _check_actions(source, value)
            elif (name, key) == ("web", "mounts"):
                values[key] = _check_mounts(source, value)
            else:
                assert opt.check is not None   # (only the tables above have none)
                try:
                    values[key] = opt.check(value)
                except ValueError as exc:
                    raise ConfigError(f"{source}: {where}: {exc}") from None
        sections[name] = SECTION_TYPES[name](**values)
    config = Config(**sections, source=source, base_dir=base_dir or Path.cwd(),
                    raw=copy.deepcopy(dict(data)))
    _check_consistency(config)
    return config


def _check_consistency(config: Config) -> None:
    """Rules that involve several options."""
    src = config.source
    db = config.database
    if db.embedded and db.dsn:
        raise ConfigError(f"{src}: [database]: set either 'embedded' or 'dsn', not both")
    if not db.embedded and not db.dsn:
        raise ConfigError(
            f"{src}: [database]: no database: set 'embedded' (a data directory) or 'dsn'")
    channels = config.channels
    for where, patterns in [("allow", channels.allow),
                            *((f"roles.{r}", p) for r, p in channels.roles.items())]:
        if "wyseman_auth" in patterns:
            raise ConfigError(
                f"{src}: [channels] {where}: 'wyseman_auth' is the server's own channel "
                "(credential changes); clients may not LISTEN to it")
    tls = config.tls
    uses_tls = any(e.startswith("tls:") for e in config.server.listen)
    if uses_tls and not (tls.cert and tls.key):
        raise ConfigError(f"{src}: [tls]: a 'tls:' endpoint needs 'cert' and 'key'")
    if bool(tls.cert) != bool(tls.key):
        raise ConfigError(f"{src}: [tls]: 'cert' and 'key' go together")
    proxied = [e for e in (*config.server.listen, *(config.server.clientinfo_listen or ()))
               if e.startswith("haproxy:")]
    if proxied and not config.server.trusted_proxies:
        raise ConfigError(f"{src}: [server] trusted_proxies: a 'haproxy:' endpoint "
                          f"({proxied[0]!r}) takes connections only from the balancers "
                          "listed there (anyone else could claim any client address)")
    auth = config.auth
    if auth.insecure_on_public_interfaces and not auth.insecure:
        raise ConfigError(
            f"{src}: [auth] insecure_on_public_interfaces: only meaningful with insecure = true")
    if config.server.workers > 1:
        _check_workers(config)
    if config.web.spa_fallback and not config.web.root:
        raise ConfigError(f"{src}: [web] spa_fallback: needs [web] root (the file is under it)")
    web = config.web
    if web.console and web.console in web.mounts:
        raise ConfigError(f"{src}: [web] console: {web.console!r} is also a mount")
    limits = config.limits
    if limits.max_frame_size > limits.max_message_size:
        raise ConfigError(
            f"{src}: [limits] max_frame_size: must not exceed max_message_size")
    if limits.max_connections_per_user > limits.max_connections:
        raise ConfigError(
            f"{src}: [limits] max_connections_per_user: must not exceed max_connections")


def _check_workers(config: Config) -> None:
    """Worker processes share ports with SO_REUSEPORT: TCP ports only."""
    src = config.source
    if not hasattr(socket, "SO_REUSEPORT"):
        raise ConfigError(f"{src}: [server] workers: needs SO_REUSEPORT, which this system "
                          "lacks (use workers = 1 and several instances behind a balancer)")
    endpoints = list(config.server.listen) + list(config.server.clientinfo_listen or ())
    for text in endpoints:
        kind = text.removeprefix("haproxy:").split(":", 1)[0]
        if kind not in ("tcp", "tls") and not kind.isdigit():
            raise ConfigError(f"{src}: [server] workers: endpoint {text!r}: worker processes "
                              "share only 'tcp:' and 'tls:' endpoints")
    if config.p2p.listen:
        raise ConfigError(f"{src}: [p2p] listen: not served with workers > 1 (worker "
                          "processes cannot share a libp2p host); use workers = 1")
    metrics = config.metrics.listen
    if metrics and not re.match(r"^tcp:[1-9]\d*(:|$)", metrics):
        raise ConfigError(f"{src}: [metrics] listen: with workers > 1 it must be "
                          "'tcp:PORT…' (worker i serves PORT + i)")


def load(path: str | os.PathLike[str]) -> Config:
    """Read and validate a config file; every problem is a :class:`ConfigError`."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    return from_dict(data, source=str(path), base_dir=path.resolve().parent)


def render_reference() -> str:
    """The option reference of docs/configuration.md, generated from :data:`OPTIONS`."""
    lines: list[str] = []
    current = None
    for opt in OPTIONS:
        if opt.section != current:
            current = opt.section
            lines += ["", f"### [{current}]", "", "| key | default | meaning |",
                      "|---|---|---|"]
        lines.append(f"| `{opt.key}` | {_render_default(opt.default)} | {opt.doc} |")
    return "\n".join(lines).lstrip() + "\n"


def _render_default(value: Any) -> str:
    if value is None:
        return "(derived)"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, str):
        return f'`"{value}"`' if value else '`""`'
    if isinstance(value, tuple):
        return "`[" + ", ".join(f'"{v}"' for v in value) + "]`"
    if isinstance(value, dict):
        return "`{}`"
    if isinstance(value, float) and value.is_integer():
        return f"`{int(value)}`"
    return f"`{value}`"
