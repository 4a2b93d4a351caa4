"""The service tree: the twistd plugin, makeService, and the embedded PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from twisted.application.service import IServiceMaker
from twisted.internet import defer, threads
from twisted.plugin import getPlugins
from twisted.trial.unittest import TestCase

from tests.pgtest import run_sync
from wyseman import config as cfg
from wyseman.application.service import makeService
from wyseman.client import keys
from wyseman.client.connection import connect
from wyseman.provision import admin
from wyseman.provision.embedded import EmbeddedPostgresService

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def wyseman_plugin() -> IServiceMaker:
    import twisted.plugins
    for plugin in getPlugins(IServiceMaker, twisted.plugins):
        if plugin.tapname == "wyseman":
            return plugin
    raise AssertionError("the wyseman twistd plugin is not found")


class PluginTests(TestCase):
    def test_embedded_example_builds_the_tree(self):
        plugin = wyseman_plugin()
        options = plugin.options()
        options.parseOptions(["--config", str(EXAMPLES / "embedded.toml")])
        top = plugin.makeService(options)
        names = [service.name for service in top]
        self.assertEqual(names, ["embedded-postgres", "gateway", "stop-on-hangup"])

    def test_production_example_checks_certificates(self):
        plugin = wyseman_plugin()
        options = plugin.options()
        options.parseOptions(["--config", str(EXAMPLES / "production.toml")])
        with self.assertRaises(SystemExit) as ctx:     # one line, status 1
            plugin.makeService(options)
        self.assertTrue(str(ctx.exception).startswith("wyseman: error: "))
        self.assertIn("/etc/wyseman/tls/fullchain.pem", str(ctx.exception))

    def test_bad_config_is_one_line_and_status_1(self):
        path = Path(self.mktemp())
        path.write_text("[server]\nlisten = 5\n")
        options = wyseman_plugin().options()
        with self.assertRaises(SystemExit) as ctx:
            options.parseOptions(["--config", str(path)])
        self.assertIn("[server] listen", str(ctx.exception))


ROOT = Path(__file__).resolve().parent.parent


class EmbeddedTests(TestCase):
    timeout = 180

    @defer.inlineCallbacks
    def test_start_stop_restart_keeps_data(self):
        data_dir = Path(self.mktemp()).resolve() / "pgdata"
        first = EmbeddedPostgresService(data_dir, "appdb")
        yield first.startService()
        dsn = yield first.ready
        yield threads.deferToThread(run_sync, dsn, "create table kept (x int); "
                                                   "insert into kept values (42)")
        yield first.stopService()
        self.assertFalse(first.cluster.is_running())

        second = EmbeddedPostgresService(data_dir, "appdb")
        yield second.startService()
        self.addCleanup(second.cluster.remove)
        dsn = yield second.ready
        rows = yield threads.deferToThread(run_sync, dsn, "select x from kept")
        self.assertEqual(rows, [(42,)])
        yield second.stopService()
        self.assertFalse(second.cluster.is_running())

    def test_as_root_every_change_to_the_machine_is_logged(self):
        import os

        from twisted.logger import capturedLogs, formatEvent
        from twisted.trial.unittest import SkipTest

        from wyseman.provision.cluster import LocalCluster
        if os.geteuid() != 0:
            raise SkipTest("only root changes owners and modes")
        private = Path(self.mktemp()).resolve() / "private"
        private.mkdir(parents=True)
        private.chmod(0o700)            # the cluster's user could not go through it
        with capturedLogs() as events:
            cluster = LocalCluster(private / "pgdata")
            self.addCleanup(cluster.remove)
            cluster.init()
        said = [formatEvent(e) for e in events]
        self.assertIn(f"running as root: added the execute bit for others to {private} so "
                      "that the embedded PostgreSQL's user can reach its data directory", said)
        self.assertIn(f"running as root: {private / 'pgdata'} now belongs to 'wyseman-pg'",
                      said)

    @defer.inlineCallbacks
    def test_a_cluster_left_running_is_taken_over_and_stopped(self):
        from twisted.logger import capturedLogs, formatEvent

        from wyseman.application.cli import main
        from wyseman.provision.cluster import LocalCluster
        root = Path(self.mktemp()).resolve()
        root.mkdir(parents=True)
        config_file = root / "wyseman.toml"
        config_file.write_text('[database]\nembedded = "pgdata"\n')
        data_dir = root / "pgdata"
        cluster = LocalCluster(data_dir)
        self.addCleanup(cluster.remove)
        # a command starts the cluster it needs, and stops it again
        def db_init() -> tuple[int, str]:
            import contextlib
            import io
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                return main(["db", "init", "--config", str(config_file)]), out.getvalue()
        status, out = yield threads.deferToThread(db_init)
        self.assertEqual(status, 0)
        self.assertIn("created", out)
        self.assertTrue(cluster.initialized)
        self.assertFalse(cluster.is_running())
        # one left running (a server killed, say) is the next server's to stop
        yield threads.deferToThread(cluster.start)
        pid = cluster.postmaster_pid()
        service = EmbeddedPostgresService(data_dir, "wyseman")
        with capturedLogs() as events:
            yield service.startService()
            yield service.ready
        self.assertIn(f"PostgreSQL was already running in {data_dir} (pid {pid}), left "
                      "over by an earlier run: using it; it stops with this server",
                      [formatEvent(e) for e in events])
        yield service.stopService()
        self.assertFalse(cluster.is_running())

    @defer.inlineCallbacks
    def test_a_closed_terminal_stops_the_server_and_its_cluster(self):
        import os
        import pty
        import sys

        from twisted.internet import reactor

        from wyseman.provision.cluster import LocalCluster
        root = Path(self.mktemp()).resolve()
        root.mkdir(parents=True)
        config_file = root / "wyseman.toml"
        config_file.write_text('[server]\nlisten = "tcp:0:interface=127.0.0.1"\n'
                               'clientinfo_listen = []\n'
                               '[database]\nembedded = "pgdata"\n')
        cluster = LocalCluster(root / "pgdata")
        self.addCleanup(cluster.remove)

        main_fd, terminal_fd = pty.openpty()
        self.addCleanup(os.close, main_fd)
        from tests.harness import ProcessOutput, checkout_pythonpath
        server = ProcessOutput()
        transport = reactor.spawnProcess(
            server, sys.executable,
            [sys.executable, "-c", "import sys; from twisted.scripts.twistd import run; "
             "sys.argv[0] = 'twistd'; run()", "-n", "--pidfile=", "wyseman", "--config",
             str(config_file)],
            env=dict(os.environ, PYTHONPATH=checkout_pythonpath()), path=str(ROOT),
            childFDs={0: terminal_fd, 1: "r", 2: "r"})
        os.close(terminal_fd)
        yield server.wait_for("listening on")
        self.assertTrue(cluster.is_running())
        transport.signalProcess("HUP")
        ended = yield server.ended
        self.assertIn(b"terminal hung up (SIGHUP): stopping", server.out)
        self.assertEqual(ended, 0)                     # a clean stop
        self.assertFalse(cluster.is_running())
        # the cluster stopped after the gateway let go of its sockets and pools
        self.assertLess(server.out.index(b"Port"), server.out.index(b"stopping embedded"))

    @defer.inlineCallbacks
    def test_whole_server_on_embedded_postgres(self):
        """What `wyseman demo` runs: embedded cluster, schema, a user, a ticket login."""
        root = Path(self.mktemp()).resolve()
        root.mkdir(parents=True)
        config = cfg.from_dict({
            "server": {"listen": "tcp:0:interface=127.0.0.1", "clientinfo_listen": []},
            "database": {"embedded": "pgdata", "name": "demo"},
            "channels": {"allow": ["wylib"]},
        }, source="demo.toml", base_dir=root)
        top = makeService(config)
        gateway_service = top.getServiceNamed("gateway")
        embedded = top.getServiceNamed("embedded-postgres")
        top.startService()
        self.addCleanup(lambda: embedded.cluster.remove())
        self.addCleanup(top.stopService)
        yield gateway_service.ready
        dsn = embedded.cluster.dsn("demo")
        yield threads.deferToThread(admin.add_user, dsn, "demo_user")
        ticket = yield threads.deferToThread(admin.issue_ticket, dsn, "demo_user")
        port = gateway_service.ports[0].getHost().port
        conn = yield connect(f"ws://127.0.0.1:{port}", "demo_user", token=ticket.token,
                             new_key=keys.generate_private_jwk())
        row = yield conn.request({"action": "tuple", "view": "base.curr_eid()"})
        self.assertTrue(row["curr_eid"])
        yield conn.close()
        yield top.stopService()
        self.assertFalse(embedded.cluster.is_running())
