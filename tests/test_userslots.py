"""``[limits] max_connections_per_user``: the count (wyseman.gateway.userslots) and logins that
are checked at the same time."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.harness import add_user, start_gateway
from tests.pgtest import fresh_database
from wyseman.client.connection import ClientError, connect
from wyseman.gateway.userslots import UserSlots


class UserSlotsTests(SynchronousTestCase):
    def test_a_users_bound(self) -> None:
        slots = UserSlots(2)
        self.assertEqual([slots.reserve("ann"), slots.reserve("ann"), slots.reserve("ann")],
                         [True, True, False])
        self.assertTrue(slots.reserve("bob"))             # each user has their own
        slots.release("ann")
        self.assertEqual(slots.count("ann"), 1)
        self.assertTrue(slots.reserve("ann"))

    def test_holders(self) -> None:
        slots, one, two = UserSlots(3), object(), object()
        for holder in (one, one, two):
            self.assertTrue(slots.reserve("ann", holder))
        self.assertFalse(slots.reserve("ann", two))
        slots.release("ann", two)
        slots.release("ann", two)              # no longer held by two: ignored
        slots.release("bob", one)              # never reserved: ignored
        self.assertEqual(slots.count("ann"), 2)
        self.assertTrue(slots.reserve("bob", one))
        self.assertEqual(slots.release_holder(one), 3)     # a worker ended
        self.assertEqual((slots.count("ann"), slots.count("bob")), (0, 0))
        self.assertEqual(slots.release_holder(one), 0)
        self.assertEqual((slots._counts, slots._held), ({}, {}))   # nothing kept for 0


class ConcurrentLoginTests(TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def test_logins_checked_together_stay_within_the_bound(self):
        """Three logins of one user whose checks end together, each waiting for a new
        LISTEN before it opens: with a count taken only when a connection opens, all
        three would pass a bound of two."""
        db = fresh_database(self)
        user = add_user(db)
        server = yield start_gateway(self, db, auth={"insecure": True},
                                     limits={"max_connections_per_user": 2})
        gateway = server.gateway
        held_logins: list[tuple[defer.Deferred, defer.Deferred]] = []
        authenticate = gateway.authenticator.authenticate

        def held(handshake: Any) -> defer.Deferred:
            """The three checks end together, once the third has started."""
            held_logins.append((defer.Deferred(), authenticate(handshake)))
            if len(held_logins) == 3:
                for answer, login in held_logins:
                    login.chainDeferred(answer)
            return held_logins[-1][0]
        gateway.authenticator.authenticate = held
        logins = [connect(server.url, user, listen=[f"app_race{n}"]) for n in range(3)]
        results = yield defer.DeferredList(logins, consumeErrors=True)
        opened = [conn for ok, conn in results if ok]
        for conn in opened:
            self.addCleanup(conn.close)
        refused = [str(f.value) for ok, f in results if not ok]
        self.assertEqual(len(opened), 2)
        self.assertEqual(len(refused), 1)
        self.assertIn("503", refused[0])
        self.assertIsInstance(results[[ok for ok, _ in results].index(False)][1].value,
                              ClientError)
        self.assertEqual(gateway.user_slots.count(user), 2)
        yield opened[0].close()
        self.assertEqual(gateway.user_slots.count(user), 1)
