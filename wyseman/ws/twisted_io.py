"""The Twisted internals of the WebSocket write path, in one place (docs/performance.md,
"Fast paths"): a frame is written straight to a plain TCP socket when Twisted has
nothing buffered for it, which saves a buffer copy, two epoll changes and a later
``doWrite`` per frame (a notification fans out to thousands of sockets). Over TLS the
same is done one layer down, for the records the TLS layer sends (:func:`direct_tls_writes`):
handshake messages and the encrypted frames.

A TLS connection's own layer is made cheaper too (:class:`QuickTLSTransport`): it asks
pyOpenSSL for bytes only when its memory BIOs hold some, sends a reply's record in the
turn it is written, and once the session is established makes its OpenSSL calls through
pyOpenSSL's binding itself (:class:`_DirectCalls`).

Every name used here that Twisted or pyOpenSSL does not document (``tcp.Server.socket``,
``dataBuffer``, ``_tempDataBuffer``, ``BufferingTLSTransport._aggregator`` and its
``_buffer``, ``_scheduled`` and ``_clock``, ``TLSMemoryBIOProtocol._tlsConnection``,
``_handshakeDone``, ``_lostTLSConnection``, ``_appSendBuffer``, ``_aborted``,
``_shutdownTLS``, ``_tlsShutdownFinished``, ``_flushReceiveBIO``, ``_flushSendBIO``,
``_write``, ``_bufferedWrite``; pyOpenSSL's ``Connection._ssl``, ``_into_ssl``,
``_from_ssl`` and ``_raise_ssl_error``, and its binding's ``BIO_get_mem_data``,
``BIO_read``, ``BIO_write``, ``SSL_read`` and ``SSL_write``) is checked by
tests/test_compat.py.
"""

from __future__ import annotations

import threading
from typing import Any, NamedTuple

from OpenSSL import SSL
from twisted.internet import tcp
from twisted.internet.protocol import connectionDone
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOProtocol, _AggregateSmallWrites
from twisted.python.failure import Failure


def send_some(send: Any, data: bytes) -> int:
    """``send(data)`` on a non-blocking socket: the bytes written, 0 on EAGAIN or an
    error (Twisted's own write path, given the rest, reports the error)."""
    try:
        return send(data)
    except OSError:
        return 0


def write_now(transport: Any, data: bytes) -> bool:
    """``transport.write(data)``, but for a plain TCP connection whose write buffer is
    empty the bytes go to the socket at once (what does not fit is buffered as usual).
    True if Twisted was given bytes to buffer."""
    if (type(transport) is tcp.Server and transport.connected and not transport.disconnecting
            and not transport.dataBuffer and not getattr(transport, "_tempDataBuffer", True)):
        written = send_some(transport.socket.send, data)
        if written == len(data):
            return False
        data = data[written:]
    transport.write(data)
    return True


def socket_send(transport: Any) -> Any:
    """The socket's own ``send`` if ``transport`` is a plain TCP connection (a direct
    write may go to it), else None (TLS and others: always through the transport)."""
    if type(transport) is tcp.Server:
        return transport.socket.send
    return None


def nothing_buffered(transport: Any) -> bool:
    """Whether Twisted holds no bytes for ``transport`` and it is open: a direct write
    then cannot overtake buffered ones."""
    return bool(transport.connected and not transport.disconnecting
                and not transport.dataBuffer and not transport._tempDataBuffer)


def direct_tls_writes(transport: Any) -> bool:
    """For a TLS connection of a ``tls:`` port (Twisted's TLS protocol over a plain TCP
    connection, ``transport`` being that protocol): the bytes its TLS layer sends
    (handshake messages, encrypted records) go to the socket at once when Twisted holds
    nothing for it, as :func:`write_now` does for a plain connection, instead of being
    buffered until the reactor reports the socket writable (two epoll changes and a pass
    of the loop per reply). What does not fit, and anything while the connection closes,
    goes Twisted's way. True if it applied."""
    if not isinstance(transport, TLSMemoryBIOProtocol):
        return False
    connection: Any = transport.transport
    if type(connection) is not tcp.Server:
        return False
    buffered = connection.write

    def write(data: bytes) -> None:
        if (connection.connected and not connection.disconnecting
                and not connection.dataBuffer and not connection._tempDataBuffer):
            written = send_some(connection.socket.send, data)
            if written == len(data):
                return
            data = data[written:]
        buffered(data)
    # (an attribute of this connection only: its one writer is the TLS protocol)
    connection.write = write  # type: ignore[method-assign]
    return True


def tls_write_now(transport: Any, data: bytes) -> bool:
    """For a connection of Twisted's TLS transport (``BufferingTLSTransport``): encrypt
    and send ``data`` now, if nothing waits in the transport's aggregation buffer (which
    would otherwise hold it until the next turn of the loop, one ``callLater`` per
    connection); a later write of the same turn aggregates as usual, after it. False if
    it did not apply (the caller writes as usual). For a notification fanned out to
    thousands of TLS sockets, each written once."""
    aggregator = getattr(transport, "_aggregator", None)
    if type(aggregator) is not _AggregateSmallWrites or aggregator._buffer \
            or transport.disconnecting:
        return False
    TLSMemoryBIOProtocol.write(transport, data)
    return True


#: the most bytes a fan-out thread encrypts for a socket: one TLS record's worth (Twisted's
#: TLS layer cuts larger writes into such pieces itself)
TLS_RECORD_DATA = 2 ** 14


class TLSTarget(NamedTuple):
    """The parts of a TLS connection (Twisted's ``BufferingTLSTransport`` over a plain
    TCP connection) that a fan-out uses to encrypt a frame and send the record itself,
    looked up once per connection: with thousands of sockets each attribute reached
    through them is a cache miss of its own."""

    tls: Any                 # the connection's pyOpenSSL ``Connection`` (memory BIOs)
    send: Any                # the TCP socket's ``send``
    connection: tcp.Server   # where the rest goes if the socket takes less (reactor thread)
    transport: Any           # the TLS transport
    aggregator: _AggregateSmallWrites   # its aggregation of small writes


def tls_target(transport: Any) -> TLSTarget | None:
    """The :class:`TLSTarget` of ``transport``, or None if it is not Twisted's TLS
    transport over a plain TCP connection."""
    aggregator = getattr(transport, "_aggregator", None)
    connection = getattr(transport, "transport", None)
    if type(aggregator) is not _AggregateSmallWrites or type(connection) is not tcp.Server:
        return None
    return TLSTarget(transport._tlsConnection, connection.socket.send, connection, transport,
                     aggregator)


def tls_idle(target: TLSTarget) -> bool:
    """Whether the connection holds nothing in any layer (the aggregation buffer, the
    TLS layer's pending writes, the TCP write buffer), is past its handshake and open:
    a record made now may be sent at once, by another thread while the reactor thread
    waits (nothing else touches the connection meanwhile)."""
    transport, connection = target.transport, target.connection
    return not (target.aggregator._buffer or transport.disconnecting
                or transport._lostTLSConnection or transport._appSendBuffer
                or not transport._handshakeDone or connection.dataBuffer
                or connection._tempDataBuffer or connection.disconnecting
                or not connection.connected)


def seal(target: TLSTarget, data: bytes) -> bytes | None:
    """``data`` (at most :data:`TLS_RECORD_DATA` bytes) encrypted into one record by the
    connection's TLS session, to be sent by anyone; None if the session did not take
    it (it wants to read first, or failed): then nothing was made, and the usual write
    path, given the same data, deals with it. No Twisted object is used."""
    tls = target.tls
    try:
        if _direct is None:
            tls.send(data)
        else:
            _direct.encrypt(tls, data)
    except SSL.Error:
        return None
    outgoing = tls._from_ssl
    if not _bytes_in(outgoing):
        return b""
    return tls.bio_read(2 * TLS_RECORD_DATA) if _direct is None else _direct.take(outgoing)


#: how much decrypted data one ``recv`` asks for (Twisted's own size; a record holds 16 KiB)
_RECV_SIZE = 2 ** 15


def _bio_bytes() -> Any:
    """pyOpenSSL's binding's ``BIO_get_mem_data`` as ``bytes_in(bio)``: the bytes a
    memory BIO holds. None if this pyOpenSSL lacks what it needs."""
    lib = getattr(SSL, "_lib", None)
    ffi = getattr(SSL, "_ffi", None)
    get = getattr(lib, "BIO_get_mem_data", None)
    if get is None or ffi is None:
        return None
    null = ffi.NULL
    return lambda bio: get(bio, null)


_bytes_in = _bio_bytes()


class _Scratch(threading.local):
    """Each thread's buffer that OpenSSL copies decrypted data and records into: pyOpenSSL
    allocates one of 32 KiB at every ``recv`` and ``bio_read``."""

    def __init__(self, ffi: Any, size: int) -> None:
        self.buffer = ffi.new("char[]", size)


class _DirectCalls:
    """A session's three calls of each request and reply (``SSL_read``, ``SSL_write``,
    the outgoing memory BIO's ``BIO_read``) made through pyOpenSSL's binding itself. On
    an established session pyOpenSSL's ``recv``, ``send`` and ``bio_read`` spend two
    thirds of their time around the call (a 32 KiB allocation, an ``SSL_get_error``
    after every success, argument conversions): 6 µs a small record against 2 µs here.
    A call that fails is handed to pyOpenSSL's own ``_raise_ssl_error``, so a failure
    raises what pyOpenSSL's method would have raised."""

    #: the most bytes one call returns (Twisted's read size)
    SIZE = _RECV_SIZE

    def __init__(self, lib: Any, ffi: Any) -> None:
        self._scratch = _Scratch(ffi, self.SIZE)
        self._ssl_read = lib.SSL_read
        self._ssl_write = lib.SSL_write
        self._bio_read = lib.BIO_read
        self._bio_write = lib.BIO_write
        self._copy = ffi.buffer

    def decrypt(self, tls: SSL.Connection) -> bytes:
        """What ``tls.recv(SIZE)`` returns, or raises."""
        buffer = self._scratch.buffer
        ssl = tls._ssl  # type: ignore[attr-defined]
        size = self._ssl_read(ssl, buffer, self.SIZE)
        if size <= 0:
            tls._raise_ssl_error(ssl, size)  # type: ignore[attr-defined]
            return b""
        return self._copy(buffer, size)[:]  # type: ignore[no-any-return]

    def encrypt(self, tls: SSL.Connection, data: bytes) -> int:
        """What ``tls.send(data)`` returns, or raises."""
        ssl = tls._ssl  # type: ignore[attr-defined]
        sent = self._ssl_write(ssl, data, len(data))
        if sent <= 0:
            tls._raise_ssl_error(ssl, sent)  # type: ignore[attr-defined]
        return sent  # type: ignore[no-any-return]

    def feed(self, tls: SSL.Connection, data: bytes) -> None:
        """What ``tls.bio_write(data)`` does (a memory BIO takes everything it is given),
        or raises."""
        if self._bio_write(tls._into_ssl, data, len(data)) <= 0:  # type: ignore[attr-defined]
            tls.bio_write(data)      # (pyOpenSSL's, to raise what it raises)

    def take(self, bio: Any) -> bytes:
        """Up to SIZE bytes out of a memory BIO that holds some."""
        buffer = self._scratch.buffer
        size = self._bio_read(bio, buffer, self.SIZE)
        return self._copy(buffer, size)[:] if size > 0 else b""  # type: ignore[no-any-return]


def _direct_calls() -> _DirectCalls | None:
    """The direct calls, or None if this pyOpenSSL lacks what they use (then its own
    methods are called)."""
    lib = getattr(SSL, "_lib", None)
    ffi = getattr(SSL, "_ffi", None)
    if (_bytes_in is None or ffi is None
            or not all(hasattr(lib, name) for name in ("SSL_read", "SSL_write", "BIO_read",
                                                       "BIO_write"))
            or not hasattr(SSL.Connection, "_raise_ssl_error")):
        return None
    return _DirectCalls(lib, ffi)


_direct = _direct_calls()


class _Turns:
    """Which turn of the reactor loop it is, as far as a port's TLS connections need to
    know: one ``callLater(0)`` per turn in which one of them wrote, for all of them."""

    __slots__ = ("number", "_next")

    def __init__(self) -> None:
        self.number = 0
        self._next: Any = None

    def current(self, clock: Any) -> int:
        if self._next is None:
            self._next = clock.callLater(0, self._advance)
        return self.number

    def _advance(self) -> None:
        self._next = None
        self.number += 1


class QuickTLSTransport(BufferingTLSTransport):
    """Twisted's TLS transport of a ``tls:`` port, with two costs of its layer gone.

    - **No call that is known to find nothing.** Twisted's layer calls pyOpenSSL's
      ``recv`` until it raises ``WantReadError`` after each read from the socket, and
      ``bio_read`` after every read and write whether or not a record was made: each miss
      is a Python exception, 2–3 µs, two or three per request. Here ``recv`` is called
      only while the incoming memory BIO holds bytes (or the session holds decrypted
      ones), ``bio_read`` only while the outgoing one does. When the connection is lost,
      Twisted's own reading of what is left runs, so that a peer's cut reports as
      before.
    - **A reply's record made in the turn it is written.** Twisted's layer keeps every
      write for the next turn of the loop (a ``callLater(0)`` per connection per turn) so
      that small writes of one turn make one record. Here the first write of a turn,
      when nothing waits before it, is encrypted and sent at once; later writes of the
      same turn are kept and joined as Twisted does. A request's reply leaves a turn
      sooner and costs no timer of its own; the port's connections share one timer per
      turn, which tells the turns apart.
    """

    _closing = False
    #: the turn of this connection's last write made at once
    _written_turn = -1
    #: the port's turns (its factory's), looked up at the first write
    _turns: _Turns | None = None

    def write(self, data: bytes) -> None:
        aggregator = self._aggregator
        if (type(aggregator) is _AggregateSmallWrites and not aggregator._buffer
                and aggregator._scheduled is None and not self.disconnecting):
            turns = self._turns or self._port_turns()
            turn = turns.current(aggregator._clock)
            if turn != self._written_turn:
                self._written_turn = turn
                # (TLSMemoryBIOProtocol.write's one check, not disconnecting, is made)
                self._write(data)
                return
        aggregator.write(data)

    def _port_turns(self) -> _Turns:
        """The turns of this connection's port (its factory's), made by its first
        connection to write, and kept by each connection."""
        turns = getattr(self.factory, "_wyseman_turns", None)
        if turns is None:
            turns = _Turns()
            setattr(self.factory, "_wyseman_turns", turns)  # noqa: B010
        self._turns = turns
        return turns

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        """Twisted's ``dataReceived`` once the handshake is done and no write waits for
        it, with the bytes given to the session through the direct calls."""
        if _direct is None or not self._handshakeDone or self._appSendBuffer:
            super().dataReceived(data)
            return
        _direct.feed(self._tlsConnection, data)
        self._flushReceiveBIO()

    def _write(self, data: bytes) -> None:
        """Twisted's ``_write`` for what fits in one record (a request's reply, a
        notification), through the direct calls; larger writes, and the rest of one that
        the session took in part, go Twisted's way."""
        if _direct is None or len(data) > TLS_RECORD_DATA or self._lostTLSConnection:
            super()._write(data)
            return
        try:
            sent = _direct.encrypt(self._tlsConnection, data)
        except SSL.WantReadError:
            self._bufferedWrite(data)
            return
        except SSL.Error:
            self._tlsShutdownFinished(Failure())
            return
        self._flushSendBIO()
        if sent < len(data):
            super()._write(data[sent:])

    def _flushSendBIO(self) -> None:  # noqa: N802
        outgoing = self._tlsConnection._from_ssl
        if _direct is None:
            while _bytes_in(outgoing):       # (Twisted's reads at most 32 KiB a call)
                super()._flushSendBIO()
            return
        # A read that returns less than it asked for emptied the BIO: a record (or a
        # handshake flight) costs one read, and nothing to send one read that finds so.
        connection: Any = self.transport
        write = connection.write
        take, most = _direct.take, _direct.SIZE
        while True:
            data = take(outgoing)
            if not data:
                return
            write(data)
            if len(data) < most:
                return

    def _flushReceiveBIO(self) -> None:  # noqa: N802
        if self._closing:
            super()._flushReceiveBIO()
            return
        tls = self._tlsConnection
        incoming = tls._into_ssl
        # The session holds decrypted bytes not yet read only after a read that filled
        # the buffer (a record holds at most half of it): only then is it asked.
        full = True
        while not self._lostTLSConnection and (_bytes_in(incoming) or (full and tls.pending())):
            try:
                data = tls.recv(_RECV_SIZE) if _direct is None else _direct.decrypt(tls)
            except SSL.WantReadError:         # (a record not yet whole)
                break
            except SSL.ZeroReturnError:       # the peer closed its TLS side
                self._shutdownTLS()
                self._tlsShutdownFinished(None)
            except SSL.Error:
                self._tlsShutdownFinished(Failure())
            else:
                if not data:                      # (no failure, and nothing read)
                    break
                full = len(data) == _RECV_SIZE
                if not self._aborted:             # (ProtocolWrapper.dataReceived)
                    protocol: Any = self.wrappedProtocol
                    protocol.dataReceived(data)
        self._flushSendBIO()

    def connectionLost(self, reason: Failure = connectionDone) -> None:  # noqa: N802
        self._closing = True
        super().connectionLost(reason)


def quick_tls(transport: Any) -> bool:
    """Make ``transport``, Twisted's TLS transport of a ``tls:`` port as it connects, a
    :class:`QuickTLSTransport` (the same object: its class changed, before its
    handshake). True if it applied (a transport of another kind, or a pyOpenSSL without
    the binding it needs, is left as it is)."""
    if type(transport) is not BufferingTLSTransport or _bytes_in is None:
        return False
    transport.__class__ = QuickTLSTransport
    # (Twisted's transport writes through an attribute of its own: this class's write)
    transport.__dict__.pop("write", None)
    return True
