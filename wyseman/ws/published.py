"""``GET /_wyseman/resources/TOKEN``: what a custom action published for its session's
client (:mod:`wyseman.gateway.resources`), on the gateway's ports.

Anything but the publishing session's client, while that session lives and before the
resource expires, gets 404, the same answer as for a token that never was: the answer
tells a prober nothing. The body is sent as published, never sniffed, never cached.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger
from twisted.web import resource, server

from wyseman.auth.peer import client_ip
from wyseman.gateway.resources import PREFIX

if TYPE_CHECKING:
    from wyseman.gateway.seams import TransportHub

log = Logger(namespace="wyseman.http")

_TOKEN = re.compile(r"^[A-Za-z0-9_-]{16,64}$")


class PublishedResources(resource.Resource):
    """The leaf under ``/_wyseman``: reads the token from the request path itself."""

    isLeaf = True

    def __init__(self, hub: TransportHub) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.hub = hub

    def render_GET(self, request: server.Request) -> bytes:  # noqa: N802
        path = request.path.decode("latin-1")
        token = path[len(PREFIX):] if path.startswith(PREFIX) else ""
        peer = client_ip(request.getClientAddress(), _header(request, b"x-forwarded-for"),
                         self.hub.trusted_proxies, self.hub.ip_style)
        published = self.hub.resources.fetch(token, peer) if _TOKEN.match(token) else None
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-content-type-options", b"nosniff")
        if published is None:
            log.info("web: answered 404 to GET {path} from {peer}: no such published "
                     "resource (unknown, expired, or not this client's)",
                     path=path[:len(PREFIX) + 8] + "…", peer=peer)
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"Not Found\n"
        request.setHeader(b"content-type", published.content_type.encode("latin-1"))
        if published.filename:
            request.setHeader(b"content-disposition",
                              f'attachment; filename="{published.filename}"'.encode())
        request.setHeader(b"content-length", b"%d" % len(published.body))
        return b"" if request.method == b"HEAD" else published.body

    render_HEAD = render_GET


def _header(request: server.Request, name: bytes) -> Any:
    value = request.getHeader(name)
    return value.decode("latin-1") if isinstance(value, bytes) else value
