"""The service tree: the twistd plugin, makeService, and the embedded PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from twisted.application.service import IServiceMaker
from twisted.internet import defer, threads
from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.trial.unittest import TestCase

from tests.pgtest import run_sync
from wyseman import config as cfg
from wyseman import keys
from wyseman.client.connection import connect
from wyseman.db import admin
from wyseman.db.embedded import EmbeddedPostgresService
from wyseman.service import makeService

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
        self.assertEqual(names, ["embedded-postgres", "gateway"])

    def test_production_example_checks_certificates(self):
        plugin = wyseman_plugin()
        options = plugin.options()
        options.parseOptions(["--config", str(EXAMPLES / "production.toml")])
        with self.assertRaises(usage.UsageError) as ctx:
            plugin.makeService(options)
        self.assertIn("/etc/wyseman/tls/fullchain.pem", str(ctx.exception))

    def test_bad_config_is_a_usage_error(self):
        path = Path(self.mktemp())
        path.write_text("[server]\nlisten = 5\n")
        options = wyseman_plugin().options()
        with self.assertRaises(usage.UsageError) as ctx:
            options.parseOptions(["--config", str(path)])
        self.assertIn("[server] listen", str(ctx.exception))


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
