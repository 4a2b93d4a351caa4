"""wyclif's prebuilt ``wysegi`` (npm ``wyclif``: a database browser built on wylib) against
this server on a real wyselib database, in a real browser (Debian's chromium driven by
playwright-core from tests/js, tests/js/wysegi_test.js).

The database is built the way wyselib's own tests build theirs: the wyseman schema tool
(npm ``wyseman``, ``bin/wyseman.js objects text defs init``) on wyselib's sources, with a
``Wyseman.conf`` listing them. wyselib's prebuilt ``schema/dist/schema.sql`` is not used:
it no longer loads on PostgreSQL 12 and later. The tool needs PL/Tcl (``pltclu``) in the
server, tcllib (wyselib's sources ``package require csv``) and its native addons ``tcl``
and ``pg-native`` (optional dependencies in tests/js: they build only where Tcl's and
libpq's headers are installed). The ``pgserver`` wheel's PostgreSQL has no PL/Tcl, so
this test runs a cluster of its own from the system's binaries (Debian's
``/usr/lib/postgresql/N``), on loopback, removed in cleanup.

The server serves wyclif's ``pub/`` under ``/wysegi`` ([web.mounts]) over https; the
ticket comes from ``wyseman ticket`` and is imported through the app's connection
dialog. The page then lists ``wm.table_pub`` and ``base.ent_v`` with their column titles
from the database's language tables, edits a record, saves the app's state
(``wylib.set_data``), and after a reload reconnects by the key it kept. Every frame the
page's WebSocket sends is recorded, and every request must have had a reply without an
error. Then every read among them (``meta``, ``lang``, ``select``, ``tuple`` of all but a
volatile function) is replayed, as recorded, to the Node.js Wyseman server (npm
``wyseman``, pinned in tests/js) started on the same database, and to ours: both must
answer alike, as in tests/test_differential.py but with what a real app sends.

Skipped, saying exactly what is missing, when a prerequisite is not installed; as root
with apt-get, where scripts/test.sh installs the system packages (CI), a missing one
fails the test instead, so that it cannot pass there by not running.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.trial.unittest import SkipTest, TestCase

from tests.browser import DriverRun, chromium
from tests.harness import start_gateway
from tests.jsinterop import JS_DIR, NODE_MODULES, node, outcome, start_node_server
from tests.pgtest import free_port, run_sync, start_on_a_free_port
from tests.tlsutil import TestCA
from wyseman.client import keys
from wyseman.client.connection import connect
from wyseman.provision import admin
from wyseman.provision.cluster import LocalCluster

#: seconds the browser run may take in all (a cold chromium start is a few seconds)
RUN_TIMEOUT = 120
#: seconds the schema tool may take to build the database (about ten here)
BUILD_TIMEOUT = 180
#: the role wyselib's database is built and administered by (its entity r1)
ADMIN = "admin"
#: Debian's PostgreSQL installations, newest first
SYSTEM_PG = Path("/usr/lib/postgresql")


def missing(reason: str) -> Exception:
    """The error for a missing prerequisite: a skip, unless this runs as root with
    apt-get, where scripts/test.sh installs the prerequisites (CI): there the test must
    run, so a missing one is a failure."""
    if os.geteuid() == 0 and shutil.which("apt-get"):
        return AssertionError(f"{reason} (as root with apt-get, scripts/test.sh installs "
                              "it: run that, or install it by hand)")
    return SkipTest(reason)


def system_postgresql() -> Path:
    """The bin directory of a system PostgreSQL that has PL/Tcl (``WYSEMAN_PLTCL_BINDIR``,
    else the newest ``/usr/lib/postgresql/N`` with ``lib/pltcl.so``). Raises SkipTest
    naming the package to install (a failure where scripts/test.sh installs it)."""
    env = os.environ.get("WYSEMAN_PLTCL_BINDIR")
    if env:
        return Path(env)
    versions = sorted((p for p in SYSTEM_PG.glob("*") if (p / "bin" / "pg_ctl").exists()),
                      key=lambda p: int(p.name) if p.name.isdigit() else 0, reverse=True)
    for home in versions:
        if (home / "lib" / "pltcl.so").exists():
            return home / "bin"
    if versions:
        raise missing(f"PL/Tcl is not installed for PostgreSQL {versions[0].name}: the "
                       f"wysegi test is skipped (apt-get install postgresql-pltcl-"
                       f"{versions[0].name} tcllib; or set WYSEMAN_PLTCL_BINDIR)")
    raise missing(f"no system PostgreSQL under {SYSTEM_PG}: the wysegi test is skipped "
                   "(apt-get install postgresql postgresql-pltcl-15 tcllib; or set "
                   "WYSEMAN_PLTCL_BINDIR)")


def schema_tool_ready(executable: str) -> None:
    """The wyseman schema tool's native addons load and Tcl finds tcllib; else SkipTest
    saying which is missing (a failure where scripts/test.sh installs it)."""
    probe = ("const missing = [];"
             "let tcl = null;"
             "try { tcl = new (require('tcl').Tcl)() } catch (e) {"
             " missing.push('the npm addon tcl (needs tcl-dev, build-essential, python3; "
             "then npm ci in tests/js)') }"
             "try { require('pg-native') } catch (e) {"
             " missing.push('the npm addon pg-native (needs libpq-dev, build-essential, "
             "python3; then npm ci in tests/js)') }"
             "if (tcl) try { tcl.cmdSync('package require csv') } catch (e) {"
             " missing.push('tcllib (apt-get install tcllib)') }"
             "process.stdout.write(JSON.stringify(missing))")
    result = subprocess.run([executable, "-e", probe], cwd=JS_DIR, capture_output=True,
                            text=True, timeout=60)
    absent = json.loads(result.stdout or "[]") if result.returncode == 0 else [
        f"a working node ({result.stderr.strip()[-200:]})"]
    if absent:
        raise missing("the wysegi test is skipped: missing " + "; ".join(absent))


def write_wyseman_conf(directory: Path, dbname: str, port: int) -> None:
    """wyselib's test/Wyseman.conf, with the file lists spelled out: its objects, text,
    definitions and initial data under schema/ and schema/base/."""
    schema = NODE_MODULES / "wyselib" / "schema"

    def files(*pattern: str) -> list[str]:
        return sorted(str(p) for p in schema.glob(os.path.join(*pattern)))
    conf = {
        "dbname": dbname, "host": "localhost", "user": ADMIN, "port": port,
        "dir": str(directory), "module": "wltest",
        "objects": files("*.wms") + files("base", "*.wms"),
        "text": files("*.wmt") + files("base", "*.wmt"),
        "defs": files("*.wmd") + files("base", "*.wmd"),
        "init": files("base", "*.wmi"),
    }
    (directory / "Wyseman.conf").write_text(
        "module.exports = " + json.dumps(conf, indent=1) + "\n")


class _Database:
    """What :func:`tests.harness.start_gateway` needs of a database: its DSN."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn


class WysegiTests(TestCase):
    timeout = BUILD_TIMEOUT + RUN_TIMEOUT + 60

    def wyselib_database(self, base: Path, executable: str) -> str:
        """A cluster of the system's PostgreSQL with a wyselib database built by the
        wyseman schema tool; → the admin DSN. Stopped and removed in cleanup."""
        bindir = system_postgresql()
        # (a short path: a Unix socket's is limited to about 107 bytes)
        root = Path(tempfile.mkdtemp(prefix="wyseman-wysegi-"))
        self.addCleanup(shutil.rmtree, root, ignore_errors=True)
        os.chmod(root, 0o755)
        cluster = LocalCluster(root / "data", bindir=bindir, port=free_port(),
                               listen_tcp=True, socket_dir=root / "sock")
        cluster.init()
        self.addCleanup(cluster.remove)
        start_on_a_free_port(cluster)
        run_sync(cluster.dsn("postgres"), f'create role "{ADMIN}" superuser login')
        conf_dir = base / "schema"
        conf_dir.mkdir()
        write_wyseman_conf(conf_dir, "wyselib", cluster.port)
        tool = NODE_MODULES / "wyseman" / "bin" / "wyseman.js"
        build = subprocess.run([executable, str(tool), "objects", "text", "defs", "init"],
                               cwd=conf_dir, capture_output=True, text=True,
                               timeout=BUILD_TIMEOUT)
        self.assertEqual(build.returncode, 0, build.stderr[-3000:] or build.stdout[-3000:])
        return cluster.dsn("wyselib", ADMIN)

    @defer.inlineCallbacks
    def test_wysegi_browses_and_edits_a_wyselib_database(self):
        browser = chromium()
        executable = node()      # (installs tests/js/node_modules from the lock file)
        schema_tool_ready(executable)
        base = Path(self.mktemp()).resolve()
        base.mkdir(parents=True)
        dsn = self.wyselib_database(base, executable)
        self.assertEqual(run_sync(dsn, "select username from base.ent where id = 'r1'"),
                         [(ADMIN,)])

        pub = NODE_MODULES / "wyclif" / "pub"
        self.assertTrue((pub / "wysegi.html").is_file(), pub)
        ca = TestCA.create()
        cert, key, _ = ca.issue(base, "server")
        server = yield start_gateway(
            self, _Database(dsn), server={"listen": "tls:0:interface=127.0.0.1"},
            tls={"cert": str(cert), "key": str(key)}, web={"mounts": {"/wysegi": str(pub)}})

        user = "wysegi_user"
        entity = admin.add_user(dsn, user)     # wyselib's trigger creates the role
        # wyselib's privilege levels are separate roles: ent_1 may read base.ent_v,
        # ent_2 insert and update it
        run_sync(dsn, f'grant ent_1, ent_2 to "{user}"')
        config_file = base / "wyseman.toml"
        config_file.write_text(f"[database]\ndsn = {json.dumps(dsn)}\n")
        ticket_file = base / "ticket.json"
        issued = subprocess.run(
            [sys.executable, "-m", "wyseman", "--config", str(config_file), "ticket", user,
             "--host", "localhost", "--port", str(server.port), "-o", str(ticket_file)],
            capture_output=True, text=True, timeout=60)
        self.assertEqual(issued.returncode, 0, issued.stderr)
        ticket = json.loads(ticket_file.read_text())["ticket"]
        self.assertEqual((ticket["host"], ticket["port"], ticket["user"]),
                         ("localhost", server.port, user))

        comment = "edited in wysegi"
        state_name = "wysegi test state"
        shots = os.environ.get("WYSEMAN_WYSEGI_SCREENSHOTS")
        config = {
            "url": f"https://localhost:{server.port}/wysegi/wysegi.html",
            "ticket_file": str(ticket_file), "user": user, "comment": comment,
            "state_name": state_name, "chromium": browser, "timeout": 30000,
            "screenshots": shots,
        }
        code, result = yield DriverRun(self, "wysegi_test.js", config, RUN_TIMEOUT).ended
        self.assertIn("ok", result, result.get("output"))
        self.assertEqual(code, 0, {k: result.get(k) for k in ("error", "pageErrors")})
        self.assertTrue(result["ok"], result.get("error"))
        self.assertEqual(result["pageErrors"], [])
        self.check_exchanges(result["exchanges"])
        self.check_grids(dsn, result)

        # the ticket login, then (after the reload) a login signed with the kept key
        opened = [s for s in result["sockets"] if s["kind"] == "open"]
        self.assertEqual([s["load"] for s in opened], [0, 1], opened)
        self.assertIn(f"wss://localhost:{server.port}/?user={user}&token={ticket['token']}",
                      opened[0]["url"])
        self.assertIn("&pub=", opened[0]["url"])
        self.assertIn("&sign=", opened[1]["url"])
        self.assertNotIn("token=", opened[1]["url"])

        # the edit and the saved state are in the database
        self.assertEqual(result["update"]["fields"], {"ent_cmt": comment})
        self.assertEqual(run_sync(dsn, "select ent_cmt from base.ent where id = %s",
                                  (entity,)), [(comment,)])
        rows = run_sync(dsn, "select component, owner, data->>'curTab' from wylib.data "
                             "where name = %s", (state_name,))
        self.assertEqual(rows, [("wylib_wysegi", entity, "ent")])

        yield self.compare_with_node(dsn, server.port, ca, user, result["exchanges"])

    def check_exchanges(self, exchanges: list[dict[str, Any]]) -> None:
        """Every request the app sent had its reply, none an error; and the app used
        what it is built on: language and metadata, selects, tuples and an update."""
        self.assertGreater(len(exchanges), 20)
        unanswered = [e["request"] for e in exchanges if e["reply"] is None]
        self.assertEqual(unanswered, [])
        failed = [(e["request"], e["reply"]["error"]) for e in exchanges
                  if e["reply"].get("error")]
        self.assertEqual(failed, [])
        for exchange in exchanges:
            request, reply = exchange["request"], exchange["reply"]
            self.assertEqual((reply.get("action"), reply.get("view")),
                             (request.get("action"), request.get("view")), request)
            self.assertTrue(reply["hasData"], request)
        seen = {(e["request"]["action"], e["request"]["view"]) for e in exchanges}
        for wanted in [("lang", "wm.table_pub"), ("meta", "wm.table_pub"),
                       ("select", "wm.table_pub"), ("lang", "base.ent_v"),
                       ("meta", "base.ent_v"), ("select", "base.ent_v"),
                       ("tuple", "base.ent_v"), ("update", "base.ent_v"),
                       ("select", "wylib.data_v"),
                       ("tuple", "wylib.set_data(text, text, text, text, jsonb)")]:
            self.assertIn(wanted, seen)

    def check_grids(self, dsn: str, result: dict[str, Any]) -> None:
        """The grids showed every row of their views, under the column titles the
        database's language tables give."""
        tables = run_sync(dsn, "select count(*) from wm.table_pub")[0][0]
        self.assertGreater(tables, 200)
        self.assertEqual(result["tables"]["rows"], tables)
        users = run_sync(dsn, "select count(*) from base.ent_v")[0][0]
        self.assertEqual(result["users"]["rows"], users)
        for name, view in (("tables", "wm.table_pub"), ("users", "base.ent_v")):
            schema, table = view.split(".")
            titles = dict(run_sync(
                dsn, "select col, title from wm.column_lang where sch = %s and tab = %s "
                     "and language = 'eng'", (schema, table)))
            shown = {c["field"]: c["title"] for c in result[name]["columns"]}
            self.assertEqual(set(shown), set(titles), view)
            self.assertEqual(shown, titles, view)

    def is_read(self, dsn: str, request: dict[str, Any]) -> bool:
        """Whether a request only reads, so that replaying it changes nothing: ``meta``,
        ``lang``, and ``select``/``tuple`` of a relation or of a function PostgreSQL
        declares stable or immutable (such a function cannot write; a volatile one, as
        ``wylib.set_data``, may)."""
        action, view = request.get("action"), request.get("view")
        if action in ("meta", "lang"):
            return True
        if action not in ("select", "tuple"):
            return False
        if "(" not in view:
            return True
        volatility = run_sync(dsn, "select provolatile from pg_proc "
                                   "where oid = %s::regprocedure", (view,))
        return volatility != [("v",)]

    @defer.inlineCallbacks
    def compare_with_node(self, dsn: str, port: int, ca: TestCA, user: str,
                          exchanges: list[dict[str, Any]]) -> Any:
        """Every read the app sent, replayed as it was recorded (its id included, one at
        a time) to the Node.js Wyseman server (npm ``wyseman``, pinned in tests/js) and
        to ours, on this database and as the same user: both must answer what a client
        reads alike (``data``, or the error's ``code``), as tests/test_differential.py
        compares them.

        The app's writes (its update, ``wylib.set_data``) are left out: their effect is
        checked in the database above, and replayed they would only repeat it. The
        replay runs after the whole browser run, so both servers read the same data
        (the edited record, the saved state), which need not be what the app read at
        the time."""
        reads: list[dict[str, Any]] = []
        writes: list[dict[str, Any]] = []
        for exchange in exchanges:
            (reads if self.is_read(dsn, exchange["request"]) else writes).append(
                exchange["request"])
        self.assertEqual([(w["action"], w["view"]) for w in writes],
                         [("update", "base.ent_v"),
                          ("tuple", "wylib.set_data(text, text, text, text, jsonb)")])

        node_port = free_port()
        yield start_node_server(self, dsn, node_port)
        # the Node server takes any user name on plain ws (docs/protocol.md, D1): that
        # is how its clients log in there; ours gets a ticket
        theirs = yield connect(f"ws://127.0.0.1:{node_port}", user)
        self.addCleanup(theirs.close)
        token = admin.issue_ticket(dsn, user).token
        ours = yield connect(
            f"wss://localhost:{port}", user, token=token, new_key=keys.generate_private_jwk(),
            tls_options=optionsForClientTLS("localhost",
                                            trustRoot=Certificate.loadPEM(ca.pem)))
        self.addCleanup(ours.close)

        differences, failed = [], []
        for request in reads:
            expected = readable(request, (yield outcome(theirs.request(request))), node=True)
            actual = readable(request, (yield outcome(ours.request(request))))
            if actual != expected:
                differences.append({"request": request, "ours": actual, "node": expected})
            if actual[0] != "data":
                failed.append(request)
        self.assertEqual(differences, [])
        # each read had its data in the browser run, so an error now would mean the
        # replay was not the app's
        self.assertEqual(failed, [])
        # in all, about 40: the two grids need at least their texts, metadata and rows;
        # the editor its record and the texts and metadata of its four subviews; the
        # app looked up its saved states; the reload repeats most of it
        self.assertGreater(len(reads), 30)
        compared = {(r["action"], r["view"]) for r in reads}
        for view in ("wm.table_pub", "base.ent_v"):
            for action in ("lang", "meta", "select"):
                self.assertIn((action, view), compared)
        self.assertIn(("tuple", "base.ent_v"), compared)
        self.assertIn(("select", "wylib.data_v"), compared)

def readable(request: dict[str, Any], result: tuple[str, Any], node: bool = False
             ) -> tuple[str, Any]:
    """What a client reads of a reply (:func:`tests.jsinterop.outcome`), less what the
    two servers may differ in by design:

    - rows of a ``select`` without ``order`` come in no defined order (the two servers
      compile different SQL: ours has PostgreSQL render the rows as JSON), so they are
      compared as a set;
    - the Node server's (``node``) cached ``lang`` data also carries its ``col`` and
      ``msg`` maps, absent from its first reply for a view (docs/protocol.md, section
      13, "Differences from the Node server": "Cached `lang` data carries no `col` and
      `msg` maps")."""
    kind, data = result
    if kind != "data":
        return result
    if request.get("action") == "select" and not request.get("order") \
            and isinstance(data, list):
        data = sorted(data, key=lambda row: json.dumps(row, sort_keys=True))
    if node and request.get("action") == "lang" and isinstance(data, dict):
        data = {k: v for k, v in data.items() if k not in ("col", "msg")}
    return kind, data
