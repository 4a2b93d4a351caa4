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


class ConsoleRun:
    """tests/js/console_test.js under way: :attr:`listening` fires once the page is
    logged in by key and waits for a notification, :attr:`finished` with the script's
    result (its exit status checked)."""

    def __init__(self, testcase: TestCase, url: str, ticket: str | None,
                 channels: list[str] | None, before: list[dict[str, Any]],
                 after: list[dict[str, Any]]) -> None:
        """``ticket``, ``channels``: pasted into the form (None: left as the page filled
        them from its link)."""
        browser = chromium()
        executable = node()
        config = {"url": url, "ticket": ticket, "channels": channels, "before": before,
                  "after": after, "chromium": browser, "timeout": 30000}
        output = ProcessOutput()
        process = reactor.spawnProcess(
            output, executable,
            [executable, str(JS_DIR / "console_test.js"), json.dumps(config)],
            env=dict(os.environ), path=str(JS_DIR))
        killer = reactor.callLater(RUN_TIMEOUT, process.signalProcess, "KILL")
        testcase.addCleanup(lambda: killer.active() and killer.cancel())
        testcase.addCleanup(lambda: output.ended)     # (never left running)
        self.listening = output.wait_for('{"step":"listening"}')

        def result(code: int) -> Any:
            lines = [line for line in output.out.decode("utf-8", "replace").split("\n")
                     if line.startswith("{")]
            outcome = json.loads(lines[-1]) if lines else {"output": output.out.decode()}
            testcase.assertEqual(code, 0, outcome)
            return outcome
        self.finished = output.ended.addCallback(result)


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
