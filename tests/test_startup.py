"""A server that cannot start exits with status 1 and one line naming the cause and the
setting, under the documented ``twistd -n wyseman`` command."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from twisted.internet import defer, reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from tests.harness import checkout_pythonpath
from tests.pgtest import fresh_database

ROOT = Path(__file__).resolve().parent.parent
TWISTD = ("import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; "
          "run()")


class FailedStartTests(TestCase):
    timeout = 120

    def setUp(self):
        self.dir = Path(self.mktemp()).resolve()
        self.dir.mkdir(parents=True)

    @defer.inlineCallbacks
    def start(self, text: str):
        """Run the server on config ``text`` from another directory → (status, stderr,
        stdout) once it has ended."""
        config = self.dir / "wyseman.toml"
        config.write_text(text)
        out, err, status = yield getProcessOutputAndValue(
            sys.executable, ("-c", TWISTD, "-n", "--pidfile=", "wyseman", "--config",
                             str(config)),
            env=dict(os.environ, PYTHONPATH=checkout_pythonpath()), path=str(self.dir))
        return status, err.decode(), out.decode()

    def assert_one_line(self, status: int, err: str, out: str, expected: str) -> None:
        self.assertEqual(status, 1, out + err)
        self.assertEqual(err.count("\n"), 1, err)
        self.assertTrue(err.startswith("wyseman: error: "), err)
        self.assertIn(expected, err)
        self.assertNotIn("Traceback", out + err)

    @defer.inlineCallbacks
    def test_database_unreachable(self):
        status, err, out = yield self.start(
            '[server]\nlisten = "tcp:0:interface=127.0.0.1"\nclientinfo_listen = []\n'
            '[database]\ndsn = "host=/nonexistent dbname=x"\nconnect_timeout = 2\n')
        self.assert_one_line(status, err, out, "cannot connect to the database "
                             "(host=/nonexistent dbname=x): ")
        self.assertIn("([database] dsn)", err)
        from wyseman import __version__
        self.assertIn(f"wyseman {__version__} starting: config {self.dir / 'wyseman.toml'}; "
                      "database host=/nonexistent dbname=x; channels none", out)

    @defer.inlineCallbacks
    def test_port_in_use(self):
        db = fresh_database(self)
        busy = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
        self.addCleanup(busy.stopListening)
        port = busy.getHost().port
        status, err, out = yield self.start(
            f'[server]\nlisten = "tcp:{port}:interface=127.0.0.1"\nclientinfo_listen = []\n'
            f'[database]\ndsn = "{db.dsn}"\n')
        self.assert_one_line(status, err, out, f"cannot listen on 127.0.0.1:{port}: "
                             "Address already in use ([server] listen)")

    @defer.inlineCallbacks
    def test_certificate_missing(self):
        status, err, out = yield self.start(
            '[server]\nlisten = "tls:0:interface=127.0.0.1"\nclientinfo_listen = []\n'
            '[tls]\ncert = "missing.pem"\nkey = "missing.key"\n'
            '[database]\ndsn = "dbname=x"\n')
        self.assert_one_line(status, err, out, "[tls]")
        self.assertIn("missing.pem", err)

    @defer.inlineCallbacks
    def test_certificate_not_matching_its_key(self):
        from tests.tlsutil import TestCA
        ca = TestCA.create()
        cert, _, _ = ca.issue(self.dir, "one")
        _, other_key, _ = ca.issue(self.dir, "two")
        status, err, out = yield self.start(
            '[server]\nlisten = "tls:0:interface=127.0.0.1"\nclientinfo_listen = []\n'
            f'[tls]\ncert = "{cert}"\nkey = "{other_key}"\n[database]\ndsn = "dbname=x"\n')
        self.assert_one_line(status, err, out, "private key does not match the certificate")

    @defer.inlineCallbacks
    def test_handler_not_importable(self):
        status, err, out = yield self.start(
            '[actions.handlers]\n"app.v:export" = "no_such_module:handler"\n'
            '[database]\ndsn = "dbname=x"\n')
        self.assert_one_line(status, err, out, "[actions] handlers: cannot load "
                             "'no_such_module:handler'")

    @defer.inlineCallbacks
    def test_config_missing(self):
        out, err, status = yield getProcessOutputAndValue(
            sys.executable, ("-c", TWISTD, "-n", "--pidfile=", "wyseman", "--config",
                             str(self.dir / "none.toml")),
            env=dict(os.environ, PYTHONPATH=checkout_pythonpath()), path=str(self.dir))
        self.assert_one_line(status, err.decode(), out.decode(), "none.toml: cannot read")
