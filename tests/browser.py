"""Helpers of the real-browser tests: Debian's chromium, driven by playwright-core from
tests/js (nothing downloads a browser)."""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial.unittest import SkipTest, TestCase

from tests.harness import ProcessOutput
from tests.jsinterop import JS_DIR, node

#: seconds a browser run may take in all (a cold chromium start is a few seconds)
RUN_TIMEOUT = 90

CHROMIUM = os.environ.get("WYSEMAN_CHROMIUM", "/usr/bin/chromium")


def chromium() -> str:
    path = shutil.which(CHROMIUM)
    if path is None:
        raise SkipTest(f"{CHROMIUM} is not installed: the real-browser test is skipped "
                       "(as root on Debian: apt-get install --no-install-recommends "
                       "chromium; or set WYSEMAN_CHROMIUM)")
    return path


class DriverRun:
    """A browser driver of tests/js (``script``, given ``config`` as its argument) under
    way: :attr:`ended` fires
    with ``(exit status, its last JSON line)`` (the output's tail in ``output`` when it
    printed none). Killed after ``timeout`` seconds; never left running."""

    def __init__(self, testcase: TestCase, script: str, config: dict[str, Any],
                 timeout: float = RUN_TIMEOUT) -> None:
        executable = node()
        output = ProcessOutput()
        process = reactor.spawnProcess(
            output, executable, [executable, str(JS_DIR / script), json.dumps(config)],
            env=dict(os.environ), path=str(JS_DIR))
        killer = reactor.callLater(timeout, process.signalProcess, "KILL")
        testcase.addCleanup(lambda: killer.active() and killer.cancel())
        testcase.addCleanup(lambda: output.ended)
        self.output = output

        def result(code: int) -> tuple[int, dict[str, Any]]:
            text = output.out.decode("utf-8", "replace")
            lines = [line for line in text.split("\n") if line.startswith("{")]
            return code, json.loads(lines[-1]) if lines else {"output": text[-3000:]}
        self.ended = output.ended.addCallback(result)

    @property
    def listening(self) -> defer.Deferred:
        """Fires once the driver says it listens (fails if it ends before)."""
        return self.output.wait_for('{"step":"listening"}')


class ConsoleRun:
    """tests/js/console_test.js under way: :attr:`listening` fires once the page is
    logged in by key and waits for a notification, :attr:`finished` with the script's
    result (its exit status checked)."""

    def __init__(self, testcase: TestCase, url: str, ticket: str | None,
                 channels: list[str] | None, before: list[dict[str, Any]],
                 after: list[dict[str, Any]]) -> None:
        """``ticket``, ``channels``: pasted into the form (None: left as the page filled
        them from its link)."""
        config = {"url": url, "ticket": ticket, "channels": channels, "before": before,
                  "after": after, "chromium": chromium(), "timeout": 30000}
        run = DriverRun(testcase, "console_test.js", config)
        self.listening = run.listening

        def checked(ended: tuple[int, dict[str, Any]]) -> Any:
            code, outcome = ended
            testcase.assertEqual(code, 0, outcome)
            return outcome
        self.finished = run.ended.addCallback(checked)


@defer.inlineCallbacks
def drive_console(testcase: TestCase, url: str, ticket: str, channels: list[str],
                  before: list[dict[str, Any]], after: list[dict[str, Any]],
                  notify: Any) -> Any:
    """Run tests/js/console_test.js; ``notify()`` is called once the page listens by key.
    → its result."""
    run = ConsoleRun(testcase, url, ticket, channels, before, after)
    yield run.listening
    notify()
    result = yield run.finished
    return result
