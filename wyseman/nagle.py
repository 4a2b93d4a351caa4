"""TCP_NODELAY on the gateway's connections, server and client side.

Twisted leaves Nagle's algorithm on. With it, the kernel holds a small segment back while
an earlier one is not yet acknowledged, and the peer acknowledges late on purpose
(delayed ACK, 40 ms on Linux) when it has nothing to send. A TLS login writes twice in a
row without an answer in between (the session tickets after the handshake, then the
``101 Switching Protocols``): each such login waited 40 ms, and a server answered about
20 of them a second on one socket. Replies, notifications and pongs are small writes too.
Everything the gateway writes is already gathered into whole frames and records, so
there is nothing for Nagle to merge: it only adds the wait. (Browsers, Node's HTTP server
and asyncio turn it off as well.)
"""

from __future__ import annotations

from typing import Any


def send_without_delay(transport: Any) -> bool:
    """Turn Nagle's algorithm off for the TCP connection under ``transport`` (a TCP
    transport, or a TLS or other protocol wrapper around one, which passes the call
    down) → True if it is off now; False for a transport that is not TCP (a Unix
    socket, a memory transport in tests) or a socket that has gone meanwhile."""
    set_no_delay = getattr(transport, "setTcpNoDelay", None)
    if set_no_delay is None:
        return False
    try:
        set_no_delay(True)
    except OSError:   # (a Unix socket: no TCP options; a connection reset meanwhile)
        return False
    return True
