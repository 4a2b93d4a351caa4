"""Requests end to end: a real client, our server, a real PostgreSQL sample schema."""

from __future__ import annotations

import base64
import random

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from tests.harness import APP_SAMPLE, add_user, start_gateway
from tests.pgtest import fresh_database
from wyseman.client import keys
from wyseman.client.connection import RequestError, connect
from wyseman.gateway.actions import ActionRegistry
from wyseman.provision import admin


class StatementTimeoutTests(TestCase):
    """D25: a request cannot tie up a session (statement_timeout per request)."""

    timeout = 60

    @defer.inlineCallbacks
    def test_long_statement_cancelled(self):
        db = fresh_database(self)
        db.run("create function public.slow() returns int language sql as "
               "'select 1 from pg_sleep(5)'; "
               "grant execute on function public.slow() to wyseman_user")
        user = add_user(db)
        server = yield start_gateway(self, db, database={"statement_timeout": 0.3})
        token = admin.issue_ticket(db.dsn, user).token
        conn = yield connect(server.url, user, token=token, new_key=keys.generate_private_jwk())
        self.addCleanup(conn.close)
        with self.assertRaises(RequestError) as ctx:
            yield conn.request({"action": "tuple", "view": "public.slow()"})
        self.assertEqual(ctx.exception.code, "57014")
        row = yield conn.request({"action": "tuple", "view": "base.curr_eid()"})
        self.assertTrue(row["curr_eid"])


class PreparedStatementTests(TestCase):
    """[database] prepared_statements: reads run as prepared statements of the session
    connection (same answers), and not at all when the option is off."""

    timeout = 60

    @defer.inlineCallbacks
    def answers_and_prepared(self, **database):
        db = fresh_database(self)
        db.run(APP_SAMPLE)
        user = add_user(db, "prep")
        server = yield start_gateway(self, db, database=database)
        token = admin.issue_ticket(db.dsn, user).token
        conn = yield connect(server.url, user, token=token, new_key=keys.generate_private_jwk())
        self.addCleanup(conn.close)
        yield conn.request({"action": "insert", "view": "app.item_v",
                            "fields": {"name": "bolt", "qty": 3}})
        answers = []
        for _ in range(3):
            answers.append((yield conn.request({"action": "select", "view": "app.item_v",
                                                "fields": ["name", "qty"],
                                                "where": {"qty": 3}})))
            answers.append((yield conn.request({"action": "tuple", "view": "app.item_v",
                                                "fields": ["name"], "where": {"name": "bolt"}})))
        # the requests ran one after the other: on the one pooled connection of the role
        result = yield server.gateway.db.run_as(
            user, lambda c: c.execute("select statement from pg_prepared_statements"))
        return answers, [row[0] for row in result.rows]

    @defer.inlineCallbacks
    def test_reads_prepared_once_per_connection(self):
        answers, prepared = yield self.answers_and_prepared()
        self.assertEqual(answers, [[{"name": "bolt", "qty": 3}], {"name": "bolt"}] * 3)
        self.assertEqual(len(prepared), 2, prepared)        # one per distinct request shape
        self.assertFalse([s for s in prepared if "insert" in s])   # writes are not prepared

    @defer.inlineCallbacks
    def test_option_off(self):
        answers, prepared = yield self.answers_and_prepared(prepared_statements=False)
        self.assertEqual(answers, [[{"name": "bolt", "qty": 3}], {"name": "bolt"}] * 3)
        self.assertEqual(prepared, [])


class _SampleServer(TestCase):
    """A server in front of the sample schema, and one logged-in connection."""

    timeout = 60

    @defer.inlineCallbacks
    def setUp(self):
        self.db = fresh_database(self)
        self.db.run(APP_SAMPLE)
        self.user = add_user(self.db, "carol")
        registry = ActionRegistry()
        from wyseman.examples.csv_export import export
        registry.register("app.item_v", "csv", export)
        self.server = yield start_gateway(self, self.db, actions=registry)
        private = keys.generate_private_jwk()
        token = admin.issue_ticket(self.db.dsn, self.user).token
        self.conn = yield connect(self.server.url, self.user, token=token, new_key=private,
                                  listen=["app_events"])
        self.addCleanup(self.conn.close)

    def request(self, **message):
        return self.conn.request(message)

    @defer.inlineCallbacks
    def assertRequestError(self, code, **message):
        try:
            yield self.request(**message)
        except RequestError as exc:
            self.assertEqual(exc.code, code, exc.message)
            return exc
        self.fail(f"no error for {message}")

    @defer.inlineCallbacks
    def insert(self, **fields):
        row = yield self.request(action="insert", view="app.item_v", fields=fields)
        return row



class RequestTests(_SampleServer):
    @defer.inlineCallbacks
    def test_insert_renders_types_like_node(self):
        blob = base64.b64encode(b"\x00\x01\xff").decode()
        row = yield self.insert(name="widget", qty=3, price="12.5", data={"a": [1, 2]},
                                blob={"_type_": "binary", "_data_": blob},
                                span="1 day 02:03:04.5", big=9007199254740993)
        self.assertEqual(row["name"], "widget")
        self.assertEqual(row["qty"], 3)
        self.assertEqual(row["price"], "12.50")
        self.assertEqual(row["data"], {"a": [1, 2]})
        self.assertEqual(row["blob"], {"type": "Buffer", "data": [0, 1, 255]})
        self.assertEqual(row["made"], "2025-05-01T10:00:00.123Z")
        self.assertEqual(row["span"], {"days": 1, "hours": 2, "minutes": 3, "seconds": 4,
                                       "milliseconds": 500})
        self.assertEqual(row["big"], 9007199254740993)  # D22: exact above 2^53

    @defer.inlineCallbacks
    def test_select_where_order_limit(self):
        for name, qty in (("a", 1), ("b", 5), ("c", 9)):
            yield self.insert(name=name, qty=qty)
        rows = yield self.request(action="select", view="app.item_v", fields=["name", "qty"],
                                  where=[["qty", ">", 2]], order=[{"field": "qty"}], limit=1)
        self.assertEqual(rows, [{"name": "c", "qty": 9}])
        rows = yield self.request(action="select", view="app.item_v", fields="name",
                                  where={"and": False, "items": [
                                      {"left": "name", "oper": "=", "entry": "a"},
                                      {"left": "qty", "oper": "in", "entry": "5,9"}]},
                                  order=["name"])
        self.assertEqual([r["name"] for r in rows], ["a", "b", "c"])

    @defer.inlineCallbacks
    def test_tuple_and_bad_tuples(self):
        yield self.insert(name="x", qty=1)
        row = yield self.request(action="tuple", view="app.item_v", where={"name": "x"})
        self.assertEqual(row["qty"], 1)
        yield self.assertRequestError("!wm.lang:badTuples", action="tuple", view="app.item_v",
                                      where={"name": "nothing"})

    @defer.inlineCallbacks
    def test_D15_update_of_several_rows_is_rolled_back(self):
        yield self.insert(name="same", qty=1)
        yield self.insert(name="same", qty=2)
        yield self.assertRequestError("!wm.lang:badTuples", action="update", view="app.item_v",
                                      fields={"qty": 7}, where={"name": "same"})
        rows = self.db.run("select qty from app.item order by qty")
        self.assertEqual(rows, [(1,), (2,)])
        row = yield self.request(action="update", view="app.item_v", fields={"qty": 7},
                                 where={"name": "same", "qty": 2})
        self.assertEqual(row["qty"], 7)

    @defer.inlineCallbacks
    def test_delete(self):
        yield self.insert(name="gone", qty=1)
        yield self.assertRequestError("!wm.lang:badDelete", action="delete", view="app.item_v",
                                      where={"left": "qty", "oper": "notnull"})
        data = yield self.request(action="delete", view="app.item_v", where={"name": "gone"})
        self.assertIsNone(data)
        self.assertEqual(self.db.run("select count(*) from app.item"), [(0,)])

    @defer.inlineCallbacks
    def test_function_view_and_session_user(self):
        row = yield self.request(action="tuple", view="app.double(int)", params=[21])
        self.assertEqual(row, {"double": 42})
        row = yield self.request(action="tuple", view="app.whoami()")
        self.assertEqual(row, {"whoami": self.user})
        # named without a type list: called with the params uncast, as the Node server does
        row = yield self.request(action="tuple", view="app.double", params=["21"])
        self.assertEqual(row, {"double": 42})
        row = yield self.request(action="tuple", view="app.whoami", params=[])
        self.assertEqual(row, {"whoami": self.user})
        yield self.assertRequestError("!wm.lang:badMessage", action="tuple",
                                      view="app.double", params="21")

    @defer.inlineCallbacks
    def test_database_errors(self):
        error = yield self.assertRequestError("!app.item:negative", action="insert",
                                              view="app.item_v", fields={"name": "n", "qty": -1})
        self.assertEqual(error.pg_code, "23514")
        self.assertTrue(error.message.startswith("from database; "))
        error = yield self.assertRequestError("42P01", action="select", view="app.missing")
        self.assertIn("does not exist", error.message)

    @defer.inlineCallbacks
    def test_protocol_errors_keep_the_socket(self):
        yield self.assertRequestError("!wm.lang:badAction", action="explode", view="app.item_v")
        yield self.assertRequestError("!wm.lang:badMessage", action="select")  # D20: no view
        # D25: system schemas are not reachable
        error = yield self.assertRequestError("!wm.lang:badView", action="tuple",
                                              view="pg_catalog.pg_sleep(float8)", params=[1])
        self.assertIn("pg_catalog", error.message)
        # D9: a frame that is not JSON gets an answer, and the socket stays usable
        self.conn.send_raw(b"{not json")
        row = yield self.request(action="tuple", view="app.double(int)", params=[1])
        self.assertEqual(row, {"double": 2})
        self.assertEqual(self.db.run("select x from app.canary"), [(1,)])

    @defer.inlineCallbacks
    def test_schema_change_signal_drops_compiled_statements(self):
        """Statements are compiled once per distinct request (the reply must not change),
        until the admin channel says the schema changed: then the new column types
        count (a numeric column is rendered as a string, a text one as it is)."""
        yield self.insert(name="widget", qty=1)
        request = {"action": "select", "view": "app.label_v", "fields": ["label"],
                   "order": ["label"]}
        self.db.run("create view app.label_v as select name as label from app.item;"
                    "grant select on app.label_v to wyseman_user")
        for _ in range(2):   # compiled, then from the statement cache
            rows = yield self.conn.request(request)
            self.assertEqual(rows, [{"label": "widget"}])
        self.db.run("drop view app.label_v; create view app.label_v as "
                    "select length(name)::numeric * 1.5 as label from app.item;"
                    "grant select on app.label_v to wyseman_user")
        dropped: defer.Deferred = defer.Deferred()
        database = self.server.gateway.db
        original = database.clear_caches

        def clear() -> None:
            original()
            if not dropped.called:
                dropped.callback(None)
        database.clear_caches = clear
        self.db.run("notify wyseman")
        yield dropped
        rows = yield self.conn.request(request)
        self.assertEqual(rows, [{"label": "9.0"}])   # numeric: a string, as node-pg gives

    @defer.inlineCallbacks
    def test_request_nested_past_the_encoder_limit_is_answered(self):
        where: dict = {"left": "qty", "oper": "isnull"}
        for _ in range(300):
            where = {"and": True, "items": [where]}
        yield self.assertRequestError("!wm.lang:badMessage", action="select",
                                      view="app.item_v", fields=["id"], where=where)
        rows = yield self.request(action="select", view="app.item_v", fields=["id"])
        self.assertEqual(rows, [])

    @defer.inlineCallbacks
    def test_meta_and_lang(self):
        meta = yield self.request(action="meta", view="app.item")
        self.assertEqual(meta["obj"], "app.item")
        self.assertEqual(meta["pkey"], ["id"])
        self.assertIn("name", [c["col"] for c in meta["columns"]])
        lang = yield self.request(action="lang", view="wm.lang")
        codes = {m["code"] for m in lang["messages"]}
        self.assertIn("badTuples", codes)
        # D17: cached under the effective language, so the next request hits the cache
        self.assertIn(("wm.lang", "eng"), self.server.gateway.db._lang)
        # a view without texts: the error says which
        error = yield self.assertRequestError("!wm.lang:badTuples", action="lang",
                                              view="app.nothing", language="fra")
        self.assertIn("no lang texts for view 'app.nothing' in 'fra'", error.message)
        error = yield self.assertRequestError("!wm.lang:badTuples", action="meta",
                                              view="app.nothing")
        self.assertIn("no meta data for view 'app.nothing'", error.message)

    @defer.inlineCallbacks
    def test_custom_action_csv(self):
        yield self.insert(name="p", qty=1)
        data = yield self.request(action="action", view="app.item_v", name="csv",
                                  data={"fields": ["name", "qty"]})
        self.assertEqual(data["rows"], 1)
        self.assertEqual(data["csv"].splitlines(), ["name,qty", "p,1"])

    @defer.inlineCallbacks
    def test_notifications(self):
        received = []
        arrived = defer.Deferred()

        def got(data):
            received.append(data)
            if len(received) == 3:
                arrived.callback(None)
        self.conn.on_notify("app_events", got)
        self.db.run("""select pg_notify('app_events', '{"n": 1}'),
                              pg_notify('app_other', '{"n": 2}')""")
        self.db.run("select pg_notify('app_events', 'not json')")  # D8: sent as a string
        # JSON, but nested too deeply to be encoded again: sent as its text
        deep = "[" * 300 + "]" * 300
        self.db.run("select pg_notify('app_events', %s)", (deep,))
        yield arrived
        self.assertEqual(received, [{"n": 1}, "not json", deep])
        metrics = self.server.gateway.metrics
        self.assertEqual(metrics.notifications._value.get(), 3)
        fanouts = metrics.registry.get_sample_value("wyseman_notification_fanout_seconds_count")
        self.assertEqual(fanouts, 3)   # app_other has no subscriber: not counted


HOSTILE = ["'", '"', ";", "--", "/*", "$1", "%s", "%(p1)s", "\\", "\n", "é", "😀",
           "'; delete from app.canary; --", '"; drop table app.canary; --', ")", "(", ",",
           " or 1=1", "::", "E'", "$$"]


def hostile(rng: random.Random) -> str:
    return "".join(rng.choice(HOSTILE + ["name", "qty", " "]) for _ in range(rng.randint(0, 4)))


def value(rng: random.Random, depth: int = 0):
    kind = rng.randint(0, 7 if depth < 2 else 5)
    if kind == 6:
        return [value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    if kind == 7:
        return {hostile(rng): value(rng, depth + 1)}
    return [None, True, rng.randint(-2**70, 2**70), rng.random() * 1e30, hostile(rng),
            rng.choice(["1", "x", ""])][kind]


def where(rng: random.Random, depth: int = 0):
    kind = rng.randint(0, 4 if depth < 3 else 2)
    column = rng.choice(["name", "qty", "price", hostile(rng)])
    oper = rng.choice(["=", "!=", "<", "~", "diff", "in", "isnull", "true", hostile(rng)])
    if kind == 0:
        return {column: value(rng)}
    if kind == 1:
        return {"left": column, "oper": oper, "entry": value(rng), "not": rng.random() < 0.3}
    if kind == 2:
        return [[column, oper, value(rng)], f"{column} {oper} {hostile(rng)}"]
    if kind == 3:
        return {"and": rng.random() < 0.5, "items": [where(rng, depth + 1) for _ in range(3)]}
    return value(rng)


def random_request(rng: random.Random) -> dict:
    request = {
        "action": rng.choice(["select", "tuple", "insert", "update", "delete", "meta", "lang",
                              hostile(rng)]),
        "view": rng.choice(["app.item_v", "app.item", "app.double(int)", "app.item_v",
                            f"app.{hostile(rng)}", f"app.double({hostile(rng)})", hostile(rng)]),
    }
    if rng.random() < 0.8:
        request["where"] = where(rng)
    if rng.random() < 0.5:
        request["fields"] = rng.choice([["name", "qty"], "*", {"name": value(rng)},
                                        hostile(rng), {hostile(rng): value(rng)}])
    if rng.random() < 0.3:
        request["order"] = rng.choice([["name"], [{"field": hostile(rng)}], [2], hostile(rng)])
    if rng.random() < 0.3:
        request["params"] = [value(rng) for _ in range(rng.randint(0, 2))]
    return request


class HostileRequestTests(_SampleServer):
    """Hostile requests through the real server: every one answered, nothing escapes."""

    @defer.inlineCallbacks
    def test_hostile_requests_all_answered_canary_untouched(self):
        rng = random.Random(20261125)
        for name in ("a", "b"):
            yield self.insert(name=name, qty=1)
        outcomes = {"data": 0, "error": 0}

        def data(_):
            outcomes["data"] += 1

        def error(failure):
            failure.trap(RequestError)
            outcomes["error"] += 1
        pending = []
        for n in range(600):
            request = random_request(rng)
            request["id"] = f"h{n}"
            pending.append(self.conn.request(request).addCallbacks(data, error))
        yield defer.gatherResults(pending)
        self.assertEqual(sum(outcomes.values()), 600)
        self.assertGreater(outcomes["data"], 0)
        self.assertEqual(self.db.run("select x from app.canary"), [(1,)])
        self.assertTrue(self.conn.connected)
