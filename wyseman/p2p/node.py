"""The libp2p adapter: the one module that imports py-libp2p and trio.

py-libp2p runs on trio, the gateway on Twisted. Trio runs here as a *guest* of the
reactor (``trio.lowlevel.start_guest_run``): trio's tasks run on the reactor thread, in
callbacks the reactor schedules, and only trio's wait for I/O runs on a thread of its
own. So a trio task may call gateway code directly (same thread, no locks), while
gateway code reaches trio only through the run's token (``run_sync_soon``). A host
loop takes one guest run at a time: :class:`TrioLoop` is one per process, shared by
every node and dial, started on first use and ended when the last user lets go (a
stopped service ends it).

The rest of wyseman sees a stream as a :class:`Stream` (write, pause, close, reset)
and gives each one a :class:`StreamHandler` (bytes in, end). An exception that
escapes a py-libp2p stream handler takes the whole host down, so every call across
the seam is guarded here.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import secrets
import stat
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import ifaddr
import multiaddr
import trio
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.serialization import deserialize_private_key
from libp2p.custom_types import TProtocol
from libp2p.network.config import ConnectionConfig
from libp2p.network.stream.exceptions import StreamError
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from twisted.internet import defer
from twisted.logger import Logger
from zeroconf import ServiceInfo, Zeroconf

log = Logger(namespace="wyseman.p2p")


class _ToTwistedLog(logging.Handler):
    """py-libp2p (and zeroconf, the mDNS responder) log through the standard library,
    much of it at WARNING for what is routine between peers (a peer without the
    identify protocol, js-libp2p by default, is an error message per connection).
    Their records go to the Twisted log at debug level (critical ones as errors), not
    to stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:  # noqa: BLE001 (a malformed record)
            text = str(record.msg)
        if record.levelno >= logging.CRITICAL:
            log.error("libp2p: {text}", text=text)
        else:
            log.debug("libp2p: {text}", text=text)


for _name in ("libp2p", "zeroconf"):
    _stdlib_log = logging.getLogger(_name)
    _stdlib_log.addHandler(_ToTwistedLog())
    _stdlib_log.propagate = False

#: bytes asked of a stream per read: what one call hands the handler at most
READ_CHUNK = 65536
#: seconds a closed stream waits for the peer to close its side before it is reset
CLOSE_GRACE = 2.0


class P2PKeyError(ValueError):
    """The key file cannot be read, created or used (the message says why)."""


# -- identity ---------------------------------------------------------------------------

def load_or_create_key(path: Path) -> tuple[bytes, bool]:
    """The serialized libp2p private key (Ed25519, the libp2p protobuf form) kept in
    ``path``, and whether it was created now: created with mode 0600 the first time, so
    that the server's peer id stays the same across restarts. A file others may read is
    refused (the key is the server's identity)."""
    try:
        info = path.stat()
    except FileNotFoundError:
        key = create_new_key_pair().private_key.serialize()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            raise P2PKeyError(f"cannot create {path}: {exc.strerror or exc}") from None
        with os.fdopen(fd, "wb") as out:
            out.write(key)
        return key, True
    except OSError as exc:
        raise P2PKeyError(f"cannot read {path}: {exc.strerror or exc}") from None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise P2PKeyError(f"{path} is readable by others (mode {stat.S_IMODE(info.st_mode):o};"
                          " chmod 600 it)")
    if info.st_size > 4096:
        raise P2PKeyError(f"{path} is not a libp2p private key (too large)")
    data = path.read_bytes()
    _key_pair(data, path)
    return data, False


def _key_pair(data: bytes, where: object = "key") -> KeyPair:
    try:
        private = deserialize_private_key(data)
    except Exception as exc:
        raise P2PKeyError(f"{where} is not a libp2p private key: {exc}") from None
    return KeyPair(private, private.get_public_key())


def new_key() -> bytes:
    """A new serialized Ed25519 private key (a client identity that outlives a dial)."""
    return create_new_key_pair().private_key.serialize()


def peer_id_of(key: bytes) -> str:
    """The peer id (base58) of a serialized private key."""
    return ID.from_pubkey(_key_pair(key).public_key).to_base58()


def check_multiaddr(text: str) -> None:
    """:raises ValueError: ``text`` is not a multiaddr this node can listen on."""
    try:
        addr = multiaddr.Multiaddr(text)
    except Exception as exc:
        raise ValueError(f"not a multiaddr: {exc}") from None
    names = [p.name for p in addr.protocols()]
    if len(names) != 2 or names[0] not in ("ip4", "ip6") or names[1] != "tcp":
        raise ValueError("expected /ip4/ADDRESS/tcp/PORT or /ip6/ADDRESS/tcp/PORT")


# -- the guest run -----------------------------------------------------------------------

class TrioLoop:
    """The process's trio guest run on the reactor; :meth:`acquire` it, :meth:`release`
    it (the last release ends the run)."""

    _current: TrioLoop | None = None

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.users = 0
        self._token: Any = None
        self._nursery: Any = None
        self._early: list[Callable[[], Any]] = []
        self._stop: trio.Event | None = None
        self.done: defer.Deferred[None] = defer.Deferred()

    @classmethod
    def acquire(cls, reactor: Any) -> TrioLoop:
        loop = cls._current
        if loop is None or loop.reactor is not reactor:
            loop = cls._current = cls(reactor)
            loop._start()
        loop.users += 1
        return loop

    def release(self) -> defer.Deferred[None]:
        """Fires once this user may forget the loop (the last user: once the run ended)."""
        self.users -= 1
        if self.users > 0:
            return defer.succeed(None)
        if TrioLoop._current is self:
            TrioLoop._current = None
        self.soon(lambda: self._stop.set() if self._stop is not None else None)
        return self.done

    def _start(self) -> None:
        def not_threadsafe(fn: Callable[[], object]) -> None:
            self.reactor.callLater(0, fn)

        trio.lowlevel.start_guest_run(
            self._main, run_sync_soon_threadsafe=self.reactor.callFromThread,
            run_sync_soon_not_threadsafe=not_threadsafe, done_callback=self._ended,
            host_uses_signal_set_wakeup_fd=True)
        self._token = trio.lowlevel.current_trio_token()

    async def _main(self) -> None:
        self._stop = trio.Event()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            early, self._early = self._early, []
            for fn in early:
                fn()
            await self._stop.wait()
            nursery.cancel_scope.cancel()

    def _ended(self, outcome: Any) -> None:
        try:
            outcome.unwrap()
        except BaseException as exc:  # noqa: BLE001 (the run is over either way)
            log.error("the trio run ended with an error: {error!r}", error=exc)
        self.reactor.callLater(0, self.done.callback, None)

    def soon(self, fn: Callable[[], Any]) -> None:
        """Run ``fn`` in the trio run (any thread, before or after it started)."""
        def inside() -> None:
            if self._nursery is None:
                self._early.append(fn)
            else:
                fn()
        self._token.run_sync_soon(inside)

    def spawn(self, task: Callable[..., Any], *args: Any) -> None:
        """Start the async function ``task(*args)`` as a task of the run."""
        self.soon(lambda: self._nursery.start_soon(task, *args))

    def call(self, task: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
        """Run ``task(*args)`` in the run → Deferred of its result (or failure)."""
        d: defer.Deferred[Any] = defer.Deferred()

        async def run() -> None:
            try:
                result = await task(*args)
            except Exception as exc:  # noqa: BLE001 (handed to the Deferred)
                self.reactor.callLater(0, d.errback, exc)
            else:
                self.reactor.callLater(0, d.callback, result)
        self.spawn(run)
        return d


# -- streams -----------------------------------------------------------------------------

class StreamHandler(Protocol):
    """What a stream's owner provides: called on the reactor thread."""

    def data_received(self, data: bytes) -> None:
        ...

    def connection_lost(self, reason: str) -> None:
        ...


class Stream:
    """One libp2p stream as gateway code uses it: all methods are for the reactor
    thread and return at once; the I/O happens in the trio run."""

    def __init__(self, loop: TrioLoop, stream: Any, local_peer: str) -> None:
        self._loop = loop
        self._stream = stream
        self.local_peer = local_peer
        #: the other end's peer id (proven by the secure channel)
        self.remote_peer: str = stream.muxed_conn.peer_id.to_base58()
        address = None
        try:
            address = stream.get_remote_address()
        except Exception:  # noqa: BLE001 (informational only)
            pass
        #: the other end's (host, port), when the transport tells it
        self.remote_address: tuple[str, int] | None = \
            (str(address[0]), int(address[1])) if address else None
        self.handler: StreamHandler | None = None
        #: bytes written but not yet taken by the stream (the outbound budget reads it)
        self.pending = 0
        self._outbound: deque[bytes] = deque()
        self._paused = False
        self._closing = False
        self._reset = False
        self._lost = False
        self._wake_writer: trio.Event | None = None
        self._wake_reader: trio.Event | None = None
        self._peer_closed: trio.Event | None = None
        self._scope: trio.CancelScope | None = None

    # -- the reactor's side ----------------------------------------------------
    def write(self, data: bytes) -> None:
        if self._closing or self._lost:
            return
        self._outbound.append(data)
        self.pending += len(data)
        self._poke("_wake_writer")

    def pause_reading(self) -> None:
        self._paused = True

    def resume_reading(self) -> None:
        if self._paused:
            self._paused = False
            self._poke("_wake_reader")

    def close(self) -> None:
        """Send what is queued, close our side, and reset the stream once the peer has
        closed its side too (or after :data:`CLOSE_GRACE` seconds)."""
        if not self._closing:
            self._closing = True
            self._poke("_wake_writer")

    def reset(self) -> None:
        """Drop the stream at once (what is queued is not sent)."""
        self._reset = self._closing = True
        self._outbound.clear()
        self.pending = 0
        self._loop.soon(self._cancel)

    @property
    def open(self) -> bool:
        return not (self._closing or self._lost)

    def _poke(self, name: str) -> None:
        def wake() -> None:
            event = getattr(self, name)
            if event is not None:
                event.set()
        self._loop.soon(wake)

    def _cancel(self) -> None:
        if self._scope is not None:
            self._scope.cancel()

    # -- the trio side ----------------------------------------------------------------
    async def run(self) -> None:
        """Serve the stream until it ends; never raises (but trio's cancellation)."""
        try:
            with trio.CancelScope() as scope:
                self._scope = scope
                self._peer_closed = trio.Event()
                if self._reset:
                    scope.cancel()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._write_loop, nursery.cancel_scope)
                    await self._read_loop()
                    # the peer closed its side: the writer sends what is queued, ends
                    self._peer_closed.set()
                    self._closing = True
                    if self._wake_writer is not None:
                        self._wake_writer.set()
        except Exception as exc:  # noqa: BLE001 (an escaping error kills the host)
            if not isinstance(exc, StreamError) and not _only_stream_errors(exc):
                log.warn("libp2p stream from {peer} failed: {error!r}",
                         peer=self.remote_peer, error=exc)
        finally:
            with trio.CancelScope(shield=True):
                try:
                    with trio.move_on_after(1):
                        await self._stream.reset()
                except Exception:  # noqa: BLE001 (it is gone either way)
                    pass
            self._lost_once("closed")

    async def _read_loop(self) -> None:
        while True:
            while self._paused:
                self._wake_reader = trio.Event()
                await self._wake_reader.wait()
                self._wake_reader = None
            try:
                data = await self._stream.read(READ_CHUNK)
            except StreamError:
                return
            if not data:
                return
            if self._lost or self._reset:
                return
            self._deliver(data)

    async def _write_loop(self, scope: trio.CancelScope) -> None:
        while True:
            while self._outbound:
                data = self._outbound.popleft()
                try:
                    await self._stream.write(data)
                except StreamError:
                    scope.cancel()
                    return
                self.pending -= len(data)
            if self._closing:
                break
            self._wake_writer = trio.Event()
            await self._wake_writer.wait()
            self._wake_writer = None
        try:
            await self._stream.close_write()
        except Exception:  # noqa: BLE001 (reset below)
            pass
        # our side is closed: the peer has CLOSE_GRACE seconds to close its own
        assert self._peer_closed is not None
        with trio.move_on_after(CLOSE_GRACE):
            await self._peer_closed.wait()
        scope.cancel()

    def _deliver(self, data: bytes) -> None:
        handler = self.handler
        if handler is None:
            return
        try:
            handler.data_received(data)
        except Exception:  # noqa: BLE001 (a bug in the handler: this stream only)
            log.failure("libp2p stream handler failed")
            self.reset()

    def _lost_once(self, reason: str) -> None:
        if self._lost:
            return
        self._lost = True
        self._outbound.clear()
        self.pending = 0
        handler = self.handler
        if handler is not None:
            try:
                handler.connection_lost(reason)
            except Exception:  # noqa: BLE001
                log.failure("libp2p stream handler failed at its end", None)


def _only_stream_errors(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return all(_only_stream_errors(e) for e in exc.exceptions)
    return isinstance(exc, StreamError)


# -- mDNS ---------------------------------------------------------------------------------

#: the DNS-SD service type of libp2p's mDNS discovery (libp2p specs, discovery/mdns.md)
MDNS_SERVICE = "_p2p._udp.local."
_NAME_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789"


def mdns_records(listening: Sequence[str], peer_id: str,
                 adapters: Sequence[Any] | None = None) -> tuple[list[str], list[str]]:
    """What the host announces by mDNS for the transport addresses it listens on
    (``/ip4/ADDRESS/tcp/PORT``, the ports bound) → (the IP addresses to multicast on,
    the TXT record's multiaddrs ending in ``/p2p/PEER``).

    Only the interfaces of ``listening`` are used: a listen address names its own; a
    wildcard (``0.0.0.0``, ``::``) stands for every address of its family on the
    machine's interfaces (``adapters``, default those ``ifaddr`` lists; IPv6
    link-local ones are left out: dialling one needs its zone, which a peer elsewhere
    on the link names differently)."""
    interfaces: list[str] = []
    multiaddrs: list[str] = []
    for text in listening:
        addr = multiaddr.Multiaddr(text)
        names = [p.name for p in addr.protocols()]
        if len(names) != 2 or names[0] not in ("ip4", "ip6") or names[1] != "tcp":
            continue
        family, port = names[0], addr.value_for_protocol("tcp")
        ip = ipaddress.ip_address(addr.value_for_protocol(family))
        if ip.is_unspecified:
            if adapters is None:
                adapters = list(ifaddr.get_adapters())
            ips = _adapter_ips(adapters, ip.version)
        else:
            ips = [str(ip)]
        for one in ips:
            if one not in interfaces:
                interfaces.append(one)
            full = f"/{family}/{one}/tcp/{port}/p2p/{peer_id}"
            # a TXT string holds 255 bytes at most (RFC 6763, 6.1), "dnsaddr=" included
            if len(full) <= 255 - len("dnsaddr=") and full not in multiaddrs:
                multiaddrs.append(full)
    return interfaces, multiaddrs


def _adapter_ips(adapters: Sequence[Any], version: int) -> list[str]:
    found: list[str] = []
    for adapter in adapters:
        for entry in adapter.ips:
            text = entry.ip[0] if isinstance(entry.ip, tuple) else entry.ip
            ip = ipaddress.ip_address(text)
            if ip.version == version and not ip.is_link_local and str(ip) not in found:
                found.append(str(ip))
    return found


class Announcement:
    """The host's mDNS record (libp2p's mDNS discovery: service ``_p2p._udp.local``,
    an instance of a random name whose TXT record is one ``dnsaddr=MULTIADDR`` string
    per address, SRV and A/AAAA records beside it), answered by a zeroconf responder
    bound to the interfaces of those addresses only.

    The server only announces: it does not browse for other peers. zeroconf runs on a
    thread of its own; registering (its probes take about two seconds) and closing
    (the goodbye packets) run on a worker thread of the trio run, not on the reactor's."""

    def __init__(self, interfaces: Sequence[str], multiaddrs: Sequence[str]) -> None:
        self.interfaces = list(interfaces)
        self.multiaddrs = list(multiaddrs)
        self.name = "".join(secrets.choice(_NAME_CHARS) for _ in range(63))
        port = int(multiaddr.Multiaddr(self.multiaddrs[0]).value_for_protocol("tcp"))
        text = b"".join(bytes([len(s)]) + s
                        for s in (b"dnsaddr=" + a.encode() for a in self.multiaddrs))
        self.info = ServiceInfo(MDNS_SERVICE, f"{self.name}.{MDNS_SERVICE}", port=port,
                                properties=text, server=f"{self.name}.local.",
                                parsed_addresses=self.interfaces)
        self._zeroconf: Zeroconf | None = None

    async def open(self) -> None:
        """Bind the responder's sockets (raises if it cannot)."""
        self._zeroconf = await trio.to_thread.run_sync(
            lambda: Zeroconf(interfaces=list(self.interfaces)))

    async def run(self) -> None:
        """Register the record (probe, announce); the responder's thread answers the
        queries from then on. A failure to register is logged: the host serves on
        without it."""
        assert self._zeroconf is not None
        try:
            await trio.to_thread.run_sync(self._zeroconf.register_service, self.info)
        except Exception as exc:  # noqa: BLE001
            log.error("mDNS: cannot announce {name}: {error!r}", name=self.name, error=exc)
            return
        log.info("announcing {addresses} by mDNS on {interfaces}",
                 addresses=" ".join(self.multiaddrs), interfaces=" ".join(self.interfaces))

    async def close(self) -> None:
        """Withdraw the record (goodbye packets) and close the responder."""
        zeroconf, self._zeroconf = self._zeroconf, None
        if zeroconf is not None:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(zeroconf.close)


# -- serving and dialling ----------------------------------------------------------------

class Node:
    """A libp2p host serving one protocol: ``on_stream(stream)`` is called on the
    reactor thread for each stream a peer opens (it sets ``stream.handler``, or resets
    the stream). With ``mdns`` it is announced by mDNS (:class:`Announcement`) while it
    listens (not py-libp2p's own mDNS, which multicasts on every interface and
    announces a wildcard listen address as it is)."""

    def __init__(self, reactor: Any, key: bytes, listen: Sequence[str], protocol: str,
                 on_stream: Callable[[Stream], None], *, mdns: bool = False,
                 ping_interval: float = 0.0, ping_timeout: float = 15.0) -> None:
        self.reactor = reactor
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.key_pair = _key_pair(key)
        self.peer_id = ID.from_pubkey(self.key_pair.public_key).to_base58()
        self.listen = [multiaddr.Multiaddr(text) for text in listen]
        self.protocol = protocol
        self.on_stream = on_stream
        self.mdns = mdns
        #: the addresses it listens on, with /p2p/PEER (set once started)
        self.addresses: list[str] = []
        self._loop: TrioLoop | None = None
        self._stop: trio.Event | None = None
        self._stopped: defer.Deferred[None] = defer.Deferred()

    def start(self) -> defer.Deferred[list[str]]:
        """Listen; → the full multiaddrs. Fails if the host cannot listen."""
        self._loop = TrioLoop.acquire(self.reactor)
        ready: defer.Deferred[list[str]] = defer.Deferred()
        self._loop.spawn(self._serve, ready)

        def failed(failure: Any) -> Any:
            assert self._loop is not None
            loop, self._loop = self._loop, None
            return loop.release().addCallback(lambda _: failure)
        return ready.addErrback(failed)

    async def _serve(self, ready: defer.Deferred[list[str]]) -> None:
        started = False
        announcement: Announcement | None = None
        try:
            host = new_host(key_pair=self.key_pair, listen_addrs=self.listen,
                            connection_config=self._connections())
            host.set_stream_handler(TProtocol(self.protocol), self._handle)
            self._stop = trio.Event()
            async with host.run(listen_addrs=self.listen):
                self.addresses = [str(a) for a in host.get_addrs()]
                try:
                    if self.mdns:
                        announcement = self._announcement(host)
                        if announcement is not None:
                            await announcement.open()
                    started = True
                    self.reactor.callLater(0, ready.callback, list(self.addresses))
                    async with trio.open_nursery() as nursery:
                        if announcement is not None:
                            nursery.start_soon(announcement.run)
                        await self._stop.wait()
                        nursery.cancel_scope.cancel()
                finally:
                    # withdrawn before the host stops listening
                    if announcement is not None:
                        await announcement.close()
                # the streams end with the host (gateway sessions were closed before)
        except Exception as exc:  # noqa: BLE001 (reported to the starter or logged)
            if not started:
                self.reactor.callLater(0, ready.errback, exc)
            else:
                log.error("the libp2p host failed: {error!r}", error=exc)
        finally:
            self.reactor.callLater(0, self._stopped.callback, None)

    def _announcement(self, host: Any) -> Announcement | None:
        interfaces, multiaddrs = mdns_records(
            [str(a) for a in host.get_transport_addrs()], self.peer_id)
        if not multiaddrs:
            log.warn("mDNS: no address of [p2p] listen to announce")
            return None
        return Announcement(interfaces, multiaddrs)

    def _connections(self) -> ConnectionConfig:
        """The host's connection settings: py-libp2p's own, with its health monitor as
        the heartbeat when ``ping_interval`` is set.

        The monitor probes each connection every ``ping_interval`` seconds by opening a
        ``/ipfs/ping/1.0.0`` stream (a peer without the ping protocol answers the
        negotiation, which is enough to show it is there) and closes the connection, and
        with it its streams, when no answer comes within ``ping_timeout``: a peer that
        vanished, or that stopped reading, no longer holds its places. Its other policy
        (replacing connections it scores as poor by dialling the peer again) means
        nothing for a server whose clients do not listen, so the scores are set never to
        call for it."""
        if not self.ping_interval:
            return ConnectionConfig()
        return ConnectionConfig(
            enable_health_monitoring=True,
            health_check_interval=self.ping_interval,
            health_initial_delay=0.0,
            health_warmup_window=0.0,
            ping_timeout=self.ping_timeout,
            abort_connection_on_ping_failure=True,
            min_health_threshold=0.0,
            critical_health_threshold=0.0,
            max_ping_latency=float("inf"),
            min_ping_success_rate=0.0,
            max_failed_streams=1 << 30,
        )

    async def _handle(self, raw: Any) -> None:
        assert self._loop is not None
        try:
            stream = Stream(self._loop, raw, self.peer_id)
            self.on_stream(stream)
            if stream.handler is None:
                stream.reset()
            await stream.run()
        except Exception as exc:  # noqa: BLE001 (an escaping error kills the host)
            log.error("libp2p stream handler failed: {error!r}", error=exc)
            try:
                await raw.reset()
            except Exception:  # noqa: BLE001
                pass

    def stop(self) -> defer.Deferred[None]:
        """Close the host (and its streams); fires once it is gone and the trio run
        released."""
        loop, self._loop = self._loop, None
        if loop is None:
            return defer.succeed(None)
        loop.soon(lambda: self._stop.set() if self._stop is not None else None)
        return self._stopped.addCallback(lambda _: loop.release())


class Dialled:
    """A client's stream with its own host (an ephemeral identity): :meth:`close` ends
    both."""

    def __init__(self, loop: TrioLoop, stream: Stream, stop: trio.Event,
                 stopped: defer.Deferred[None]) -> None:
        self.stream = stream
        self._loop = loop
        self._stop = stop
        self._stopped = stopped
        self._released = False

    def close(self) -> defer.Deferred[None]:
        """Fires once the host is gone (each call gets a Deferred of its own)."""
        if not self._released:
            self._released = True
            self._loop.soon(self._stop.set)
            self._stopped.addCallback(lambda _: self._loop.release())
        done: defer.Deferred[None] = defer.Deferred()

        def fire(result: Any) -> Any:
            done.callback(None)
            return result
        self._stopped.addBoth(fire)
        return done


def dial(reactor: Any, address: str, protocol: str,
         handler: Callable[[Stream], StreamHandler],
         identity: bytes | None = None) -> defer.Deferred[Dialled]:
    """Connect to ``address`` (a multiaddr ending in ``/p2p/PEER``) and open a
    ``protocol`` stream; ``handler(stream)`` gives the stream's handler. → a
    :class:`Dialled` once the stream is open. ``identity``: the client's serialized
    private key (default: a new one for this dial)."""
    try:
        peer = info_from_p2p_addr(multiaddr.Multiaddr(address))
    except Exception as exc:
        return defer.fail(ValueError(f"{address!r}: not a multiaddr ending in /p2p/PEER: "
                                     f"{exc}"))
    loop = TrioLoop.acquire(reactor)
    opened: defer.Deferred[Dialled] = defer.Deferred()
    stopped: defer.Deferred[None] = defer.Deferred()

    async def run() -> None:
        stop = trio.Event()
        try:
            key_pair = _key_pair(identity) if identity else create_new_key_pair()
            host = new_host(key_pair=key_pair)
            local = ID.from_pubkey(key_pair.public_key).to_base58()
            async with host.run(listen_addrs=[]):
                with trio.fail_after(30):
                    await host.connect(peer)
                    raw = await host.new_stream(peer.peer_id, [TProtocol(protocol)])
                stream = Stream(loop, raw, local)
                stream.handler = handler(stream)
                reactor.callLater(0, opened.callback, Dialled(loop, stream, stop, stopped))
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(stream.run)
                    await stop.wait()
                    stream.reset()
                    nursery.cancel_scope.deadline = trio.current_time() + 1
        except Exception as exc:  # noqa: BLE001 (reported to the dialler)
            if not opened.called:
                reactor.callLater(0, opened.errback, ConnectionError(
                    f"cannot open {protocol} to {address}: {exc!r}"))
        finally:
            reactor.callLater(0, stopped.callback, None)

    loop.spawn(run)

    def failed(failure: Any) -> Any:
        return stopped.addCallback(lambda _: loop.release()).addCallback(lambda _: failure)
    return opened.addErrback(failed)
