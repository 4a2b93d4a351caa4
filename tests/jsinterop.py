"""Run the pinned npm ``wyseman`` code (tests/js) from trial tests.

Each script reads one JSON value on stdin and writes JSON lines on stdout; the last
line is its answer. The packages are installed with ``npm ci`` (from the committed
``package-lock.json``) the first time a test needs them in this test run, and only
when ``node_modules`` is missing or older than the lock file; a file lock keeps
parallel trial workers (``-j``) from installing at the same time.

Only a missing ``node`` skips the tests. A missing ``npm`` with nothing installed, or
a failing ``npm ci``, is an error: the interop tests must not pass by not running.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from twisted.internet import defer, protocol
from twisted.trial.unittest import SkipTest

JS_DIR = Path(__file__).resolve().parent / "js"
NODE_MODULES = JS_DIR / "node_modules"
_ready: str | None = None


class NodeScriptError(AssertionError):
    """A script printed no JSON answer."""


def _installed() -> bool:
    hidden_lock = NODE_MODULES / ".package-lock.json"   # written by npm ci/install
    if not (NODE_MODULES / "wyseman" / "package.json").exists() or not hidden_lock.exists():
        return False
    return hidden_lock.stat().st_mtime >= (JS_DIR / "package-lock.json").stat().st_mtime


def node() -> str:
    """Path of ``node`` once the pinned packages are installed (at most one ``npm ci`` per
    test run). Raises SkipTest only when node itself is not installed."""
    global _ready
    if _ready is not None:
        return _ready
    executable = shutil.which("node")
    if executable is None:
        raise SkipTest("node is not installed: JS interop tests skipped")
    with open(JS_DIR / ".npm-install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _installed():
            npm = shutil.which("npm")
            if npm is None:
                raise RuntimeError("node is installed but npm is not: cannot install "
                                   "tests/js/node_modules (run npm ci in tests/js)")
            result = subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=JS_DIR,
                stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600)
            if result.returncode != 0:
                raise RuntimeError(f"npm ci in {JS_DIR} failed ({result.returncode}):\n"
                                   f"{result.stderr[-4000:]}")
    _ready = executable
    return executable


def _answer(script: str, out: bytes, err: bytes, code: int | None) -> Any:
    # split on \n only: JSON.stringify writes U+2028/U+2029 raw, and splitlines() would
    # break a line there
    lines = [line for line in out.decode("utf-8", "replace").split("\n") if line.strip()]
    if not lines:
        raise NodeScriptError(f"{script} printed nothing (exit {code}):\n"
                              f"{err.decode('utf-8', 'replace')[-4000:]}")
    try:
        return json.loads(lines[-1])
    except ValueError:
        raise NodeScriptError(f"{script} printed no JSON (exit {code}): {lines[-1][:2000]}\n"
                              f"{err.decode('utf-8', 'replace')[-4000:]}") from None


def run_script(script: str, payload: Any = None, *, args: Sequence[str] = (),
               env: Mapping[str, str] | None = None, timeout: float = 60) -> tuple[Any, int]:
    """Run ``node tests/js/SCRIPT [ARGS]`` with ``payload`` as JSON on stdin, blocking
    (for SynchronousTestCase) → (its last JSON line, its exit code)."""
    executable = node()
    result = subprocess.run(
        [executable, str(JS_DIR / script), *args], cwd=JS_DIR,
        input=json.dumps(payload).encode("utf-8"), capture_output=True, timeout=timeout,
        env={**os.environ, **(env or {})})
    return _answer(script, result.stdout, result.stderr, result.returncode), result.returncode


class _Collect(protocol.ProcessProtocol):
    def __init__(self, stdin: bytes, done: defer.Deferred) -> None:
        self.stdin = stdin
        self.done = done
        self.out: list[bytes] = []
        self.err: list[bytes] = []

    def connectionMade(self) -> None:
        self.transport.write(self.stdin)
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self.out.append(data)

    def errReceived(self, data: bytes) -> None:
        self.err.append(data)

    def processEnded(self, reason: Any) -> None:
        self.done.callback((b"".join(self.out), b"".join(self.err), reason.value.exitCode))


@defer.inlineCallbacks
def run_node(script: str, payload: Any = None, env: Mapping[str, str] | None = None, *,
             args: Sequence[str] = (), timeout: float = 60) -> Any:
    """Like :func:`run_script` but without blocking the reactor (for tests whose server
    runs in this process) → Deferred of (its last JSON line, its exit code). A script
    still running after ``timeout`` seconds is killed and fails the test."""
    from twisted.internet import reactor

    executable = node()
    done: defer.Deferred = defer.Deferred()
    process = reactor.spawnProcess(
        _Collect(json.dumps(payload).encode("utf-8"), done), executable,
        [executable, str(JS_DIR / script), *args], env={**os.environ, **(env or {})},
        path=str(JS_DIR))
    timed_out = []

    def kill() -> None:
        timed_out.append(True)
        process.signalProcess("KILL")
    timer = reactor.callLater(timeout, kill)
    out, err, code = yield done
    if timer.active():
        timer.cancel()
    if timed_out:
        raise NodeScriptError(f"{script} killed after {timeout} s:\n"
                              f"{err.decode('utf-8', 'replace')[-4000:]}")
    return _answer(script, out, err, code), code


class _NodeServer(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.ready: defer.Deferred = defer.Deferred()
        self.ended: defer.Deferred = defer.Deferred()
        self.output = b""

    def outReceived(self, data: bytes) -> None:  # noqa: N802
        self.output += data
        if b"ready" in self.output and not self.ready.called:
            self.ready.callback(None)

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:  # noqa: N802
        if not self.ready.called:
            self.ready.errback(RuntimeError(f"node server exited: {self.output[-2000:]!r}"))
        self.ended.callback(None)


@defer.inlineCallbacks
def start_node_server(testcase: Any, dsn: str, port: int) -> Any:
    """The Node.js Wyseman server (npm ``wyseman``, pinned; tests/js/node_server.js) on
    plain ws://127.0.0.1:PORT for the database of ``dsn``, whose role is its admin
    connection's; each socket connects to PostgreSQL as its user, in the zone UTC (as
    our sessions run). Fires once it listens; stopped at cleanup."""
    from twisted.internet import reactor

    from wyseman.db import pg

    executable = node()
    params = pg.dsn_params(dsn)
    config = {"port": port, "pg": {"host": params["host"], "port": int(params["port"]),
                                   "database": params["dbname"], "user": params["user"]}}
    process = _NodeServer()
    transport = reactor.spawnProcess(
        process, executable, [executable, str(JS_DIR / "node_server.js"),
                              json.dumps(config)], path=str(JS_DIR),
        env={**os.environ, "TZ": "UTC"})
    testcase.addCleanup(lambda: process.ended if process.ended.called else
                        (transport.signalProcess("TERM"), process.ended)[1])
    yield process.ready


def outcome(d: defer.Deferred) -> defer.Deferred:
    """What a client reads of a reply: ("data", data), or ("error", code)."""
    from wyseman.client.connection import RequestError

    def error(failure: Any) -> tuple:
        failure.trap(RequestError)
        return ("error", failure.value.code)
    return d.addCallbacks(lambda data: ("data", data), error)
