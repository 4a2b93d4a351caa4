"""The request→SQL compiler: golden SQL for every grammar form, every error code,
and each JS defect we fix (no database, no reactor)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from wyseman.errors import ProtocolError
from wyseman.sql.compiler import Policy, compile_request, parse_view
from wyseman.sql.values import array_literal, js_number

V = "s.v"  # a relation view


def sel(where=None, **extra):
    request = {"action": "select", "view": V}
    if where is not None:
        request["where"] = where
    request.update(extra)
    return request


# (request, meta_columns, expected sql, expected params, rows)
GOLDEN = [
    # fields and relation forms
    (sel(fields=["id", "std_name"]), None, 'select "id","std_name" from "s"."v"', (), "many"),
    (sel(fields="*"), None, 'select * from "s"."v"', (), "many"),
    (sel(fields="a,b"), None, 'select "a,b" from "s"."v"', (), "many"),
    (sel(), None, 'select * from "s"."v"', (), "many"),
    ({"action": "select", "view": "ent_v"}, None, 'select * from "public"."ent_v"', (), "many"),
    ({"action": "tuple", "view": "base.fn(int,text)", "where": {"a": 1}, "params": [5, "x"]},
     None, 'select "base"."fn"($2::int,$3::text) where "a" = $1', ("1", "5", "x"), "one"),
    ({"action": "tuple", "view": "wylib.set_data(text, text, text, text, jsonb)",
      "params": ["dbp:base.ent_v", "default", "Mine", None, '{"w":300}']}, None,
     'select "wylib"."set_data"($1::text,$2::text,$3::text,$4::text,$5::jsonb)',
     ("dbp:base.ent_v", "default", "Mine", None, '{"w":300}'), "one"),
    ({"action": "tuple", "view": "base.curr_eid()"}, None, 'select "base"."curr_eid"()', (),
     "one"),
    # named without a type list but given params: a function called uncast
    ({"action": "tuple", "view": "base.user_id", "params": ["alice"]}, None,
     'select "base"."user_id"($1)', ("alice",), "one"),
    ({"action": "select", "view": "s.f(int)", "fields": ["a"], "params": [1, 2]}, None,
     'select "a" from "s"."f"($1::int,$2)', ("1", "2"), "many"),
    ({"action": "tuple", "view": "s.f(varchar(8), numeric(10,2), timestamp(3) with time zone, "
      "double precision, int[], \"My Type\")", "params": []}, None, 'select "s"."f"()', (), "one"),
    # where: map form
    (sel({"ent_type": "p", "n": 5}), None,
     'select * from "s"."v" where ("ent_type" = $1 and "n" = $2)', ("p", "5"), "many"),
    (sel({"a": None}), None, 'select * from "s"."v" where "a" = $1', (None,), "many"),
    # where: list form, arrays and strings
    (sel([["a", "=", 1], "b = x y", ["c", "isnull"]]), None,
     'select * from "s"."v" where (("a" = $1) and ("b" = $2) and ("c" is null))',
     ("1", "x"), "many"),
    (sel([["a", "in", "1, 2 3"]]), None, 'select * from "s"."v" where ("a" = any($1))',
     ('{"1","2","3"}',), "many"),
    (sel([["a", "diff", 2]]), None, 'select * from "s"."v" where ("a" is distinct from $1)',
     ("2",), "many"),
    (sel(["a true"]), None, 'select * from "s"."v" where ("a")', (), "many"),
    (sel(["a notnull"]), None, 'select * from "s"."v" where ("a" is not null)', (), "many"),
    # where: clause nodes
    (sel({"left": "a", "oper": ">=", "entry": 0}), None,
     'select * from "s"."v" where ("a" >= $1)', ("0",), "many"),
    (sel({"left": "a", "entry": "x"}), None, 'select * from "s"."v" where ("a" = $1)', ("x",),
     "many"),
    (sel({"left": "a", "oper": "~", "right": "^x"}), None,
     'select * from "s"."v" where ("a" ~ $1)', ("^x",), "many"),
    (sel({"left": "a", "oper": "<"}), None, 'select * from "s"."v" where ("a" < $1)', ("",),
     "many"),
    (sel({"left": "a", "oper": "isnull", "not": True}), None,
     'select * from "s"."v" where not ("a" is null)', (), "many"),
    (sel({"left": "a", "oper": "true"}), None, 'select * from "s"."v" where ("a")', (), "many"),
    (sel({"left": "a", "oper": "nop"}), None, 'select * from "s"."v"', (), "many"),
    (sel({"left": "a", "oper": "in", "entry": ["x", "it's", None]}), None,
     'select * from "s"."v" where ("a" = any($1))', ('{"x","it\'s",NULL}',), "many"),
    (sel({"left": ["c1", "c2"], "oper": "in", "entry": [[1, 2], [3, 4]], "not": True}), None,
     'select * from "s"."v" where not (("c1"||\'~\'||"c2") = any($1))', ('{"1~2","3~4"}',),
     "many"),
    (sel({"left": "a", "oper": "in", "right": "arr"}), None,
     'select * from "s"."v" where ("a" = any("arr"))', (), "many"),
    # where: logic nodes (and defaults to true)
    (sel({"items": [{"left": "a", "entry": 1}, {"left": "b", "entry": 2}]}), None,
     'select * from "s"."v" where (("a" = $1) and ("b" = $2))', ("1", "2"), "many"),
    (sel({"and": False, "items": [{"left": "a", "entry": 1}, {"left": "b", "entry": 2}]}), None,
     'select * from "s"."v" where (("a" = $1) or ("b" = $2))', ("1", "2"), "many"),
    (sel({"items": []}), None, 'select * from "s"."v"', (), "many"),
    (sel({"items": [{"left": "a", "oper": "nop"}, {"left": "b", "entry": 1}]}), None,
     'select * from "s"."v" where ("b" = $1)', ("1",), "many"),
    # falsy where values mean no where
    (sel(0), None, 'select * from "s"."v"', (), "many"),
    (sel(""), None, 'select * from "s"."v"', (), "many"),
    (sel(False), None, 'select * from "s"."v"', (), "many"),
    # order, limit, offset
    (sel(order=[{"field": "id", "asc": True}], limit=2), None,
     'select * from "s"."v" order by "id" asc limit 2', (), "many"),
    (sel(order=[2, "name", {"column": "x"}, {"columnId": "y", "sortAsc": 1}, True]), None,
     'select * from "s"."v" order by 2, "name", "x" desc, "y" asc', (), "many"),
    (sel(order="name", limit="5", offset=2.7), None,
     'select * from "s"."v" order by "name" limit 5 offset 2', (), "many"),
    (sel(limit=0), None, 'select * from "s"."v"', (), "many"),
    # writes
    ({"action": "insert", "view": "base.ent_v",
      "fields": {"ent_type": "o", "ent_name": "Acme", "n": 1.0, "ok": True}}, None,
     'insert into "base"."ent_v" ("ent_type", "ent_name", "n", "ok") values ($1, $2, $3, $4) '
     'returning *', ("o", "Acme", "1", "true"), "one"),
    ({"action": "insert", "view": V, "fields": {"doc": "text", "tags": [1, "a b"],
                                                "blob": {"_type_": "binary", "_data_": "AAH/"}}},
     {"doc": "jsonb", "tags": "_text", "blob": "bytea"},
     'insert into "s"."v" ("doc", "tags", "blob") values ($1, $2, $3) returning *',
     ('"text"', '{"1","a b"}', b"\x00\x01\xff"), "one"),
    ({"action": "update", "view": V, "fields": {"c": 7}, "where": {"id": 3}}, None,
     'update "s"."v" set "c" = $2 where "id" = $1 returning *', ("3", "7"), "one"),
    ({"action": "delete", "view": V, "where": [["id", "=", 9]]}, None,
     'delete from "s"."v" where ("id" = $1)', ("9",), "none"),
    # hostile identifiers are quoted, never interpreted
    (sel(fields=['a"; drop table x; --']), None,
     'select "a""; drop table x; --" from "s"."v"', (), "many"),
]

ERRORS = [
    ({"action": "explode", "view": V}, "badAction"),
    ({"action": "select"}, "badMessage"),
    (sel("a = 1"), "badMessage"),
    (sel(5), "badMessage"),
    (sel(True), "badMessage"),
    (sel([5]), "badMessage"),
    (sel({"items": "x"}), "badMessage"),
    (sel([[None, "=", 1]]), "badLeft"),
    (sel([["a", "like", 1]]), "badOperator"),
    (sel({"left": None, "oper": "="}), "badFieldName"),
    (sel({"left": "a", "oper": "ilike"}), "badOperator"),
    (sel({"left": "a", "oper": "in"}), "badRight"),
    (sel({"left": "a", "oper": "in", "entry": []}), "badRight"),
    (sel(order=[None]), "badMessage"),
    (sel(order=[{"asc": True}]), "badFieldName"),
    (sel(order=[0]), "badMessage"),
    (sel(limit="5x"), "badMessage"),
    (sel(limit=-1), "badMessage"),
    (sel(fields={"a": 1}), "badMessage"),
    (sel(fields=["a", None]), "badMessage"),
    ({"action": "insert", "view": V}, "badMessage"),
    ({"action": "insert", "view": V, "fields": {}}, "badInsert"),
    ({"action": "update", "view": V, "fields": {}, "where": {"id": 1}}, "badUpdate"),
    ({"action": "update", "view": V, "fields": {"a": 1}}, "badWhere"),
    ({"action": "update", "view": V, "fields": {"a": 1},
      "where": {"left": "a", "oper": "isnull"}}, "badWhere"),
    ({"action": "delete", "view": V, "where": {"left": "a", "oper": "in", "right": "b"}},
     "badDelete"),
    ({"action": "delete", "view": V}, "badDelete"),
    ({"action": "insert", "view": V, "fields": {"b": {"_type_": "binary", "_data_": "%%"}}},
     "badMessage"),
    ({"action": "tuple", "view": "s.f(int)", "params": "x"}, "badMessage"),
    ({"action": "select", "view": V, "params": {"a": 1}}, "badMessage"),
    ({"action": "insert", "view": "s.f(int)", "fields": {"a": 1}}, "badView"),
    ({"action": "select", "view": "a.b.c"}, "badView"),
    ({"action": "select", "view": "s." + "x" * 64}, "badMessage"),
]


class GoldenTests(SynchronousTestCase):
    def test_golden_sql(self):
        for request, columns, sql, params, rows in GOLDEN:
            statement = compile_request(request, columns)
            self.assertEqual((statement.sql, statement.params, statement.rows),
                             (sql, params, rows), request)

    def test_error_codes(self):
        for request, tag in ERRORS:
            with self.assertRaises(ProtocolError, msg=request) as ctx:
                compile_request(request, None)
            self.assertEqual(ctx.exception.tag, tag, request)

    def test_unknown_columns_refused_when_metadata_known(self):
        columns = {"id": "int4", "name": "text"}
        compile_request(sel({"id": 1}, fields=["name"], order=["id"]), columns)
        for request in (sel(fields=["nope"]), sel({"nope": 1}), sel(order=["nope"]),
                        {"action": "insert", "view": V, "fields": {"nope": 1}}):
            with self.assertRaises(ProtocolError) as ctx:
                compile_request(request, columns)
            self.assertEqual(ctx.exception.tag, "badFieldName")
            self.assertIn("nope", ctx.exception.message)

    def test_D12_logic_groups_parenthesised(self):
        request = sel({"and": True, "items": [
            {"and": False, "items": [{"left": "a", "entry": 1}, {"left": "b", "entry": 2}]},
            {"left": "c", "entry": 3}]})
        self.assertEqual(compile_request(request, None).sql,
                         'select * from "s"."v" where ((("a" = $1) or ("b" = $2)) '
                         'and ("c" = $3))')

    def test_D13_diff_and_in_are_valid_sql(self):
        self.assertIn("is distinct from $1",
                      compile_request(sel({"left": "a", "oper": "diff", "entry": 1}), None).sql)
        self.assertIn('"a" = any($1)', compile_request(sel([["a", "in", "1,2"]]), None).sql)
        with self.assertRaises(ProtocolError):
            compile_request(sel({"left": "a", "oper": "in", "entry": []}), None)

    def test_D14_argument_types_validated(self):
        for view in ("x.fn(int;drop)", "x.fn(int) ; select 1", "x.fn(int)--)", "x.fn(a'b)",
                     "x.fn(int/*)", "x.fn(text) union select (1)", 'x.fn("a)',
                     "x.fn(text collate ucs_basic)", 'x.fn(text collate "C")',
                     "x.fn(text is not null)", "x.fn(text or true)", "x.fn(int and false)",
                     "x.fn(time zone)", "x.fn(interval year to day)",
                     "x.fn(double precision precision)", "x.fn(varchar(8) not null)"):
            with self.assertRaises(ProtocolError, msg=view) as ctx:
                parse_view(view)
            self.assertEqual(ctx.exception.tag, "badView", view)

    def test_D14_every_type_name_of_several_words_is_accepted(self):
        for type_name in ("double precision", "character varying", "character varying(8)",
                          "CHAR VARYING(3)", "national character varying(2)", "bit varying",
                          "char(4)", "timestamp with time zone", "timestamp(3) without time zone",
                          "time(6) with time zone", "time", "interval", "interval day to second",
                          "interval year to month", "interval(3)", "int[]", "text[][]",
                          "numeric(10,2)", "numeric(10, 2)[]", 'public."My Type"',
                          "pg_catalog.int4", "timestamptz[3]"):
            name = parse_view(f"x.fn({type_name})")
            self.assertEqual(name.arg_types, (type_name,))

    def test_D21_table_member_ignored(self):
        statement = compile_request(sel(table="secret.passwords"), None)
        self.assertNotIn("secret", statement.sql)

    def test_D25_system_schemas_refused(self):
        for view in ("pg_catalog.pg_sleep(float8)", "PG_CATALOG.set_config(text,text,boolean)",
                     "information_schema.tables", "pg_toast.x"):
            with self.assertRaises(ProtocolError, msg=view) as ctx:
                compile_request({"action": "tuple", "view": view}, None)
            self.assertEqual(ctx.exception.tag, "badView")
        policy = Policy(allowed_schemas=frozenset({"app"}))
        compile_request({"action": "select", "view": "app.v"}, None, policy)
        with self.assertRaises(ProtocolError):
            compile_request({"action": "select", "view": "base.v"}, None, policy)


class PyformatTests(SynchronousTestCase):
    def test_placeholders_and_percent(self):
        statement = compile_request(
            {"action": "select", "view": 's.v', "fields": ['a%b', 'c$1"x'],
             "where": {"d%": 1, "e": 2}}, None)
        sql, params = statement.pyformat()
        self.assertEqual(sql, 'select "a%%b","c$1""x" from "s"."v" '
                              'where ("d%%" = %(p1)s and "e" = %(p2)s)')
        self.assertEqual(params, {"p1": "1", "p2": "2"})

    def test_out_of_order_numbers(self):
        statement = compile_request({"action": "tuple", "view": "b.f(int)", "where": {"a": 1},
                                     "params": [5]}, None)
        self.assertEqual(statement.pyformat(),
                         ('select "b"."f"(%(p2)s::int) where "a" = %(p1)s',
                          {"p1": "1", "p2": "5"}))


class ValueTests(SynchronousTestCase):
    def test_js_number(self):
        cases = {1.0: "1", 1.5: "1.5", 0.1: "0.1", -0.0: "0", 1e21: "1e+21", 1e20:
                 "100000000000000000000", 1.5e-7: "1.5e-7", 0.00001: "0.00001",
                 123456789.125: "123456789.125", -2.5e30: "-2.5e+30", 7: "7",
                 2 ** 70: "1180591620717411303424", float("nan"): "NaN",
                 float("inf"): "Infinity"}
        for value, text in cases.items():
            self.assertEqual(js_number(value), text, value)

    def test_array_literal(self):
        self.assertEqual(array_literal([1, "a b", None, [2, 3], 'q"\\']),
                         '{"1","a b",NULL,{"2","3"},"q\\"\\\\"}')
