"""The ``wyseman`` command (run in-process) and the admin API behind it, on real PostgreSQL."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import stat
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import psycopg2
from twisted.trial.unittest import SynchronousTestCase

from tests.pgtest import connect_sync, fresh_database
from wyseman.application import cli
from wyseman.config import from_dict
from wyseman.db.pg import dsn_params, dsn_with
from wyseman.provision import admin
from wyseman.provision.admin import AdminError, Ticket, format_ticket, js_date_json
from wyseman.provision.bootstrap import InitStatus, init_database_sync
from wyseman.provision.cluster import LocalCluster

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "wyselib_like.sql"
JS_DATE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(list(argv))
    return code, out.getvalue(), err.getvalue()


def write_config(testcase: SynchronousTestCase, body: str) -> Path:
    directory = Path(testcase.mktemp())
    directory.mkdir()
    path = directory / "wyseman.toml"
    path.write_text(body)
    return path


def dsn_config(testcase: SynchronousTestCase, dsn: str) -> Path:
    # TOML basic strings accept JSON string escapes.
    return write_config(testcase, f"[database]\ndsn = {json.dumps(dsn)}\n")


class CliTestCase(SynchronousTestCase):
    def assertOneLineError(self, result: tuple[int, str, str], *fragments: str) -> None:
        code, out, err = result
        self.assertEqual(code, 1, err)
        self.assertEqual(out, "")
        self.assertEqual(err.count("\n"), 1, err)
        self.assertTrue(err.startswith("wyseman: error: "), err)
        self.assertNotIn("Traceback", err)
        for fragment in fragments:
            self.assertIn(fragment, err)


class DbInitTests(CliTestCase):
    def test_init_twice(self) -> None:
        db = fresh_database(self, "empty")
        config = str(dsn_config(self, db.dsn))
        code, out, err = run_cli("db", "init", "--config", config)
        self.assertEqual((code, err), (0, ""))
        self.assertIn("created", out)
        code, out, err = run_cli("--config", config, "db", "init")  # top-level --config
        self.assertEqual((code, err), (0, ""))
        self.assertIn("nothing changed", out)

    def test_init_on_wyselib(self) -> None:
        db = fresh_database(self, "empty")
        db.run(FIXTURE.read_text())
        code, out, err = run_cli("db", "init", "--config", str(dsn_config(self, db.dsn)))
        self.assertEqual(code, 0)
        self.assertIn("wyselib schema detected", out)
        self.assertIn("nothing changed", out)

    def test_config_from_environment(self) -> None:
        db = fresh_database(self)
        config = dsn_config(self, db.dsn)
        os.environ[cli.CONFIG_ENV] = str(config)
        self.addCleanup(os.environ.pop, cli.CONFIG_ENV, None)
        code, out, _ = run_cli("db", "init")
        self.assertEqual(code, 0)
        self.assertIn("nothing changed", out)

    def test_missing_config_file(self) -> None:
        missing = Path(self.mktemp()) / "nope.toml"
        self.assertOneLineError(run_cli("db", "init", "--config", str(missing)),
                                "nope.toml", "cannot read")

    def test_unreachable_database(self) -> None:
        config = dsn_config(self, "host=127.0.0.1 port=1 dbname=x user=x connect_timeout=2")
        self.assertOneLineError(run_cli("db", "init", "--config", str(config)), "127.0.0.1")

    def test_malformed_dsn(self) -> None:
        config = dsn_config(self, "this is not a dsn")
        self.assertOneLineError(run_cli("user", "add", "bob", "--config", str(config)), "dsn")

    def test_database_that_does_not_exist(self) -> None:
        db = fresh_database(self, "empty")
        config = dsn_config(self, dsn_with(db.dsn, dbname=db.name + "_missing"))
        self.assertOneLineError(run_cli("ticket", "bob", "--config", str(config)),
                                "does not exist")

    def test_commands_need_the_schema(self) -> None:
        db = fresh_database(self, "empty")
        config = str(dsn_config(self, db.dsn))
        self.assertOneLineError(run_cli("user", "add", "bob", "--config", config),
                                "wyseman db init")


class UserTests(CliTestCase):
    def setUp(self) -> None:
        self.db = fresh_database(self)
        self.config = str(dsn_config(self, self.db.dsn))

    def test_add_creates_a_login_role(self) -> None:
        name = self.db.role_name("alice")
        code, out, err = run_cli("user", "add", name, "--name", "Alice Example",
                                 "--config", self.config)
        self.assertEqual((code, err), (0, ""))
        entity = self.db.run("select id, ent_name, ent_type from base.ent where username = %s",
                             (name,))
        self.assertEqual(len(entity), 1)
        self.assertRegex(entity[0][0], r"^p\d{4,}$")
        self.assertEqual(entity[0][1:], ("Alice Example", "p"))
        self.assertIn(entity[0][0], out)
        self.assertEqual(self.db.run("select rolcanlogin, pg_has_role(rolname, 'wyseman_user', "
                                     "'member') from pg_roles where rolname = %s", (name,)),
                         [(True, True)])
        conn = connect_sync(self.db.user_dsn(name))
        try:
            with conn.cursor() as cur:
                cur.execute("select session_user, base.curr_eid()")
                self.assertEqual(cur.fetchone(), (name, entity[0][0]))
        finally:
            conn.close()

    def test_add_twice_is_refused(self) -> None:
        name = self.db.role_name("bob")
        self.assertEqual(run_cli("user", "add", name, "--config", self.config)[0], 0)
        self.assertOneLineError(run_cli("user", "add", name, "--config", self.config),
                                "already exists")
        self.assertEqual(self.db.run("select count(*) from base.ent where username = %s",
                                     (name,)), [(1,)])

    def test_existing_role(self) -> None:
        name = self.db.role_name("carol")
        self.db.run(f'create role "{name}" login')
        self.assertOneLineError(run_cli("user", "add", name, "--config", self.config),
                                "role", "--existing-role")
        self.assertEqual(self.db.run("select count(*) from base.ent"), [(0,)])
        code, _, err = run_cli("user", "add", name, "--existing-role", "--config", self.config)
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(self.db.run("select pg_has_role(%s, 'wyseman_user', 'member')",
                                     (name,)), [(True,)])

    def test_odd_names_are_quoted(self) -> None:
        name = self.db.role_name('O"Brien; drop table x --')
        self.assertEqual(run_cli("user", "add", name, "--config", self.config)[0], 0)
        self.assertEqual(self.db.run("select count(*) from pg_roles where rolname = %s",
                                     (name,)), [(1,)])
        self.assertOneLineError(run_cli("user", "add", "x" * 64, "--config", self.config),
                                "63 bytes")

    def test_remove(self) -> None:
        name = self.db.role_name("dave")
        run_cli("user", "add", name, "--config", self.config)
        run_cli("ticket", name, "--config", self.config)
        code, out, err = run_cli("user", "remove", name, "--config", self.config)
        self.assertEqual((code, err), (0, ""))
        self.assertIn("removed", out)
        self.assertEqual(self.db.run("select (select count(*) from base.ent), "
                                     "(select count(*) from base.token), "
                                     "(select count(*) from pg_roles where rolname = %s)",
                                     (name,)), [(0, 0, 0)])
        self.assertOneLineError(run_cli("user", "remove", name, "--config", self.config),
                                "no user")

    def test_remove_keeping_the_role(self) -> None:
        name = self.db.role_name("erin")
        run_cli("user", "add", name, "--config", self.config)
        self.assertEqual(run_cli("user", "remove", name, "--keep-role",
                                 "--config", self.config)[0], 0)
        self.assertEqual(self.db.run("select count(*) from pg_roles where rolname = %s",
                                     (name,)), [(1,)])

    def test_remove_refused_while_role_holds_privileges(self) -> None:
        name = self.db.role_name("frank")
        run_cli("user", "add", name, "--config", self.config)
        self.db.run(f'create table public.t (x int); grant select on public.t to "{name}"')
        self.assertOneLineError(run_cli("user", "remove", name, "--config", self.config),
                                "cannot be dropped", "nothing changed")
        self.assertEqual(self.db.run("select count(*) from base.ent"), [(1,)])
        self.db.run("drop table public.t")


class TicketTests(CliTestCase):
    def setUp(self) -> None:
        self.db = fresh_database(self)
        self.config = str(dsn_config(self, self.db.dsn))
        self.user = self.db.role_name("tom")
        admin.add_user(self.db.dsn, self.user)

    def assertValidToken(self, token: str) -> None:
        self.assertEqual(self.db.run("select valid, username from base.token_v where token = %s",
                                     (token,)), [(True, self.user)])

    def test_json(self) -> None:
        code, out, err = run_cli("ticket", self.user, "--config", self.config)
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(out.count("\n"), 1)
        data = json.loads(out)
        self.assertEqual(list(data), ["ticket"])
        ticket = data["ticket"]
        self.assertEqual(list(ticket), ["token", "expires", "host", "port", "user"])
        self.assertEqual((ticket["host"], ticket["port"], ticket["user"]),
                         ("localhost", 54320, self.user))
        self.assertRegex(ticket["expires"], JS_DATE)
        expires = datetime.fromisoformat(ticket["expires"].replace("Z", "+00:00"))
        self.assertLess(abs(expires - datetime.now(UTC) - timedelta(minutes=30)),
                        timedelta(minutes=2))
        self.assertNotIn(" ", out.strip())
        self.assertValidToken(ticket["token"])

    def test_overrides_and_parameters(self) -> None:
        self.db.run("select base.parmset('wyseman', 'host', 'db.example'::text), "
                    "base.parmset('wyseman', 'port', 4100)")
        ticket = json.loads(run_cli("ticket", self.user, "--config", self.config)[1])["ticket"]
        self.assertEqual((ticket["host"], ticket["port"]), ("db.example", 4100))
        ticket = json.loads(run_cli("ticket", self.user, "--host", "h.example", "--port", "443",
                                    "--config", self.config)[1])["ticket"]
        self.assertEqual((ticket["host"], ticket["port"]), ("h.example", 443))

    def test_link(self) -> None:
        code, out, _ = run_cli("ticket", self.user, "--format", "link", "--config", self.config)
        self.assertEqual(code, 0)
        url = urlsplit(out.strip())
        self.assertEqual((url.scheme, url.netloc, url.path), ("https", "localhost", "/connect"))
        self.assertEqual(url.query.split("&")[1:],
                         [f"user={self.user}", "host=localhost", "port=54320"])
        query = parse_qs(url.query)
        self.assertValidToken(query["token"][0])

    def test_web(self) -> None:
        code, out, _ = run_cli("ticket", self.user, "-F", "web", "--host", "app.example",
                               "--port", "4100", "--http-port", "8443", "--spa-name", "myapp",
                               "--config", self.config)
        self.assertEqual(code, 0)
        url = urlsplit(out.strip())
        self.assertEqual((url.scheme, url.netloc, url.path),
                         ("https", "app.example:8443", "/myapp.html"))
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        self.assertEqual(list(query), ["token", "user", "host", "port"])
        self.assertEqual((query["user"], query["host"], query["port"]),
                         (self.user, "app.example", "4100"))
        self.assertValidToken(query["token"])

    def test_web_names_the_page_the_server_hosts(self) -> None:
        body = Path(self.config).read_text()
        hosted = write_config(self, body + '\n[server]\nlisten = "tcp:4321:interface='
                                         '127.0.0.1"\n\n[web]\nconsole = "/console"\n')
        code, out, err = run_cli("ticket", self.user, "-F", "web", "--config", str(hosted))
        self.assertEqual((code, err), (0, ""))
        url = urlsplit(out.strip())
        # the console on the server's own port, over http (a tcp: endpoint)
        self.assertEqual((url.scheme, url.netloc, url.path),
                         ("http", "localhost:4321", "/console/"))
        code, out, _ = run_cli("ticket", self.user, "-F", "web", "--page", "wysegi.html",
                               "--config", str(hosted))
        self.assertEqual(urlsplit(out.strip()).path, "/wysegi.html")

    def test_output_file_is_private(self) -> None:
        target = Path(self.mktemp())
        code, out, err = run_cli("ticket", self.user, "-o", str(target), "--config", self.config)
        self.assertEqual((code, out, err), (0, "", ""))
        self.assertEqual(stat.S_IMODE(target.stat().st_mode), 0o600)
        self.assertValidToken(json.loads(target.read_text())["ticket"]["token"])

    def test_new_ticket_replaces_the_old(self) -> None:
        first = json.loads(run_cli("ticket", self.user, "--config", self.config)[1])
        second = json.loads(run_cli("ticket", self.user, "--config", self.config)[1])
        rows = self.db.run("select base.token_valid(%s, %s, %s::jsonb)",
                           (self.user, first["ticket"]["token"],
                            '{"kty":"EC","crv":"P-521","x":"a","y":"b"}'))
        self.assertEqual(rows, [(False,)])
        self.assertValidToken(second["ticket"]["token"])

    def test_unknown_user(self) -> None:
        self.assertOneLineError(run_cli("ticket", "nobody", "--config", self.config),
                                "no user 'nobody'")

    def test_bad_format_is_a_usage_error(self) -> None:
        code, out, err = run_cli("ticket", self.user, "--format", "xml", "--config", self.config)
        self.assertEqual(code, 2)
        self.assertIn("invalid choice", err)


class UsageTests(CliTestCase):
    def test_unknown_subcommand(self) -> None:
        code, out, err = run_cli("frobnicate")
        self.assertEqual(code, 2)
        self.assertIn("usage: wyseman", err)
        self.assertNotIn("Traceback", err)

    def test_version(self) -> None:
        from wyseman import __version__
        code, out, err = run_cli("--version")
        self.assertEqual((code, out), (0, f"wyseman {__version__}\n"))

    def test_missing_arguments(self) -> None:
        for argv in ([], ["db"], ["user", "add"], ["ticket"], ["config"]):
            self.assertEqual(run_cli(*argv)[0], 2, argv)

    def test_help(self) -> None:
        code, out, _ = run_cli("--help")
        self.assertEqual(code, 0)
        for command in ("db", "user", "ticket", "config"):
            self.assertIn(command, out)

    def test_registry_accepts_new_commands(self) -> None:
        def adder(subparsers: Any, common: Any) -> None:
            hello = subparsers.add_parser("hello", parents=[common])
            hello.set_defaults(handler=lambda args: print("hi", args.config) or 0)

        cli.subcommand(adder)
        self.addCleanup(cli.SUBCOMMANDS.remove, adder)
        self.assertEqual(run_cli("hello", "--config", "x.toml"), (0, "hi x.toml\n", ""))

    def test_unexpected_errors_are_one_line(self) -> None:
        def adder(subparsers: Any, common: Any) -> None:
            boom = subparsers.add_parser("boom", parents=[common])
            boom.set_defaults(handler=lambda args: 1 / 0)

        cli.subcommand(adder)
        self.addCleanup(cli.SUBCOMMANDS.remove, adder)
        code, out, err = run_cli("boom")
        self.assertEqual(code, 1)
        self.assertEqual(err.count("\n"), 1)
        self.assertIn("ZeroDivisionError", err)


class ConfigCommandTests(CliTestCase):
    def test_check_good(self) -> None:
        path = write_config(self, '[database]\ndsn = "dbname=x"\n')
        self.assertEqual(run_cli("config", "check", str(path)), (0, f"{path}: ok\n", ""))

    def test_check_says_ok_only_to_what_would_start(self) -> None:
        examples = Path(__file__).resolve().parent.parent / "examples"
        production = examples / "production.toml"     # its paths are not on this machine
        self.assertOneLineError(run_cli("config", "check", str(production)),
                                "[tls]", "/etc/wyseman/tls/fullchain.pem")
        path = write_config(self, '[server]\nlisten = "tls:4443"\n'
                                  '[tls]\ncert = "none.pem"\nkey = "none.key"\n'
                                  '[database]\ndsn = "dbname=x"\n')
        self.assertOneLineError(run_cli("config", "check", str(path)), "[tls]", "none.pem")
        path = write_config(self, '[actions.handlers]\n"app.v:x" = "no_such_module:f"\n'
                                  '[database]\ndsn = "dbname=x"\n')
        self.assertOneLineError(run_cli("config", "check", str(path)),
                                "[actions] handlers: cannot load 'no_such_module:f'")
        path = write_config(self, '[metrics]\nlisten = "tcp:notaport"\n'
                                  '[database]\ndsn = "dbname=x"\n')
        self.assertOneLineError(run_cli("config", "check", str(path)), "[metrics] listen")

    def test_check_finds_the_config_as_the_server_does(self) -> None:
        path = write_config(self, '[database]\ndsn = "dbname=x"\n')
        self.patch(os, "environ", dict(os.environ, WYSEMAN_CONFIG=str(path)))
        self.assertEqual(run_cli("config", "check"), (0, f"{path}: ok\n", ""))

    def test_check_connect(self) -> None:
        path = write_config(self, '[database]\ndsn = "host=/nonexistent dbname=x"\n')
        self.assertEqual(run_cli("config", "check", str(path))[0], 0)   # no network
        self.assertOneLineError(run_cli("config", "check", "--connect", str(path)),
                                "[database] dsn: cannot connect (host=/nonexistent dbname=x)")
        from tests.pgtest import fresh_database
        db = fresh_database(self)
        path = write_config(self, f'[database]\ndsn = "{db.dsn}"\n')
        code, out, err = run_cli("config", "check", "--connect", str(path))
        self.assertEqual((code, err), (0, ""))
        self.assertIn("database reached", out)

    def test_check_bad(self) -> None:
        path = write_config(self, '[database]\ndsn = "dbname=x"\nbogus = 1\n')
        self.assertOneLineError(run_cli("config", "check", str(path)), str(path), "bogus")

    def test_check_names_cpus_this_machine_lacks(self) -> None:
        """cpu_affinity is checked against the CPUs this process may use here: a CPU that
        would stop the start is reported by the check already."""
        import os
        if not hasattr(os, "sched_getaffinity"):
            self.skipTest("no CPU affinity on this system (Linux only)")
        first = min(os.sched_getaffinity(0))
        path = write_config(self, f'[server]\ncpu_affinity = [{first}]\n'
                                  '[database]\ndsn = "dbname=x"\n')
        self.assertEqual(run_cli("config", "check", str(path)), (0, f"{path}: ok\n", ""))
        path = write_config(self, '[server]\ncpu_affinity = [4095]\n'
                                  '[database]\ndsn = "dbname=x"\n')
        self.assertOneLineError(run_cli("config", "check", str(path)), str(path),
                                "[server] cpu_affinity: CPU 4095 not available")

    def test_reference(self) -> None:
        code, out, _ = run_cli("config", "reference")
        self.assertEqual(code, 0)
        self.assertTrue(out.startswith("### [server]"))
        self.assertIn("| `dsn` |", out)


class FormatTicketTests(SynchronousTestCase):
    TICKET = Ticket(token="0123abcd", expires=datetime(2025, 5, 1, 12, 0, 0, 987654,
                                                        tzinfo=timezone(timedelta(hours=2))),
                    host="localhost", port=54320, user="alice", issuer="admin")

    def test_json_exact(self) -> None:
        self.assertEqual(
            format_ticket(self.TICKET, "json", admin_user="admin"),
            '{"ticket":{"token":"0123abcd","expires":"2025-05-01T10:00:00.987Z",'
            '"host":"localhost","port":54320,"user":"alice"}}')

    def test_json_for_the_admin_and_missing_values(self) -> None:
        ticket = Ticket(token="t", expires=datetime(2025, 1, 1, tzinfo=UTC), host=None,
                        port=None, user="admin")
        self.assertEqual(format_ticket(ticket, "json", admin_user="admin"),
                         '{"ticket":{"token":"t","expires":"2025-01-01T00:00:00.000Z"}}')
        ticket = Ticket(token="t", expires=datetime(2025, 1, 1, tzinfo=UTC), host="",
                        port=0, user="bob")
        self.assertEqual(json.loads(format_ticket(ticket, "json", admin_user=None))["ticket"],
                         {"token": "t", "expires": "2025-01-01T00:00:00.000Z", "port": 0,
                          "user": "bob"})

    def test_links(self) -> None:
        self.assertEqual(format_ticket(self.TICKET, "link", admin_user="admin"),
                         "https://localhost/connect?token=0123abcd&user=alice&host=localhost"
                         "&port=54320")
        self.assertEqual(format_ticket(self.TICKET, "web", admin_user="admin"),
                         "https://localhost:4000/wyatt.html?token=0123abcd&user=alice"
                         "&host=localhost&port=54320")
        bare = Ticket(token="t", expires=self.TICKET.expires, host=None, port=None,
                      user="a b&c")
        self.assertEqual(format_ticket(bare, "link", admin_user=None),
                         "https://localhost/connect?token=t&user=a%20b%26c&host=localhost"
                         "&port=54320")
        self.assertRaises(ValueError, format_ticket, bare, "xml", admin_user=None)

    def test_js_date(self) -> None:
        self.assertEqual(js_date_json(datetime(2025, 5, 1, 10, 0, 0, 999, tzinfo=UTC)),
                         "2025-05-01T10:00:00.000Z")

    def test_username_validation(self) -> None:
        self.assertEqual(admin.validate_username("é" * 31), "é" * 31)  # 62 bytes
        for bad in ("", "a\x00b", "é" * 32, "x" * 64):
            self.assertRaises(AdminError, admin.validate_username, bad)


class WyselibAdminTests(SynchronousTestCase):
    """The admin API on a wyselib database: wyselib's triggers own the roles."""

    def setUp(self) -> None:
        self.db = fresh_database(self, "empty")
        self.db.run(FIXTURE.read_text())

    def test_add_ticket_remove(self) -> None:
        name = self.db.role_name("wl")
        entity = admin.add_user(self.db.dsn, name, ent_name="Wyselib User")
        self.assertEqual(self.db.run("select rolcanlogin from pg_roles where rolname = %s",
                                     (name,)), [(True,)])
        self.assertEqual(self.db.run("select id, ent_name from base.ent"),
                         [(entity, "Wyselib User")])
        self.assertRaises(AdminError, admin.add_user, self.db.dsn, name)
        ticket = admin.issue_ticket(self.db.dsn, name)
        self.assertEqual((ticket.host, ticket.port, ticket.user), ("wyselib.example", 54320, name))
        self.assertIsNotNone(ticket.expires.tzinfo)
        self.assertLess(abs(ticket.expires - datetime.now(UTC) - timedelta(minutes=30)),
                        timedelta(minutes=2))
        self.assertEqual(self.db.run("select base.token_valid(%s, %s, '{\"kty\":\"EC\"}')",
                                     (name, ticket.token)), [(True,)])
        self.assertEqual(admin.remove_user(self.db.dsn, name), entity)
        self.assertEqual(self.db.run("select count(*) from pg_roles where rolname = %s",
                                     (name,)), [(0,)])


class EmbeddedTests(CliTestCase):
    """A config with ``embedded``: the CLI creates, starts and uses the cluster itself."""

    def test_embedded_cluster_is_started_and_initialised(self) -> None:
        config = write_config(self, '[database]\nembedded = "pgdata"\nname = "demo"\n')
        cluster = LocalCluster(config.parent / "pgdata")
        self.addCleanup(cluster.remove)
        code, out, err = run_cli("db", "init", "--config", str(config))
        self.assertEqual(code, 0, err)
        # (as root, what it changed to let the cluster's user in is said, once each)
        for line in err.splitlines():
            self.assertTrue(line.startswith("wyseman: warning: running as root: "), line)
        self.assertIn("created", out)
        self.assertFalse(cluster.is_running())     # a command stops what it started
        code, out, err = run_cli("user", "add", "alice", "--config", str(config))
        self.assertEqual((code, err), (0, ""))
        code, out, _ = run_cli("ticket", "alice", "--config", str(config))
        self.assertEqual(code, 0)
        self.assertEqual(json.loads(out)["ticket"]["user"], "alice")
        dsn = admin.admin_dsn_sync(from_dict({"database": {"embedded": "pgdata",
                                                           "name": "demo"}},
                                             base_dir=config.parent))
        self.assertEqual(dsn_params(dsn)["dbname"], "demo")
        self.assertEqual(dsn_params(dsn)["user"], "postgres")
        self.assertEqual(init_database_sync(dsn).status, InitStatus.ALREADY_CURRENT)
        conn = psycopg2.connect(cluster.dsn("demo", user="alice"))
        conn.close()


class AdminDsnTests(SynchronousTestCase):
    def test_external_dsn_and_admin_user(self) -> None:
        config = from_dict({"database": {"dsn": "host=/tmp dbname=erp user=x"}})
        self.assertEqual(dsn_params(admin.admin_dsn_sync(config)),
                         {"host": "/tmp", "dbname": "erp", "user": "x"})
        config = from_dict({"database": {"dsn": "host=/tmp dbname=erp", "admin_user": "adm"}})
        self.assertEqual(dsn_params(admin.admin_dsn_sync(config))["user"], "adm")
