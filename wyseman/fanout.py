"""One notification frame to many sockets, the ``send`` calls spread over threads.

A notification for 10,000 subscribers is 10,000 ``send`` system calls, and they are
~95 % of the fan-out: on loopback each costs 8–12 µs of kernel time (the receiving
side's TCP work runs in the sender's call), so one thread needs ~100 ms. Python
releases the GIL for the duration of ``send``, so with helper threads the calls run
on several cores at once: 10,000 sends took ~60 ms with two threads instead of ~100
on a 2-core machine (docs/performance.md).

The threads only write to sockets that take the frame at once (open, nothing queued,
plain TCP: :meth:`GatewayProtocol.send_direct`); meanwhile the reactor thread sends its
own share and then waits for theirs, so no Twisted object is used by two threads at a
time. Everything else (a socket with queued output, TLS, a partial write) is finished
by the reactor thread afterwards, through the usual path, in the order of the list.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

#: below this many sockets a fan-out is not worth handing to threads
MIN_PARALLEL_SOCKETS = 1024


def auto_threads(workers: int, cpus: int | None = None) -> int:
    """``[server] fanout_threads = 0``: the cores left to each worker process, at most 4
    (past that the GIL, held between the calls, limits the gain)."""
    cpus = cpus or os.cpu_count() or 1
    return max(1, min(4, cpus // max(1, workers)))


def _send_share(protocols: Sequence[Any], data: bytes) -> list[tuple[Any, int]]:
    """Send ``data`` to each protocol that can take it directly; the others (and partial
    writes) are returned as (protocol, bytes written or -1)."""
    rest = []
    for protocol in protocols:
        written = protocol.send_direct(data)
        if written != len(data):
            rest.append((protocol, written))
    return rest


class FanOut:
    """Sends one prepared frame to a list of protocols, with ``threads - 1`` helpers."""

    def __init__(self, threads: int, min_parallel: int = MIN_PARALLEL_SOCKETS) -> None:
        self.threads = max(1, threads)
        self.min_parallel = min_parallel
        self._pool: ThreadPoolExecutor | None = None

    def _helpers(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads - 1,
                                            thread_name_prefix="wyseman-fanout")
        return self._pool

    def send(self, protocols: Sequence[Any], frame: Any) -> int:
        """Send ``frame`` (a prepared message) to every protocol; the number that took
        it (or queued it) — the others are closing."""
        if self.threads == 1 or len(protocols) < self.min_parallel:
            return sum(1 for protocol in protocols if protocol.send_notification(frame))
        data = frame.payloadHybi
        shares = [protocols[i::self.threads] for i in range(self.threads)]
        pool = self._helpers()
        futures = [pool.submit(_send_share, share, data) for share in shares[1:]]
        rest = _send_share(shares[0], data)
        for future in futures:
            rest.extend(future.result())
        sent = len(protocols) - len(rest)
        for protocol, written in rest:
            if written < 0:
                sent += protocol.send_notification(frame)
            else:
                protocol.send_rest(data, written)
                sent += 1
        return sent

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
