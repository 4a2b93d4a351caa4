"""Child processes of the runner (servers, load generators) speaking lines on stdout.

Every read has a deadline, and :meth:`Child.stop` never leaves a process running.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, BenchError, Deadline


class Child:
    """A child process speaking lines on stdout; stderr goes to a log file."""

    def __init__(self, name: str, args: list[str], log_path: Path,
                 extra_env: dict[str, str] | None = None, die_with_parent: bool = False
                 ) -> None:
        self.name = name
        self.log_path = log_path
        self._log = open(log_path, "ab")
        env = dict(os.environ)
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        env.update(extra_env or {})
        self.popen = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=self._log, cwd=ROOT, env=env,
                                      preexec_fn=_die_with_parent if die_with_parent else None)
        self.lines: queue.Queue[bytes | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.put(line)
        self.lines.put(None)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def readline(self, deadline: Deadline, cap: float | None = None) -> bytes:
        try:
            line = self.lines.get(timeout=deadline.left(cap))
        except queue.Empty:
            raise BenchError(f"{self.name}: no answer in time ({self.tail()})") from None
        if line is None:
            self.lines.put(None)
            raise BenchError(f"{self.name} exited ({self.popen.poll()}): {self.tail()}")
        return line

    def event(self, name: str, deadline: Deadline, cap: float | None = None) -> dict[str, Any]:
        """The next JSON line whose ``event`` is ``name`` (an ``error`` event raises)."""
        while True:
            line = self.readline(deadline, cap)
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if message.get("event") == "error":
                raise BenchError(f"{self.name}: {message.get('message')}")
            if message.get("event") == name:
                return message

    def send(self, line: str) -> None:
        try:
            assert self.popen.stdin is not None
            self.popen.stdin.write(line.encode() + b"\n")
            self.popen.stdin.flush()
        except (BrokenPipeError, OSError):
            pass

    def tail(self, lines: int = 8) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(text[-lines:])

    def stop(self, sig: int = signal.SIGTERM, wait: float = 10.0) -> None:
        """Ask politely (stdin closed, ``sig``), then kill; never leaves it running."""
        if self.popen.poll() is None:
            try:
                if self.popen.stdin is not None:
                    self.popen.stdin.close()
            except OSError:
                pass
            try:
                self.popen.send_signal(sig)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(wait)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        self._log.close()


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the runner dies (for children that do not
    watch their stdin or parent, such as the Node server)."""
    import ctypes
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
