"""``kill -HUP``: what the running server does with it (re-read the TLS certificate)."""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any


class SighupHandler:
    """Runs ``action`` in the reactor thread on SIGHUP, chaining to the handler that was
    there before; :meth:`remove` puts that one back. Installing does nothing outside
    the main thread (a server embedded in a test runner, say)."""

    def __init__(self, reactor: Any, action: Callable[[], Any]) -> None:
        self.reactor = reactor
        self.action = action
        self._previous: Any = None
        self._installed = False

    def install(self) -> None:
        try:
            previous = signal.getsignal(signal.SIGHUP)
        except (ValueError, AttributeError):   # no SIGHUP on this platform
            return

        def on_hup(signum: int, frame: Any) -> None:
            self.reactor.callFromThread(self.action)
            if callable(previous):
                previous(signum, frame)
        try:
            signal.signal(signal.SIGHUP, on_hup)
        except ValueError:   # not the main thread
            return
        self._previous, self._installed = previous, True

    def remove(self) -> None:
        if self._installed:
            signal.signal(signal.SIGHUP, self._previous)
            self._installed = False


def stop_on_hangup(reactor: Any, stream: Any = None) -> SighupHandler | None:
    """When the server runs in a terminal (``stream``, default stdin, is one), a SIGHUP
    means the terminal went away: stop cleanly (the embedded PostgreSQL with it) rather
    than die at once, as the signal's default would, leaving it running. Under a service
    manager (no terminal) SIGHUP keeps its meaning of reload. → the handler installed,
    or None."""
    import os
    import sys

    from twisted.logger import Logger
    stream = sys.stdin if stream is None else stream
    try:
        interactive = os.isatty(stream.fileno())
    except (AttributeError, OSError, ValueError):
        interactive = False
    if not interactive:
        return None
    log = Logger(namespace="wyseman.service")

    def hung_up() -> None:
        log.info("terminal hung up (SIGHUP): stopping")
        if reactor.running:
            reactor.stop()
    handler = SighupHandler(reactor, hung_up)
    handler.install()
    return handler
