"""The client commands (`wyseman login/query/listen/keygen`) as a user runs them: separate
processes against our server on real PostgreSQL."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from twisted.internet import defer, reactor
from twisted.internet.protocol import ProcessProtocol
from twisted.trial.unittest import TestCase

from tests.harness import add_user, checkout_pythonpath, start_gateway, wyseman_cli
from tests.pgtest import fresh_database
from wyseman.client import keys
from wyseman.client.connection import connect
from wyseman.provision import admin

ROOT = Path(__file__).resolve().parent.parent


class _Lines(ProcessProtocol):
    def __init__(self) -> None:
        self.first_line: defer.Deferred = defer.Deferred()
        self.ended: defer.Deferred = defer.Deferred()
        self.out = b""
        self.err = b""

    def outReceived(self, data: bytes) -> None:  # noqa: N802
        self.out += data
        if b"\n" in self.out and not self.first_line.called:
            self.first_line.callback(self.out.split(b"\n", 1)[0])

    def errReceived(self, data: bytes) -> None:  # noqa: N802
        self.err += data

    def processEnded(self, reason) -> None:  # noqa: N802
        self.ended.callback(reason.value.exitCode)


class ClientCommandTests(TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def test_login_query_listen(self):
        db = fresh_database(self)
        user = add_user(db)
        db.run("create table public.note (id int primary key, body text); "
               "grant all on public.note to wyseman_user; "
               "insert into public.note values (1, 'hello')")
        server = yield start_gateway(self, db)
        workdir = Path(self.mktemp()).resolve()
        workdir.mkdir()
        ticket = admin.issue_ticket(db.dsn, user, host="127.0.0.1", port=server.port)
        ticket_file = workdir / "ticket.json"
        ticket_file.write_text(admin.format_ticket(ticket, "json", admin_user="postgres"))
        key_file = workdir / "me.key.json"
        env = {"WYSEMAN_PASSPHRASE": "correct horse"}

        out, err, code = yield wyseman_cli("login", "--ticket", str(ticket_file),
                                           "--key-out", str(key_file), env=env)
        self.assertEqual(code, 0, err)
        self.assertIn(b"logged in as", out)
        self.assertTrue(keys.is_encrypted(json.loads(key_file.read_text())))
        self.assertEqual(oct(key_file.stat().st_mode & 0o777), "0o600")
        # a second login would replace the key the file holds: not without --force
        kept = key_file.read_bytes()
        ticket = admin.issue_ticket(db.dsn, user, host="127.0.0.1", port=server.port)
        ticket_file.write_text(admin.format_ticket(ticket, "json", admin_user="postgres"))
        out, err, code = yield wyseman_cli("login", "--ticket", str(ticket_file),
                                           "--key-out", str(key_file), env=env)
        self.assertEqual(code, 1)
        self.assertIn(b"exists: logging in replaces the key", err)
        self.assertEqual(key_file.read_bytes(), kept)
        out, err, code = yield wyseman_cli("login", "--ticket", str(ticket_file),
                                           "--key-out", str(key_file), "--force", env=env)
        self.assertEqual(code, 0, err)
        self.assertNotEqual(key_file.read_bytes(), kept)

        out, err, code = yield wyseman_cli(
            "query", "--key", str(key_file),
            '{"action": "select", "view": "public.note", "fields": ["body"]}', env=env)
        self.assertEqual(code, 0, err)
        self.assertEqual(json.loads(out), [{"body": "hello"}])

        out, err, code = yield wyseman_cli(
            "query", "--key", str(key_file), '{"action": "select", "view": "public.none"}',
            env=env)
        self.assertEqual(code, 1)
        self.assertIn(b"42P01", err)

        out, err, code = yield wyseman_cli(
            "query", "--key", str(key_file), '{"action": "select"', env=env)
        self.assertEqual(code, 1)
        self.assertIn(b"not JSON", err)
        self.assertNotIn(b"Traceback", err)

        listener = _Lines()
        reactor.spawnProcess(listener, sys.executable,
                             [sys.executable, "-m", "wyseman", "listen", "--key", str(key_file),
                              "app_news"],
                             env=dict(os.environ, PYTHONPATH=checkout_pythonpath(), **env),
                             path=str(ROOT))
        self.addCleanup(lambda: listener.ended if listener.ended.called else
                        (listener.transport.signalProcess("TERM"), listener.ended)[1])
        subscribed = defer.Deferred()
        original = server.gateway.register

        def registered(protocol):
            listening = original(protocol)
            if "app_news" in protocol.session.listen and not subscribed.called:
                listening.chainDeferred(subscribed)
            return listening
        server.gateway.register = registered
        yield subscribed
        db.run("""notify app_news, '{"n": 1}'""")
        line = yield listener.first_line
        self.assertEqual(json.loads(line), {"channel": "app_news", "data": {"n": 1}})
        # Ctrl-C: one line and status 130, no traceback
        listener.transport.signalProcess("INT")
        code = yield listener.ended
        self.assertEqual(code, 130)
        self.assertIn(b"wyseman: interrupted", listener.err)
        self.assertNotIn(b"Traceback", listener.err)

        # a refused login says why, as the server put it
        db.run("update base.ent set conn_pub = null where username = %s", (user,))
        out, err, code = yield wyseman_cli(
            "query", "--key", str(key_file), '{"action": "tuple", "view": "x"}', env=env)
        self.assertEqual(code, 1)
        self.assertIn(b"the server refused: 403 Invalid Login", err)
        self.assertEqual(err.count(b"\n"), 1, err)

    @defer.inlineCallbacks
    def test_keygen_and_bad_passphrase(self):
        workdir = Path(self.mktemp()).resolve()
        workdir.mkdir()
        key_file = workdir / "k.json"
        out, err, code = yield wyseman_cli("keygen", "--user", "bob", "-o", str(key_file))
        self.assertEqual(code, 0, err)
        site = keys.load_key_file(key_file)[0]
        self.assertEqual((site.user, site.key["crv"]), ("bob", "P-521"))
        keys.save_key_file(key_file, [site], "one")
        out, err, code = yield wyseman_cli("query", "--key", str(key_file), "{}",
                                           env={"WYSEMAN_PASSPHRASE": "two"})
        self.assertEqual(code, 1)
        self.assertIn(b"wrong passphrase", err)


class ReconnectingSessionTests(TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def test_reconnects_after_server_restart(self):
        from wyseman.client.connection import ConnectionClosed
        from wyseman.client.session import ReconnectingSession
        db = fresh_database(self)
        user = add_user(db)
        first = yield start_gateway(self, db)
        port = first.port
        private = keys.generate_private_jwk()
        token = admin.issue_ticket(db.dsn, user).token
        conn = yield connect(first.url, user, token=token, new_key=private)
        yield conn.close()

        session = ReconnectingSession(first.url, user, private, listen=["app_s"],
                                      clientinfo_url=first.clientinfo_url)
        self.addCleanup(session.stop)
        notes = []
        session.on_notify("app_s", notes.append)
        session.start()
        row = yield session.request({"action": "tuple", "view": "base.curr_eid()"})
        self.assertTrue(row["curr_eid"])
        self.assertEqual(session.connects, 1)

        pending = session.connection.request({"action": "tuple", "view": "base.curr_eid()"})
        retried = []

        def send_again(failure):
            # made while the lost connection's close is still being handled: it waits
            # for the next connection instead of failing at once
            retried.append(session.request({"action": "tuple", "view": "base.curr_eid()"}))
            return failure
        pending.addErrback(send_again)
        yield first.stopService()              # the server goes away...
        with self.assertRaises(ConnectionClosed):
            yield pending                      # ...the request in flight fails cleanly
        self.assertEqual(len(retried), 1)
        self.assertFalse(retried[0].called)
        second = yield start_gateway(self, db, server={
            "listen": f"tcp:{port}:interface=127.0.0.1"})
        row = yield retried[0]
        self.assertTrue(row["curr_eid"])
        row = yield session.request({"action": "tuple", "view": "base.curr_eid()"})
        self.assertTrue(row["curr_eid"])
        self.assertEqual(session.connects, 2)
        arrived = defer.Deferred()
        session.on_notify("app_s", arrived.callback)
        db.run("""notify app_s, '"again"'""")
        self.assertEqual((yield arrived), "again")
        self.assertIn("app_s", second.gateway.db.listener.channels)
