"""What the WebSocket wire needs from outside it, as typed seams: the application wires
them in (the hub's own seam, :class:`wyseman.gateway.seams.TransportHub`, is the
gateway's)."""

from __future__ import annotations

from typing import Any, Protocol


class ConnectionRouter(Protocol):
    """``[server] route_by_user``: which worker serves a user's upgrades, and the hand-over
    of a connection to it (the application's ``workers.routing.Router``)."""

    def owner(self, head: bytes) -> int | None:
        """The worker that should serve the upgrade request ``head``; None: this one."""
        ...

    def pass_on(self, site: Any, transport: Any, owner: int, head: bytes) -> bool:
        """Give the connection to worker ``owner``: True, or False (nothing changed) if
        it cannot take it now, and this worker serves it."""
        ...
