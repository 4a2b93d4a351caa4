"""The global reactor as a process's main loop uses it (``wyseman demo``, a worker).

Twisted types ``twisted.internet.reactor`` by its zope interfaces, whose methods plain
mypy reads as if their first parameter were ``self``; :class:`MainLoop` is the part a
main loop calls, with the signatures the real reactor has (``run`` takes
``installSignalHandlers``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, cast


class MainLoop(Protocol):
    running: bool

    def run(self, installSignalHandlers: bool = True) -> None:  # noqa: N803
        ...

    def stop(self) -> None:
        ...

    def callWhenRunning(self, callable: Callable[..., Any],  # noqa: N802
                        *args: Any, **kwargs: Any) -> Any:
        ...

    def addSystemEventTrigger(self, phase: str, eventType: str,  # noqa: N802, N803
                              callable: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        ...


def global_reactor() -> MainLoop:
    """``twisted.internet.reactor`` (imported here, on first use: that installs it)."""
    from twisted.internet import reactor
    return cast(MainLoop, reactor)
