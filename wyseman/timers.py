"""Autobahn's timer interface on a plain Twisted clock.

Autobahn batches its timers (ping, handshake and close timeouts) into buckets
whose delayed calls stay scheduled after the timers in them are cancelled. We
give each factory this adapter instead: a cancelled timer is really gone (clean
shutdowns, no stray delayed calls) and tests can drive heartbeats with a
``MemoryReactorClock``.
"""

from __future__ import annotations

from typing import Any


class ClockTimer:
    def __init__(self, clock: Any) -> None:
        self.clock = clock

    def call_later(self, delay: float, func: Any, *args: Any, **kwargs: Any) -> Any:
        return self.clock.callLater(delay, func, *args, **kwargs)


def cancel_close_timer(protocol: Any) -> None:
    """Autobahn leaves the close-handshake timeout scheduled when the TCP connection
    ends before the peer's close frame; call from ``onClose`` to drop it."""
    call = getattr(protocol, "closeHandshakeTimeoutCall", None)
    if call is not None and call.active():
        call.cancel()
    protocol.closeHandshakeTimeoutCall = None
