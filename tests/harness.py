"""Start a real gateway (real sockets, real PostgreSQL) inside a trial test."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS

from tests.pgtest import TestDatabase
from wyseman import config as cfg
from wyseman.application.service import GatewayService
from wyseman.application.workers.routing import Router, owner_of
from wyseman.provision import admin


def make_config(db: TestDatabase, **sections: dict[str, Any]) -> cfg.Config:
    data: dict[str, Any] = {
        "server": {"listen": "tcp:0:interface=127.0.0.1", "clientinfo_listen": []},
        "database": {"dsn": db.dsn, "pool_size": 2},
        "channels": {"allow": ["wyseman", "wylib", "app_*"]},
    }
    for name, values in sections.items():
        section = data.setdefault(name, {})
        section.update(values)
        for key in [k for k, v in section.items() if v is None]:  # None: leave it unset
            del section[key]
    return cfg.from_dict(data, source="test.toml")


@defer.inlineCallbacks
def start_gateway(testcase: Any, db: TestDatabase, actions: Any = None, *, router: Any = None,
                  **sections: dict[str, Any]) -> Any:
    """A started :class:`GatewayService` (``router``: as a worker with route_by_user);
    stopped (ports, sockets, pools) at cleanup."""
    config = make_config(db, **sections)
    if actions is None:
        from wyseman.gateway.actions import ActionRegistry
        actions = ActionRegistry()
    service = GatewayService(config, lambda: defer.succeed(db.dsn), reactor, actions,
                             router=router)
    yield service.startService()
    testcase.addCleanup(service.stopService)
    service.port = service.ports[0].getHost().port
    service.url = f"ws://127.0.0.1:{service.port}"
    service.clientinfo_url = f"http://127.0.0.1:{service.port}/clientinfo"
    return service


def unregistered(gateway: Any, count: int = 1) -> defer.Deferred:
    """Fires once the gateway has let go of ``count`` more connections."""
    done: defer.Deferred = defer.Deferred()
    original = gateway.unregister
    seen = [0]

    def hook(protocol: Any) -> None:
        original(protocol)
        seen[0] += 1
        if seen[0] == count:
            gateway.unregister = original
            done.callback(None)
    gateway.unregister = hook
    return done


@defer.inlineCallbacks
def ticket_login(testcase: Any, server: Any, db: TestDatabase, user: str,
                 **options: Any) -> Any:
    """A connection logged in with a fresh ticket and key; closed at cleanup."""
    from wyseman.client import keys
    from wyseman.client.connection import connect
    token = admin.issue_ticket(db.dsn, user).token
    conn = yield connect(server.url, user, token=token, new_key=keys.generate_private_jwk(),
                         **options)
    testcase.addCleanup(conn.close)
    return conn


@defer.inlineCallbacks
def key_logins(testcase: Any, server: Any, db: TestDatabase, user: str, count: int) -> Any:
    """``count`` connections of one user: a ticket registers a key, the rest sign with it
    (a second ticket login would replace the key and close the first); closed at cleanup."""
    from wyseman.client import keys
    from wyseman.client.connection import connect
    private = keys.generate_private_jwk()
    token = admin.issue_ticket(db.dsn, user).token
    first = yield connect(server.url, user, token=token, new_key=private)
    testcase.addCleanup(first.close)
    sockets = [first]
    for _ in range(count - 1):
        conn = yield connect(server.url, user, key=private,
                             clientinfo_url=server.clientinfo_url)
        testcase.addCleanup(conn.close)
        sockets.append(conn)
    return sockets


def add_user(db: TestDatabase, prefix: str = "u") -> str:
    """A user (entity row + login role) unique to this test."""
    name = db.role_name(prefix)
    admin.add_user(db.dsn, name)
    return name


class _RawHTTP(protocol.Protocol):
    def __init__(self, request: bytes) -> None:
        self.request = request
        self.data = b""
        self.done: defer.Deferred = defer.Deferred()

    def connectionMade(self) -> None:  # noqa: N802
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.data += data
        head, sep, body = self.data.partition(b"\r\n\r\n")
        if sep and head.startswith(b"HTTP/1.1 101"):
            self.transport.loseConnection()

    def connectionLost(self, reason: Any) -> None:  # noqa: N802
        if not self.done.called:
            self.done.callback(self.data)


def upgrade_request(port: int, query: str, headers: dict[str, str] | None = None) -> bytes:
    """A WebSocket upgrade request for ``/?query`` (the RFC 6455 example key)."""
    lines = [f"GET /?{query} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Upgrade: websocket",
             "Connection: Upgrade", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
             "Sec-WebSocket-Version: 13"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


@defer.inlineCallbacks
def raw_upgrade(port: int, query: str, headers: dict[str, str] | None = None) -> Any:
    """Send one WebSocket upgrade request; → (status code, body text)."""
    raw = _RawHTTP(upgrade_request(port, query, headers))
    yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), raw)
    data = yield raw.done
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
    return status, body.decode("utf-8", "replace")


@defer.inlineCallbacks
def http_get(port: int, path: str, source: str | None = None,
             headers: dict[str, str] | None = None) -> Any:
    """One GET (the server closes the connection after it) → (status, headers, body);
    ``source``: the local address to send it from (another loopback address)."""
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    raw = _RawHTTP((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{extra}"
                    "Connection: close\r\n\r\n").encode())
    bind = (source, 0) if source else None
    yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port, bindAddress=bind),
                          raw)
    data = yield raw.done
    head, _, body = data.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0]
    return int(status_line.split(b" ", 2)[1]), head.decode("latin-1").lower(), body


@dataclass
class Response:
    status: int
    headers: dict[str, list[str]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[-1] if values else None


@defer.inlineCallbacks
def exchange(port: int, request: bytes) -> Any:
    """Send ``request`` (bytes as they are) to 127.0.0.1:``port`` → all that comes back
    until the server closes the connection."""
    raw = _RawHTTP(request)
    yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), raw)
    data = yield raw.done
    return data


@defer.inlineCallbacks
def fetch(port: int, path: str, method: str = "GET", headers: dict[str, str] | None = None,
          *, version: str = "HTTP/1.1", tls: Any = None, close: bool = True) -> Any:
    """One request to 127.0.0.1:``port`` (over TLS with ``tls`` client options) →
    :class:`Response`. The target ``path`` is sent as it is (no normalising)."""
    lines = [f"{method} {path} {version}", f"Host: 127.0.0.1:{port}"]
    if close:
        lines.append("Connection: close")
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    exchange = _RawHTTP(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    endpoint: Any = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    if tls is not None:
        endpoint = wrapClientTLS(tls, endpoint)
    yield connectProtocol(endpoint, exchange)
    data = yield exchange.done
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *fields = head.decode("latin-1").split("\r\n")
    parsed: dict[str, list[str]] = {}
    for line in fields:
        name, _, value = line.partition(":")
        parsed.setdefault(name.strip().lower(), []).append(value.strip())
    return Response(int(status_line.split(" ", 2)[1]), parsed, body)


class ProcessOutput(protocol.ProcessProtocol):
    """A child process's output, collected; ``wait_for(text)`` fires (with all output so
    far) once ``text`` has been printed on stdout or stderr, ``ended`` with its exit code
    (or the signal that ended it, negated)."""

    def __init__(self) -> None:
        self.out = b""
        self.ended: defer.Deferred = defer.Deferred()
        self._waiting: list[tuple[bytes, defer.Deferred]] = []

    def wait_for(self, text: str) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self._waiting.append((text.encode(), d))
        self._check()
        return d

    def childDataReceived(self, fd: int, data: bytes) -> None:  # noqa: N802
        self.out += data
        self._check()

    def _check(self) -> None:
        for entry in list(self._waiting):
            text, d = entry
            if text in self.out:
                self._waiting.remove(entry)
                d.callback(self.out)

    def processEnded(self, reason: Any) -> None:  # noqa: N802
        waiting, self._waiting = self._waiting, []
        for _, d in waiting:
            d.errback(AssertionError(self.out.decode(errors="replace")))
        value = reason.value
        code = value.exitCode if value.exitCode is not None else -(value.signal or 0)
        self.ended.callback(code)


def user_environment() -> dict[str, str]:
    """The environment of a user's shell after the README's install: this venv's
    ``bin`` (``wyseman``, ``twistd``, ``python``) on ``PATH``, the checkout importable."""
    import sys
    from pathlib import Path
    bin_dir = str(Path(sys.executable).parent)
    return dict(os.environ, PYTHONPATH=checkout_pythonpath(),
                PATH=bin_dir + os.pathsep + os.environ.get("PATH", ""))


def js_date(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def client_frame(opcode: int, payload: bytes, fin: bool = True, masked: bool = True) -> bytes:
    """One client frame (payload under 64 KiB), masked as RFC 6455 requires."""
    assert len(payload) < 65536
    mask = b"\x37\xfa\x21\x3d"
    size = len(payload)
    head = bytes([(0x80 if fin else 0) | opcode,
                  (0x80 if masked else 0) | (size if size < 126 else 126)])
    if size >= 126:
        head += size.to_bytes(2, "big")
    if not masked:
        return head + payload
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class RawWebSocket(protocol.Protocol):
    """Logs in (insecure mode), writes ``frames`` in one go, and collects the server's
    frames as (opcode, payload); ``enough`` fires once ``wanted(frames)`` is true,
    ``closed`` when the TCP connection goes."""

    def __init__(self, port: int, user: str, frames: bytes, wanted: Any,
                 query: str = "") -> None:
        self.request = upgrade_request(port, f"user={user}{query}")
        self.frames, self.wanted = frames, wanted
        self.buffer = b""
        self.upgraded = False
        self.received: list[tuple[int, bytes]] = []
        self.enough: defer.Deferred = defer.Deferred()
        self.closed: defer.Deferred = defer.Deferred()
        self.opened: defer.Deferred = defer.Deferred()

    def connectionMade(self) -> None:  # noqa: N802
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.buffer += data
        if not self.upgraded:
            head, sep, rest = self.buffer.partition(b"\r\n\r\n")
            if not sep:
                return
            assert head.startswith(b"HTTP/1.1 101"), head
            self.upgraded, self.buffer = True, rest
            self.transport.write(self.frames)
            self.opened.callback(self)
        while len(self.buffer) >= 2:
            length, start = self.buffer[1] & 0x7F, 2
            if length == 126:
                length, start = int.from_bytes(self.buffer[2:4], "big"), 4
            if len(self.buffer) < start + length:
                break
            self.received.append((self.buffer[0] & 0x0F, self.buffer[start:start + length]))
            self.buffer = self.buffer[start + length:]
        if not self.enough.called and self.wanted(self.received):
            self.enough.callback(self.received)

    def connectionLost(self, reason: Any) -> None:  # noqa: N802
        self.closed.callback(self.received)


#: a small application schema (tables, a view, functions, grants) for request tests
APP_SAMPLE = """
create schema app;
create table app.item (
    id serial primary key,
    name text not null,
    qty int,
    price numeric(10,2),
    data jsonb,
    blob bytea,
    made timestamptz default '2025-05-01 10:00:00.123456+00',
    span interval,
    big int8,
    constraint "!app.item:negative" check (qty >= 0)
);
create view app.item_v as select * from app.item;
create function app.double(int) returns int language sql as 'select $1 * 2';
create function app.whoami() returns text language sql as 'select session_user::text';
create table app.canary (x int);
insert into app.canary values (1);
grant usage on schema app to wyseman_user;
grant all on all tables in schema app to wyseman_user;
grant usage on all sequences in schema app to wyseman_user;
grant execute on all functions in schema app to wyseman_user;
"""


def users_by_owner(db: Any, workers: int = 2) -> dict[int, str]:
    """A user owned by each worker."""
    found: dict[int, str] = {}
    while len(found) < workers:
        user = add_user(db, "r")
        found.setdefault(owner_of(user.encode(), workers), user)
    return found


def routed_worker(testcase: Any, db: Any, directory: str, index: int, workers: int = 2,
                  **sections: Any) -> defer.Deferred:
    """A gateway in this process as worker ``index`` of ``workers`` with route_by_user
    (Unix sockets in ``directory``); stopped at cleanup."""
    return start_gateway(testcase, db, router=Router(reactor, directory, index, workers),
                         **sections)


def wyseman_cli(*args: str, env: dict | None = None) -> defer.Deferred:
    """Run ``python -m wyseman ARGS`` from the checkout → (stdout, stderr, exit code),
    without blocking."""
    import sys
    from pathlib import Path

    from twisted.internet.utils import getProcessOutputAndValue
    environment = dict(os.environ, PYTHONPATH=checkout_pythonpath(), **(env or {}))
    return getProcessOutputAndValue(sys.executable, ("-m", "wyseman", *args),
                                    env=environment,
                                    path=str(Path(__file__).resolve().parent.parent))


def checkout_pythonpath() -> str:
    """``PYTHONPATH`` for a child process: the checkout first, then what this process
    was given (the suite's packages when it runs as another user)."""
    from pathlib import Path
    root = str(Path(__file__).resolve().parent.parent)
    return os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
