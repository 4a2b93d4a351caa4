"""Key-login signatures checked off the reactor thread.

An ECDSA P-521 verification takes ~0.5 ms of CPU, a third of what a key login costs
the server, and the ``cryptography`` package releases the GIL while OpenSSL works
(two threads verify twice as many signatures per second as one). Checked on helper
threads, the reactor thread goes on reading requests and accepting other logins
meanwhile, and a burst of logins uses more than one core (docs/performance.md,
"Signatures on helper threads, key lookups batched").

What runs on a helper is :func:`wyseman.auth.credentials.verifying_key`, a pure
function of its arguments: no Twisted object is touched off the reactor thread. The
queue of checks is bounded by the connections in their opening handshake (each waits
for its own), which ``[limits] max_connections`` bounds.
"""

from __future__ import annotations

from queue import SimpleQueue
from threading import Thread
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorFromThreads
from twisted.python.failure import Failure

from wyseman.auth import credentials as cred
from wyseman.tuning.affinity import release_helper_thread

#: what tells a helper thread to end
_STOP = None


class SignatureChecker:
    """Runs :func:`~wyseman.auth.credentials.verifying_key` on ``threads`` helper
    threads (started on first use), or on the calling thread when ``threads`` is 1 or
    the reactor cannot take calls from other threads (a test's fake clock).

    A check is handed over through a :class:`queue.SimpleQueue` (one C call on the
    reactor thread) and its result comes back through ``callFromThread``; Twisted's
    ``deferToThreadPool`` cost the reactor thread ~7 % of a login storm (its pool's
    queue, work team and context copies are Python code, run for every check). The
    threads are daemons: what they run is a pure computation, safe to abandon should
    their owner never be closed."""

    def __init__(self, threads: int, reactor: Any) -> None:
        self.threads = max(1, threads)
        self._reactor = reactor
        self._queue: SimpleQueue[Any] = SimpleQueue()
        self._workers: list[Thread] = []
        self._closed = False
        self.threaded = self.threads > 1 and IReactorFromThreads.providedBy(reactor)

    def verifying_key(self, conn_pub: object, message: bytes,
                      sign: str) -> defer.Deferred[Any]:
        """Deferred of the first key of ``conn_pub`` that verifies ``sign`` over
        ``message``, or of None."""
        if not self.threaded or self._closed:
            return defer.maybeDeferred(cred.verifying_key, conn_pub, message, sign)
        if not self._workers:
            self._start()
        d: defer.Deferred[Any] = defer.Deferred()
        self._queue.put((d, conn_pub, message, sign))
        return d

    def _start(self) -> None:
        for number in range(self.threads):
            thread = Thread(target=self._work, name=f"wyseman-verify-{number}", daemon=True)
            thread.start()
            self._workers.append(thread)

    def _work(self) -> None:
        release_helper_thread()   # not on the pinned reactor thread's CPU alone
        call_back = self._reactor.callFromThread
        while (item := self._queue.get()) is not _STOP:
            d, conn_pub, message, sign = item
            try:
                result = cred.verifying_key(conn_pub, message, sign)
            except BaseException:
                call_back(d.errback, Failure())
            else:
                call_back(d.callback, result)

    def close(self) -> None:
        """Stop the helper threads (waiting for a check under way); later checks run on
        the calling thread."""
        self._closed = True
        workers, self._workers = self._workers, []
        for _ in workers:
            self._queue.put(_STOP)
        for thread in workers:
            thread.join()
