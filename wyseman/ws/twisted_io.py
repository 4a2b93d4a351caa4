"""The Twisted internals of the WebSocket write path, in one place (docs/performance.md,
"Fast paths"): a frame is written straight to a plain TCP socket when Twisted has
nothing buffered for it, which saves a buffer copy, two epoll changes and a later
``doWrite`` per frame (a notification fans out to thousands of sockets).

Every name used here that Twisted does not document (``tcp.Server.socket``,
``dataBuffer``, ``_tempDataBuffer``) is checked by tests/test_compat.py.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import tcp


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
