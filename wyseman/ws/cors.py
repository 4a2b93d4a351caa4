"""Which pages may read ``/clientinfo``: its CORS headers and preflight (docs/hosting.md).

A key login signs what ``/clientinfo`` answers, including the ``Cookie`` header the
browser sent with it; a page fetches it with its credentials (``credentials:
"include"``) from another origin when ``/clientinfo`` is on another port (the JS
client's default, the WebSocket port − 1) or another host. A browser lets the page read
such an answer only with ``Access-Control-Allow-Origin`` naming the page's origin and
``Access-Control-Allow-Credentials: true`` (``*`` is not accepted with credentials).

The origins allowed are those that may open the WebSocket (``[server] allowed_origins``,
:class:`~wyseman.auth.origins.OriginPolicy`: empty allows an origin on the request's own
host): a page that may not log in has no use for the answer, and a page that may read
it could otherwise learn the visitor's address and cookie. Other origins get no CORS
headers (their page cannot read the answer) and their preflight a 403.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from twisted.logger import Logger

from wyseman.auth.origins import OriginPolicy

log = Logger(namespace="wyseman.http")

#: what an ``Origin`` echoed into a header must look like: scheme, host, optional port
#: (``null``, and anything with a path, space or control character, is never echoed)
_ORIGIN = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]{0,15}://[A-Za-z0-9._~\-\[\]:%]{1,260}$")

#: the methods and request headers a preflight may ask for (``/clientinfo`` reads no
#: other header a page could set: the address headers count only from trusted proxies)
ALLOWED_METHODS = (b"GET", b"HEAD")
ALLOWED_HEADERS = (b"cache-control", b"content-type", b"pragma")

#: how long a browser may keep a preflight's answer (seconds)
PREFLIGHT_MAX_AGE = 600

Headers = list[tuple[bytes, bytes]]


class ClientInfoCors:
    """The CORS answer of ``/clientinfo`` for a request's ``Origin`` and ``Host``."""

    def __init__(self, allowed_origins: Sequence[str]) -> None:
        self.policy = OriginPolicy(tuple(allowed_origins))

    def problem(self, origin: str, host: str | None) -> str | None:
        """None if a page of ``origin`` may read ``/clientinfo`` through ``host``."""
        if not _ORIGIN.match(origin):
            return f"origin {origin[:100]!r} is not scheme://host[:port]"
        return self.policy.problem(origin, host)

    def headers(self, origin: str | None, host: str | None) -> Headers:
        """The CORS headers of a ``GET``/``HEAD``: ``Vary: Origin`` always (the answer
        depends on it), the origin echoed with credentials allowed when it may read."""
        out: Headers = [(b"vary", b"Origin")]
        if origin is not None and self.problem(origin, host) is None:
            out += [(b"access-control-allow-origin", origin.encode("latin-1")),
                    (b"access-control-allow-credentials", b"true")]
        return out

    def preflight(self, origin: str | None, host: str | None, method: str | None,
                  request_headers: str | None) -> tuple[int, Headers, str | None]:
        """The answer to ``OPTIONS /clientinfo``: (status, headers, why it is refused
        or None). 204 with the allowed methods and headers; 403 for an origin that may
        not read it or a method or header it does not allow."""
        allow = [(b"allow", b"GET, HEAD, OPTIONS"), (b"vary", b"Origin")]
        if origin is None:
            return 204, allow, None          # not a CORS preflight: what is allowed here
        problem = self.problem(origin, host)
        if problem is None and method is not None \
                and method.encode("latin-1") not in ALLOWED_METHODS:
            problem = f"method {method[:20]!r} not allowed (GET, HEAD)"
        if problem is None and request_headers:
            asked = [h.strip().lower().encode("latin-1")
                     for h in request_headers[:1024].split(",") if h.strip()]
            extra = [h for h in asked if h not in ALLOWED_HEADERS]
            if extra:
                problem = (f"request header {extra[0][:40].decode('latin-1')!r} not "
                           "allowed")
        if problem is not None:
            return 403, allow, problem
        return 204, allow + [
            (b"access-control-allow-origin", origin.encode("latin-1")),
            (b"access-control-allow-credentials", b"true"),
            (b"access-control-allow-methods", b", ".join(ALLOWED_METHODS)),
            (b"access-control-allow-headers", b", ".join(ALLOWED_HEADERS)),
            (b"access-control-max-age", str(PREFLIGHT_MAX_AGE).encode()),
        ], None
