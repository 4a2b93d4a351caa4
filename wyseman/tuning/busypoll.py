"""``[server] busy_poll_us``: the reactor thread asks for events a while before it sleeps.

When the reactor thread runs out of work it blocks in ``epoll_wait``, and its core goes
idle. The next event (PostgreSQL's answer, the client's next request: tens of µs away
when one request follows another) must then wake it: the sender's kernel queues the wake-up
for the sleeping thread's core, which leaves its idle state and switches the thread back
in. On a virtual machine each of these steps traps to the hypervisor. Profiled at one
request at a time, a quarter of the server's CPU was in waking and being woken, and a
request is two such round trips.

Polling without blocking for up to ``busy_poll_us`` first, the thread is still running
when the event comes: nothing has to be woken, on either side. It costs a core that shows
busy while it polls, so it pays when the reactor thread has a core of its own (``[server]
cpu_affinity``), which is when it is on by default. A loaded server is not affected:
there is always an event waiting.

Only Twisted's epoll reactor (Linux's default) is supported; with another reactor the
option is ignored with a warning.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

log = Logger(namespace="wyseman.tuning")

#: ``busy_poll_us`` when the reactor thread has a core of its own and the option is not set
DEFAULT_US = 200


def configured_us(busy_poll_us: int | None, cpu_affinity: tuple[int, ...]) -> int:
    """The µs to poll for, from ``[server] busy_poll_us`` (None: not set) and
    ``cpu_affinity``: not set is :data:`DEFAULT_US` with CPUs of its own, 0 without."""
    if busy_poll_us is not None:
        return busy_poll_us
    return DEFAULT_US if cpu_affinity else 0


class SpinningPoller:
    """An ``select.epoll`` whose blocking ``poll`` polls without blocking first, for up
    to ``spin`` seconds (never longer than the timeout it is given: the reactor's timers
    stay on time). Its other methods are the epoll object's own."""

    def __init__(self, poller: Any, spin: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.poller = poller
        self.spin = spin
        self.clock = clock
        # (bound once: the reactor calls these for every socket it adds or changes)
        self.register = poller.register
        self.unregister = poller.unregister
        self.modify = poller.modify
        self.close = poller.close
        self.fileno = poller.fileno

    @property
    def closed(self) -> bool:
        return bool(self.poller.closed)

    def poll(self, timeout: float = -1, maxevents: int = -1) -> list[tuple[int, int]]:
        poll = self.poller.poll
        if timeout == 0:
            return poll(0, maxevents)
        events = poll(0, maxevents)
        if events:
            return events
        clock = self.clock
        spin = self.spin if timeout is None or timeout < 0 else min(self.spin, timeout)
        start = clock()
        until = start + spin
        while True:
            events = poll(0, maxevents)
            if events:
                return events
            now = clock()
            if now >= until:
                break
        if timeout is not None and timeout > 0:
            timeout = max(0.0, timeout - (now - start))
        return poll(timeout, maxevents)


def install(reactor: Any, microseconds: int) -> bool:
    """Make ``reactor``'s polling spin for ``microseconds`` before it blocks → True if it
    does now (False: 0, or not an epoll reactor: logged)."""
    if microseconds <= 0:
        return False
    poller = getattr(reactor, "_poller", None)
    if isinstance(poller, SpinningPoller):
        poller.spin = microseconds / 1e6
        return True
    if poller is None or type(poller).__name__ != "epoll" or not hasattr(reactor, "doPoll"):
        log.warn("[server] busy_poll_us ignored: it needs Twisted's epoll reactor, not "
                 "{reactor}", reactor=type(reactor).__name__)
        return False
    reactor._poller = SpinningPoller(poller, microseconds / 1e6)
    log.info("reactor polls for {us} µs before it sleeps ([server] busy_poll_us)",
             us=microseconds)
    return True


def uninstall(reactor: Any) -> None:
    """``reactor``'s own poller back (a stopped gateway in an application that goes on)."""
    poller = getattr(reactor, "_poller", None)
    if isinstance(poller, SpinningPoller):
        reactor._poller = poller.poller
