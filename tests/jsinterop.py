"""Run the pinned npm `wyseman` client code (tests/js) from trial tests, without blocking."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest

JS_DIR = Path(__file__).resolve().parent / "js"
_installed = False


def node() -> str:
    """Path of node, with the pinned packages installed; SkipTest only if node is absent."""
    global _installed
    executable = shutil.which("node")
    if executable is None:
        raise SkipTest("node is not installed: JS interoperability tests skipped")
    if not _installed:
        if not (JS_DIR / "node_modules" / "wyseman").exists():
            npm = shutil.which("npm")
            if npm is None:
                raise SkipTest("npm is not installed: JS interoperability tests skipped")
            subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                           cwd=JS_DIR, check=True, timeout=600)
        _installed = True
    return executable


@defer.inlineCallbacks
def run_node(script: str, payload: Any, env: dict[str, str] | None = None) -> Any:
    """Run ``node tests/js/SCRIPT '<payload as JSON>'`` → (its JSON output line, exit code)."""
    executable = node()
    environment = dict(os.environ, **(env or {}))
    out, err, code = yield getProcessOutputAndValue(
        executable, (str(JS_DIR / script), json.dumps(payload)), env=environment,
        path=str(JS_DIR))
    lines = [line for line in out.decode().splitlines() if line.strip()]
    if not lines:
        raise AssertionError(f"{script} printed nothing (exit {code}): {err.decode()[-2000:]}")
    return json.loads(lines[-1]), code
