"""Values as node-pg renders them, checked against node-pg itself: for each type below,
PostgreSQL's text of a value is given to node-pg's parser for its oid (tests/js/
pg_types.js, with the parsers npm wyseman sets), and both of our renderers — the Python
one (wyseman.db.types) and PostgreSQL's row_to_json with our casts (wyseman.sql.json_rows)
— must give the same JSON. Arrays node-pg has no parser for (name[], "char"[], ranges'
arrays, int2vector) reach Node clients as their array text, so they must reach ours so."""

from __future__ import annotations

import json
import subprocess

import orjson
from twisted.trial.unittest import TestCase

from tests.jsinterop import JS_DIR, node
from tests.pgtest import connect_sync, fresh_database
from wyseman.db import database, types
from wyseman.sql import json_rows

#: (column type, a value's literal): arrays node-pg parses and some it does not, and the
#: geometric scalars it parses
CASES = [
    ("name[]", '{release,"a b"}'),
    ('"char"[]', "{a,b}"),
    ("date[]", "{2024-02-29,infinity,NULL,0044-03-15 BC}"),
    ("inet[]", "{192.168.0.1,::1}"),
    ("cidr[]", "{10.0.0.0/8}"),
    ("macaddr[]", "{08:00:2b:01:02:03}"),
    ("regproc[]", "{now}"),
    ("numrange[]", '{"[1,2)",empty}'),
    ("daterange[]", '{"[2024-01-01,2024-02-01)"}'),
    ("int4range", "[1,5)"),
    ("tstzrange", '["2024-01-01 10:00+00",)'),
    ("money[]", "{1.50,-2}"),
    ("point[]", '{"(1,2)","(3.5,-4)"}'),
    ("point", "(1,2)"),
    ("circle", "<(1,2),3>"),
    ("int2vector", "1 2"),
    ("bool[]", "{t,f,NULL}"),
    ("oid[]", "{1,2}"),
    ("char(3)[]", '{a,"b c"}'),
    ("numeric[]", "{1.5,NaN,-0.25}"),
    ("int8[]", "{9007199254740993,-1}"),
    ("text[]", '{"",NULL,"a,b"}'),
    ("uuid[]", "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}"),
    ("timestamp[]", '{"2024-01-01 10:00:00.1234",infinity}'),
    ("timestamptz[]", '{"2024-01-01 10:00:00+02"}'),
    ("interval[]", '{"1 day 02:03:04.5"}'),
    ("time[]", '{"10:00:00"}'),
    ("jsonb[]", '{"{\\"a\\": 1}"}'),
]


class NodeRenderingTests(TestCase):
    timeout = 120

    def test_each_type_as_node_pg_renders_it(self) -> None:
        executable = node()
        db = fresh_database(self)
        columns = ", ".join(f"c{i} {kind}" for i, (kind, _) in enumerate(CASES))
        values = ", ".join(f"%(v{i})s" for i in range(len(CASES)))
        db.run(f"create table rendered ({columns}); create view rendered_v as "
               "select * from rendered")
        db.run(f"insert into rendered values ({values})",
               {f"v{i}": literal for i, (_, literal) in enumerate(CASES)})
        names = [f"c{i}" for i in range(len(CASES))]
        conn = connect_sync(db.dsn)
        self.addCleanup(conn.close)
        with conn.cursor() as cur:
            for statement in types.SESSION_SETUP:
                cur.execute(statement)
            texts = ", ".join(f"{n}::text, pg_typeof({n})::oid::int" for n in names)
            cur.execute(f"select {texts} from rendered")
            row = cur.fetchone()
            cur.execute(database._COLUMNS_SQL, {"rel": '"public"."rendered_v"'})
            column_types = dict(cur.fetchall())
        inputs = [[row[2 * i + 1], row[2 * i]] for i in range(len(CASES))]
        out = subprocess.run([executable, str(JS_DIR / "pg_types.js"), json.dumps(inputs)],
                             capture_output=True, text=True, check=True, cwd=JS_DIR,
                             env={"TZ": "UTC", "PATH": "/usr/bin:/bin"})
        expected = [json.loads(line) for line in out.stdout.splitlines()]

        types.register(conn)
        with conn.cursor() as cur:
            cur.execute(f"select {', '.join(names)} from rendered_v")
            python = [orjson.loads(types.dumps(value)) for value in cur.fetchone()]
            by_json = []
            for name in names:
                sql = json_rows.rows_as_json(f'select "{name}" from "public"."rendered_v"',
                                             [name], column_types)
                if sql is None:          # (the Python renderer's, checked above)
                    by_json.append(python[names.index(name)])
                    continue
                cur.execute(sql)
                by_json.append(json.loads(cur.fetchone()[0])[name])
        for (kind, literal), node_json, ours, rows in zip(CASES, expected, python, by_json,
                                                          strict=True):
            self.assertEqual((kind, ours), (kind, node_json), f"Python renderer, {literal}")
            self.assertEqual((kind, rows), (kind, node_json), f"row_to_json, {literal}")

    def test_bytea_in_escape_format_too(self) -> None:
        """A session with ``bytea_output = 'escape'`` (set by a function, say) still
        gets bytea as node-pg's Buffer form."""
        db = fresh_database(self)
        conn = connect_sync(db.dsn)
        self.addCleanup(conn.close)
        types.register(conn)
        with conn.cursor() as cur:
            cur.execute("set bytea_output = 'escape'")
            cur.execute(r"select '\x610162ff'::bytea, array['\x00'::bytea, null]")
            value, values = cur.fetchone()
        self.assertEqual(orjson.loads(types.dumps(value)),
                         {"type": "Buffer", "data": [97, 1, 98, 255]})
        self.assertEqual(orjson.loads(types.dumps(values)),
                         [{"type": "Buffer", "data": [0]}, None])
