"""The package as a user installs it: a fresh venv, an editable and a regular install,
the documented server command run from another directory.

twistd finds its plugins on ``sys.path`` (``twisted/plugins/*.py``): an install that
does not put ``twisted/plugins/wyseman_plugin.py`` there answers ``Unknown command:
wyseman``, which a suite run from the checkout root (on ``sys.path`` itself) never sees.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from twisted.internet import defer, reactor, threads
from twisted.trial.unittest import SkipTest, TestCase

from tests.harness import ProcessOutput
from tests.pgtest import fresh_database

ROOT = Path(__file__).resolve().parent.parent


def make_venv(where: Path, editable: bool) -> Path:
    """A new venv at ``where`` with wyseman installed (``pip install [-e] ROOT``) → its
    bin directory. Blocks: run it in a thread."""
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True)
    pip = [str(where / "bin" / "python"), "-m", "pip", "install", "-q",
           "--disable-pip-version-check"]
    target = ["-e", str(ROOT)] if editable else [str(ROOT)]
    done = subprocess.run(pip + target, capture_output=True, text=True)
    if done.returncode:
        raise AssertionError(f"pip install failed: {done.stderr[-2000:]}")
    return where / "bin"


class InstallTests(TestCase):
    timeout = 600

    def setUp(self):
        if os.environ.get("WYSEMAN_SKIP_INSTALL_TESTS"):
            raise SkipTest("WYSEMAN_SKIP_INSTALL_TESTS is set")
        self.db = fresh_database(self)

    @defer.inlineCallbacks
    def run_documented_command(self, editable: bool):
        home = Path(self.mktemp()).resolve()
        home.mkdir(parents=True)
        bin_dir = yield threads.deferToThread(make_venv, home / "venv", editable)
        elsewhere = home / "run"
        elsewhere.mkdir()
        config = elsewhere / "wyseman.toml"
        config.write_text(f'[server]\nlisten = "tcp:0:interface=127.0.0.1"\n'
                          f'clientinfo_listen = []\n[database]\ndsn = "{self.db.dsn}"\n')
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        # the SQL the package carries (the bootstrap schema, the demo's application)
        check = subprocess.run(
            [str(bin_dir / "python"), "-c",
             "from importlib import resources; from wyseman.provision import bootstrap; "
             "assert 'create table' in bootstrap.schema_sql(); "
             "assert (resources.files('wyseman.provision') / 'demo_app.sql').is_file()"],
            cwd=elsewhere, env=env, capture_output=True, text=True)
        self.assertEqual(check.returncode, 0, check.stderr)
        server = ProcessOutput()
        # the command of docs/running.md, from a directory that is not the checkout
        process = reactor.spawnProcess(
            server, str(bin_dir / "twistd"),
            [str(bin_dir / "twistd"), "-n", "--pidfile=", "wyseman", "--config",
             str(config)], env=env, path=str(elsewhere))
        yield server.wait_for("listening on")
        process.signalProcess("TERM")
        ended = yield server.ended
        self.assertNotIn(b"Unknown command", server.out)
        self.assertIn(b"Server Shut Down", server.out)
        # twistd ends a clean SIGTERM stop by the signal itself (as systemd expects)
        self.assertIn(ended, (-15, 0))

    def test_editable_install(self):
        return self.run_documented_command(editable=True)

    def test_regular_install(self):
        return self.run_documented_command(editable=False)
