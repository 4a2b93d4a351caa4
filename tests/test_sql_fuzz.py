"""Property-based fuzzing of the compiler with hostile input (10,000 requests):
only a Statement or a ProtocolError ever comes out, and the SQL is always one
statement whose only free text is what the compiler itself writes."""

from __future__ import annotations

import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from wyseman.errors import ProtocolError
from wyseman.sql.compiler import compile_request

SETTINGS = settings(max_examples=2500, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])

HOSTILE = ["'", '"', ";", "--", "/*", "*/", "$1", "%s", "%(x)s", "\\", "\x00", "\n", "é", "😀",
           "drop table canary", ")", "(", ",", " or 1=1", "::", "E'", "$$"]
hostile_text = st.one_of(
    st.text(max_size=12),
    st.lists(st.sampled_from(HOSTILE + ["a", "b", " "]), max_size=6).map("".join))
names = st.one_of(st.sampled_from(["id", "name", "a", "canary", "x y"]), hostile_text)
scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**80, max_value=2**80),
                    st.floats(allow_nan=True, allow_infinity=True), hostile_text)
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(hostile_text, inner, max_size=3)),
    max_leaves=6)
operators = st.one_of(st.sampled_from(["=", "!=", "<", "<=", ">", ">=", "~", "diff", "in",
                                       "isnull", "notnull", "true", "nop"]), hostile_text)
clause = st.fixed_dictionaries(
    {"left": st.one_of(names, st.lists(names, max_size=3), st.none())},
    optional={"oper": operators, "entry": values, "right": st.one_of(names, values),
              "not": st.booleans()})
list_element = st.one_of(
    st.lists(st.one_of(names, operators, values), max_size=4),
    st.builds(lambda a, o, b: f"{a} {o} {b}", names, operators, hostile_text), values)
wheres = st.recursive(
    st.one_of(st.none(), clause, st.dictionaries(names, values, max_size=3),
              st.lists(list_element, max_size=3), scalars),
    lambda inner: st.one_of(
        st.fixed_dictionaries({"items": st.lists(inner, max_size=4)},
                              optional={"and": st.one_of(st.booleans(), scalars)}),
        st.lists(inner, max_size=3)),
    max_leaves=12)
views = st.one_of(
    st.sampled_from(["app.item", "item", "app.fn(int)", "app.fn(int, text)",
                     "pg_catalog.pg_sleep(float8)", "app.fn(varchar(8))"]),
    st.builds(lambda s, n: f"{s}.{n}", names, names),
    st.builds(lambda s, n, t: f"{s}.{n}({t})", names, names, hostile_text),
    hostile_text, values)
orders = st.one_of(st.none(), names, st.integers(-3, 5), st.lists(st.one_of(
    names, st.integers(-3, 5), st.none(), st.booleans(),
    st.fixed_dictionaries({}, optional={"field": names, "column": names, "asc": values})),
    max_size=3))
requests = st.fixed_dictionaries(
    {"action": st.one_of(st.sampled_from(["select", "tuple", "insert", "update", "delete"]),
                         hostile_text),
     "view": views},
    optional={"where": wheres, "fields": st.one_of(names, st.lists(names, max_size=3),
                                                   st.dictionaries(names, values, max_size=3),
                                                   values),
              "order": orders, "limit": st.one_of(st.integers(-5, 10**12), hostile_text,
                                                   st.floats()),
              "params": st.one_of(st.lists(values, max_size=4), values),
              "table": hostile_text})

_QUOTED = re.compile(r'"(?:[^"]|"")*"')
_ALLOWED_OUTSIDE = re.compile(r"^[a-z0-9_ ,()*.$=<>!~|:\[\]]*$", re.I)


def assert_one_safe_statement(testcase: SynchronousTestCase, statement) -> None:
    outside = _QUOTED.sub("", statement.sql).replace("'~'", "")
    testcase.assertRegex(outside, _ALLOWED_OUTSIDE)
    for forbidden in (";", "--", "/*", "'", "\x00"):
        testcase.assertNotIn(forbidden, outside)
    numbers = [int(n) for n in re.findall(r"\$(\d+)", outside)]
    testcase.assertEqual(sorted(set(numbers)), list(range(1, len(statement.params) + 1)))
    sql, params = statement.pyformat()
    leftovers = re.sub(r"%\(p\d+\)s|%%", "", sql)
    testcase.assertNotIn("%", leftovers)
    testcase.assertEqual(set(params), {f"p{n}" for n in range(1, len(statement.params) + 1)})


class FuzzTests(SynchronousTestCase):
    def check(self, request, columns=None):
        try:
            statement = compile_request(request, columns)
        except ProtocolError:
            return
        assert_one_safe_statement(self, statement)

    @SETTINGS
    @given(requests)
    def test_requests(self, request):
        self.check(request)

    @SETTINGS
    @given(requests)
    def test_requests_with_metadata(self, request):
        self.check(request, {"id": "int4", "name": "text", "doc": "jsonb", "a": "text"})

    @SETTINGS
    @given(wheres)
    def test_where_trees(self, where):
        self.check({"action": "delete", "view": "app.item", "where": where})

    @SETTINGS
    @given(st.recursive(
        st.just({"left": "a", "entry": 1}),
        lambda inner: st.fixed_dictionaries({"items": st.lists(inner, min_size=1, max_size=2)}),
        max_leaves=200))
    def test_deep_nesting_never_crashes(self, where):
        self.check({"action": "select", "view": "app.item", "where": where})

    def test_pathological_depth(self):
        where: object = {"left": "a", "entry": 1}
        for _ in range(5000):
            where = {"items": [where]}
        with self.assertRaises(ProtocolError):
            compile_request({"action": "select", "view": "a.b", "where": where}, None)
