"""A minimal asyncio WebSocket client (RFC 6455) for the load generator.

Just enough for the benchmarks, and cheap per message: the HTTP upgrade, masked text
frames out, frame parsing in (fragments, ping → pong, close), and ``GET /clientinfo``.
No extensions, no TLS, no redirects. Replies are handed to a callback as bytes.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import random
import select
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


class WebSocket(asyncio.Protocol):
    """One client connection; ``opened`` fires on 101, ``closed`` when the TCP goes."""

    def __init__(self, host: str, port: int, target: str,
                 on_message: Callable[[WebSocket, bytes], Any] | None = None,
                 headers: dict[str, str] | None = None) -> None:
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
        #: when :func:`receive_raw` saw this socket readable (None under asyncio)
        self.received_at: float | None = None

    # -- asyncio.Protocol ------------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.write(self._request)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.opened.done():
            self.opened.set_exception(HandshakeError(0, f"connection lost: {exc}"))
        if not self.closed.done():
            self.closed.set_result(self.close_code)

    def data_received(self, data: bytes) -> None:
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
            self.transport.write(data)

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
                  headers: dict[str, str] | None = None, timeout: float = 30.0) -> WebSocket:
    """Open a WebSocket; raises :class:`HandshakeError` (or OSError/TimeoutError)."""
    loop = asyncio.get_running_loop()
    _, ws = await asyncio.wait_for(
        loop.create_connection(lambda: WebSocket(host, port, target, on_message, headers),
                               host, port), timeout)
    try:
        await asyncio.wait_for(asyncio.shield(ws.opened), timeout)
    except BaseException:
        ws.abort()
        raise
    return ws


async def receive_raw(sockets: list[WebSocket], until: Callable[[], bool],
                      slice_s: float = 0.05, pause_s: float = 0.001) -> None:
    """Read ``sockets`` with an epoll loop of our own until ``until()`` is true.

    For fan-out, where thousands of sockets each get one small frame at once: asyncio's
    transports cost more per readable socket than the server's whole send, so the
    generator, not the server, would set the latency. The sockets' transports are paused
    meanwhile; bytes go to the same frame parser (:meth:`WebSocket.data_received`), and
    each socket's ``received_at`` is the time epoll reported the batch it is in: the
    bytes had arrived by then, and parsing the sockets before it in the batch is not
    counted against the server. After each batch the loop yields to asyncio for
    ``pause_s`` (so the control channel keeps working): frames arriving meanwhile are
    read in the next batch, which is what keeps the generator cheap under fan-out (a
    reader that sleeps in ``epoll_wait`` costs the sender a wake-up per frame). The
    latency measured is then late by up to ``pause_s``, never early.
    """
    poller = select.epoll()
    by_fd: dict[int, WebSocket] = {}
    for ws in sockets:
        if ws.transport is None:
            continue
        ws.transport.pause_reading()
        fd = ws.transport.get_extra_info("socket").fileno()
        by_fd[fd] = ws
        poller.register(fd, select.EPOLLIN)
    try:
        while by_fd and not until():
            events = poller.poll(slice_s)
            now = time.time()
            for fd, _ in events:
                ws = by_fd.get(fd)
                if ws is None:
                    continue
                try:
                    data = os.read(fd, 16_384)   # (256 KiB, as asyncio reads, is an mmap each)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data or ws.transport is None:   # EOF: let asyncio see it
                    poller.unregister(fd)
                    del by_fd[fd]
                    if ws.transport is not None:
                        ws.transport.resume_reading()
                    continue
                ws.received_at = now
                ws.data_received(data)
            await asyncio.sleep(pause_s if events else 0)
    finally:
        poller.close()
        for ws in by_fd.values():
            ws.received_at = None
            if ws.transport is not None:
                ws.transport.resume_reading()


async def get_json(host: str, port: int, path: str, timeout: float = 10.0) -> Any:
    """``GET path`` with ``Connection: close`` → the parsed JSON body."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
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
