"""Config file validation: good files, each kind of bad value, defaults in one place."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from wyseman import config as cfg

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
DOCS = Path(__file__).resolve().parent.parent / "docs"


def write(testcase: SynchronousTestCase, text: str, name: str = "wyseman.toml") -> Path:
    directory = Path(testcase.mktemp())
    directory.mkdir()
    path = directory / name
    path.write_text(text)
    return path


MINIMAL = '[database]\ndsn = "dbname=x"\n'


class LoadTests(SynchronousTestCase):
    def test_examples_are_valid(self) -> None:
        embedded = cfg.load(EXAMPLES / "embedded.toml")
        self.assertTrue(embedded.embedded)
        self.assertEqual(embedded.resolve_path(embedded.database.embedded),
                         (EXAMPLES / "../demo/pgdata"))
        production = cfg.load(EXAMPLES / "production.toml")
        self.assertFalse(production.embedded)
        self.assertEqual(production.server.listen, ("tls:4100:interface=0.0.0.0",))
        self.assertEqual(production.channels.roles, {"admin": ("wyseman", "audit_*")})

    def test_defaults_applied(self) -> None:
        config = cfg.load(write(self, MINIMAL))
        self.assertEqual(config.server.listen, ("tcp:54320:interface=127.0.0.1",))
        self.assertEqual(config.auth.date_window, 60.0)
        self.assertIs(config.auth.insecure, False)
        self.assertEqual(config.channels.allow, ())
        self.assertEqual(config.views.deny_schemas,
                         ("pg_catalog", "information_schema", "pg_toast"))
        self.assertIsNone(config.server.clientinfo_listen)

    def test_single_endpoint_string_becomes_list(self) -> None:
        config = cfg.load(write(self, MINIMAL + '[server]\nlisten = "tcp:1234"\n'))
        self.assertEqual(config.server.listen, ("tcp:1234",))

    def test_trusted_proxies_parsed(self) -> None:
        config = cfg.load(write(self, MINIMAL + '[server]\ntrusted_proxies = ["10.0.0.0/8"]\n'))
        self.assertEqual(config.server.trusted_proxies, (ipaddress.ip_network("10.0.0.0/8"),))

    def test_actions_table(self) -> None:
        config = cfg.load(write(
            self, MINIMAL + '[actions.handlers]\n"base.ent_v:csv" = "wyseman.actions:csv"\n'))
        self.assertEqual(config.actions.handlers, {("base.ent_v", "csv"): "wyseman.actions:csv"})


class ErrorTests(SynchronousTestCase):
    def assertConfigError(self, text: str, *fragments: str) -> None:
        path = write(self, text)
        with self.assertRaises(cfg.ConfigError) as ctx:
            cfg.load(path)
        message = str(ctx.exception)
        self.assertTrue(message.startswith(f"{path}: "), message)
        for fragment in fragments:
            self.assertIn(fragment, message)

    def test_bad_endpoint(self) -> None:
        self.assertConfigError(MINIMAL + "[server]\nlisten = 8080\n",
                               "[server] listen:", "expected")
        self.assertConfigError(MINIMAL + '[server]\nlisten = ["http:80"]\n',
                               "[server] listen:", "item 1", "endpoint string")

    def test_unknown_key_and_section(self) -> None:
        self.assertConfigError(MINIMAL + "[server]\nlisen = 1\n",
                               "[server] lisen: unknown key")
        self.assertConfigError(MINIMAL + "[serve]\n", "[serve]: unknown section")

    def test_wrong_types(self) -> None:
        self.assertConfigError(MINIMAL + '[auth]\ninsecure = "yes"\n',
                               "[auth] insecure: expected true or false")
        self.assertConfigError(MINIMAL + "[limits]\nmax_connections = 0\n",
                               "[limits] max_connections: expected an integer >= 1")
        self.assertConfigError(MINIMAL + "[auth]\ndate_window = -1\n",
                               "[auth] date_window: expected a number of seconds >= 0")
        self.assertConfigError(MINIMAL + '[database]\n', "invalid TOML", "twice")
        self.assertConfigError(MINIMAL + '[database]\nsession_mode = "loud"\n'.replace(
            "[database]\n", ""), "[database] session_mode: expected one of")
        self.assertConfigError(MINIMAL + '[server]\ntrusted_proxies = ["nope"]\n',
                               "[server] trusted_proxies:", "IP address")
        self.assertConfigError(MINIMAL + '[channels]\nroles = { a = [1] }\n',
                               "[channels] roles.a:", "channel name")
        self.assertConfigError(MINIMAL + '[actions]\nhandlers = { "noview" = "x:y" }\n',
                               "[actions] handlers.noview:")

    def test_invalid_toml(self) -> None:
        self.assertConfigError("[database\n", "invalid TOML")

    def test_consistency(self) -> None:
        self.assertConfigError("[server]\n", "[database]: no database")
        self.assertConfigError('[database]\ndsn = "x"\nembedded = "d"\n', "either")
        self.assertConfigError(MINIMAL + '[server]\nlisten = "tls:443"\n',
                               "[tls]: a 'tls:' endpoint needs")
        self.assertConfigError(MINIMAL + '[tls]\ncert = "c.pem"\n', "go together")
        self.assertConfigError(MINIMAL + '[auth]\ninsecure_on_public_interfaces = true\n',
                               "only meaningful with insecure")
        self.assertConfigError(
            MINIMAL + "[limits]\nmax_frame_size = 2000000\nmax_message_size = 1048576\n",
            "max_frame_size")
        self.assertConfigError(MINIMAL + '[channels]\nallow = ["wylib", "wyseman_auth"]\n',
                               "[channels] allow: 'wyseman_auth' is the server's own")
        self.assertConfigError(MINIMAL + '[channels.roles]\nops = ["wyseman_auth"]\n',
                               "[channels] roles.ops: 'wyseman_auth'")

    def test_missing_file(self) -> None:
        with self.assertRaises(cfg.ConfigError) as ctx:
            cfg.load(Path(self.mktemp()) / "none.toml")
        self.assertIn("cannot read", str(ctx.exception))


class ReferenceTests(SynchronousTestCase):
    def test_every_option_is_documented(self) -> None:
        """docs/configuration.md carries the generated reference, so it is never stale."""
        reference = cfg.render_reference()
        for option in cfg.OPTIONS:
            self.assertIn(f"| `{option.key}` |", reference)
        self.assertIn(reference, (DOCS / "configuration.md").read_text())
