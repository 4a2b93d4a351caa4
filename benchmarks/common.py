"""What every part of the runner shares: where things are, the error a scenario fails
with, deadlines, and the progress log on stderr.

Nothing here starts a process; it is imported by every other runner module.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
JS_DIR = ROOT / "tests" / "js"


class BenchError(RuntimeError):
    """A scenario could not be run (the message says why)."""


class Deadline:
    """Seconds left until a hard limit; ``left()`` raises once it has passed."""

    def __init__(self, seconds: float, what: str) -> None:
        self.end = time.monotonic() + seconds
        self.what = what

    def left(self, cap: float | None = None) -> float:
        remaining = self.end - time.monotonic()
        if remaining <= 0:
            raise BenchError(f"{self.what}: hard timeout reached")
        return remaining if cap is None else min(cap, remaining)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
