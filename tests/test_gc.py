"""[server] gc_freeze and the garbage-collection pause metric, on a real server."""

from __future__ import annotations

import gc

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from tests.harness import start_gateway
from tests.pgtest import fresh_database


def tracked(obj: object) -> bool:
    """Is ``obj`` one of the objects the cyclic collector walks (not frozen)?"""
    return any(o is obj for o in gc.get_objects())


class GcFreezeTests(TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def test_start_up_objects_frozen_and_pauses_measured(self):
        db = fresh_database(self)
        sentinel = [object()]          # a long-lived container made before the start
        self.assertTrue(tracked(sentinel))
        server = yield start_gateway(self, db)
        self.assertFalse(tracked(sentinel))        # frozen: full collections skip it
        later = [object()]
        self.assertTrue(tracked(later))            # made afterwards: collected as usual
        registry = server.gateway.metrics.registry
        sample = 'wyseman_gc_pause_seconds_count'

        def full_collections():
            return registry.get_sample_value(sample, {"generation": "2"}) or 0.0
        before = full_collections()
        gc.collect()
        self.assertEqual(full_collections(), before + 1)
        callbacks = len(gc.callbacks)
        yield server.stopService()
        self.assertEqual(len(gc.callbacks), callbacks - 1)   # observer removed on stop
        gc.collect()
        self.assertEqual(full_collections(), before + 1)

    @defer.inlineCallbacks
    def test_option_off(self):
        db = fresh_database(self)
        sentinel = [object()]
        yield start_gateway(self, db, server={"gc_freeze": False})
        self.assertTrue(tracked(sentinel))


class GcThresholdTests(TestCase):
    timeout = 60

    def setUp(self):
        self.addCleanup(gc.set_threshold, *gc.get_threshold())
        gc.set_threshold(700, 10, 10)

    @defer.inlineCallbacks
    def test_young_threshold_raised(self):
        db = fresh_database(self)
        yield start_gateway(self, db)
        self.assertEqual(gc.get_threshold(), (10_000, 10, 10))

    @defer.inlineCallbacks
    def test_configured_and_zero_leaves_it_alone(self):
        db = fresh_database(self)
        yield start_gateway(self, db, server={"gc_threshold": 2500})
        self.assertEqual(gc.get_threshold(), (2500, 10, 10))
        gc.set_threshold(700, 10, 10)
        yield start_gateway(self, db, server={"gc_threshold": 0})
        self.assertEqual(gc.get_threshold(), (700, 10, 10))


class OpenSocketObjectsTests(TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def test_handshake_lists_no_longer_walked_by_the_collector(self):
        from tests.harness import add_user, ticket_login
        from wyseman.ws.autobahn_fast import _HANDSHAKE_LISTS
        db = fresh_database(self)
        user = add_user(db)
        server = yield start_gateway(self, db)
        conn = yield ticket_login(self, server, db, user)
        [protocol] = server.gateway.all_connections()
        gc.collect()        # (a new tuple is untracked by the first collection that sees it)
        still_walked = [name for name in (*_HANDSHAKE_LISTS, "http_request_params")
                        if gc.is_tracked(getattr(protocol, name))]
        self.assertEqual(still_walked, [])
        self.assertEqual(protocol._valid_events, ("message",))
        row = yield conn.request({"action": "tuple", "view": "base.curr_eid()"})  # still works
        self.assertIn("curr_eid", row)
