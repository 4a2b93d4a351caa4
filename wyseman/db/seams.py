"""What the db layer asks of the reactor, named as types.

Twisted describes its reactor with zope interfaces (``IReactorTime``,
``IReactorFDSet``), which mypy cannot read without a plugin (their methods have
no ``self``). These Protocols name the few methods the pools, the batcher, the
listener and the adapter call; a real reactor and ``task.Clock`` have them all.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol


class Timer(Protocol):
    """A delayed call (``IDelayedCall``): what a scheduled sweep or retry is asked."""

    def active(self) -> bool:
        ...

    def cancel(self) -> None:
        ...


class Clock(Protocol):
    """The reactor as a clock (``IReactorTime``)."""

    def seconds(self) -> float:
        ...

    def callLater(self, delay: float, function: Callable[..., object], /,  # noqa: N802
                  *args: Any, **kwargs: Any) -> Timer:
        ...


class FDReactor(Protocol):
    """The reactor as the adapter's connection uses it (``IReactorFDSet``): the
    connection registers itself as its socket's reader and writer."""

    def addReader(self, reader: Any, /) -> None:  # noqa: N802
        ...

    def removeReader(self, reader: Any, /) -> None:  # noqa: N802
        ...

    def addWriter(self, writer: Any, /) -> None:  # noqa: N802
        ...

    def removeWriter(self, writer: Any, /) -> None:  # noqa: N802
        ...


class Reactor(Clock, FDReactor, Protocol):
    """The reactor the database runs on: the pools' clock, the connections' sockets."""
