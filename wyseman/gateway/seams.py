"""What the gateway needs from the layers around it, as typed seams: a transport
provides them, the application wires them in.

The gateway keeps who is subscribed to what; how a message reaches many sockets at
once (framing once, writing from several threads) is the transport's business."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol


class Broadcaster(Protocol):
    """Delivers one encoded message to many subscribers of a channel."""

    def broadcast(self, subscribers: Sequence[Any], payload: bytes) -> int:
        """Send ``payload`` to each of ``subscribers``; → how many took it (the others
        are closing)."""
        ...

    def close(self) -> None:
        """No more broadcasts after this (stop helper threads)."""
        ...


class UserSlots(Protocol):
    """Each user's open connections, counted from an accepted login to its close: this
    process's (``LocalSlots``) or, with workers, the supervisor's for all of them."""

    def reserve(self, user: str) -> Any:
        """Deferred of whether ``user`` may have one more connection (counted if so)."""
        ...

    def release(self, user: str) -> None:
        ...

    def count(self, user: str) -> Any:
        ...
