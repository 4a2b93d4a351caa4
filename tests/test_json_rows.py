"""Rows rendered as JSON by PostgreSQL (wyseman.sql.json_rows) must be exactly what the
Python renderer (wyseman.db.types) gives, which the differential test holds to the Node
server's output; here both paths run on the same rows, edge values included."""

from __future__ import annotations

import orjson
from twisted.trial.unittest import TestCase

from tests.pgtest import connect_sync, fresh_database
from wyseman.db import database, types
from wyseman.sql import json_rows
from wyseman.sql.compiler import compile_request

TYPED = """
create type mood as enum ('sad', 'happy');
create domain qty as numeric(8,3);
create table typed (
    id serial primary key, i2 int2, i4 int4, i8 int8, f4 real, f8 float8, n numeric,
    m money, b bool, tx text, vc varchar(5), bp char(3), u uuid, d date, t time, tz timetz,
    ts timestamp, tstz timestamptz, j json, jb jsonb, e mood, q qty,
    a_i8 int8[], a_i4 int4[], a_tx text[], a_d date[], a_jb jsonb[], "t.*" int, r text);
create view typed_v as select * from typed;
"""

ROWS = [
    "default values",
    """values (default, 1, -2147483648, 9223372036854775807, 0.1, 'NaN', 'NaN', 1.5, true,
               e'tab\\t"quote"\\\\ \\u00e9 \\U0001F600', 'abcde', 'a', gen_random_uuid(),
               'infinity', '24:00', '23:59:59.999999-14:59', 'infinity', '-infinity',
               '{"a": [1, 2.50, "x"]}', '{"b": {"c": null}}', 'sad', 'NaN', '{1,NULL}',
               '{}', '{"",NULL,"a,b"}', '{2024-02-29,infinity}', '{"{}","[1]"}', 7, 'r')""",
    """values (default, -32768, 0, -9223372036854775808, '-Infinity', 1e308, -0.000001,
               -12.34, false, '', '', '', null, '0044-03-15 BC', '00:00:00', '00:00+00',
               '0001-01-01 00:00 BC', '9999-12-31 23:59:59.9995+00', 'null', '"s"', 'happy',
               12345.678, '{{1,2},{3,4}}', '{{1}}', '{}', '{}', '{}', null, '')""",
    """values (default, 0, 7, 0, 3.4e38, -0.0, 1e-20, 0, null, 'x', null, null, null,
               '2000-01-01', '12:34:56.789', null, '12345-06-07 08:09:10.111',
               '0100-02-03 04:05:06.007 BC', '[]', '[]', null, -0.5, null, null, null, null,
               null, null, null)""",
    """values (default, null, null, 1, 1.17549e-38, 5e-324, 123456789012345678901234567890.5,
               null, null, 'line\\nbreak', 'é', 'xyz', null, '5874897-12-31', null, null,
               '294276-12-31 23:59:59', '275760-09-12 23:59:59.999+00', '1e300', '1.0e2',
               null, 0, '{-1}', '{-1}', null, null, null, null, null)""",
]


#: types of TYPED that only the Python renderer renders (node-pg makes a date[]'s elements
#: timestamps, which PostgreSQL's JSON cannot write in JS's form for every year)
PYTHON_ONLY = frozenset({"_date"})


def _columns(conn) -> dict[str, str]:
    with conn.cursor() as cur:
        cur.execute(database._COLUMNS_SQL, {"rel": '"public"."typed_v"'})
        return dict(cur.fetchall())


def _run(conn, sql: str, params: dict) -> list[tuple]:
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall(), [d.name for d in cur.description]


class JsonRowsUnitTests(TestCase):
    def test_plain_wrap_when_every_type_renders_as_is(self):
        sql = json_rows.rows_as_json('select "a" from "s"."v"', ["a"], {"a": "int4"})
        self.assertEqual(sql, 'select row_to_json(r.*)::text from (select "a" from "s"."v") r')

    def test_casts_sit_outside_so_order_by_sees_the_column(self):
        inner = 'select "p","a" from "s"."v" order by "p"'
        sql = json_rows.rows_as_json(inner, ["p", "a"], {"p": "numeric", "a": "text"})
        self.assertEqual(sql, 'select row_to_json(t.*)::text from (select r."p"::text as "p",'
                              f'r."a" from ({inner}) r) t')

    def test_unknown_type_or_repeated_name_keeps_the_python_renderer(self):
        for names, types_ in ((["a"], {"a": "interval"}), (["a"], {"a": "bytea"}),
                              (["a"], {"a": "my_composite"}), (["a"], {}),
                              (["a", "a"], {"a": "int4"})):
            self.assertIsNone(json_rows.rows_as_json("select 1", names, types_), names)

    def test_compiler_offers_json_only_with_metadata_of_a_relation(self):
        columns = {"id": "int4", "n": "numeric"}
        select = {"action": "select", "view": "s.v", "fields": ["n"], "order": ["n"]}
        self.assertIn("row_to_json", compile_request(select, columns).json_sql)
        self.assertIsNone(compile_request(select, None).json_sql)
        function = {"action": "select", "view": "s.f(int)", "params": [1], "fields": ["n"]}
        self.assertIsNone(compile_request(function, None).json_sql)
        for write in ({"action": "insert", "view": "s.v", "fields": {"n": 1}},
                      {"action": "delete", "view": "s.v", "where": {"id": 1}}):
            self.assertIsNone(compile_request(write, columns).json_sql)


class JsonRowsAgreeWithPythonTests(TestCase):
    """Every supported type, edge values, both paths: the same reply data."""

    def setUp(self):
        db = fresh_database(self)
        db.run(TYPED)
        for row in ROWS:
            db.run(f"insert into typed {row}")
        self.conn = connect_sync(db.dsn)
        self.addCleanup(self.conn.close)
        types.register(self.conn)
        with self.conn.cursor() as cur:
            for statement in types.SESSION_SETUP:
                cur.execute(statement)
        self.columns = _columns(self.conn)

    def both(self, request: dict) -> tuple[list, list]:
        statement = compile_request(request, self.columns)
        self.assertIsNotNone(statement.json_sql, request)
        rows, names = _run(self.conn, *statement.pyformat())
        python = orjson.loads(types.dumps([dict(zip(names, row, strict=True)) for row in rows]))
        texts, _ = _run(self.conn, *statement.pyformat(as_json=True))
        spliced = orjson.loads("[" + ",".join(text for (text,) in texts) + "]")
        return python, spliced

    def test_every_column(self):
        fields = [name for name, kind in self.columns.items() if kind not in PYTHON_ONLY]
        python, spliced = self.both({"action": "select", "view": "public.typed_v",
                                     "fields": fields, "order": ["id"]})
        self.assertEqual(len(python), len(ROWS))
        self.assertEqual(spliced, python)
        # and key order: clients that print rows see the columns in table order
        self.assertEqual([list(row) for row in spliced], [list(row) for row in python])

    def test_each_column_alone_and_in_order(self):
        for name, type_name in self.columns.items():
            if type_name in PYTHON_ONLY:
                select = {"action": "select", "view": "public.typed_v", "fields": [name]}
                self.assertIsNone(compile_request(select, self.columns).json_sql, name)
                continue
            for direction in (True, False):
                order = "id" if type_name in ("json", "_jsonb") else name  # no ordering
                request = {"action": "select", "view": "public.typed_v", "fields": [name],
                           "order": [{"field": order, "asc": direction}, "id"]}
                python, spliced = self.both(request)
                self.assertEqual(spliced, python, name)

    def test_timestamps_in_js_form(self):
        python, spliced = self.both({"action": "select", "view": "public.typed_v",
                                     "fields": ["ts", "tstz"], "order": ["id"]})
        self.assertEqual(spliced, python)
        self.assertEqual(spliced[1:], [
            {"ts": None, "tstz": None},
            {"ts": "0000-01-01T00:00:00.000Z", "tstz": "9999-12-31T23:59:59.999Z"},
            {"ts": "+012345-06-07T08:09:10.111Z", "tstz": "-000099-02-03T04:05:06.007Z"},
            {"ts": None, "tstz": "+275760-09-12T23:59:59.999Z"},
        ])

    def test_numeric_order_is_by_number_not_text(self):
        request = {"action": "select", "view": "public.typed_v", "fields": ["q"],
                   "where": {"left": "q", "oper": "notnull"},
                   "order": [{"field": "q", "asc": True}]}
        python, spliced = self.both(request)
        self.assertEqual(spliced, python)
        self.assertEqual([row["q"] for row in spliced], ["-0.500", "0.000", "12345.678", "NaN"])
