"""[limits] max_reply_rows / max_reply_bytes: a select's reply is bounded while
PostgreSQL reads it, and a reply over a bound is refused with a clear code."""

from __future__ import annotations

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.harness import add_user, start_gateway, ticket_login
from tests.pgtest import fresh_database
from wyseman.client.connection import RequestError
from wyseman.sql.compiler import Policy, compile_request

ROWS = """
create table public.item (id int primary key, name text, at timestamptz default now());
insert into public.item (id, name) select n, repeat('x', 20) from generate_series(1, 50) n;
grant select on public.item to "{user}";
"""


class CompiledTests(SynchronousTestCase):
    def test_the_row_bound_goes_into_the_sql(self):
        policy = Policy(max_rows=10)
        select = {"action": "select", "view": "public.item"}
        self.assertTrue(compile_request(select, None, policy).sql.endswith(" limit 11"))
        within = compile_request({**select, "limit": 5, "offset": 3}, None, policy)
        self.assertTrue(within.sql.endswith(" limit 5 offset 3"))
        self.assertEqual(within.row_cap, 0)            # the client's limit is the bound
        over = compile_request({**select, "limit": 50}, None, policy)
        self.assertTrue(over.sql.endswith(" limit 11"))
        self.assertEqual(over.row_cap, 10)
        tuple_ = compile_request({"action": "tuple", "view": "public.item"}, None, policy)
        self.assertTrue(tuple_.sql.endswith(" limit 11"))
        unbounded = compile_request(select, None, Policy())
        self.assertNotIn("limit", unbounded.sql)

    def test_the_byte_bound_is_counted_by_postgresql(self):
        columns = {"id": "int4", "name": "text"}
        statement = compile_request({"action": "select", "view": "public.item"}, columns,
                                    Policy(max_bytes=1000))
        self.assertIn("sum(length(j)) over", statement.json_sql)
        self.assertIn("where b <= 1000", statement.json_sql)
        self.assertEqual(statement.byte_cap, 1000)


class ReplyLimitTests(TestCase):
    timeout = 60

    def test_each_row_is_rendered_once(self):
        """The byte bound's window reads each row's JSON as computed below it, once,
        not the JSON expression again for each of its references."""
        db = fresh_database(self)
        user = add_user(db)
        db.run(ROWS.format(user=user))
        columns = {"id": "int4", "name": "text", "at": "timestamptz"}
        statement = compile_request({"action": "select", "view": "public.item",
                                     "order": ["name"]}, columns, Policy(max_bytes=1000))
        sql, values = statement.pyformat(as_json=True)
        [[plan]] = db.run("explain (verbose, costs off, format json) " + sql, values)

        def nodes(node):
            yield node
            for child in node.get("Plans", []):
                yield from nodes(child)
        [window] = [n for n in nodes(plan[0]["Plan"]) if n["Node Type"] == "WindowAgg"]
        [below] = window["Plans"]
        self.assertTrue(any(out.startswith("(row_to_json(") for out in below["Output"]),
                        below["Output"])

    @defer.inlineCallbacks
    def start(self, **limits):
        db = fresh_database(self)
        user = add_user(db)
        db.run(ROWS.format(user=user))
        server = yield start_gateway(self, db, limits=limits)
        conn = yield ticket_login(self, server, db, user)
        return conn

    @defer.inlineCallbacks
    def refused(self, conn, request):
        with self.assertRaises(RequestError) as ctx:
            yield conn.request(request)
        return ctx.exception.code

    @defer.inlineCallbacks
    def test_rows(self):
        conn = yield self.start(max_reply_rows=10)
        for fields in (["id", "name"], ["id", "name", "at"]):   # rendered by PG / Python
            select = {"action": "select", "view": "public.item", "fields": fields,
                      "order": ["id"]}
            code = yield self.refused(conn, select)
            self.assertEqual(code, "!wm.lang:tooManyRows")
            code = yield self.refused(conn, {**select, "limit": 11})
            self.assertEqual(code, "!wm.lang:tooManyRows")
            rows = yield conn.request({**select, "limit": 10, "offset": 40})
            self.assertEqual([r["id"] for r in rows], list(range(41, 51)))
            rows = yield conn.request({**select, "where": [["id", "<=", 10]]})
            self.assertEqual(len(rows), 10)                        # exactly the bound

    @defer.inlineCallbacks
    def test_bytes(self):
        conn = yield self.start(max_reply_bytes=600)
        select = {"action": "select", "view": "public.item", "fields": ["id", "name"],
                  "order": ["id"]}
        code = yield self.refused(conn, select)
        self.assertEqual(code, "!wm.lang:replyTooLarge")
        rows = yield conn.request({**select, "limit": 10})      # about 400 characters
        self.assertEqual(len(rows), 10)
        code = yield self.refused(conn, {**select, "fields": ["id", "name", "at"]})
        self.assertEqual(code, "!wm.lang:replyTooLarge")
