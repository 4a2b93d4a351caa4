"""The cyclic garbage collector, kept from pausing the server.

CPython's full collection walks every object the collector tracks. Once the server has
started, most of them (~60,000: the loaded modules, classes and functions) live as long as
the process, and walking them took 15–25 ms, about twice a second under load: all requests
in flight waited, which was the server's p99 latency. :func:`freeze_startup_objects` moves
them out of the collector's view (:func:`gc.freeze`), so full collections only walk what
was made since. Objects made later are collected as usual.

:class:`PauseObserver` records every collection's duration in a histogram, so that an
operator can see what the collector costs (``wyseman_gc_pause_seconds``).
"""

from __future__ import annotations

import gc
import time
from typing import Any

from twisted.logger import Logger

log = Logger(namespace="wyseman.gc")


def set_young_threshold(threshold: int) -> None:
    """Collect the youngest generation every ``threshold`` allocations (Python: 700).

    At 700, a busy server collects the young generation hundreds of times a second; each
    collection promotes whatever is in flight at that moment (requests' Deferreds, frames)
    to the older generations, and those promotions are what trigger full collections,
    which walk every connection's objects. On the benchmark machine, at 10,000: 9 full
    collections (mean 114 ms) while 10,000 sockets logged in and listened became 1 (24 ms),
    and tuple requests at C=100 went from 8,200–9,100 to 9,200–9,600 per second.
    """
    _, middle, old = gc.get_threshold()
    gc.set_threshold(threshold, middle, old)
    log.info("garbage collector: young generation collected every {n} allocations",
             n=threshold)


def freeze_startup_objects() -> int:
    """Collect, then freeze what is left; → how many objects are frozen now."""
    gc.collect()
    gc.freeze()
    count = gc.get_freeze_count()
    log.info("garbage collector: {count} start-up objects frozen", count=count)
    return count


class PauseObserver:
    """Times collections (all generations) into ``histogram`` labelled by generation."""

    def __init__(self, histogram: Any) -> None:
        self._children = [histogram.labels(str(generation)) for generation in range(3)]
        self._started = 0.0

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self._children[info["generation"]].observe(time.perf_counter() - self._started)

    def start(self) -> None:
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)

    def stop(self) -> None:
        while self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)
