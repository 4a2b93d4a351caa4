"""``[server] route_by_user``: every WebSocket of one user served by one worker process.

With ``workers = N`` the kernel spreads accepted connections over the workers
(SO_REUSEPORT hashes the addresses), so a user's sockets end up in N processes. Reads of
one user (one PostgreSQL role) that arrive together are answered by one statement only
within one process (``[database] read_batch``): spread over N processes, the batches are
N times smaller and each request costs more. Measured on 2 cores, 100 sockets of 10
users: two workers served 0.82–0.86× what one did; two processes each holding all the
sockets of half the users 1.09–1.36× (docs/performance.md,
"Fan-out picking, routing by user").

So a worker that reads an upgrade request for a user that another worker owns (the CRC-32
of the ``user`` query parameter, modulo N) passes the connection on: the socket's file
descriptor and the request head it has read so far go over a Unix socket (``SCM_RIGHTS``,
one ``SOCK_SEQPACKET`` message each: nothing is sent in part) to that worker, which
adopts the socket and reads the head from the message, then the rest from the socket,
as if it had accepted the connection itself. Nothing has been answered yet when a
connection moves, so the client sees nothing of it. TLS connections stay where they are
(their session state lives in the process that accepted them), and when the owner cannot
take the connection at once (restarting, its queue full) the worker that has it serves it.

The Unix sockets are ``DIR/N.sock`` in a directory the supervisor makes for its workers
(mode 0700: only processes of the server's own user can pass connections in).
"""

from __future__ import annotations

import array
import os
import socket
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twisted.internet import task, tcp
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger(namespace="wyseman.routing")

_CLOEXEC = getattr(socket, "MSG_CMSG_CLOEXEC", 0)   # (Linux, FreeBSD)

#: seconds between two checks that this worker's socket file is still there
CHECK_EVERY = 60.0

#: the largest message: a request head (the sniffer reads at most 16 KiB) and some room
MAX_MESSAGE = 32 * 1024


def route_key(head: bytes) -> bytes | None:
    """The raw (still percent-encoded) ``user`` query parameter of a request head's
    target; None without one. The same user spelled two ways may land on two workers:
    that costs batching, not correctness."""
    line_end = head.find(b"\r\n")
    request_line = head if line_end < 0 else head[:line_end]
    parts = request_line.split(b" ")
    if len(parts) != 3:
        return None
    _, _, query = parts[1].partition(b"?")
    for field in query.split(b"&"):
        name, equals, value = field.partition(b"=")
        if name == b"user" and equals and value:
            return value
    return None


def owner_of(key: bytes, workers: int) -> int:
    """The worker (0 … ``workers`` − 1) that serves the user whose route key is ``key``:
    the same in every process (unlike ``hash``)."""
    return zlib.crc32(key) % workers


def socket_path(directory: str | Path, index: int) -> str:
    return str(Path(directory) / f"{index}.sock")


class Router:  # (the wire's wyseman.ws.seams.ConnectionRouter)
    """Worker ``index`` of ``workers``: passes connections to their owners, and takes
    those passed to it (:meth:`start`) into the site they came from (a
    :class:`~wyseman.ws.httpbounds.GatewaySite` of a plain ``tcp:`` endpoint,
    :meth:`add_site`: every worker builds its sites in the same order)."""

    def __init__(self, reactor: Any, directory: str | Path, index: int, workers: int) -> None:
        self.reactor = reactor
        self.directory = str(directory)
        self.index = index
        self.workers = workers
        self.sites: list[Any] = []
        self._peers: dict[int, socket.socket] = {}
        self._listener: _Listener | None = None
        self._inbound: set[_UnixReader] = set()
        self._check: task.LoopingCall | None = None
        self._bound: int | None = None    # the inode of the socket's file
        #: connections passed on, taken in, and served here because the owner could not
        #: take them (metric ``wyseman_routed_connections``)
        self.passed = self.taken = self.kept = 0

    # -- taking connections in ------------------------------------------------------
    def add_site(self, site: Any) -> None:
        """Route the upgrades that ``site`` reads (a site can be told apart from the
        others in a message by its place: at most 256)."""
        if len(self.sites) < 256:
            site.router, site.route_index = self, len(self.sites)
            self.sites.append(site)

    def start(self) -> None:
        """Listen for connections passed to this worker; and every :data:`CHECK_EVERY`
        seconds make sure the socket's file is still there (a cleaner of old files in
        the temporary directory may remove it and its directory: it is made again)."""
        self._bind()
        if self._check is None:
            self._check = task.LoopingCall(self._still_bound)
            self._check.clock = self.reactor
            self._check.start(CHECK_EVERY, now=False)

    def _bind(self) -> None:
        path = socket_path(self.directory, self.index)
        try:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            os.unlink(path)          # left by this worker's previous incarnation
        except OSError:
            pass                     # (none left; or bind says what is wrong)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            sock.setblocking(False)
            sock.bind(path)
            sock.listen(128)
        except OSError as exc:   # the others then serve this worker's users themselves
            sock.close()
            log.error("[server] route_by_user: cannot listen on {path}: {error}; "
                      "connections are not passed to this worker", path=path, error=exc)
            return
        self._listener = _Listener(self, sock)
        self.reactor.addReader(self._listener)
        self._bound = os.stat(path).st_ino

    def _still_bound(self) -> None:
        """Listen again if the socket's file is gone or is not ours any more."""
        try:
            if os.stat(socket_path(self.directory, self.index)).st_ino == self._bound:
                return
        except OSError:
            pass
        log.warn("[server] route_by_user: {path} was removed; listening again",
                 path=socket_path(self.directory, self.index))
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        self._bind()

    def stop(self) -> None:
        if self._check is not None:
            if self._check.running:
                self._check.stop()
            self._check = None
        for peer in self._peers.values():
            peer.close()
        self._peers.clear()
        for inbound in list(self._inbound):
            inbound.close()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            try:
                os.unlink(socket_path(self.directory, self.index))
            except FileNotFoundError:
                pass

    def adopt(self, fd: int, message: bytes) -> None:
        """Serve the connection ``fd`` here (passed by another worker with ``message``:
        the index of its site, then the head it read); ``fd`` is closed (the reactor
        holds a copy)."""
        try:
            if not message or message[0] >= len(self.sites):
                log.warn("routing socket: ignored a connection for an unknown site")
                return
            site, head = self.sites[message[0]], message[1:]
            probe = socket.socket(fileno=fd)    # (to read the address family)
            family = probe.family
            probe.detach()
            transport = self.reactor.adoptStreamConnection(fd, family, _Adopted(site))
        except OSError as exc:   # (most often: the client has gone meanwhile)
            log.info("could not take a connection passed by another worker: {error}",
                     error=exc)
            return
        finally:
            os.close(fd)
        if transport is None:
            return
        self.taken += 1
        transport.protocol.dataReceived(head)

    # -- passing connections on -----------------------------------------------------
    def owner(self, head: bytes) -> int | None:
        """The worker that should serve the upgrade request ``head``: None if this one
        (or the head names no user)."""
        key = route_key(head)
        if key is None:
            return None
        owner = owner_of(key, self.workers)
        return None if owner == self.index else owner

    def pass_on(self, site: Any, transport: Any, owner: int, head: bytes) -> bool:
        """Give the connection of ``transport`` (plain TCP, accepted by ``site``; ``head``
        read from it) to worker ``owner``, and let go of it here: True. False (and
        nothing changed) if the owner cannot take it now; this worker serves it then."""
        if type(transport) is not tcp.Server or len(head) >= MAX_MESSAGE:
            return False
        transport.stopReading()              # what comes next is the owner's to read
        message = [bytes((site.route_index,)), head]
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [transport.fileno()]))]
        try:
            try:
                self._peer(owner).sendmsg(message, rights)
            except (BrokenPipeError, ConnectionResetError):   # the owner was restarted:
                self._drop_peer(owner)                        # once more, to the new one
                self._peer(owner).sendmsg(message, rights)
        except OSError as exc:
            self._drop_peer(owner)
            self.kept += 1
            log.debug("worker {owner} cannot take a connection ({error}): served here",
                      owner=owner, error=exc)
            transport.startReading()
            return False
        self.passed += 1
        # The socket lives on in the owner: close this process's descriptor only (no
        # shutdown, which would end the connection for both).
        transport._shouldShutdown = False
        transport.loseConnection()
        return True

    def _peer(self, owner: int) -> socket.socket:
        peer = self._peers.get(owner)
        if peer is None:
            peer = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            peer.setblocking(False)
            try:
                peer.connect(socket_path(self.directory, owner))
            except OSError:
                peer.close()
                raise
            self._peers[owner] = peer
        return peer

    def _drop_peer(self, owner: int) -> None:
        peer = self._peers.pop(owner, None)
        if peer is not None:
            peer.close()


class _Adopted:
    """The factory a passed connection is adopted with: the site's protocol, told that
    its connection has been routed already (it is not passed on again)."""

    def __init__(self, site: Any) -> None:
        self.site = site

    def buildProtocol(self, addr: Any) -> Any:  # noqa: N802
        protocol = self.site.buildProtocol(addr)
        if protocol is not None:
            protocol.routed = True
        return protocol


class _UnixReader:
    """A Unix socket of the routing, read by the reactor."""

    def __init__(self, router: Router, sock: socket.socket) -> None:
        self.router = router
        self.sock = sock

    def fileno(self) -> int:
        return self.sock.fileno()

    def logPrefix(self) -> str:  # noqa: N802
        return "wyseman.application.workers.routing"

    def connectionLost(self, reason: Failure) -> None:  # noqa: N802
        self.close()

    def close(self) -> None:
        self.router.reactor.removeReader(self)
        self.router._inbound.discard(self)
        self.sock.close()


class _Listener(_UnixReader):
    """The Unix socket other workers pass connections to."""

    def doRead(self) -> None:  # noqa: N802
        while True:
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warn("routing socket: accept failed: {error}", error=exc)
                return
            conn.setblocking(False)
            inbound = _Inbound(self.router, conn)
            self.router._inbound.add(inbound)
            self.router.reactor.addReader(inbound)


class _Inbound(_UnixReader):
    """One other worker's connection to ours: a message per connection passed."""

    def doRead(self) -> None:  # noqa: N802
        fd_size = array.array("i").itemsize
        while True:
            try:
                data, ancillary, flags, _ = self.sock.recvmsg(
                    MAX_MESSAGE, socket.CMSG_SPACE(fd_size), _CLOEXEC)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.close()
                return
            fds = array.array("i")
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.frombytes(payload[:len(payload) - len(payload) % fd_size])
            if not data and not fds:
                self.close()            # the other worker went away
                return
            if len(fds) != 1 or flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
                for fd in fds:
                    os.close(fd)
                log.warn("routing socket: ignored a malformed message")
                continue
            self.router.adopt(fds[0], data)


if TYPE_CHECKING:
    from wyseman.ws.seams import ConnectionRouter

    def _is_a_connection_router(router: Router) -> ConnectionRouter:
        return router     # (the type checker holds Router to the wire's seam)
