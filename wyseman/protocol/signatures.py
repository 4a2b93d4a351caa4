"""Key-login signatures checked off the reactor thread.

An ECDSA P-521 verification takes ~0.5 ms of CPU, a third of what a key login costs
the server, and the ``cryptography`` package releases the GIL while OpenSSL works
(two threads verify twice as many signatures per second as one). Checked on helper
threads, the reactor thread goes on reading requests and accepting other logins
meanwhile, and a burst of logins uses more than one core (docs/performance.md,
"Sixth round").

What runs on a helper is :func:`wyseman.protocol.credentials.verifying_key`, a pure
function of its arguments: no Twisted object is touched off the reactor thread. The
queue of checks is bounded by the connections in their opening handshake (each waits
for its own), which ``[limits] max_connections`` bounds.
"""

from __future__ import annotations

from threading import Thread
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from wyseman.affinity import release_helper_thread
from wyseman.protocol import credentials as cred


class _DaemonThreadPool(ThreadPool):
    """A pool whose threads never keep the process alive (what they run is a pure
    computation, safe to abandon) should its owner never be stopped."""

    def threadFactory(self, *args: Any, **kwargs: Any) -> Thread:  # noqa: N802 (Twisted's name)
        work = kwargs.pop("target")

        def run(*run_args: Any, **run_kwargs: Any) -> Any:
            release_helper_thread()   # not on the pinned reactor thread's CPU alone
            return work(*run_args, **run_kwargs)
        thread = Thread(*args, target=run, **kwargs)
        thread.daemon = True
        return thread


class SignatureChecker:
    """Runs :func:`~wyseman.protocol.credentials.verifying_key` on ``threads`` helper
    threads (started on first use), or on the calling thread when ``threads`` is 1 or
    the reactor cannot take calls from other threads (a test's fake clock)."""

    def __init__(self, threads: int, reactor: Any) -> None:
        self.threads = max(1, threads)
        self._reactor = reactor
        self._pool: ThreadPool | None = None
        self._closed = False
        self.threaded = self.threads > 1 and IReactorFromThreads.providedBy(reactor)

    def verifying_key(self, conn_pub: object, message: bytes,
                      sign: str) -> defer.Deferred:
        """Deferred of the first key of ``conn_pub`` that verifies ``sign`` over
        ``message``, or of None."""
        if not self.threaded or self._closed:
            return defer.maybeDeferred(cred.verifying_key, conn_pub, message, sign)
        if self._pool is None:
            self._pool = _DaemonThreadPool(minthreads=0, maxthreads=self.threads,
                                    name="wyseman-verify")
            self._pool.start()
        return deferToThreadPool(self._reactor, self._pool, cred.verifying_key,
                                 conn_pub, message, sign)

    def close(self) -> None:
        """Stop the helper threads (waiting for a check under way); later checks run on
        the calling thread."""
        self._closed = True
        if self._pool is not None:
            pool, self._pool = self._pool, None
            pool.stop()
