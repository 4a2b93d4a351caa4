"""The ``/wyseman/1.0.0`` libp2p transport (docs/protocol.md, 15), beside the WebSocket
on the same gateway: each stream is a connection, its first message a login decided by
the shared :class:`~wyseman.auth.admission.Admission`, then requests and replies and
notifications, one JSON message per length-prefixed frame.

What a stream does with the network is :mod:`wyseman.p2p.node`'s (the only module that
imports libp2p); here a stream is a :class:`StreamIO` and everything runs on the
reactor thread, as the WebSocket's protocol does: the same in-flight cap, outbound
budget and refusals, in this transport's words.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

import orjson
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from wyseman.auth import credentials as cred
from wyseman.auth import networks
from wyseman.auth.admission import Admitted, ClientLeft, LoginRequest
from wyseman.auth.login import Handshake, PeerLogin, Refusal
from wyseman.db.types import dumps
from wyseman.gateway.dispatch import Session
from wyseman.p2p.wire import PROTOCOL_ID, FrameError, FrameReader, frame

if TYPE_CHECKING:
    from wyseman.config import P2PSection
    from wyseman.gateway.seams import Connection, TransportHub

log = Logger(namespace="wyseman.p2p")

#: the largest login message (the WebSocket's query string has the same bound)
MAX_LOGIN_BYTES = cred.MAX_QUERY_BYTES
#: the members a login may carry as strings (the rest are ignored, as in a query)
LOGIN_FIELDS = ("user", "token", "pub", "sign", "date")
#: close codes of the ``close`` message, as on the WebSocket (docs/protocol.md, 10)
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_TOO_BIG = 1009
#: this transport's label in metrics
TRANSPORT = "libp2p"


class StreamIO(Protocol):
    """A stream as :mod:`wyseman.p2p.node` hands it over (its ``Stream``)."""

    local_peer: str
    remote_peer: str
    remote_address: tuple[str, int] | None
    handler: Any
    pending: int

    def write(self, data: bytes) -> None: ...

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def close(self) -> None: ...

    def reset(self) -> None: ...


LOGIN, CHECKING, OPEN, CLOSING, CLOSED = "login", "checking", "open", "closing", "closed"


class P2PConnection:
    """One ``/wyseman/1.0.0`` stream: a :class:`~wyseman.gateway.seams.Connection` of
    the hub once its login is accepted."""

    session: Session
    transport_name = TRANSPORT

    def __init__(self, server: P2PServer, stream: StreamIO) -> None:
        self.server = server
        self.hub = server.hub
        self.stream = stream
        self.state = LOGIN
        limits = self.hub.config.limits
        self.max_message_size = limits.max_message_size
        self._reader = FrameReader(min(MAX_LOGIN_BYTES, limits.max_message_size))
        self._waiting: deque[bytes] = deque()
        self._in_flight = 0
        self._reading_paused = False
        self._draining = False
        self._registered = False
        self._admission: Admitted | None = None
        address = stream.remote_address
        #: the client address as the WebSocket renders it (failed logins are counted
        #: per address across both transports); the peer id when the transport has none
        self.client_address = (
            cred.render_peer_ip(address[0], ":" in address[0], self.hub.ip_style)
            if address else f"p2p:{stream.remote_peer}")
        self._login_timer: Any = self.hub.clock.callLater(
            limits.open_handshake_timeout, self._login_timed_out) \
            if limits.open_handshake_timeout else None
        self._pending = True     # counted in server.pending until logged in or gone
        #: what server.pending_by_network counts it under (None: not counted)
        self._network = server.network_of(stream)
        server.pending_started(self._network)

    # -- bytes in ----------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self.state in (CLOSING, CLOSED):
            return
        try:
            messages = self._reader.feed(data)
        except FrameError as exc:
            self._framing_error(exc)
            return
        for message in messages:
            if self.state == LOGIN:
                self._login(message)
            elif self.state == CHECKING:
                self._waiting.append(message)
            elif self.state == OPEN:
                if self._in_flight >= self.hub.max_in_flight or self._waiting:
                    self._waiting.append(message)
                    self._pause_reading()
                else:
                    self._dispatch(message)
            else:
                return

    def _framing_error(self, exc: FrameError) -> None:
        log.warn("closing libp2p stream of {who} from {ip}: {why}", who=self._who(),
                 ip=self.client_address, why=str(exc))
        if self.state == LOGIN:
            self.hub.metrics.handshake("refused", "bad_frame", TRANSPORT)
        too_big = "limit" in str(exc)
        self._close_with(CLOSE_TOO_BIG if too_big else CLOSE_PROTOCOL_ERROR, str(exc))

    # -- login ------------------------------------------------------------------------
    def _login(self, message: bytes) -> None:
        """The first message: parsed here, decided by the hub's Admission."""
        self.state = CHECKING
        self._pause_reading()
        try:
            peer_login = self._parse_login(message)
        except Refusal as refusal:
            self._refuse(refusal)
            return
        request = LoginRequest(Handshake(
            query="", ip=self.client_address, cookie=None, user_agent=None, secure=True,
            insecure_allowed=False, peer=peer_login))
        d = self.hub.admission.admit(request, gone=lambda: self.state == CLOSED)
        d.addCallbacks(self._admitted, self._refused)
        d.addErrback(self._bug)

    def _parse_login(self, message: bytes) -> PeerLogin:
        try:
            value = orjson.loads(message)
        except orjson.JSONDecodeError:
            raise Refusal(400, "Bad Request", "login: not JSON", "bad_login") from None
        if not isinstance(value, dict):
            raise Refusal(400, "Bad Request", "login: not a JSON object", "bad_login")
        fields: dict[str, str] = {}
        for name in LOGIN_FIELDS:
            item = value.get(name)
            if item is None:
                continue
            if not isinstance(item, str):
                raise Refusal(400, "Bad Request", f"login: {name} is not a string",
                              "bad_login")
            fields[name] = item
        return PeerLogin(fields, value.get("listen"), self.stream.local_peer,
                         self.stream.remote_peer)

    def _admitted(self, admitted: Admitted) -> None:
        if self.state == CLOSED:       # (gone after the decision's last look)
            admitted.release()
            return
        self._admission = admitted
        self._end_pending()
        login = admitted.login
        self.session = Session(login.user, login.listen, self.send_frame,
                               self.client_address, login.key_x)
        self.hub.metrics.handshake("accepted", login.method, TRANSPORT)
        if self.hub.log_connections:
            log.info("login {user} ({method}) over libp2p from {ip} ({peer})",
                     user=login.user, method=login.method, ip=self.client_address,
                     peer=self.stream.remote_peer)
        self._reader.max_size = self.max_message_size
        self.stream.write(frame(dumps({"login": "accepted", "user": login.user,
                                       "method": login.method, "listen": list(login.listen),
                                       "peer": self.stream.local_peer})))
        self.state = OPEN
        self._registered = True
        self.hub.register(cast("Connection", self))
        self._drain()

    def _refused(self, failure: Failure) -> None:
        if failure.check(ClientLeft):
            log.info("{ip} left while its login was checked", ip=self.client_address)
            return
        failure.trap(Refusal)
        self._refuse(failure.value)

    def _refuse(self, refusal: Refusal) -> None:
        """Log the refusal once, tell the client why (the WebSocket's status and reason,
        and the kind), and close."""
        self.hub.metrics.handshake("refused", refusal.kind, TRANSPORT)
        log.warn("refused libp2p login {status} {reason} to {ip} ({peer}): {detail}",
                 status=refusal.status, reason=refusal.reason, ip=self.client_address,
                 peer=self.stream.remote_peer, detail=refusal.detail)
        if self.state == CLOSED:
            return
        self.stream.write(frame(dumps({"login": "refused", "status": refusal.status,
                                       "reason": refusal.reason, "kind": refusal.kind})))
        self._shut()

    def _bug(self, failure: Failure) -> None:
        log.failure("a libp2p login failed", failure)
        if self.state != CLOSED:
            self._refuse(Refusal(503, "Login check failed", "internal error", "error"))

    def _login_timed_out(self) -> None:
        self._login_timer = None
        if self.state == LOGIN:
            self._refuse(Refusal(400, "Bad Request", "no login within "
                                 "open_handshake_timeout", "login_timeout"))

    # -- requests ---------------------------------------------------------------------
    def _dispatch(self, message: bytes) -> None:
        self._in_flight += 1
        if self._in_flight >= self.hub.max_in_flight:
            self._pause_reading()
        self.hub.dispatcher.handle_then(self.session, message, self._replied)

    def _replied(self, reply: bytes) -> None:
        self._in_flight -= 1
        self.send_frame(reply)
        self._drain()

    def _drain(self) -> None:
        """Dispatch the messages waiting behind the in-flight cap (a loop, not nested
        calls: a reply can come at once, and one read can hold thousands)."""
        if self._draining:
            return
        self._draining = True
        try:
            limit = self.hub.max_in_flight
            while self._waiting and self._in_flight < limit and self.state == OPEN:
                self._dispatch(self._waiting.popleft())
        finally:
            self._draining = False
        if self.state != OPEN:
            self._waiting.clear()
        elif not self._waiting and self._in_flight < self.hub.max_in_flight:
            self._resume_reading()

    def _pause_reading(self) -> None:
        if not self._reading_paused:
            self._reading_paused = True
            self.stream.pause_reading()

    def _resume_reading(self) -> None:
        if self._reading_paused:
            self._reading_paused = False
            self.stream.resume_reading()

    # -- bytes out (the session's send) ---------------------------------------------------
    def send_frame(self, payload: bytes) -> bool:
        """Send one message; False if the stream is closing, or was just cut for not
        reading (more than ``max_outbound_bytes`` queued)."""
        if self.state != OPEN:
            return False
        self.stream.write(frame(payload))
        if self.stream.pending <= self.hub.max_outbound_bytes:
            return True
        log.warn("closing slow consumer {user} at {ip} (libp2p): {size} bytes queued",
                 user=self.session.user, ip=self.client_address, size=self.stream.pending)
        self.hub.metrics.slow_consumer(TRANSPORT)
        self.abort()
        return False

    # -- the hub's Connection -------------------------------------------------------------
    def end_session(self, code: int, reason: str) -> None:
        """Send a ``close`` message (the WebSocket's close codes: 4001 credentials
        changed, 1001 going away) and close the stream."""
        if self.state == OPEN:
            self._close_with(code, reason)

    def abort(self) -> None:
        if self.state != CLOSED:
            self.state = CLOSING
            self.stream.reset()

    def _close_with(self, code: int, reason: str) -> None:
        self.stream.write(frame(dumps({"action": "close", "code": code,
                                       "reason": reason[:123]})))
        self._shut()

    def _shut(self) -> None:
        self.state = CLOSING
        self._waiting.clear()
        self._pause_reading()
        self.stream.close()

    def connection_lost(self, reason: str) -> None:
        was = self.state
        self.state = CLOSED
        self._end_pending()
        self._waiting.clear()
        admitted, self._admission = self._admission, None
        if admitted is not None:
            admitted.release()
        if self._registered:
            self._registered = False
            self.hub.unregister(cast("Connection", self))
            if self.hub.log_connections:
                log.info("disconnect {user} (libp2p) from {ip}", user=self.session.user,
                         ip=self.client_address)
        elif was == CHECKING:
            pass   # (the decision sees ``gone`` and gives its place back)

    def _end_pending(self) -> None:
        if self._login_timer is not None:
            if self._login_timer.active():
                self._login_timer.cancel()
            self._login_timer = None
        if self._pending:
            self._pending = False
            self.server.pending_ended(self._network)

    def _who(self) -> str:
        session = getattr(self, "session", None)
        return session.user if session is not None else self.stream.remote_peer


class P2PServer:
    """The libp2p host of a gateway process (``[p2p] listen``)."""

    def __init__(self, hub: TransportHub, settings: P2PSection, key_path: Path,
                 reactor: Any) -> None:
        self.hub = hub
        self.settings = settings
        self.key_path = key_path
        self.reactor = reactor
        #: streams whose login is not accepted yet (at most max_pending_connections)
        self.pending = 0
        #: of those, by the client network they come from (at most
        #: max_pending_per_address each; entries at 0 are removed)
        self.pending_by_network: dict[str, int] = {}
        #: streams reset since a bound was reached (None: not at the bound), so that a
        #: flood is logged once when it starts and once when it ends
        self._refused_all: int | None = None
        self._refused_from: dict[str, int] = {}
        self.accepting = False
        self.node: Any = None
        self.addresses: list[str] = []

    def start(self) -> defer.Deferred[list[str]]:
        """Listen on ``[p2p] listen``; → the full multiaddrs (with ``/p2p/PEER``)."""
        from wyseman.p2p import node
        key, created = node.load_or_create_key(self.key_path)
        if created:
            log.info("created the libp2p identity {path} (peer id {peer})",
                     path=str(self.key_path), peer=node.peer_id_of(key))
        self.node = node.Node(self.reactor, key, self.settings.listen, PROTOCOL_ID,
                              self._on_stream, mdns=self.settings.mdns,
                              ping_interval=self.hub.config.limits.ping_interval,
                              ping_timeout=self.hub.config.limits.ping_timeout)
        self.accepting = True

        def started(addresses: Sequence[str]) -> list[str]:
            self.addresses = list(addresses)
            for address in addresses:
                log.info("listening on libp2p {address} ({protocol})", address=address,
                         protocol=PROTOCOL_ID)
            return self.addresses
        return self.node.start().addCallback(started)

    def _on_stream(self, stream: StreamIO) -> None:
        if not self.accepting:
            stream.reset()
            return
        limits = self.hub.config.limits
        if self.pending >= limits.max_pending_connections:
            self.hub.metrics.handshake("refused", "pending", TRANSPORT)
            if self._refused_all is None:
                self._refused_all = 0
                log.warn("{count} libp2p streams are logging in ([limits] "
                         "max_pending_connections): resetting new ones",
                         count=self.pending)
            self._refused_all += 1
            stream.reset()
            return
        network = self.network_of(stream)
        if limits.max_pending_per_address and network is not None \
                and self.pending_by_network.get(network, 0) >= limits.max_pending_per_address:
            self.hub.metrics.handshake("refused", "pending_address", TRANSPORT)
            if network not in self._refused_from:
                self._refused_from[network] = 0
                log.warn("resetting new libp2p streams from {address}: {count} of its "
                         "streams are logging in ([limits] max_pending_per_address)",
                         address=network, count=self.pending_by_network[network])
            self._refused_from[network] += 1
            stream.reset()
            return
        stream.handler = P2PConnection(self, stream)

    def pending_started(self, network: str | None) -> None:
        """A stream logging in from ``network`` (None: not counted by network)."""
        self.pending += 1
        if network is not None:
            self.pending_by_network[network] = self.pending_by_network.get(network, 0) + 1

    def pending_ended(self, network: str | None) -> None:
        """That stream is logged in, refused or gone."""
        self.pending -= 1
        if network is not None:
            left = self.pending_by_network[network] - 1
            if left:
                self.pending_by_network[network] = left
            else:
                del self.pending_by_network[network]
            refused = self._refused_from.pop(network, None)
            if refused is not None:
                log.info("accepting libp2p streams from {address} again ({refused} "
                         "reset)", address=network, refused=refused)
        if self._refused_all is not None:
            log.info("fewer libp2p streams are logging in again ({refused} reset)",
                     refused=self._refused_all)
            self._refused_all = None

    @staticmethod
    def network_of(stream: StreamIO) -> str | None:
        """The client network ``stream`` counts under for max_pending_per_address: its
        peer's address, however many streams and connections (and peer ids, which cost
        nothing to make) it uses."""
        address = stream.remote_address
        network = networks.client_network(address[0]) if address else None
        return networks.network_key(network) if network is not None else None

    def stop_accepting(self) -> None:
        """New streams are reset from now on (the service is stopping)."""
        self.accepting = False

    def stop(self) -> defer.Deferred[None]:
        """Close the host; fires once it and the trio run (if it was the last) ended."""
        self.accepting = False
        node, self.node = self.node, None
        if node is None:
            return defer.succeed(None)
        result: defer.Deferred[None] = node.stop()
        return result
