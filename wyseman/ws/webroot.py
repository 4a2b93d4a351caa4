"""A browser app's files, served on the gateway's ports (``[web]``, docs/hosting.md).

wylib and the npm client fetch ``/clientinfo`` from the page's own origin and open the
WebSocket to the host and port of their ticket: when the gateway serves the page itself,
page, ``/clientinfo`` and WebSocket share one origin, and no second web server, proxy rule
or CORS setting is needed.

A request is mapped to a file by this module alone, not by twisted.web's ``File``
traversal, so that the rules hold whatever twisted.web does with a path: the raw path is
split on ``/`` *before* percent-decoding (an encoded slash never separates segments), a
segment that decodes to ``.``, ``..``, a name starting with ``.`` (but ``.well-known``), or
one holding ``/``, ``\\`` or NUL is refused, and the file's real path (symlinks resolved)
must lie inside the real path of its directory. Directories are never listed. Only then
is a regular file handed to ``twisted.web.static.File``, which brings MIME types,
``Last-Modified``, conditional GET, ``HEAD`` and ``Range``; an ``ETag`` (size and
modification time) is added here, since ``File`` sets none.

The site stays the bounded :class:`~wyseman.ws.httpbounds.GatewaySite`: no request
bodies, a few KiB of request head, its idle timeout and overall deadline per connection.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote_to_bytes

from twisted.logger import Logger
from twisted.web import http, resource, server, static

log = Logger(namespace="wyseman.http")

#: the server's own web console (``[web] console``), shipped with the package
CONSOLE_DIRECTORY = str(Path(__file__).resolve().parent.parent / "webconsole")

#: content types that must be right for a browser to use the file at all (a module
#: script with another type is refused), whatever the system's mime.types says
_TYPES = {
    ".html": "text/html; charset=utf-8", ".htm": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8", ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8", ".json": "application/json",
    ".map": "application/json", ".svg": "image/svg+xml", ".wasm": "application/wasm",
    ".webmanifest": "application/manifest+json", ".txt": "text/plain; charset=utf-8",
    ".ico": "image/x-icon", ".png": "image/png", ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg", ".gif": "image/gif", ".webp": "image/webp",
    ".woff": "font/woff", ".woff2": "font/woff2",
}

#: a segment's text after decoding that is never a file name here
_BAD_SEGMENT = re.compile(r"[/\\\x00]")


class _Refusal(Exception):
    """A request path that is not served: ``code`` and the reason that is logged."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class _Tree:
    """One served directory: ``prefix`` (URL segments) and its real path."""
    prefix: tuple[str, ...]
    directory: str
    spa_fallback: str | None


def _segments(raw_path: bytes) -> tuple[list[str], bool]:
    """The decoded segments of a request path (empty ones dropped) and whether it ends
    with ``/``. :raises _Refusal: a segment that could name something outside the tree
    or a hidden file."""
    parts = raw_path.split(b"/")
    out: list[str] = []
    for part in parts[1:]:
        if not part:
            continue
        try:
            text = unquote_to_bytes(part).decode("utf-8")
        except UnicodeDecodeError:
            raise _Refusal(404, "a path segment that is not UTF-8") from None
        if text in (".", ".."):
            raise _Refusal(403, f"a {text!r} segment")
        if _BAD_SEGMENT.search(text):
            raise _Refusal(403, "an encoded '/', '\\' or NUL in a segment")
        if text.startswith(".") and text != ".well-known":
            raise _Refusal(404, "a hidden file (a name starting with '.')")
        out.append(text)
    return out, raw_path.endswith(b"/")


def _inside(real: str, directory: str) -> bool:
    return real == directory or real.startswith(directory.rstrip(os.sep) + os.sep)


class StaticFile(static.File):
    """One regular file, as twisted.web serves it, with an ``ETag``, a
    ``Cache-Control`` and ``nosniff``; an unknown type is ``application/octet-stream``
    (twisted.web's default, ``text/html``, would let an uploaded file run as a page)."""

    contentTypes = {**static.File.contentTypes, **_TYPES}

    def __init__(self, path: str, cache_control: bytes, name: str | None = None) -> None:
        """``name``: the file name the type is read from, the one the request named
        (``path`` is the real path, which a symbolic link may name otherwise)."""
        super().__init__(path, defaultType="application/octet-stream")
        self.cache_control = cache_control
        if name is not None:
            self.type, self.encoding = static.getTypeAndEncoding(
                name, self.contentTypes, self.contentEncodings, self.defaultType)

    def render_GET(self, request: server.Request) -> Any:  # noqa: N802
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"cache-control", self.cache_control)
        try:
            stat = os.stat(self.path)
        except OSError:
            return self.childNotFound.render(request)
        etag = b'"%x-%x"' % (stat.st_size, stat.st_mtime_ns)
        if request.setETag(etag) is http.CACHED:
            return b""
        return super().render_GET(request)

    render_HEAD = render_GET


class WebRoot(resource.Resource):
    """The files of ``[web] root`` and ``[web] mounts``; a leaf: it reads the raw
    request path itself (see the module's docstring)."""

    isLeaf = True

    def __init__(self, root: str | None, mounts: Mapping[str, str],
                 index: Sequence[str] = ("index.html",), spa_fallback: str = "",
                 cache_max_age: int = 0) -> None:
        """``root``, ``mounts`` (URL prefix → directory) and ``spa_fallback`` (a path
        under ``root``) as checked by the config; directories are resolved once, here."""
        super().__init__()
        trees = []
        for prefix, directory in mounts.items():
            trees.append(_Tree(tuple(prefix.strip("/").split("/")),
                               os.path.realpath(directory), None))
        if root:
            real_root = os.path.realpath(root)
            fallback = (os.path.realpath(os.path.join(real_root, spa_fallback))
                        if spa_fallback else None)
            trees.append(_Tree((), real_root, fallback))
        # the longest prefix first: a mount under another mount takes its own requests
        self.trees = sorted(trees, key=lambda tree: -len(tree.prefix))
        self.index = tuple(index)
        self.cache_control = (b"no-cache" if not cache_max_age
                              else b"max-age=%d" % cache_max_age)

    @classmethod
    def from_config(cls, config: Any) -> WebRoot | None:
        """The ``[web]`` section's resource, or None when it serves nothing."""
        web = config.web
        if not web.root and not web.mounts and not web.console:
            return None
        mounts = {prefix: str(config.resolve_path(d)) for prefix, d in web.mounts.items()}
        if web.console:
            mounts[web.console] = CONSOLE_DIRECTORY
        return cls(str(config.resolve_path(web.root)) if web.root else None, mounts,
                   web.index, web.spa_fallback, web.cache_max_age)

    def render(self, request: server.Request) -> Any:
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"allow", b"GET, HEAD")
            return self._refuse(request, _Refusal(405, "a method other than GET or HEAD"))
        try:
            found = self.locate(request.path)
        except _Refusal as refusal:
            return self._refuse(request, refusal)
        if isinstance(found, _Redirect):
            location = found.location
            query = request.uri.partition(b"?")[2]
            if query:
                location += b"?" + query
            request.setResponseCode(http.MOVED_PERMANENTLY)
            request.setHeader(b"location", location)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b""
        return StaticFile(found.path, self.cache_control, found.name).render(request)

    def locate(self, raw_path: bytes) -> Found | _Redirect:
        """The regular file that answers ``raw_path`` (the request target's path,
        still percent-encoded), or where a directory's path with its trailing ``/`` is.
        :raises _Refusal: what is answered instead, and why."""
        if not raw_path.startswith(b"/"):
            raise _Refusal(404, "a request target that is not a path")
        segments, trailing = _segments(raw_path)
        for tree in self.trees:
            if tuple(segments[:len(tree.prefix)]) == tree.prefix:
                break
        else:
            raise _Refusal(404, "a path outside [web] root and mounts")
        rest = segments[len(tree.prefix):]
        real = os.path.realpath(os.path.join(tree.directory, *rest))
        if not _inside(real, tree.directory):
            raise _Refusal(403, "a symbolic link that leads out of its directory")
        if os.path.isdir(real):
            for name in self.index:
                candidate = os.path.realpath(os.path.join(real, name))
                if _inside(candidate, tree.directory) and os.path.isfile(candidate):
                    if not trailing:    # (relative links in the index need the slash)
                        return _Redirect(("/" + "/".join(segments) + "/").encode("utf-8"))
                    return Found(candidate, name)
            raise _Refusal(404, "a directory without an index file (never listed)")
        if os.path.isfile(real):
            return Found(real, rest[-1] if rest else os.path.basename(real))
        if (tree.spa_fallback and rest and "." not in rest[-1]
                and os.path.isfile(tree.spa_fallback)):
            return Found(tree.spa_fallback, os.path.basename(tree.spa_fallback))
        raise _Refusal(404, "no such file")

    def _refuse(self, request: server.Request, refusal: _Refusal) -> bytes:
        log.info("web: answered {code} to {method} {path} from {peer}: {reason}",
                 code=refusal.code, method=request.method.decode("latin-1"),
                 path=request.path[:200].decode("latin-1"),
                 peer=getattr(request.getClientAddress(), "host", "?"),
                 reason=refusal.reason)
        request.setResponseCode(refusal.code)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"x-content-type-options", b"nosniff")
        return {403: b"Forbidden\n", 404: b"Not Found\n",
                405: b"Method Not Allowed\n"}.get(refusal.code, b"Refused\n")


@dataclass(frozen=True)
class Found:
    """The file that answers a request: its real path, and the name the request gave
    it (its content type is that name's)."""
    path: str
    name: str


@dataclass(frozen=True)
class _Redirect:
    """A directory named without its trailing ``/``: where it is (an absolute path
    built from the checked segments, so never ``//host``)."""
    location: bytes


def check_web(config: Any) -> list[tuple[str, str]]:
    """What keeps ``[web]`` from serving, as (key, problem): a root or mount that is
    not a directory, a ``spa_fallback`` that is not a file under the root (``wyseman
    config check`` and the start report them)."""
    web = config.web
    problems = []
    directories = [("root", web.root)] if web.root else []
    directories += [(f"mounts.{prefix!r}", d) for prefix, d in web.mounts.items()]
    for key, value in directories:
        path = config.resolve_path(value)
        if not path.is_dir():
            what = "does not exist" if not path.exists() else "is not a directory"
            problems.append((key, f"{str(path)!r} {what}"))
    if web.root and web.spa_fallback and not problems:
        root = os.path.realpath(config.resolve_path(web.root))
        fallback = os.path.realpath(os.path.join(root, web.spa_fallback))
        if not _inside(fallback, root) or not Path(fallback).is_file():
            problems.append(("spa_fallback", f"{web.spa_fallback!r} is not a file under "
                                             "[web] root"))
    return problems
