"""The bootstrap schema (wyseman/provision/schema): creation, idempotence, wyselib detection,
base.token_valid, the dictionary views and the grants. Real PostgreSQL (tests/pgtest.py).
"""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.errors
from twisted.trial.unittest import SynchronousTestCase

from tests.pgtest import connect_sync, fresh_database
from wyseman.provision import bootstrap
from wyseman.provision.bootstrap import InitStatus

HERE = Path(__file__).resolve().parent
FIXTURE = HERE / "fixtures" / "wyselib_like.sql"
SOURCE = HERE.parent / "wyseman"

JWK = {"kty": "EC", "crv": "P-521", "x": "AWx1", "y": "AXk2", "key_ops": ["verify"],
       "ext": True}
JWK2 = {"kty": "EC", "crv": "P-521", "x": "Bnew", "y": "Bnex"}

# Everything the bootstrap defines, as content (names, definitions, privileges, rows).
_SNAPSHOT_QUERIES = {
    "namespaces": """
        select nspname, nspacl::text from pg_namespace
         where nspname in ('base', 'wm') order by 1""",
    "relations": """
        select n.nspname, c.relname, c.relkind, c.relacl::text,
               case when c.relkind = 'v' then pg_get_viewdef(c.oid) end
          from pg_class c join pg_namespace n on n.oid = c.relnamespace
         where n.nspname in ('base', 'wm') order by 1, 2""",
    "columns": """
        select c.oid::regclass::text, a.attname, format_type(a.atttypid, a.atttypmod),
               a.attnotnull, pg_get_expr(d.adbin, d.adrelid)
          from pg_attribute a
          join pg_class c on c.oid = a.attrelid
          join pg_namespace n on n.oid = c.relnamespace
          left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
         where n.nspname in ('base', 'wm') and a.attnum > 0 and not a.attisdropped
         order by 1, 2""",
    "functions": """
        select n.nspname, p.proname, pg_get_function_identity_arguments(p.oid), p.prosrc,
               p.prosecdef, p.proconfig::text, p.proacl::text, obj_description(p.oid, 'pg_proc')
          from pg_proc p join pg_namespace n on n.oid = p.pronamespace
         where n.nspname in ('base', 'wm') order by 1, 2, 3""",
    "triggers": """
        select tgrelid::regclass::text, tgname, pg_get_triggerdef(oid) from pg_trigger
         where not tgisinternal and tgrelid::regclass::text ~ '^(base|wm)\\.' order by 1, 2""",
    "constraints": """
        select conrelid::regclass::text, conname, pg_get_constraintdef(oid) from pg_constraint
         where connamespace in (select oid from pg_namespace where nspname in ('base', 'wm'))
         order by 1, 2""",
}
_DATA_QUERIES = {
    "wm.message_text": "select * from wm.message_text order by 1, 2, 3, 4",
    "wm.table_text": "select * from wm.table_text order by 1, 2, 3",
    "wm.column_text": "select * from wm.column_text order by 1, 2, 3, 4",
    "base.parm": "select * from base.parm order by 1, 2",
    "wm.wyseman_schema": "select * from wm.wyseman_schema order by 1",
}
# Row versions: any rewrite of a catalogue row or data row changes these.
_XMIN_QUERIES = {
    "class": """select c.oid, c.xmin::text from pg_class c join pg_namespace n
                 on n.oid = c.relnamespace where n.nspname in ('base', 'wm') order by 1""",
    "proc": """select p.oid, p.xmin::text from pg_proc p join pg_namespace n
                on n.oid = p.pronamespace where n.nspname in ('base', 'wm') order by 1""",
    "namespace": "select oid, xmin::text from pg_namespace where nspname in ('base','wm')",
}


def snapshot(dsn: str, *, data: bool = True, row_versions: bool = False) -> dict[str, Any]:
    conn = connect_sync(dsn)
    out: dict[str, Any] = {}
    try:
        with conn.cursor() as cur:
            queries = dict(_SNAPSHOT_QUERIES)
            if data:
                queries.update(_DATA_QUERIES)
            if row_versions:
                queries.update(_XMIN_QUERIES)
                if data:
                    for name in _DATA_QUERIES:
                        queries["xmin " + name] = f"select xmin::text from {name} order by 1"
            for name, query in queries.items():
                cur.execute(query)
                out[name] = cur.fetchall()
    finally:
        conn.close()
    return out


def add_entity(db: Any, username: str) -> str:
    return db.run("insert into base.ent (ent_name, username) values (%s, %s) returning id",
                  (username.title(), username))[0][0]


def ticket(db: Any, username: str) -> str:
    return db.run("select token from base.ticket_login(base.user_id(%s))", (username,))[0][0]


def token_valid(dsn_or_db: Any, user: str, token: str, pub: Any,
                path: list[str] | None = None) -> bool:
    """Call token_valid as the gateway does: the key as JSON text cast to jsonb."""
    pub_json = pub if isinstance(pub, str) else json.dumps(pub)
    if path is None:
        rows = dsn_or_db.run("select base.token_valid(%s, %s, %s::jsonb)", (user, token, pub_json))
    else:
        rows = dsn_or_db.run("select base.token_valid(%s, %s, %s::jsonb, %s)",
                             (user, token, pub_json, path))
    return rows[0][0]


class CreateTests(SynchronousTestCase):
    def test_init_on_empty_database_creates_everything(self) -> None:
        db = fresh_database(self, "empty")
        result = bootstrap.init_database_sync(db.dsn)
        self.assertEqual(result.status, InitStatus.CREATED)
        self.assertEqual(result.version, bootstrap.SCHEMA_VERSION)
        self.assertTrue(result.changed)
        self.assertIn("created", result.message)
        names = {f"{s}.{n}" for s, n, *_ in snapshot(db.dsn, data=False)["relations"]}
        for name in ("base.ent", "base.ent_v", "base.token", "base.token_v",
                     "base.token_v_ticket", "base.parm", "base.parm_v", "wm.table_meta",
                     "wm.table_lang", "wm.lang", "wm.table_text", "wm.column_text",
                     "wm.message_text", "wm.value_text", "wm.table_style",
                     "wm.column_style", "wm.wyseman_schema"):
            self.assertIn(name, names)
        functions = {f"{s}.{n}({a})" for s, n, a, *_ in snapshot(db.dsn, data=False)["functions"]}
        for signature in ("base.token_valid(uname text, tok text, pub jsonb, path text[])",
                          "base.ticket_login(uid text)", "base.user_id(text)",
                          "base.username(text)", "base.curr_eid()",
                          "base.parm_text(m text, p text)", "base.parm_int(m text, p text)",
                          "base.parmset(m text, p text, v anyelement, t text)",
                          "wm.init_dictionary()"):
            self.assertIn(signature, functions)
        # no default port: a ticket names the port the config's server listens on
        self.assertEqual(db.run("select base.parm_text('wyseman', 'host'), "
                                "base.parm_int('wyseman', 'port')"), [("localhost", None)])
        self.assertEqual(db.run("select version from wm.wyseman_schema"),
                         [(bootstrap.SCHEMA_VERSION,)])

    def test_second_init_changes_nothing(self) -> None:
        db = fresh_database(self, "empty")
        self.assertEqual(bootstrap.init_database_sync(db.dsn).status, InitStatus.CREATED)
        before = snapshot(db.dsn, row_versions=True)
        result = bootstrap.init_database_sync(db.dsn)
        self.assertEqual(result.status, InitStatus.ALREADY_CURRENT)
        self.assertFalse(result.changed)
        self.assertIn("nothing changed", result.message)
        self.assertEqual(snapshot(db.dsn, row_versions=True), before)

    def test_template_database_is_current(self) -> None:
        db = fresh_database(self)
        self.assertEqual(bootstrap.bootstrap_sql_sync(db.dsn).status,
                         InitStatus.ALREADY_CURRENT)

    def test_schema_sql_applied_twice_is_a_no_op(self) -> None:
        db = fresh_database(self, "empty")
        db.run(bootstrap.schema_sql())
        before = snapshot(db.dsn)
        db.run(bootstrap.schema_sql())
        self.assertEqual(snapshot(db.dsn), before)

    def test_schema_sql_writes_the_declared_version(self) -> None:
        self.assertIn(f"insert into wm.wyseman_schema (version) values "
                      f"({bootstrap.SCHEMA_VERSION})", bootstrap.schema_sql())
        self.assertEqual(bootstrap.schema_files(), sorted(bootstrap.schema_files()))
        self.assertNotRegex(bootstrap.schema_sql().lower(), r"(?m)^\s*(begin|commit)\s*;")

    def test_failure_leaves_the_database_unchanged(self) -> None:
        db = fresh_database(self, "empty")
        # wm.lang as a table: 'create or replace view wm.lang' fails half-way through.
        db.run("create schema wm; create table wm.lang (x int)")
        self.assertRaises(psycopg2.Error, bootstrap.init_database_sync, db.dsn)
        self.assertEqual(db.run("select to_regnamespace('base') is null, "
                                "to_regclass('wm.wyseman_schema') is null"), [(True, True)])

    def test_upgrade_from_an_older_version(self) -> None:
        db = fresh_database(self)
        db.run("update wm.wyseman_schema set version = 0")
        result = bootstrap.init_database_sync(db.dsn)
        self.assertEqual(result.status, InitStatus.UPGRADED)
        self.assertEqual(db.run("select max(version) from wm.wyseman_schema"),
                         [(bootstrap.SCHEMA_VERSION,)])

    def test_upgrade_from_version_3_adds_the_shared_state(self) -> None:
        """A database made before the shared-state tables (version 3) gets them, and keeps
        its users and their keys."""
        db = fresh_database(self)
        add_entity(db, "keeper")
        db.run("drop schema wyseman_shared cascade; "
               "update wm.wyseman_schema set version = 3")
        result = bootstrap.init_database_sync(db.dsn)
        self.assertEqual(result.status, InitStatus.UPGRADED)
        self.assertIn(f"from version 3 to {bootstrap.SCHEMA_VERSION}", result.message)
        self.assertEqual(db.run("select to_regclass('wyseman_shared.replay') is not null, "
                                "to_regclass('wyseman_shared.user_slot') is not null, "
                                "(select count(*) from base.ent where username = 'keeper')"),
                         [(True, True, 1)])
        self.assertEqual(db.run("select relpersistence from pg_class where oid = "
                                "'wyseman_shared.replay'::regclass"), [("u",)])

    def test_upgrade_from_version_4_adds_the_key_login_calls(self) -> None:
        """A version-4 database (the shared tables without the calls of version 5, counts
        above 0 only) gets them and takes counts of 0; the rows it held stay."""
        from wyseman.db.shared import SCHEMA_CHECK_SQL
        db = fresh_database(self)
        db.run("drop function wyseman_shared.key_logins(text, text[], bytea[], "
               "double precision[], double precision[], integer); "
               "drop function wyseman_shared.key_login(text, text, bytea, timestamptz, "
               "timestamptz, integer); "
               "drop function wyseman_shared.slot_release_many(text, text[], integer[]); "
               "drop function wyseman_shared.host_calls(text, text[], bytea[], "
               "double precision[], double precision[], integer, text[], integer[]); "
               "alter table wyseman_shared.user_slot drop constraint user_slot_count_check, "
               "add constraint user_slot_count_check check (count > 0); "
               "insert into wyseman_shared.user_slot values ('h', 'alice', 2); "
               "update wm.wyseman_schema set version = 4")
        result = bootstrap.init_database_sync(db.dsn)
        self.assertEqual(result.status, InitStatus.UPGRADED)
        self.assertIn(f"from version 4 to {bootstrap.SCHEMA_VERSION}", result.message)
        self.assertEqual(db.run("select pg_get_constraintdef(oid) from pg_constraint "
                                "where conname = 'user_slot_count_check'"),
                         [("CHECK ((count >= 0))",)])
        self.assertEqual(db.run(SCHEMA_CHECK_SQL + ", (select count from "
                                "wyseman_shared.user_slot)"), [(True, 2)])

    def test_upgrade_from_version_5_adds_the_host_calls(self) -> None:
        """A version-5 database (its key logins and releases as two calls) gets the one
        call of version 6, and keeps the calls of version 5 for the hosts not yet
        upgraded."""
        from wyseman.db.shared import SCHEMA_CHECK_SQL
        db = fresh_database(self)
        db.run("drop function wyseman_shared.host_calls(text, text[], bytea[], "
               "double precision[], double precision[], integer, text[], integer[]); "
               "update wm.wyseman_schema set version = 5")
        self.assertEqual(db.run(SCHEMA_CHECK_SQL), [(False,)])
        result = bootstrap.init_database_sync(db.dsn)
        self.assertEqual(result.status, InitStatus.UPGRADED)
        self.assertIn(f"from version 5 to {bootstrap.SCHEMA_VERSION}", result.message)
        self.assertEqual(db.run(SCHEMA_CHECK_SQL + ", to_regprocedure('wyseman_shared."
                                "key_logins(text, text[], bytea[], double precision[], "
                                "double precision[], integer)') is not null"), [(True, True)])

    def test_ensure_database(self) -> None:
        db = fresh_database(self, "empty")
        name = db.name + "_x"
        self.addCleanup(db.run, f'drop database if exists "{name}"')
        server = db.dsn
        self.assertTrue(bootstrap.ensure_database_sync(server, name))
        self.assertFalse(bootstrap.ensure_database_sync(server, name))
        self.assertEqual(db.run("select count(*) from pg_database where datname = %s", (name,)),
                         [(1,)])


class WyselibDetectionTests(SynchronousTestCase):
    def test_wyselib_fixture_is_left_alone(self) -> None:
        db = fresh_database(self, "empty")
        db.run(FIXTURE.read_text())
        before = snapshot(db.dsn, data=False, row_versions=True)
        rows_before = db.run("select xmin::text, * from base.parm order by module, parm")
        result = bootstrap.init_database_sync(db.dsn)
        self.assertEqual(result.status, InitStatus.WYSELIB_DETECTED)
        self.assertIn("wyselib schema detected", result.message)
        self.assertIn("nothing changed", result.message)
        self.assertEqual(snapshot(db.dsn, data=False, row_versions=True), before)
        self.assertEqual(db.run("select xmin::text, * from base.parm order by module, parm"),
                         rows_before)
        self.assertEqual(db.run("select to_regclass('wm.wyseman_schema'), "
                                "to_regclass('wm.table_meta')"), [(None, None)])

    def test_foreign_token_valid_alone_is_detected(self) -> None:
        db = fresh_database(self, "empty")
        db.run("create schema base; create function base.token_valid(text, text, jsonb) "
               "returns boolean language sql as 'select false'")
        self.assertEqual(bootstrap.init_database_sync(db.dsn).status,
                         InitStatus.WYSELIB_DETECTED)

    def test_the_shared_state_file_applies_by_hand_to_a_wyselib_database(self) -> None:
        """docs/operations.md, "Several hosts": `db init` leaves a wyselib database alone,
        the operator applies 008_shared_state.sql, 009_shared_login.sql and
        010_shared_calls.sql; they need nothing of ours."""
        from importlib import resources

        from wyseman.db.shared import SCHEMA_CHECK_SQL
        db = fresh_database(self, "empty")
        db.run(FIXTURE.read_text())
        for name in ("008_shared_state.sql", "009_shared_login.sql", "010_shared_calls.sql"):
            sql = (resources.files("wyseman.provision") / "schema" / name)
            db.run(sql.read_text(encoding="utf-8"))
        self.assertEqual(db.run("select to_regclass('wyseman_shared.user_slot') is not null, "
                                "to_regclass('wm.wyseman_schema')"), [(True, None)])
        self.assertEqual(db.run(SCHEMA_CHECK_SQL), [(True,)])
        self.assertEqual(bootstrap.init_database_sync(db.dsn).status,
                         InitStatus.WYSELIB_DETECTED)

    def test_wyseman_bookkeeping_tables_are_detected(self) -> None:
        db = fresh_database(self, "empty")
        db.run("create schema wm; create table wm.releases (release int)")
        self.assertEqual(bootstrap.init_database_sync(db.dsn).status,
                         InitStatus.WYSELIB_DETECTED)

    def test_replaced_token_valid_is_detected(self) -> None:
        db = fresh_database(self)
        db.run("comment on function base.token_valid(text, text, jsonb, text[]) is null")
        self.assertEqual(bootstrap.init_database_sync(db.dsn).status,
                         InitStatus.WYSELIB_DETECTED)


class TokenValidTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.db = fresh_database(self)
        self.eid = add_entity(self.db, "alice")

    def conn_pub(self) -> Any:
        return self.db.run("select conn_pub from base.ent where username = 'alice'")[0][0]

    def test_one_time_use_and_default_path(self) -> None:
        tok = ticket(self.db, "alice")
        self.assertEqual(len(tok), 32)
        self.assertTrue(token_valid(self.db, "alice", tok, JWK))
        self.assertEqual(self.conn_pub(), {"default": JWK})
        self.assertFalse(token_valid(self.db, "alice", tok, JWK))
        self.assertEqual(self.db.run("select valid, used is not null from base.token_v "
                                     "where token = %s", (tok,)), [(False, True)])

    def test_expired_token_is_refused(self) -> None:
        tok = ticket(self.db, "alice")
        self.db.run("update base.token set expires = now() - interval '1 second'")
        self.assertFalse(token_valid(self.db, "alice", tok, JWK))
        self.assertIsNone(self.conn_pub())
        self.assertEqual(self.db.run("select expired from base.token_v"), [(True,)])

    def test_expiry_is_absolute_time(self) -> None:
        # timestamptz: a ticket issued in one time zone is checked correctly in another
        # (a zone-less expiry made at UTC-10 would look expired at UTC+14).
        tok = self.db.run("set timezone = 'America/Adak'; "
                          "select token from base.ticket_login(base.user_id('alice'))")[0][0]
        self.assertEqual(self.db.run("set timezone = 'Pacific/Kiritimati'; "
                                     "select valid from base.token_v"), [(True,)])
        self.assertEqual(self.db.run("set timezone = 'Pacific/Kiritimati'; select "
                                     "base.token_valid('alice', %s, %s::jsonb)",
                                     (tok, json.dumps(JWK))), [(True,)])

    def test_only_the_newest_token_counts(self) -> None:
        old = ticket(self.db, "alice")
        new = ticket(self.db, "alice")
        self.assertEqual(self.db.run("select token_seq from base.token order by 1"), [(1,), (2,)])
        self.assertFalse(token_valid(self.db, "alice", old, JWK))
        self.assertTrue(token_valid(self.db, "alice", new, JWK))

    def test_non_login_tokens_are_ignored(self) -> None:
        tok = ticket(self.db, "alice")
        self.db.run("insert into base.token (token_ent, allows) values (%s, 'other')",
                    (self.eid,))
        self.assertTrue(token_valid(self.db, "alice", tok, JWK))

    def test_key_stored_at_given_path_and_merged(self) -> None:
        self.assertTrue(token_valid(self.db, "alice", ticket(self.db, "alice"), JWK,
                                    ["websocket"]))
        self.assertEqual(self.conn_pub(), {"websocket": JWK})
        self.assertTrue(token_valid(self.db, "alice", ticket(self.db, "alice"), JWK2))
        self.assertEqual(self.conn_pub(), {"websocket": JWK, "default": JWK2})

    def test_non_object_conn_pub_is_replaced(self) -> None:
        self.db.run("update base.ent set conn_pub = '\"junk\"' where id = %s", (self.eid,))
        self.assertTrue(token_valid(self.db, "alice", ticket(self.db, "alice"), JWK))
        self.assertEqual(self.conn_pub(), {"default": JWK})

    def test_malformed_keys_are_refused(self) -> None:
        tok = ticket(self.db, "alice")
        bad = ['[]', '"key"', '42', 'null', '{}',
               dict(JWK, kty="RSA"), dict(JWK, crv="P-256"),
               {k: v for k, v in JWK.items() if k != "x"},
               {k: v for k, v in JWK.items() if k != "y"},
               dict(JWK, x=5), dict(JWK, y=None), dict(JWK, d="secret")]
        for pub in bad:
            self.assertFalse(token_valid(self.db, "alice", tok, pub), pub)
        self.assertFalse(token_valid(self.db, "alice", tok, JWK, []))
        self.assertFalse(token_valid(self.db, "alice", tok, JWK, ["a", "b"]))  # uncreatable
        self.assertIsNone(self.conn_pub())
        self.assertTrue(token_valid(self.db, "alice", tok, JWK))  # still unused

    def test_wrong_token_or_user(self) -> None:
        tok = ticket(self.db, "alice")
        add_entity(self.db, "bob")
        self.assertFalse(token_valid(self.db, "alice", tok.upper(), JWK))
        self.assertFalse(token_valid(self.db, "alice", "", JWK))
        self.assertFalse(token_valid(self.db, "bob", tok, JWK))
        self.assertFalse(token_valid(self.db, "nobody", tok, JWK))
        self.assertTrue(token_valid(self.db, "alice", tok, JWK))

    def test_concurrent_use_exactly_one_succeeds(self) -> None:
        tok = ticket(self.db, "alice")
        first = psycopg2.connect(self.db.dsn)  # transaction left open until we commit
        self.addCleanup(first.close)
        second = connect_sync(self.db.dsn)
        self.addCleanup(second.close)
        call = "select base.token_valid(%s, %s, %s::jsonb)"
        with first.cursor() as cur:
            cur.execute(call, ("alice", tok, json.dumps(JWK)))
            self.assertTrue(cur.fetchone()[0])
        outcome: list[Any] = []

        def other() -> None:
            try:
                with second.cursor() as cur:
                    cur.execute(call, ("alice", tok, json.dumps(JWK2)))
                    outcome.append(cur.fetchone()[0])
            except Exception as exc:  # reported below
                outcome.append(exc)

        thread = threading.Thread(target=other, daemon=True)
        thread.start()
        pid = second.get_backend_pid()
        deadline = time.monotonic() + 10
        while True:
            waiting = self.db.run("select wait_event_type from pg_stat_activity where pid = %s",
                                  (pid,))
            if waiting and waiting[0][0] == "Lock":
                break
            self.assertLess(time.monotonic(), deadline, "second call never waited for the lock")
            time.sleep(0.02)
        self.assertTrue(thread.is_alive())
        first.commit()
        thread.join(10)
        self.assertEqual(outcome, [False])
        self.assertEqual(self.conn_pub(), {"default": JWK})


class DictionaryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.db = fresh_database(self)
        self.db.run("""
            create schema app;
            create table app.item (id int primary key, code varchar(10) not null,
                                   data jsonb, price numeric(8,2),
                                   owner text references base.ent(id));
            create table app.line (item int, seq int, note text, primary key (item, seq),
                                   foreign key (item) references app.item);
            create view app.item_v as
                select i.id, i.code, i.data, e.std_name
                  from app.item i left join base.ent_v e on e.id = i.owner;
            create view app.item_vv as select id, code, owner from app.item;
            create view app.line_v as select l.item, l.seq, l.note from app.line l;
        """)

    def meta(self, obj: str) -> dict[str, Any] | None:
        conn = connect_sync(self.db.dsn)
        try:
            with conn.cursor() as cur:
                cur.execute("select obj, pkey, cols, columns, styles, fkeys from wm.table_meta "
                            "where obj = %s", (obj,))
                rows = cur.fetchall()
                names = [d.name for d in cur.description]
        finally:
            conn.close()
        self.assertLessEqual(len(rows), 1)
        return dict(zip(names, rows[0], strict=True)) if rows else None

    def test_table_row_shape(self) -> None:
        meta = self.meta("app.item")
        self.assertEqual(meta["obj"], "app.item")
        self.assertEqual(meta["pkey"], ["id"])
        self.assertEqual(meta["cols"], 5)
        self.assertIsNone(meta["styles"])
        columns = {c["col"]: c for c in meta["columns"]}
        self.assertEqual([c["col"] for c in meta["columns"]],
                         ["id", "code", "data", "price", "owner"])
        self.assertEqual(columns["id"], {"col": "id", "field": 1, "type": "int4", "nonull": True,
                                         "length": 4, "pkey": True, "values": None,
                                         "styles": {}})
        self.assertEqual({k: (c["type"], c["nonull"], c["pkey"]) for k, c in columns.items()},
                         {"id": ("int4", True, True), "code": ("varchar", True, False),
                          "data": ("jsonb", False, False), "price": ("numeric", False, False),
                          "owner": ("text", False, False)})
        self.assertIsNone(columns["code"]["length"])
        self.assertEqual(meta["fkeys"], [{"table": "base.ent", "columns": ["owner"],
                                          "foreign": ["id"]}])

    def test_view_row_shape(self) -> None:
        meta = self.meta("app.item_v")
        self.assertEqual(meta["pkey"], ["id"])
        self.assertEqual(meta["cols"], 4)
        columns = {c["col"]: c for c in meta["columns"]}
        self.assertEqual({k: (c["type"], c["nonull"], c["pkey"]) for k, c in columns.items()},
                         {"id": ("int4", True, True), "code": ("varchar", True, False),
                          "data": ("jsonb", False, False), "std_name": ("text", False, False)})
        self.assertIsNone(meta["fkeys"])  # owner is not in the view
        self.assertEqual(self.meta("app.item_vv")["fkeys"],
                         [{"table": "base.ent", "columns": ["owner"], "foreign": ["id"]}])
        line = self.meta("app.line_v")
        self.assertEqual(line["pkey"], ["item", "seq"])
        self.assertEqual(line["fkeys"], [{"table": "app.item", "columns": ["item"],
                                          "foreign": ["id"]}])
        ent = self.meta("base.ent_v")
        self.assertEqual(ent["pkey"], ["id"])
        self.assertIn({"col": "conn_pub", "type": "jsonb"},
                      [{"col": c["col"], "type": c["type"]} for c in ent["columns"]])
        token = self.meta("base.token_v")
        self.assertEqual(token["pkey"], ["token_ent", "token_seq"])

    def test_styles_and_values(self) -> None:
        self.db.run("""
            insert into wm.table_style values ('app', 'item', 'subviews', '["app.line_v"]');
            insert into wm.column_style values ('app', 'item', 'code', 'size', '10'),
                                               ('app', 'item', 'code', 'state', '"readonly"'),
                                               ('app', 'item_vv', 'code', 'size', '12');
            insert into wm.value_text values ('app', 'item', 'code', 'A', 'eng', 'Alpha', null),
                                             ('app', 'item', 'code', 'B', 'eng', 'Beta', null);
        """)
        meta = self.meta("app.item")
        self.assertEqual(meta["styles"], {"subviews": ["app.line_v"]})
        code = [c for c in meta["columns"] if c["col"] == "code"][0]
        self.assertEqual(code["styles"], {"size": 10, "state": "readonly"})
        self.assertEqual(code["values"], ["A", "B"])
        view_code = [c for c in self.meta("app.item_vv")["columns"] if c["col"] == "code"][0]
        self.assertEqual(view_code["styles"], {"size": 12, "state": "readonly"})
        self.assertEqual(view_code["values"], ["A", "B"])

    def test_names_must_match_exactly(self) -> None:
        self.assertIsNone(self.meta("item"))
        self.assertIsNone(self.meta("public.item"))
        self.assertIsNone(self.meta("pg_catalog.pg_class"))
        self.assertIsNone(self.meta("information_schema.tables"))
        self.assertIsNotNone(self.meta("wm.lang"))

    def test_lookup_describes_only_the_requested_relation(self) -> None:
        # The per-relation function runs once for a lookup by obj, not once per relation.
        plan = "\n".join(r[0] for r in self.db.run(
            "explain (analyze, costs off, timing off) "
            "select * from wm.table_meta where obj = 'app.item'"))
        self.assertRegex(plan, r"Function Scan on relation_meta m \(actual rows=1 loops=1\)")

    def test_lang_of_wm_lang_has_every_server_code(self) -> None:
        rows = self.db.run("select title, help, columns, messages from wm.table_lang "
                           "where obj = 'wm.lang' and language = 'eng'")
        self.assertEqual(len(rows), 1)
        title, help_, columns, messages = rows[0]
        self.assertTrue(title and help_)
        self.assertEqual([c["col"] for c in columns], ["always"])
        by_code = {m["code"]: m for m in messages}
        codes = {"badAction", "badMessage", "badTuples", "badFieldName", "badLeft", "badRight",
                 "badOperator", "badInsert", "badUpdate", "badWhere", "badDelete", "noResult",
                 "badLogic"}
        for path in SOURCE.rglob("*.py"):
            codes.update(re.findall(r'ProtocolError\(\s*"([A-Za-z]+)"', path.read_text()))
        self.assertEqual(codes - set(by_code), set())
        for code in codes:
            self.assertTrue(by_code[code]["title"] and by_code[code]["help"], code)

    def test_lang_of_a_relation(self) -> None:
        self.assertEqual(self.db.run("select count(*) from wm.table_lang "
                                     "where obj = 'app.item_v'"), [(0,)])
        self.db.run("""
            insert into wm.table_text values ('app', 'item_v', 'eng', 'Items', 'All items'),
                                             ('app', 'item_v', 'fra', 'Articles', null);
            insert into wm.column_text values ('app', 'item', 'code', 'eng', 'Code', 'Item code'),
                                              ('app', 'item_v', 'id', 'eng', 'Number', null);
            insert into wm.value_text values ('app', 'item', 'code', 'A', 'eng', 'Alpha', 'a');
        """)
        rows = self.db.run("select title, help, columns, messages from wm.table_lang "
                           "where obj = 'app.item_v' and language = 'eng'")
        self.assertEqual(len(rows), 1)
        title, help_, columns, messages = rows[0]
        self.assertEqual((title, help_, messages), ("Items", "All items", None))
        self.assertEqual(columns, [
            {"col": "id", "title": "Number", "help": None, "values": None},
            {"col": "code", "title": "Code", "help": "Item code",
             "values": [{"value": "A", "title": "Alpha", "help": "a"}]},
            {"col": "data", "title": "data", "help": None, "values": None},
            {"col": "std_name", "title": "std_name", "help": None, "values": None}])
        self.assertEqual(self.db.run("select title from wm.table_lang "
                                     "where obj = 'app.item_v' and language = 'fra'"),
                         [("Articles",)])
        # Texts of a relation that no longer exists are not shown.
        self.db.run("drop view app.item_v")
        self.assertEqual(self.db.run("select count(*) from wm.table_lang "
                                     "where obj = 'app.item_v'"), [(0,)])

    def test_init_dictionary_notifies(self) -> None:
        conn = connect_sync(self.db.dsn)
        self.addCleanup(conn.close)
        with conn.cursor() as cur:
            cur.execute("listen wyseman")
        self.assertEqual(self.db.run("select wm.init_dictionary()"), [(True,)])
        with conn.cursor() as cur:
            cur.execute("select 1")
        conn.poll()
        self.assertEqual([(n.channel, json.loads(n.payload)) for n in conn.notifies],
                         [("wyseman", {"target": "dict"})])


class GrantTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.db = fresh_database(self)
        self.plain = self.db.role_name("plain")
        self.member = self.db.role_name("member")
        self.db.run(f'create role "{self.plain}" login')
        self.db.run(f'create role "{self.member}" login in role wyseman_user')
        add_entity(self.db, self.member)

    def as_role(self, role: str, statement: str, params: Any = None) -> list[tuple]:
        conn = connect_sync(self.db.user_dsn(role))
        try:
            with conn.cursor() as cur:
                cur.execute(statement, params)
                return cur.fetchall()
        finally:
            conn.close()

    def test_every_role_reads_the_dictionary(self) -> None:
        for role in (self.plain, self.member):
            self.assertEqual(self.as_role(role, "select obj, pkey from wm.table_meta "
                                                "where obj = 'base.ent'"),
                             [("base.ent", ["id"])])
            rows = self.as_role(role, "select count(*) from wm.table_lang "
                                      "where obj = 'wm.lang' and language = 'eng'")
            self.assertEqual(rows, [(1,)])

    def test_login_schema_is_private(self) -> None:
        for role in (self.plain, self.member):
            for statement in ("select * from base.token", "select * from base.ent",
                              "select * from base.ent_v", "select * from base.token_v",
                              "select base.token_valid('a', 'b', '{}')",
                              "select base.ticket_login('p1000')",
                              "select base.user_id('a')", "select base.parm_text('a', 'b')",
                              "select wm.init_dictionary()",
                              "select * from wm.wyseman_schema"):
                self.assertRaises(psycopg2.errors.InsufficientPrivilege,
                                  self.as_role, role, statement)

    def test_members_know_who_they_are(self) -> None:
        self.assertEqual(self.as_role(self.member, "select base.curr_eid() ~ '^p[0-9]+$'"),
                         [(True,)])
        self.assertRaises(psycopg2.errors.InsufficientPrivilege,
                          self.as_role, self.plain, "select base.curr_eid()")
