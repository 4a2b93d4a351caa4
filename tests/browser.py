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


@defer.inlineCallbacks
def drive_console(testcase: TestCase, url: str, ticket: str, channels: list[str],
                  before: list[dict[str, Any]], after: list[dict[str, Any]],
                  notify: Any) -> Any:
    """Run tests/js/console_test.js; ``notify()`` is called once the page listens by key.
    → its result."""
    browser = chromium()
    executable = node()
    config = {"url": url, "ticket": ticket, "channels": channels, "before": before,
              "after": after, "chromium": browser, "timeout": 30000}
    output = ProcessOutput()
    process = reactor.spawnProcess(
        output, executable, [executable, str(JS_DIR / "console_test.js"), json.dumps(config)],
        env=dict(os.environ), path=str(JS_DIR))
    killer = reactor.callLater(RUN_TIMEOUT, process.signalProcess, "KILL")
    testcase.addCleanup(lambda: killer.active() and killer.cancel())
    yield output.wait_for('{"step":"listening"}')
    notify()
    code = yield output.ended
    lines = [line for line in output.out.decode("utf-8", "replace").split("\n")
             if line.startswith("{")]
    result = json.loads(lines[-1])
    testcase.assertEqual(code, 0, result)
    return result
