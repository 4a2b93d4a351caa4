"""A session's ``meta`` and ``lang`` replies leave in the order of their requests (wylib
applies a view's texts only when they come before its metadata); other replies leave
as they are ready. The dispatcher on a database whose answers the test releases."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from wyseman.gateway.dispatch import Dispatcher, Session
from wyseman.sql import compiler


class HeldDatabase:
    """meta and lang whose answers wait until the test fires them."""

    read_batch = 1
    generation = 0

    def __init__(self) -> None:
        self.waiting: dict[tuple[str, str], defer.Deferred] = {}

    def meta(self, view: str) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self.waiting[("meta", view)] = d
        return d

    def lang(self, view: str, language: str) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self.waiting[("lang", view)] = d
        return d


class MetadataOrderTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.db = HeldDatabase()
        self.dispatcher = Dispatcher(self.db, compiler.Policy())  # type: ignore[arg-type]
        self.sent: list[dict[str, Any]] = []
        self.session = Session("u", (), lambda frame: None)

    def send(self, request: dict[str, Any], session: Session | None = None) -> None:
        self.dispatcher.handle_then(session or self.session, json.dumps(request).encode(),
                                    lambda frame: self.sent.append(json.loads(frame)))

    def order(self) -> list[tuple[str, Any]]:
        return [(reply["action"], reply["id"]) for reply in self.sent]

    def test_lang_sent_first_is_answered_first_though_meta_is_ready_first(self) -> None:
        self.send({"id": 1, "action": "lang", "view": "base.ent_v"})
        self.send({"id": 2, "action": "meta", "view": "base.ent_v"})
        self.db.waiting[("meta", "base.ent_v")].callback([{"columns": []}])
        self.assertEqual(self.sent, [])            # held behind the earlier lang
        self.db.waiting[("lang", "base.ent_v")].callback([{"title": "Entities"}])
        self.assertEqual(self.order(), [("lang", 1), ("meta", 2)])
        self.assertEqual(self.sent[0]["data"], {"title": "Entities"})
        self.assertEqual(self.sent[1]["data"], {"columns": []})

    def test_an_error_reply_keeps_its_turn_too(self) -> None:
        self.send({"id": 1, "action": "lang", "view": "a.v"})
        self.send({"id": 2, "action": "meta", "view": "b.v"})
        self.db.waiting[("meta", "b.v")].callback([{"columns": []}])
        self.db.waiting[("lang", "a.v")].callback([])     # no texts: an error reply
        self.assertEqual(self.order(), [("lang", 1), ("meta", 2)])
        self.assertIn("error", self.sent[0])

    def test_sessions_do_not_wait_for_each_other(self) -> None:
        other = Session("w", (), lambda frame: None)
        self.send({"id": 1, "action": "lang", "view": "a.v"})
        self.send({"id": 2, "action": "meta", "view": "b.v"}, other)
        self.db.waiting[("meta", "b.v")].callback([{"columns": []}])
        self.assertEqual(self.order(), [("meta", 2)])

    def test_other_actions_are_not_held(self) -> None:
        self.send({"id": 1, "action": "lang", "view": "a.v"})
        self.send({"id": 2, "action": "nosuch", "view": "a.v"})
        self.assertEqual(self.order(), [("nosuch", 2)])
        self.db.waiting[("lang", "a.v")].callback([{"title": "A"}])
        self.assertEqual(self.order(), [("nosuch", 2), ("lang", 1)])
