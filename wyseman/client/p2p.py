"""The Python client over libp2p (``/wyseman/1.0.0``, docs/protocol.md section 15)::

    conn = yield connect_p2p("/ip4/127.0.0.1/tcp/4001/p2p/12D3Koo…", "alice",
                             key=private_jwk, listen=["wylib"])
    reply = yield conn.request({"action": "select", "view": "base.ent_v"})

The connection is the same :class:`~wyseman.client.connection.WysemanConnection` as
over the WebSocket (requests, ``on_notify``, ``close``); only the way there differs:
the client dials with a fresh libp2p identity of its own, and logs in with the first
message of the stream (a ticket, or a signature over both peer ids and its clock's
date). Needs the ``wyseman[p2p]`` extra.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from twisted.internet import defer
from twisted.logger import Logger

from wyseman.client import keys
from wyseman.client.connection import ClientError, WysemanConnection, connect
from wyseman.p2p.wire import PROTOCOL_ID, FrameError, FrameReader, frame

log = Logger(namespace="wyseman.client")

#: the largest message the client takes (replies are not bounded by the server)
MAX_REPLY_BYTES = 256 * 1024 * 1024


class LoginRefused(ClientError):
    """The server refused the login: ``status``, ``reason`` and ``kind`` as it sent
    them (the WebSocket's status and reason)."""

    def __init__(self, status: Any, reason: Any, kind: Any) -> None:
        super().__init__(f"the server refused: {status} {reason} ({kind})")
        self.status, self.reason, self.kind = status, reason, kind


class _Stream:
    """The stream's handler, and what WysemanConnection calls its protocol."""

    def __init__(self, connection: WysemanConnection, stream: Any, login: Any) -> None:
        self.connection = connection
        self.stream = stream
        self.login = login            # a function of the stream → the login message
        self.reader = FrameReader(MAX_REPLY_BYTES)
        self.accepted: dict[str, Any] | None = None
        self.refused: LoginRefused | None = None
        self.dialled: Any = None
        self._closed = False

    # -- the stream's side -------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        try:
            messages = self.reader.feed(data)
        except FrameError as exc:
            self._lost(1002, str(exc))
            self.stream.reset()
            return
        for message in messages:
            if self.accepted is None and self.refused is None:
                self._answer(message)
            elif self.accepted is not None:
                self._message(message)

    def _answer(self, message: bytes) -> None:
        try:
            answer = orjson.loads(message)
        except orjson.JSONDecodeError:
            answer = None
        if isinstance(answer, dict) and answer.get("login") == "accepted":
            self.accepted = answer
            self.connection._opened(self)   # type: ignore[arg-type]
            return
        if isinstance(answer, dict) and answer.get("login") == "refused":
            self.refused = LoginRefused(answer.get("status"), answer.get("reason"),
                                        answer.get("kind"))
        else:
            self.refused = LoginRefused(0, "not a login answer", "protocol")
        self._lost(None, str(self.refused))

    def _message(self, message: bytes) -> None:
        try:
            value = orjson.loads(message)
        except orjson.JSONDecodeError:
            value = None
        if isinstance(value, dict) and value.get("action") == "close" and "id" not in value:
            self._lost(value.get("code"), value.get("reason"))
            return
        self.connection._message(message)

    def connection_lost(self, reason: str) -> None:
        self._lost(1006, reason)

    def _lost(self, code: Any, reason: Any) -> None:
        if self._closed:
            return
        self._closed = True
        if self.refused is not None and not self.connection._open.called:
            self.connection._open.errback(self.refused)
        self.connection._closed(code, reason)
        if self.dialled is not None:
            self.dialled.close()

    # -- what WysemanConnection calls ---------------------------------------------------
    def sendMessage(self, payload: bytes, isBinary: bool = False) -> None:  # noqa: N802, N803
        self.stream.write(frame(payload))

    def sendClose(self, code: int = 1000) -> None:  # noqa: N802
        self.stream.close()


@defer.inlineCallbacks
def connect_p2p(address: str, user: str, *, token: str | None = None,
                key: Mapping[str, Any] | None = None, new_key: Mapping[str, Any] | None = None,
                listen: Iterable[str] = (), reactor: Any = None, timeout: float = 30.0,
                now: Any = None, identity: bytes | None = None) -> Any:
    """Open an authenticated connection to the multiaddr ``address`` (ending in
    ``/p2p/PEER``). With ``token`` (a ticket), ``new_key`` (a private JWK) is
    registered; with ``key``, the login is signed with the client's clock (``now``: a
    datetime, for tests). ``identity``: the client's libp2p key
    (:func:`wyseman.p2p.node.new_key`; default: a new one each time). Fails with
    :class:`LoginRefused` if the server says no."""
    from wyseman.p2p import node
    if reactor is None:
        from twisted.internet import reactor as default_reactor
        reactor = default_reactor
    channels = list(listen)
    if token:
        if new_key is None:
            raise ValueError("a ticket login needs new_key (the key pair to register)")
        pub = keys.pub_param(keys.public_jwk(new_key))

        def login(stream: Any) -> dict[str, Any]:
            return {"user": user, "token": token, "pub": pub, "listen": channels}
    elif key is not None:
        signing_key = key

        def login(stream: Any) -> dict[str, Any]:
            return keys.p2p_login(signing_key, user, stream.remote_peer, stream.local_peer,
                                  now or datetime.now(UTC), channels)
    else:
        raise ValueError("give token and new_key (a ticket) or key")
    connection = WysemanConnection(reactor, timeout)
    handlers: list[_Stream] = []

    def handler(stream: Any) -> _Stream:
        handlers.append(_Stream(connection, stream, login))
        return handlers[0]
    try:
        dialled = yield node.dial(reactor, address, PROTOCOL_ID, handler, identity)
    except Exception as exc:
        raise ClientError(str(exc)) from None
    stream = handlers[0]
    stream.dialled = dialled
    connection.closed.addBoth(lambda result: dialled.close().addCallback(lambda _: result))
    stream.sendMessage(orjson.dumps(login(dialled.stream)))
    try:
        yield connection._open
    except Exception:
        yield dialled.close()     # (the host and, if it was the last, the trio run)
        raise
    connection.via = address
    return connection


@defer.inlineCallbacks
def connect_best(user: str, *, p2p: Sequence[str] = (), url: str | None = None,
                 token: str | None = None, key: Mapping[str, Any] | None = None,
                 new_key: Mapping[str, Any] | None = None, listen: Iterable[str] = (),
                 reactor: Any = None, timeout: float = 30.0,
                 clientinfo_url: str | None = None, tls_options: Any = None,
                 identity: bytes | None = None) -> Any:
    """Connect over libp2p when possible, else over the WebSocket (docs/protocol.md,
    15.6): each multiaddr of ``p2p`` in turn, then ``url``. The connection's ``via``
    says which was used.

    A transport is given up on (logged once, with the reason) only when it could not be
    used: nothing answers at the address, the peer is not the one it names, it does not
    speak ``/wyseman/1.0.0``, the p2p extra is missing. A login the server answered
    with a refusal (:class:`LoginRefused`) is final and raised at once: the WebSocket
    runs the same decision, and a ticket's token may be spent. Fails with
    :class:`ClientError` naming every failure when nothing could be used."""
    channels = list(listen)
    failures: list[str] = []
    for address in p2p:
        try:
            connection = yield connect_p2p(address, user, token=token, key=key,
                                           new_key=new_key, listen=channels,
                                           reactor=reactor, timeout=timeout,
                                           identity=identity)
        except LoginRefused:
            raise
        except (ClientError, ImportError) as exc:
            then = "the next multiaddr" if address != p2p[-1] else \
                (f"the WebSocket {url}" if url else "nothing else")
            log.warn("libp2p {address} not usable ({why}); trying {then}",
                     address=address, why=str(exc), then=then)
            failures.append(f"{address}: {exc}")
            continue
        log.info("connected as {user} over libp2p {address}", user=user, address=address)
        return connection
    if url is None:
        raise ClientError("no transport could be used: " + "; ".join(failures)
                          if failures else "no multiaddr and no URL to connect to")
    connection = yield connect(url, user, token=token, key=key, new_key=new_key,
                               listen=channels, reactor=reactor, timeout=timeout,
                               clientinfo_url=clientinfo_url, tls_options=tls_options)
    log.info("connected as {user} over the WebSocket {url}", user=user, url=url)
    return connection


def send_raw_p2p(connection: WysemanConnection, data: bytes) -> None:
    """Write ``data`` to the connection's stream as is, without a length prefix (tests
    and tools)."""
    protocol: Any = connection._protocol
    protocol.stream.write(data)
