"""Resources a custom action publishes for its request: a report (HTML, PDF), a CSV
export, anything a browser should fetch by URL rather than receive in a reply.

The action's reply carries the URL (``/_wyseman/resources/TOKEN``, served on the
gateway's ports); the token is 256 random bits, so the URL is the capability. It stays
readable only while the session that published it lives, only from that session's client
address, until its expiry, and within size bounds per resource and in all: a resource is
a reply that took another road, and holds no more rights than the session had.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from twisted.logger import Logger

from wyseman.errors import ProtocolError

log = Logger(namespace="wyseman.gateway")

#: the URL path under which published resources are served
PREFIX = "/_wyseman/resources/"


@dataclass(frozen=True)
class Published:
    """One published resource."""

    token: str
    owner: Any                 # the publishing session (wyseman.gateway.dispatch.Session)
    body: bytes
    content_type: str
    filename: str | None
    expires: float


class ResourceStore:
    """This process's published resources, by token."""

    def __init__(self, clock: Any, *, max_bytes: int, max_total: int, ttl: float) -> None:
        self.clock = clock
        self.max_bytes = max_bytes
        self.max_total = max_total
        self.ttl = ttl
        self.total = 0
        self._by_token: OrderedDict[str, Published] = OrderedDict()   # oldest first

    def publish(self, session: Any, body: bytes | str, content_type: str,
                filename: str | None = None, ttl: float | None = None) -> str:
        """Keep ``body`` for ``session``; → its URL path.
        :raises ProtocolError: over the bounds (the action's reply says so)."""
        data = body.encode("utf-8") if isinstance(body, str) else bytes(body)
        if len(data) > self.max_bytes:
            raise ProtocolError("resourceTooLarge",
                                f"a published resource of {len(data)} bytes is over "
                                f"{self.max_bytes} ([actions] resource_max_bytes)")
        if not isinstance(content_type, str) or "\n" in content_type or "\r" in content_type:
            raise ProtocolError("badMessage", "a resource's content type must be one line")
        if filename is not None and any(c in filename for c in '"\\/\r\n'):
            raise ProtocolError("badMessage",
                                "a resource's file name may not hold quotes, slashes or "
                                "line breaks")
        now = self.clock.seconds()
        self._expire(now)
        if self.total + len(data) > self.max_total:
            raise ProtocolError("resourcesFull",
                                "the server holds as many published resources as it may "
                                "([actions] resource_total_bytes); try again later")
        token = secrets.token_urlsafe(32)
        self._by_token[token] = Published(token, session, data, content_type, filename,
                                          now + (self.ttl if ttl is None else min(ttl, self.ttl)))
        self.total += len(data)
        return PREFIX + token

    def fetch(self, token: str, peer: str) -> Published | None:
        """The resource of ``token`` for a client at ``peer`` (as /clientinfo renders the
        address), or None: unknown, expired, its session gone, or another client."""
        self._expire(self.clock.seconds())
        published = self._by_token.get(token)
        if published is None:
            return None
        if published.owner.peer and published.owner.peer != peer:
            log.info("refused a published resource of {user} to {peer}: not the "
                     "publishing session's address", user=published.owner.user, peer=peer)
            return None
        return published

    def session_ended(self, session: Any) -> None:
        """``session`` closed: what it published goes with it."""
        for token in [t for t, p in self._by_token.items() if p.owner is session]:
            self._drop(token)

    def _expire(self, now: float) -> None:
        expired = [token for token, p in self._by_token.items() if p.expires <= now]
        for token in expired:
            self._drop(token)

    def _drop(self, token: str) -> None:
        published = self._by_token.pop(token)
        self.total -= len(published.body)
