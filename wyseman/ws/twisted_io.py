"""The Twisted internals of the WebSocket write path, in one place (docs/performance.md,
"Fast paths"): a frame is written straight to a plain TCP socket when Twisted has
nothing buffered for it, which saves a buffer copy, two epoll changes and a later
``doWrite`` per frame (a notification fans out to thousands of sockets). Over TLS the
same is done one layer down, for the records the TLS layer sends (:func:`direct_tls_writes`):
handshake messages and the encrypted frames.

Every name used here that Twisted does not document (``tcp.Server.socket``,
``dataBuffer``, ``_tempDataBuffer``, ``BufferingTLSTransport._aggregator`` and its
``_buffer``) is checked by tests/test_compat.py.
"""

from __future__ import annotations

from typing import Any

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
