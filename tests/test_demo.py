"""``wyseman demo`` as a new user runs it: in an empty directory, then every command it
prints, as printed, from that directory."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

from twisted.internet import defer, reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from tests.browser import ConsoleRun
from tests.harness import ProcessOutput, user_environment

ROOT = Path(__file__).resolve().parent.parent


class DemoTests(TestCase):
    timeout = 240

    @defer.inlineCallbacks
    def test_the_printed_commands_work(self):
        home = Path(self.mktemp()).resolve()
        home.mkdir(parents=True)
        env = user_environment()
        demo = ProcessOutput()
        transport = reactor.spawnProcess(demo, sys.executable,
                                         [sys.executable, "-m", "wyseman", "demo"],
                                         env=env, path=str(home))
        self.addCleanup(lambda: demo.ended if demo.ended.called else
                        (transport.signalProcess("KILL"), demo.ended)[1])
        printed = (yield demo.wait_for("See docs/tutorial.md")).decode()
        commands = [line.strip().split("      (")[0] for line in printed.splitlines()
                    if line.startswith("  wyseman ")]
        self.assertEqual(len(commands), 7, printed)
        login, select, listen, insert, ticket, psql, notify = commands
        ticket_file = home / "demo" / "ticket.json"
        self.assertEqual(oct(ticket_file.stat().st_mode & 0o777), "0o600")

        @defer.inlineCallbacks
        def run(command: str) -> defer.Deferred:
            args = shlex.split(command)
            out, err, code = yield getProcessOutputAndValue(
                sys.executable, ["-m", "wyseman", *args[1:]], env=env, path=str(home))
            self.assertEqual(code, 0, f"{command}: {err.decode()}")
            return out.decode()

        self.assertIn("logged in as demo", (yield run(login)))
        self.assertEqual(json.loads((yield run(select))),
                         [{"id": 1, "title": "Welcome", "done": False}])
        listener = ProcessOutput()
        args = shlex.split(listen)
        listening = reactor.spawnProcess(listener, sys.executable,
                                         [sys.executable, "-m", "wyseman", *args[1:]],
                                         env=env, path=str(home))
        yield listener.wait_for("listening on demo")
        row = json.loads((yield run(insert)))
        self.assertEqual(row["title"], "Buy milk")
        heard = (yield listener.wait_for("Buy milk")).decode()
        self.assertIn('{"channel": "demo", "data": {"oper": "INSERT", "id": 2, '
                      '"title": "Buy milk"}}', heard)
        yield run(notify)
        yield listener.wait_for('"hello": "world"')
        listening.signalProcess("INT")
        self.assertEqual((yield listener.ended), 130)
        self.assertEqual(json.loads((yield run(ticket)))["ticket"]["port"], 54320)
        self.assertIn("2", (yield run(psql + " -- -At -c 'select count(*) from demo.note'")))
        # Ctrl-C stops the server and its PostgreSQL
        transport.signalProcess("INT")
        self.assertEqual((yield demo.ended), 0)
        from wyseman.provision.cluster import LocalCluster
        self.assertFalse(LocalCluster(home / "demo" / "pgdata").is_running())

    @defer.inlineCallbacks
    def test_a_busy_port_is_one_line_and_status_1(self):
        from twisted.internet.protocol import Factory, Protocol
        busy = reactor.listenTCP(54320, Factory.forProtocol(Protocol), interface="127.0.0.1")
        self.addCleanup(busy.stopListening)
        home = Path(self.mktemp()).resolve()
        home.mkdir(parents=True)
        out, err, code = yield getProcessOutputAndValue(
            sys.executable, ["-m", "wyseman", "demo"], env=user_environment(), path=str(home))
        self.assertEqual(code, 1, out + err)
        self.assertEqual(err.decode().splitlines(), [
            "wyseman demo: error: cannot listen on 127.0.0.1:54320: Address already in use "
            "([server] listen)"])
        self.assertNotIn(b"Traceback", out + err)
        from wyseman.provision.cluster import LocalCluster
        self.assertFalse(LocalCluster(home / "demo" / "pgdata").is_running())

    @defer.inlineCallbacks
    def test_tls_mode_with_a_local_ca(self):
        home = Path(self.mktemp()).resolve()
        home.mkdir(parents=True)
        env = user_environment()
        demo = ProcessOutput()
        transport = reactor.spawnProcess(demo, sys.executable,
                                         [sys.executable, "-m", "wyseman", "demo", "--tls"],
                                         env=env, path=str(home))
        self.addCleanup(lambda: demo.ended if demo.ended.called else
                        (transport.signalProcess("KILL"), demo.ended)[1])
        printed = (yield demo.wait_for("See docs/tutorial.md")).decode()
        self.assertIn("serving wss://127.0.0.1:54320 (https /clientinfo", printed)
        self.assertIn("Import demo/tls/ca.pem", printed)
        self.assertEqual(oct((home / "demo" / "tls" / "key.pem").stat().st_mode & 0o777),
                         "0o600")
        commands = [line.strip().split("      (")[0] for line in printed.splitlines()
                    if line.startswith("  wyseman ")]
        login, select, _, _, ticket, _, _ = commands
        self.assertIn("--tls --ca demo/tls/ca.pem", login)
        for command in (login, select, ticket):      # (select signs: https /clientinfo)
            out, err, code = yield getProcessOutputAndValue(
                sys.executable, ["-m", "wyseman", *shlex.split(command)[1:]], env=env,
                path=str(home))
            self.assertEqual(code, 0, f"{command}: {err.decode()}")
        self.assertEqual(json.loads(out)["ticket"]["port"], 54320)
        transport.signalProcess("INT")
        self.assertEqual((yield demo.ended), 0)

    @defer.inlineCallbacks
    def test_the_printed_console_link_logs_a_browser_in(self):
        home = Path(self.mktemp()).resolve()
        home.mkdir(parents=True)
        env = user_environment()
        demo = ProcessOutput()
        transport = reactor.spawnProcess(demo, sys.executable,
                                         [sys.executable, "-m", "wyseman", "demo"],
                                         env=env, path=str(home))
        self.addCleanup(lambda: demo.ended if demo.ended.called else
                        (transport.signalProcess("KILL"), demo.ended)[1])
        printed = (yield demo.wait_for("See docs/tutorial.md")).decode()
        lines = printed.splitlines()
        link = lines[next(i for i, line in enumerate(lines)
                          if line.startswith("Web console")) + 1].strip()
        self.assertTrue(link.startswith("http://127.0.0.1:54320/console/?token="), link)
        select = {"id": 3, "action": "select", "view": "demo.note_v", "fields": ["title"],
                  "limit": 1}
        run = ConsoleRun(self, link, None, None, before=[select], after=[])
        yield run.listening
        out, err, code = yield getProcessOutputAndValue(
            sys.executable, ["-m", "wyseman", "notify", "demo", '{"hello": "console"}'],
            env=env, path=str(home))
        self.assertEqual(code, 0, err.decode())
        result = yield run.finished
        self.assertEqual(result["ticketLogin"], "logged in as demo (ticket)")
        self.assertEqual(result["keyLogin"], "logged in as demo (key)")
        (rows,) = result["replies"]
        self.assertEqual(len(rows["data"]), 1)
        self.assertEqual(result["notification"], 'notify demo: {"hello":"console"}')
        transport.signalProcess("INT")
        self.assertEqual((yield demo.ended), 0)
