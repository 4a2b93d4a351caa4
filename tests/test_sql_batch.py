"""wyseman.sql.batch: several reads as one statement (pure, no database)."""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from wyseman.sql import batch
from wyseman.sql.compiler import DEFAULT_POLICY, compile_request

COLUMNS = {"id": "int4", "name": "text", "qty": "int4", "price": "numeric"}


def read(request: dict) -> tuple[str, tuple]:
    statement = compile_request(request, COLUMNS, DEFAULT_POLICY)
    assert statement.batchable, statement
    return statement.json_sql, statement.params


class ShiftPlaceholdersTests(TestCase):
    def test_placeholders_renumbered(self):
        self.assertEqual(batch.shift_placeholders("select $1, $2 where x = $10", 3),
                         "select $4, $5 where x = $13")

    def test_quoted_identifiers_are_names(self):
        sql = 'select "a$1", "b""$2" from t where "c" = $1'
        self.assertEqual(batch.shift_placeholders(sql, 2),
                         'select "a$1", "b""$2" from t where "c" = $3')

    def test_no_offset_is_the_same_text(self):
        sql = "select $1"
        self.assertIs(batch.shift_placeholders(sql, 0), sql)


class ComposeTests(TestCase):
    def test_each_read_one_array_column_values_in_order(self):
        one = read({"action": "tuple", "view": "s.v", "fields": ["name"], "where": {"id": 7}})
        many = read({"action": "select", "view": "s.v", "fields": ["id", "price"],
                     "where": {"qty": 2, "name": "x"}, "order": ["id"], "limit": 5})
        composed = batch.compose([one, many])
        self.assertEqual(len(composed.values), 3)
        # every member's placeholders point at its own values
        for column, member in enumerate(composed.order):
            sql, values = [one, many][member]
            offset = sum(len([one, many][m][1]) for m in composed.order[:column])
            self.assertIn(f"array({batch.shift_placeholders(sql, offset)})", composed.sql)
            self.assertEqual(composed.values[offset:offset + len(values)], values)
        self.assertTrue(composed.sql.startswith("select array("))
        self.assertIn("limit 5", composed.sql)

    def test_arrival_order_does_not_change_the_text(self):
        a = read({"action": "tuple", "view": "s.v", "fields": ["name"], "where": {"id": 1}})
        b = read({"action": "select", "view": "s.v", "fields": ["qty"]})
        ab, ba = batch.compose([a, b]), batch.compose([b, a])
        self.assertEqual(ab.sql, ba.sql)
        self.assertEqual(ab.values, ba.values)
        self.assertEqual(batch.split([["A"], ["B1", "B2"]], ab)[ab.order[0]], ["A"])
        # each arrival order gets its own rows back
        row_ab = [["a-rows"], ["b-rows"]] if ab.order == (0, 1) else [["b-rows"], ["a-rows"]]
        self.assertEqual(batch.split(row_ab, ab), [["a-rows"], ["b-rows"]])
        row_ba = [["b-rows"], ["a-rows"]] if ba.order == (0, 1) else [["a-rows"], ["b-rows"]]
        self.assertEqual(batch.split(row_ba, ba), [["b-rows"], ["a-rows"]])

    def test_pyformat_for_psycopg2(self):
        a = read({"action": "tuple", "view": "s.v", "fields": ["name"], "where": {"id": 1}})
        sql, params = batch.compose([a, a]).pyformat()
        self.assertNotIn("$", sql)
        self.assertIn("%(p1)s", sql)
        self.assertIn("%(p2)s", sql)
        self.assertEqual(params, {"p1": a[1][0], "p2": a[1][0]})

    def test_empty_batch_and_wrong_row_refused(self):
        with self.assertRaises(ValueError):
            batch.compose([])
        a = read({"action": "select", "view": "s.v", "fields": ["qty"]})
        with self.assertRaises(ValueError):
            batch.split([[], []], batch.compose([a]))


class BatchableTests(TestCase):
    def test_only_reads_of_relations_rendered_as_json(self):
        def statement(request, columns=COLUMNS):
            return compile_request(request, columns, DEFAULT_POLICY)
        self.assertTrue(statement({"action": "select", "view": "s.v", "fields": ["qty"],
                                   "where": {"name": "a"}}).batchable)
        # writes, function views, rows the Python renderer must build: never
        self.assertFalse(statement({"action": "update", "view": "s.v", "fields": {"qty": 1},
                                    "where": {"id": 1}}).batchable)
        self.assertFalse(statement({"action": "tuple", "view": "s.f(int)",
                                    "params": [1]}).batchable)
        self.assertFalse(statement({"action": "select", "view": "s.v", "fields": ["qty"]},
                                   columns=None).batchable)
        self.assertFalse(statement({"action": "select", "view": "s.v",
                                    "fields": ["id", "id"]}).batchable)
