"""A Python client for a wyseman server (ours or the Node one).

::

    conn = yield connect("ws://127.0.0.1:54320", "alice", key=private_jwk,
                         listen=["wylib"])
    reply = yield conn.request({"action": "select", "view": "base.ent_v"})
    conn.on_notify("wylib", print)

``request`` fires with the reply's ``data`` or fails with :class:`RequestError`
(code, message, detail). Works with Deferreds or, through
``defer.ensureDeferred``/``Deferred.asFuture``, from ``async def`` code.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol, cast
from urllib.parse import SplitResult, quote, urlsplit

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import defer, endpoints
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from wyseman.client import keys
from wyseman.nagle import send_without_delay
from wyseman.timers import ClockTimer, cancel_close_timer

log = Logger(namespace="wyseman.client")

#: Sent on /clientinfo and on the upgrade alike: the server signs-checks what it sees.
USER_AGENT = "wyseman-python-client"


class ClientError(Exception):
    """The connection could not be made (the message says why)."""


class RequestError(Exception):
    """The server answered a request with an error."""

    def __init__(self, error: Mapping[str, Any], reply: Mapping[str, Any]) -> None:
        super().__init__(f"{error.get('code')}: {error.get('message')}")
        self.code = error.get("code")
        self.message = error.get("message")
        self.detail = error.get("detail")
        self.pg_code = error.get("pgCode")
        self.reply = reply


class ConnectionClosed(Exception):
    """The connection closed while a request was waiting for its reply."""


class _ClientProtocol(WebSocketClientProtocol):
    # (``factory`` is not declared a _ClientFactory: Twisted's Factory is invariant in
    # its protocol, so this class would no longer be a protocol such a factory builds)
    wyseman_connection: WysemanConnection | None = None

    def connection(self) -> WysemanConnection:
        """The connection object this protocol serves (fixed when it was built)."""
        if self.wyseman_connection is None:
            factory: _ClientFactory = self.factory
            self.wyseman_connection = factory.connection
        assert self.wyseman_connection is not None   # (set before a connection is made)
        return self.wyseman_connection

    def connectionMade(self) -> None:  # noqa: N802
        send_without_delay(self.transport)   # (requests are whole frames already)
        super().connectionMade()

    def onOpen(self) -> None:  # noqa: N802
        self.connection()._opened(self)

    def failHandshake(self, reason: str) -> None:  # noqa: N802
        """Autobahn names only the status line of a refused upgrade ("[403]: Forbidden");
        the server says why in the body ("Invalid Login", "Channel not allowed",
        "Too many connections …"): that is what the user needs to read."""
        head, sep, body = bytes(getattr(self, "data", b"") or b"").partition(b"\r\n\r\n")
        status = head.split(b" ", 2)[1:2] if head.startswith(b"HTTP/") else []
        text = body.decode("utf-8", "replace").strip()[:200]
        if sep and status and text:
            reason = f"the server refused: {status[0].decode('latin-1')} {text}"
        super().failHandshake(reason)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:  # noqa: N802, N803
        self.connection()._message(payload)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:  # noqa: N802, N803
        cancel_close_timer(self)
        self.connection()._closed(code, reason or self.wasNotCleanReason)


class _ClientFactory(WebSocketClientFactory):
    protocol = _ClientProtocol
    #: the connection the next protocol serves (a session sets one per attempt)
    connection: WysemanConnection | None = None


class WysemanConnection:
    """One open connection; make it with :func:`connect`."""

    def __init__(self, reactor: Any, timeout: float) -> None:
        self.reactor = reactor
        self.timeout = timeout
        self._protocol: _ClientProtocol | None = None
        self._pending: dict[str, tuple[defer.Deferred, Any]] = {}
        self._ids = itertools.count(1)
        self._observers: dict[str, list[Callable[[Any], Any]]] = {}
        self._open: defer.Deferred = defer.Deferred()
        self.closed: defer.Deferred = defer.Deferred()
        self.close_code: int | None = None
        self.close_reason: str | None = None
        #: where it went: the WebSocket URL or the libp2p multiaddr (which transport a
        #: client that tries several ended up using)
        self.via: str | None = None

    # -- protocol callbacks ----------------------------------------------------
    def _opened(self, protocol: _ClientProtocol) -> None:
        self._protocol = protocol
        self._open.callback(self)

    def _message(self, payload: bytes) -> None:
        try:
            message = json.loads(payload)
        except ValueError:
            log.warn("server sent a frame that is not JSON")
            return
        if not isinstance(message, dict):
            return
        if message.get("action") == "notify" and "id" not in message:
            channel = message.get("channel")
            observers = self._observers.get(channel, []) if isinstance(channel, str) else []
            for observer in observers:
                observer(message.get("data"))
            return
        entry = self._pending.pop(str(message.get("id")), None)
        if entry is None:
            return
        d, timer = entry
        if timer.active():
            timer.cancel()
        error = message.get("error")
        if error:
            d.errback(RequestError(error, message))
        else:
            d.callback(message.get("data"))

    def _closed(self, code: int | None, reason: str | None) -> None:
        self.close_code, self.close_reason = code, reason
        self._protocol = None
        if not self._open.called:
            self._open.errback(ClientError(f"connection refused: {reason}"))
        pending, self._pending = self._pending, {}
        for d, timer in pending.values():
            if timer.active():
                timer.cancel()
            d.errback(ConnectionClosed(f"connection closed ({code}): {reason}"))
        if not self.closed.called:
            self.closed.callback((code, reason))

    # -- API -------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._protocol is not None

    def request(self, message: Mapping[str, Any], timeout: float | None = None
                ) -> defer.Deferred:
        """Send one request; fires with its ``data``, fails with :class:`RequestError`."""
        if self._protocol is None:
            return defer.fail(ConnectionClosed("not connected"))
        request = dict(message)
        request.setdefault("id", f"py{next(self._ids)}")
        key = str(request["id"])
        if key in self._pending:
            return defer.fail(ValueError(f"a request with id {key!r} is already waiting"))
        d: defer.Deferred = defer.Deferred()
        timer = self.reactor.callLater(timeout or self.timeout, self._timed_out, key)
        self._pending[key] = (d, timer)
        self._protocol.sendMessage(json.dumps(request).encode("utf-8"), isBinary=False)
        return d

    def _timed_out(self, key: str) -> None:
        entry = self._pending.pop(key, None)
        if entry is not None:
            entry[0].errback(defer.TimeoutError(f"no reply to request {key!r}"))

    def send_raw(self, payload: bytes) -> None:
        """Send a frame as is (tests and tools)."""
        assert self._protocol is not None
        self._protocol.sendMessage(payload, isBinary=False)

    def on_notify(self, channel: str, callback: Callable[[Any], Any]) -> None:
        self._observers.setdefault(channel, []).append(callback)

    def close(self) -> defer.Deferred:
        if self._protocol is not None:
            self._protocol.sendClose(1000)
        return self.closed


@defer.inlineCallbacks
def fetch_clientinfo(url: str, reactor: Any = None, context_factory: Any = None,
                     headers: Mapping[str, str] | None = None) -> Any:
    """GET ``url`` (``http(s)://host:port/clientinfo``) → the parsed JSON."""
    from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, readBody
    from twisted.web.http_headers import Headers
    if reactor is None:
        from twisted.internet import reactor as default_reactor
        reactor = default_reactor
    policy = _FixedTLSPolicy(context_factory) if context_factory else BrowserLikePolicyForHTTPS()
    agent = Agent(reactor, contextFactory=policy)
    sent = {"User-Agent": USER_AGENT, **(headers or {})}
    response = yield agent.request(b"GET", url.encode("ascii"), Headers(
        {k.encode("latin-1"): [v.encode("latin-1")] for k, v in sent.items()}))
    body = yield readBody(response)
    if response.code != 200:
        raise ClientError(f"{url}: HTTP {response.code}")
    return json.loads(body)


@implementer(IPolicyForHTTPS)
class _FixedTLSPolicy:
    """Agent TLS policy that uses the caller's client options for every host."""

    def __init__(self, options: Any) -> None:
        self.options = options

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:  # noqa: N802
        return self.options


class _Endpoint(Protocol):
    """A client endpoint as we connect it: Twisted's IStreamClientEndpoint, whose
    ``connect`` plain mypy reads as if its first parameter were ``self``."""

    def connect(self, protocolFactory: Any) -> defer.Deferred[Any]:  # noqa: N803
        ...


def _transport_endpoint(reactor: Any, parts: SplitResult, tls_options: Any) -> _Endpoint:
    """TCP to the URL's host (port 80 or 443 unless it names one), in TLS for ``wss``
    (``tls_options``, or the system's trust for that host)."""
    host = parts.hostname or "127.0.0.1"
    if parts.scheme == "wss":
        from twisted.internet.ssl import optionsForClientTLS
        options = tls_options or optionsForClientTLS(host)
        tcp = endpoints.TCP4ClientEndpoint(reactor, host, parts.port or 443)
        # (the casts: plain mypy cannot see zope interfaces)
        return cast(_Endpoint, endpoints.wrapClientTLS(options, cast(IStreamClientEndpoint, tcp)))
    return endpoints.TCP4ClientEndpoint(reactor, host, parts.port or 80)


def _clientinfo_url(ws_url: str, http_port: int | None) -> str:
    parts = urlsplit(ws_url)
    scheme = "https" if parts.scheme == "wss" else "http"
    port = http_port or ((parts.port or (443 if scheme == "https" else 80)) - 1)
    return f"{scheme}://{parts.hostname}:{port}/clientinfo"


@defer.inlineCallbacks
def connect(url: str, user: str, *, token: str | None = None, key: Mapping[str, Any] | None = None,
            listen: Iterable[str] = (), clientinfo_url: str | None = None,
            http_port: int | None = None, headers: Mapping[str, str] | None = None,
            reactor: Any = None, timeout: float = 30.0, tls_options: Any = None,
            new_key: Mapping[str, Any] | None = None) -> Any:
    """Open an authenticated connection.

    With ``token`` (a ticket), ``new_key`` (a private JWK; generate one with
    :func:`wyseman.client.keys.generate_private_jwk`) is registered; with ``key``,
    /clientinfo is fetched (default: the WebSocket port − 1, as the JS client;
    pass ``clientinfo_url`` for our server's same-port endpoint) and signed.
    """
    if reactor is None:
        from twisted.internet import reactor as default_reactor
        reactor = default_reactor
    parts = urlsplit(url)
    query = [("user", user)]
    channels = list(listen)
    if channels:
        query.append(("db", keys.listen_param(channels)))
    if token:
        if new_key is None:
            raise ValueError("a ticket login needs new_key (the key pair to register)")
        query += [("token", token), ("pub", keys.pub_param(keys.public_jwk(new_key)))]
    elif key is not None:
        info = yield fetch_clientinfo(clientinfo_url or _clientinfo_url(url, http_port),
                                      reactor, tls_options, headers)
        message = json.dumps({k: info[k] for k in ("ip", "cookie", "userAgent", "date")
                              if k in info}, separators=(",", ":"), ensure_ascii=False)
        query += [("sign", keys.sign(key, message.encode("utf-8"))), ("date", info["date"])]
    qs = "&".join(f"{k}={quote(v, safe=':-_.')}" for k, v in query)
    full = f"{parts.scheme}://{parts.netloc}{parts.path or '/'}?{qs}"
    connection = WysemanConnection(reactor, timeout)
    sent = dict(headers or {})
    factory = _ClientFactory(full, headers={k: v for k, v in sent.items()
                                            if k.lower() != "user-agent"},
                             useragent=sent.get("User-Agent", USER_AGENT))
    factory.connection = connection
    factory._batched_timer = ClockTimer(reactor)
    factory.setProtocolOptions(autoPingInterval=0, perMessageCompressionOffers=[])
    try:
        yield _transport_endpoint(reactor, parts, tls_options).connect(factory)
    except Exception as exc:
        raise ClientError(f"cannot connect to {parts.netloc}: {exc}") from None
    yield connection._open
    connection.via = url
    return connection
