"""Which browser pages may open a WebSocket: the ``Origin`` check (docs/protocol.md,
4.1 "Order of the checks").

A browser sends the page's origin with every upgrade; without this check any page the
user visits could open a socket with the user's cookie and signature. Non-browser
clients send no ``Origin`` and are not affected.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True)
class OriginPolicy:
    """``[server] allowed_origins``: empty allows only an origin on the request's own
    host, ``"*"`` any origin, otherwise exactly the origins listed."""

    allowed: Sequence[str] = ()

    def problem(self, origin: str | None, host: str | None) -> str | None:
        """None if a page of ``origin`` may connect through ``host``, else why not."""
        if not origin or "*" in self.allowed:
            return None
        if self.allowed:
            return None if origin in self.allowed else f"origin {origin!r} not allowed"
        origin_host = urlsplit(origin).hostname
        request_host = urlsplit("//" + (host or "")).hostname
        if origin_host and request_host and origin_host == request_host:
            return None
        return f"origin {origin!r} does not match host {host!r}"
