"""Load benchmarks of the wyseman gateway: ``python -m benchmarks.run [--quick]``.

See ``docs/performance.md``. Nothing here is imported by the ``wyseman`` package.
"""

import resource


def raise_fd_limit() -> int:
    """Soft open-file limit up to the hard one (thousands of sockets per process)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard
