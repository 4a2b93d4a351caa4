"""docs/tutorial.md, run as a reader runs it: its files written, every command of its
``sh`` blocks run in order in an empty directory (a line ending in `` &`` in the
background), checked for what the text says they print."""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest, TestCase

from tests.browser import ConsoleRun
from tests.harness import ProcessOutput, user_environment

ROOT = Path(__file__).resolve().parent.parent
TUTORIAL = ROOT / "docs" / "tutorial.md"

_BLOCK = re.compile(r"(?:File `(?P<name>[^`]+)`:\n\n)?```(?P<lang>\w+)\n(?P<body>.*?)```",
                    re.S)


def steps(text: str) -> list[tuple[str, str]]:
    """The tutorial as ("file", name, body) and ("run", command) steps, in order."""
    out: list = []
    for match in _BLOCK.finditer(text):
        if match["name"]:
            out.append(("file", match["name"], match["body"]))
        elif match["lang"] == "sh":
            out.extend(("run", line.strip()) for line in match["body"].splitlines()
                       if line.strip())
    return out


#: what a background command prints once it is ready
READY = {"twistd": "listening on tcp:4100", "wyseman": "listening on todo"}


class TutorialTests(TestCase):
    timeout = 300

    @defer.inlineCallbacks
    def test_every_command_runs(self):
        home = Path(self.mktemp()).resolve()
        home.mkdir(parents=True)
        env = user_environment()
        background: list[tuple[str, ProcessOutput, object]] = []
        browser: ConsoleRun | str = "the tutorial has no web ticket step"
        outputs: dict[str, str] = {}

        def stop_all():
            stops = []
            for _, process, transport in reversed(background):
                if not process.ended.called:
                    transport.signalProcess("INT")
                    stops.append(process.ended)
            return defer.gatherResults(stops)
        self.addCleanup(stop_all)
        for step in steps(TUTORIAL.read_text()):
            if step[0] == "file":
                (home / step[1]).write_text(step[2])
                continue
            command = step[1]
            args = shlex.split(command.removesuffix("&").strip())
            executable = os.path.join(os.path.dirname(sys.executable), args[0])
            if not os.path.exists(executable):
                executable = args[0]
            if command.endswith("&"):
                process = ProcessOutput()
                transport = reactor.spawnProcess(process, executable, [executable, *args[1:]],
                                                 env=env, path=str(home))
                background.append((command, process, transport))
                yield process.wait_for(READY[args[0]])
                continue
            out, err, code = yield getProcessOutputAndValue(executable, args[1:], env=env,
                                                            path=str(home))
            self.assertEqual(code, 0, f"{command}:\n{out.decode()}{err.decode()}")
            outputs[command] = out.decode()
            if "alice.web-ticket.json" in command:
                # step 5, in the browser: what the text says to do, up to the point where
                # the console waits for the notification of the command that follows
                browser = yield self.start_browser(home)
        # what the text says the commands print
        ticket = json.loads((home / "alice.ticket.json").read_text())["ticket"]
        self.assertEqual((ticket["host"], ticket["port"]), ("localhost", 4100))
        printed = list(outputs.values())
        self.assertIn({"id": 1, "title": "Water the plants", "done": False},
                      [json.loads(o) for o in printed if o.startswith("{\n  \"id\"")])
        self.assertIn('"title": "To do"', "".join(printed))
        _, listener, _ = next(b for b in background if b[0].startswith("wyseman listen"))
        yield listener.wait_for('{"channel": "todo", "data": {"oper": "UPDATE", "id": 1, '
                                '"owner": "alice"}}')
        client = next(o for c, o in outputs.items() if c.startswith("python"))
        self.assertIn("heard: {'oper': 'INSERT', 'id': 2, 'owner': 'alice'}", client)
        self.assertIn("[x] Water the plants\n[ ] Call the plumber", client)
        if isinstance(browser, ConsoleRun):
            result = yield browser.finished
            self.assertEqual(result["ticketLogin"], "logged in as alice (ticket)")
            self.assertEqual(result["keyLogin"], "logged in as alice (key)")
            (reply,) = result["replies"]
            self.assertEqual(reply["data"], [{"title": "Water the plants", "done": True},
                                             {"title": "Call the plumber", "done": False}])
            self.assertEqual(result["notification"],
                             'notify todo: {"oper":"UPDATE","id":2,"owner":"alice"}')
        # step 6: the server stops, then its PostgreSQL
        yield stop_all()
        from wyseman.provision.cluster import LocalCluster
        self.assertFalse(LocalCluster(home / "pgdata").is_running())
        if not isinstance(browser, ConsoleRun):
            raise SkipTest(f"every command ran, but not the browser step: {browser}")

    @defer.inlineCallbacks
    def start_browser(self, home: Path) -> Any:
        """The console driven as step 5 says, logged in by key and listening (a
        ConsoleRun), or why the browser cannot run here (a str)."""
        section = TUTORIAL.read_text().split("## 5.", 1)[1].split("\n## ", 1)[0]
        request = json.loads(re.search(r"```json\n(.*?)```", section, re.S)[1])
        try:
            run = ConsoleRun(self, "http://127.0.0.1:4100/console/",
                             (home / "alice.web-ticket.json").read_text(), ["todo"],
                             before=[], after=[{"id": 1, **request}])
        except SkipTest as why:
            return str(why)
        yield run.listening
        return run
