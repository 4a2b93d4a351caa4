"""What the gateway needs from the layers around it, as typed seams: a transport
provides them, the application wires them in.

The gateway keeps who is subscribed to what; how a message reaches many sockets at
once (framing once, writing from several threads) is the transport's business."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

#: (the login decision reserves the slots: its seam, here for the gateway's callers)
from wyseman.auth.seams import UserSlots as UserSlots


class Broadcaster(Protocol):
    """Delivers one encoded message to many subscribers of a channel."""

    def broadcast(self, subscribers: Sequence[Any], payload: bytes) -> int:
        """Send ``payload`` to each of ``subscribers``; → how many took it (the others
        are closing)."""
        ...

    def close(self) -> None:
        """No more broadcasts after this (stop helper threads)."""
        ...
