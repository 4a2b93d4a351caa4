"""A minimal asyncio WebSocket client (RFC 6455) for the load generator.

Just enough for the benchmarks, and cheap per message: the HTTP upgrade, masked text
frames out, frame parsing in (fragments, ping → pong, close), and ``GET /clientinfo``.
No extensions, no redirects. Replies are handed to a callback as bytes.

``wss://`` (``tls=`` an :class:`ssl.SSLContext`): TLS is done by the protocol itself, on
an :class:`ssl.SSLObject` over memory buffers, not by asyncio's SSL transport. The
transport then carries the TLS records as they are on the wire, so :func:`receive_raw`
can still read them off the socket with their kernel receive times and feed them to
the protocol, which decrypts them.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import random
import select
import socket
import ssl
import struct
import time
from collections.abc import Callable
from typing import Any

import orjson

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

# asyncio reads a socket with recv(256 KiB): a buffer above glibc's mmap threshold, so an
# mmap, a shrinking mremap and a munmap per read, a good share of the generator's CPU for
# small replies. Frames here are small; 16 KiB reads (more arrive on the next round).
asyncio.selector_events._SelectorSocketTransport.max_size = 16 * 1024
_rand32 = random.Random(os.getpid()).getrandbits

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10


class HandshakeError(Exception):
    """The server did not switch protocols: ``status`` (0: no HTTP answer) and body."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"upgrade refused: {status} {body[:200]}")
        self.status = status
        self.body = body


def _mask(payload: bytes, key: bytes) -> bytes:
    n = len(payload)
    if not n:
        return b""
    keys = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(keys, "big")).to_bytes(n, "big")


def encode_frame(payload: bytes, opcode: int = OP_TEXT) -> bytes:
    """One final, masked client frame."""
    n = len(payload)
    key = _rand32(32).to_bytes(4, "big")
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    return head + key + _mask(payload, key)


def upgrade_request(host: str, port: int, target: str, key: str,
                    headers: dict[str, str] | None = None) -> bytes:
    lines = [f"GET {target} HTTP/1.1", f"Host: {host}:{port}", "Upgrade: websocket",
             "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class TLSLayer:
    """A client TLS session on memory buffers: ciphertext in, plaintext out, and back."""

    def __init__(self, context: ssl.SSLContext, host: str) -> None:
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._ssl = context.wrap_bio(self._in, self._out, server_hostname=host)
        self.done = False

    def receive(self, data: bytes) -> tuple[bytes, bytes]:
        """Records from the server → (plaintext, records to send: handshake replies)."""
        if data:
            self._in.write(data)
        if not self.done:
            try:
                self._ssl.do_handshake()
                self.done = True
            except ssl.SSLWantReadError:
                return b"", self._out.read()
        chunks = []
        while True:
            try:
                chunk = self._ssl.read(65536)
            except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks), self._out.read()

    def send(self, data: bytes) -> bytes:
        """Plaintext → the records that carry it."""
        self._ssl.write(data)
        return self._out.read()


def client_context(ca_file: str) -> ssl.SSLContext:
    """A client context that trusts ``ca_file`` (the run's own CA) and checks the
    server's certificate against it and the host name (127.0.0.1 is in its SANs)."""
    context = ssl.create_default_context(cafile=ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class WebSocket(asyncio.Protocol):
    """One client connection; ``opened`` fires on 101, ``closed`` when the TCP goes."""

    def __init__(self, host: str, port: int, target: str,
                 on_message: Callable[[WebSocket, bytes], Any] | None = None,
                 headers: dict[str, str] | None = None,
                 tls: ssl.SSLContext | None = None) -> None:
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future = loop.create_future()
        self.closed: asyncio.Future = loop.create_future()
        self.on_message = on_message
        self.transport: asyncio.Transport | None = None
        self.upgraded = False
        self.close_sent = False
        self.close_code: int | None = None
        self._key = base64.b64encode(os.urandom(16)).decode()
        self._request = upgrade_request(host, port, target, self._key, headers)
        self._buf = b""
        self._fragments: list[bytes] = []
        self._fragment_op = 0
        self.tag: Any = None  # free for the caller
        #: when the frame being delivered reached the socket (:func:`receive_raw`; None
        #: under asyncio)
        self.received_at: float | None = None
        self._tls: TLSLayer | None = TLSLayer(tls, host) if tls is not None else None

    # -- asyncio.Protocol ------------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        if self._tls is None:
            transport.write(self._request)
            return
        try:
            self._tls_step(b"")
        except ssl.SSLError as exc:
            self._tls_failed(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.opened.done():
            self.opened.set_exception(HandshakeError(0, f"connection lost: {exc}"))
        if not self.closed.done():
            self.closed.set_result(self.close_code)

    def data_received(self, data: bytes) -> None:
        if self._tls is not None:
            try:
                self._tls_step(data)
            except ssl.SSLError as exc:
                self._tls_failed(exc)
            return
        self._plain_received(data)

    def _tls_step(self, data: bytes) -> None:
        """TLS records in → the handshake's next step, or plaintext for the WebSocket."""
        assert self._tls is not None and self.transport is not None
        was_done = self._tls.done
        plain, out = self._tls.receive(data)
        if out:
            self.transport.write(out)
        if self._tls.done and not was_done:
            self._write(self._request)
        if plain:
            self._plain_received(plain)

    def _tls_failed(self, exc: Exception) -> None:
        if not self.opened.done():
            self.opened.set_exception(HandshakeError(0, f"TLS: {exc}"))
        self.abort()

    def _plain_received(self, data: bytes) -> None:
        if self.upgraded:
            self._buf = self._buf + data if self._buf else data
            self._parse()
            return
        self._buf += data
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head, rest = self._buf[:end], self._buf[end + 4:]
        self._buf = b""
        try:
            status = int(head.split(b" ", 2)[1])
        except (IndexError, ValueError):
            status = 0
        if status != 101:
            if not self.opened.done():
                self.opened.set_exception(HandshakeError(status, rest.decode("utf-8", "replace")))
            self.abort()
            return
        expected = base64.b64encode(hashlib.sha1(self._key.encode() + _GUID).digest())
        accept = b""
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"sec-websocket-accept":
                accept = value.strip()
        if accept != expected:
            self.opened.set_exception(HandshakeError(101, "bad Sec-WebSocket-Accept"))
            self.abort()
            return
        self.upgraded = True
        if not self.opened.done():
            self.opened.set_result(self)
        if rest:
            self._buf = rest
            self._parse()

    # -- frames ----------------------------------------------------------------
    def _parse(self) -> None:
        buf = self._buf
        n = len(buf)
        pos = 0
        while n - pos >= 2:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            length = b1 & 0x7F
            hdr = 2
            if length == 126:
                if n - pos < 4:
                    break
                length = (buf[pos + 2] << 8) | buf[pos + 3]
                hdr = 4
            elif length == 127:
                if n - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2:pos + 10], "big")
                hdr = 10
            mask = b""
            if b1 & 0x80:  # servers must not mask, but be lenient
                mask = buf[pos + hdr:pos + hdr + 4]
                hdr += 4
            if n - pos < hdr + length:
                break
            payload = buf[pos + hdr:pos + hdr + length]
            if mask:
                payload = _mask(payload, mask)
            pos += hdr + length
            self._frame(b0 & 0x80, b0 & 0x0F, payload)
            if self.transport is None:
                return
        self._buf = buf[pos:] if pos < n else b""

    def _frame(self, fin: int, opcode: int, payload: bytes) -> None:
        if opcode == OP_TEXT or opcode == OP_BINARY:
            if fin:
                if self.on_message is not None:
                    self.on_message(self, payload)
            else:
                self._fragment_op = opcode
                self._fragments = [payload]
        elif opcode == OP_CONT:
            self._fragments.append(payload)
            if fin:
                message = b"".join(self._fragments)
                self._fragments = []
                if self.on_message is not None:
                    self.on_message(self, message)
        elif opcode == OP_PING:
            self._write(encode_frame(payload, OP_PONG))
        elif opcode == OP_CLOSE:
            self.close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
            if not self.close_sent:
                self.close_sent = True
                self._write(encode_frame(payload[:2], OP_CLOSE))
            if self.transport is not None:
                self.transport.close()

    def _write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data if self._tls is None else self._tls.send(data))

    # -- API -------------------------------------------------------------------
    def send(self, payload: bytes) -> None:
        """Send one text message (UTF-8 bytes)."""
        self._write(encode_frame(payload, OP_TEXT))

    def close(self, code: int = 1000) -> None:
        """Start the closing handshake; ``closed`` fires when the server drops the TCP."""
        if not self.close_sent and self.transport is not None:
            self.close_sent = True
            self._write(encode_frame(struct.pack("!H", code), OP_CLOSE))

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


async def connect(host: str, port: int, target: str,
                  on_message: Callable[[WebSocket, bytes], Any] | None = None,
                  headers: dict[str, str] | None = None, timeout: float = 30.0,
                  tls: ssl.SSLContext | None = None) -> WebSocket:
    """Open a WebSocket (``wss://`` with ``tls``); raises :class:`HandshakeError` (or
    OSError/TimeoutError)."""
    loop = asyncio.get_running_loop()
    _, ws = await asyncio.wait_for(
        loop.create_connection(lambda: WebSocket(host, port, target, on_message, headers, tls),
                               host, port), timeout)
    try:
        await asyncio.wait_for(asyncio.shield(ws.opened), timeout)
    except BaseException:
        ws.abort()
        raise
    return ws


#: Linux's SO_TIMESTAMPNS (asm-generic and x86; the socket module does not name it) and
#: the control message it brings (struct timespec: seconds, nanoseconds)
SO_TIMESTAMPNS = 35
_TIMESPEC = struct.Struct("@qq")
#: reads that came without a receive time (stamped when read: late, never early)
unstamped_reads = [0]


def _frame_size(header: bytes) -> int | None:
    """Size of the server frame (unmasked) that starts with ``header``, or None if the
    header itself is not all there."""
    if len(header) < 2:
        return None
    length = header[1] & 0x7F
    if length < 126:
        return 2 + length
    extended = 2 if length == 126 else 8
    if len(header) < 2 + extended:
        return None
    return 2 + extended + int.from_bytes(header[2:2 + extended], "big")


def _record_size(header: bytes) -> int | None:
    """Size of the TLS record that starts with ``header`` (5 bytes: type, version,
    length), or None if the header is not all there."""
    if len(header) < 5:
        return None
    return 5 + int.from_bytes(header[3:5], "big")


def _read_stamped(sock: socket.socket, tls: bool = False) -> list[tuple[bytes, float]]:
    """Everything readable on ``sock``, a frame per read (a TLS record with ``tls``), each
    with the time the kernel received its last byte (SO_TIMESTAMPNS: for TCP, the stamp
    of the last segment a read took from). ``[(b"", now)]`` at EOF."""
    sizer = _record_size if tls else _frame_size
    chunks: list[tuple[bytes, float]] = []
    while True:
        try:
            header = sock.recv(14, socket.MSG_PEEK)
        except BlockingIOError:
            return chunks
        except OSError:
            header = b""
        if not header:
            chunks.append((b"", time.time()))
            return chunks
        # (after a frame that was not all there, the next bytes are no header: any size
        # read keeps the bytes in order, and a stamp is never early, so just bound it)
        size = min(sizer(header) or len(header), 65_536)
        try:
            data, ancillary, _, _ = sock.recvmsg(size, socket.CMSG_SPACE(_TIMESPEC.size))
        except BlockingIOError:
            return chunks
        stamp = None
        for level, kind, value in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                seconds, nanoseconds = _TIMESPEC.unpack(value[:_TIMESPEC.size])
                stamp = seconds + nanoseconds / 1e9
        if stamp is None and data:
            unstamped_reads[0] += 1
            stamp = time.time()
        chunks.append((data, stamp))
        if not data:
            return chunks


async def receive_raw(sockets: list[WebSocket], until: Callable[[], bool],
                      slice_s: float = 0.05, pause_s: float = 0.001, busy_events: int = 16,
                      on_quiet: Callable[[], None] | None = None) -> None:
    """Receive on ``sockets`` outside asyncio until ``until()`` is true, each frame
    stamped with the time it reached the socket.

    For fan-out, where thousands of sockets each get one small frame at once: a generator
    that reads and parses them as they come takes CPU from the server it measures (on a
    small machine, most of a core), and its own delays would count as the server's. So
    the sockets' transports are paused, and an edge-triggered epoll of our own only notes
    which sockets got data while frames pour in (``busy_events`` or more per
    ``epoll_wait``, one every ``pause_s``); the noted sockets are read once the flow
    drops below that (or ``slice_s`` passes with nothing new), one frame per read, and
    each frame gets the kernel's receive time of its last byte (SO_TIMESTAMPNS):
    :attr:`WebSocket.received_at` when its ``on_message`` runs. ``on_quiet`` is called
    after each such reading.

    The kernel merges a segment into the unread one before it and gives the merged one
    the later time: frames read together (a burst, or a heartbeat ping behind a
    notification) carry the arrival of the last of them. Latencies are then late, never
    early; reading as soon as the flow drops keeps such merges rare for paced
    notifications.
    """
    poller = select.epoll()
    by_fd: dict[int, tuple[WebSocket, socket.socket]] = {}
    for ws in sockets:
        if ws.transport is None:
            continue
        ws.transport.pause_reading()
        fd = ws.transport.get_extra_info("socket").fileno()
        sock = socket.socket(fileno=fd)   # detached again below: asyncio owns the fd
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        by_fd[fd] = (ws, sock)
        poller.register(fd, select.EPOLLIN | select.EPOLLET)
    noted: set[int] = set()

    def read_noted() -> None:
        for fd in list(noted):
            ws, sock = by_fd[fd]
            for data, stamp in _read_stamped(sock, ws._tls is not None):
                if not data or ws.transport is None:   # EOF: let asyncio see it
                    poller.unregister(fd)
                    del by_fd[fd]
                    sock.detach()
                    if ws.transport is not None:
                        ws.transport.resume_reading()
                    break
                ws.received_at = stamp
                ws.data_received(data)
        noted.clear()

    try:
        while by_fd and not until():
            events = poller.poll(slice_s)
            noted.update(fd for fd, _ in events)
            if len(events) >= busy_events:   # a fan-out under way: note, read later
                await asyncio.sleep(pause_s)
                continue
            read_noted()
            if on_quiet is not None:
                on_quiet()
            await asyncio.sleep(0)
        read_noted()
    finally:
        poller.close()
        for ws, sock in by_fd.values():
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 0)
            except OSError:
                pass
            sock.detach()
            ws.received_at = None
            if ws.transport is not None:
                ws.transport.resume_reading()


async def get_json(host: str, port: int, path: str, timeout: float = 10.0,
                   tls: ssl.SSLContext | None = None) -> Any:
    """``GET path`` with ``Connection: close`` (over TLS with ``tls``) → the parsed JSON
    body."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port, ssl=tls),
                                            timeout)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n"
                     .encode("latin-1"))
        raw = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise HandshakeError(int(head.split(b" ", 2)[1]) if head else 0, body.decode())
    if b"transfer-encoding: chunked" in head.lower():
        body = _unchunk(body)
    return orjson.loads(body)


def _unchunk(body: bytes) -> bytes:
    out, pos = [], 0
    while True:
        line_end = body.index(b"\r\n", pos)
        size = int(body[pos:line_end].split(b";")[0], 16)
        if size == 0:
            return b"".join(out)
        out.append(body[line_end + 2:line_end + 2 + size])
        pos = line_end + 2 + size + 2
