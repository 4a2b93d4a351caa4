"""The Twisted internals of the WebSocket write path, in one place (docs/performance.md,
"Fast paths"): a frame is written straight to a plain TCP socket when Twisted has
nothing buffered for it, which saves a buffer copy, two epoll changes and a later
``doWrite`` per frame (a notification fans out to thousands of sockets). Over TLS the
same is done one layer down, for the records the TLS layer sends (:func:`direct_tls_writes`):
handshake messages and the encrypted frames.

Every name used here that Twisted does not document (``tcp.Server.socket``,
``dataBuffer``, ``_tempDataBuffer``, ``BufferingTLSTransport._aggregator`` and its
``_buffer``, ``TLSMemoryBIOProtocol._tlsConnection``, ``_handshakeDone``,
``_lostTLSConnection``, ``_appSendBuffer``) is checked by tests/test_compat.py.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from OpenSSL import SSL
from twisted.internet import tcp
from twisted.protocols.tls import TLSMemoryBIOProtocol, _AggregateSmallWrites


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
    try:
        target.tls.send(data)
    except SSL.Error:
        return None
    try:
        return target.tls.bio_read(2 * TLS_RECORD_DATA)
    except SSL.WantReadError:     # (a record is always there after a write)
        return b""
