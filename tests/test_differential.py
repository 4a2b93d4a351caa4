"""Differential test: the same requests to the Node.js Wyseman server (npm `wyseman`,
pinned in tests/js) and to ours, on two identical databases; the replies must agree.

Only requests outside the Node server's known defects (docs/protocol.md) are compared,
and only what clients read: ``data``, or the error ``code``.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from tests.harness import start_gateway
from tests.jsinterop import node, outcome, start_node_server
from tests.pgtest import free_port, fresh_database
from wyseman.client import keys
from wyseman.client.connection import connect
from wyseman.provision import admin

SAMPLE = """
create schema app;
create table app.item (
    id serial primary key, name text not null, qty int, price numeric(10,2), data jsonb,
    blob bytea, made timestamptz default '2025-05-01 10:00:00.123456+00', span interval,
    day date, constraint "!app.item:negative" check (qty >= 0));
create view app.item_v as select * from app.item;
create type app.mood as enum ('sad', 'happy');
create domain app.qty as numeric(8,3);
create table app.typed (
    id int primary key, f8 float8, f4 real, big int8, bigs int8[], ints int4[], words text[],
    ts timestamp, tstz timestamptz, t time, ttz timetz, u uuid, mood app.mood, q app.qty,
    flag bool, c char(3), m money, j json, d date, r varchar(10));
insert into app.typed values
    (1, 1.5, 0.1, 4611686018427, '{1,2}', '{1,null}', '{"a b","c\\"d"}',
     '2025-01-02 03:04:05.678999', '2025-01-02 03:04:05.678999+02', '10:11:12.5',
     '10:11:12+03', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'happy', 9.5, true, 'ab', 12.5,
     '{"x": [1, {"y": null}], "s": "\u00e9\\n"}', '2024-02-29', 'é"\\'),
    (2, 'NaN', 'Infinity', -1, '{}', '{}', '{}', 'infinity', '-infinity', '00:00',
     '00:00+00', null, 'sad', 'NaN', false, null, null, 'null', 'infinity', ''),
    (3, -0.25e-7, 3e38, 0, '{null}', null, '{null}', '0044-03-15 10:00 BC',
     '9999-12-31 23:59:59.999+00', '23:59:59.999999', null, null, null, 10, null, 'x',
     -3, '[]', '0044-03-15 BC', null),
    (4, null, null, null, null, null, null, null, null, null, null, null, null, null, null,
     null, null, null, null, null);
create view app.typed_v as select * from app.typed;
create function app.double(int) returns int language sql as 'select $1 * 2';
insert into app.item (name, qty, price, data, blob, span, day) values
    ('a', 1, 1.5, '{"k": [1, 2]}', '\\x00ff', '1 day 02:03:04.5', '2025-01-02'),
    ('b', 2, 20, '"text"', null, '3 mons', null),
    ('c', 3, null, null, '\\x', null, '2024-02-29');
grant usage on schema app to wyseman_user;
grant all on all tables in schema app to wyseman_user;
grant usage on all sequences in schema app to wyseman_user;
grant execute on all functions in schema app to wyseman_user;
"""

V = "app.item_v"
REQUESTS: list[dict[str, Any]] = [
    {"action": "select", "view": V, "fields": ["id", "name", "qty"],
     "order": [{"field": "id", "asc": True}]},
    {"action": "select", "view": V, "fields": "*", "order": [{"field": "id", "asc": True}]},
    {"action": "select", "view": V, "fields": ["name"], "where": {"name": "a"}},
    {"action": "select", "view": V, "fields": ["name"], "where": [["qty", ">", 1]],
     "order": ["name"]},
    {"action": "select", "view": V, "fields": ["name"], "where": ["qty >= 2"], "order": [1]},
    {"action": "select", "view": V, "fields": ["name"],
     "where": {"left": "qty", "oper": ">=", "entry": 2}, "order": [{"field": "qty"}]},
    {"action": "select", "view": V, "fields": ["name"],
     "where": {"and": False, "items": [{"left": "name", "oper": "=", "entry": "a"},
                                       {"left": "qty", "oper": "=", "entry": 3}]},
     "order": [{"column": "name", "sortAsc": True}]},
    {"action": "select", "view": V, "fields": ["name"],
     "where": {"left": "name", "entry": "a", "not": True}, "order": [{"field": "name"}]},
    {"action": "select", "view": V, "fields": ["name"],
     "where": {"left": "price", "oper": "isnull"}},
    {"action": "select", "view": V, "fields": ["name"],
     "where": {"left": "name", "oper": "~", "entry": "^[ab]$"}, "order": ["name"]},
    {"action": "select", "view": V, "fields": ["name"],
     "where": {"left": "name", "oper": "in", "entry": "a,c"}, "order": ["name"]},
    {"action": "tuple", "view": V, "where": {"id": 1},
     "fields": ["name", "price", "data", "blob", "made", "span", "day"]},
    {"action": "tuple", "view": V, "where": {"id": 2},
     "fields": ["name", "price", "data", "blob", "span", "day"]},
    {"action": "tuple", "view": V, "where": {"id": 3}, "fields": ["price", "data", "blob"]},
    {"action": "tuple", "view": "app.double(int)", "params": [21]},
    {"action": "insert", "view": V, "fields": {"name": "z", "qty": 5, "data": {"k": [1]}}},
    {"action": "update", "view": V, "fields": {"qty": 6}, "where": {"name": "z"}},
    {"action": "delete", "view": V, "where": {"name": "z"}},
    {"action": "select", "view": V, "fields": ["name"], "where": {"name": "z"}},
    {"action": "meta", "view": "app.item"},
    {"action": "meta", "view": "app.item"},
    {"action": "lang", "view": "wm.lang", "language": "eng"},
    {"action": "tuple", "view": V, "fields": ["name"], "where": {"name": "nothing"}},
    {"action": "update", "view": V, "fields": {"qty": 1}},
    {"action": "delete", "view": V, "where": {"left": "qty", "oper": "isnull"}},
    {"action": "insert", "view": V, "fields": {}},
    {"action": "select", "view": V, "where": [["qty", "like", 1]]},
    {"action": "select", "view": V, "where": [[None, "=", 1]]},
    {"action": "select", "view": V, "where": {"left": "qty", "oper": "in"}},
    {"action": "insert", "view": V, "fields": {"name": "n", "qty": -1}},
    {"action": "select", "view": "app.missing", "fields": ["x"]},
    {"action": "explode", "view": V},
    # every column type PostgreSQL renders as JSON itself (wyseman.sql.json_rows); the
    # columns t and r are named like the aliases of its wrapping query
    {"action": "select", "view": "app.typed_v", "fields": "*", "order": [{"field": "id"}]},
    {"action": "select", "view": "app.typed", "fields": ["q", "id"], "order": ["q", "id"]},
    {"action": "select", "view": "app.typed", "fields": ["id"],
     "order": [{"field": "f8", "asc": False}, "id"]},
    {"action": "select", "view": "app.typed", "fields": ["tstz", "m"], "order": [2, 1]},
    {"action": "select", "view": "app.typed", "fields": "j", "where": {"id": 1}},
    {"action": "select", "view": "app.typed", "fields": ["id", "ts"],
     "where": [["ts", "<", "2026-01-01"]], "order": ["id"], "limit": 5, "offset": 0},
    {"action": "tuple", "view": "app.typed_v", "where": {"id": 1}, "fields": "*"},
    {"action": "tuple", "view": "app.typed_v", "where": {"id": 3}, "fields": "*"},
    {"action": "tuple", "view": "app.typed_v", "where": {"id": 2}, "fields": "*"},
    {"action": "tuple", "view": "app.typed", "where": {"mood": "happy"},
     "fields": ["mood", "q", "bigs", "words"]},
    {"action": "tuple", "view": "app.typed", "where": [["id", ">", 1]], "fields": ["id"]},
    {"action": "select", "view": "app.typed", "fields": ["id", "id"], "order": ["id"]},
]


class DifferentialTests(TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def test_same_replies_as_the_node_server(self):
        node()      # (skips without node; installs tests/js/node_modules)
        node_db, our_db = fresh_database(self), fresh_database(self)
        user = node_db.role_name("diff")
        for db, make_role in ((node_db, True), (our_db, False)):
            db.run(SAMPLE)
            admin.add_user(db.dsn, user, login_role=make_role)

        port = free_port()
        yield start_node_server(self, node_db.dsn, port)
        # The Node server takes any user name on plain ws (D1): that is how its clients
        # log in there; ours gets a ticket.
        theirs = yield connect(f"ws://127.0.0.1:{port}", user)
        self.addCleanup(theirs.close)
        server = yield start_gateway(self, our_db)
        token = admin.issue_ticket(our_db.dsn, user).token
        ours = yield connect(server.url, user, token=token, new_key=keys.generate_private_jwk())
        self.addCleanup(ours.close)

        for number, request in enumerate(REQUESTS):
            expected = yield outcome(theirs.request(dict(request, id=f"n{number}")))
            actual = yield outcome(ours.request(dict(request, id=f"o{number}")))
            self.assertEqual(actual, expected, json.dumps(request))
