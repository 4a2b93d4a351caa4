"""Load benchmarks of the wyseman gateway: ``python -m benchmarks.run [--quick]``.

See ``docs/performance.md``. Nothing here is imported by the ``wyseman`` package.
"""
