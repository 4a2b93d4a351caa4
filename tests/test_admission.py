"""The whole login decision without sockets or a database: every refusal comes from
one place, and a login that loses a race gives its connection place back."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from wyseman.auth.admission import Admission, ClientLeft, LoginRequest
from wyseman.auth.keychanges import KeyChanges
from wyseman.auth.login import Handshake, Login, Refusal
from wyseman.auth.origins import OriginPolicy
from wyseman.gateway.userslots import LocalSlots

HANDSHAKE = Handshake(query="user=alice&token=t&pub=p", ip="::ffff:127.0.0.1", cookie=None,
                      user_agent=None, secure=True, insecure_allowed=False)


class HeldAuthenticator:
    """Answers each login when the test says so (a check that takes its time)."""

    def __init__(self) -> None:
        self.pending: list[defer.Deferred] = []

    def authenticate(self, handshake: Handshake) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self.pending.append(d)
        return d

    def accept(self, key_x: str | None = "k1", place: bool | None = None) -> None:
        self.pending.pop(0).callback(Login("alice", ("chan",), "key", key_x, place))


class AdmissionCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.auth = HeldAuthenticator()
        self.slots = LocalSlots(1)
        self.changes = KeyChanges()
        self.settling: dict[str, defer.Deferred] = {}
        self.full = False
        self.prepared: list[Login] = []
        self.admission = Admission(
            self.auth, origins=OriginPolicy(()), user_slots=self.slots,  # type: ignore[arg-type]
            key_changes=self.changes,
            keys_settled=lambda user: self.settling.get(user) or defer.succeed(None),
            at_capacity=lambda: self.full, prepare=self.prepared.append)

    def admit(self, gone: Any = lambda: False, **request: Any) -> defer.Deferred:
        return self.admission.admit(LoginRequest(HANDSHAKE, **request), gone)

    def refusal(self, d: defer.Deferred) -> Refusal:
        return self.failureResultOf(d, Refusal).value


class AdmissionTests(AdmissionCase):
    def test_the_checks_without_credentials_come_first(self) -> None:
        self.assertEqual(self.refusal(self.admit(repeated_headers=("Cookie",))).kind,
                         "bad_headers")
        refused = self.refusal(self.admit(origin="https://evil.example", host="app.example"))
        self.assertEqual((refused.status, refused.kind), (403, "origin"))
        self.full = True
        self.assertEqual(self.refusal(self.admit()).status, 503)
        self.assertEqual(self.auth.pending, [])     # no credential was looked at

    def test_an_accepted_login_holds_its_place_until_released(self) -> None:
        d = self.admit()
        self.auth.accept()
        admitted = self.successResultOf(d)
        self.assertEqual(admitted.login.user, "alice")
        self.assertEqual(self.prepared, [admitted.login])
        self.assertEqual(self.slots.count("alice"), 1)
        second = self.admit()
        self.auth.accept()
        self.assertEqual(self.refusal(second).kind, "user_capacity")
        admitted.release()
        admitted.release()                       # idempotent
        self.assertEqual(self.slots.count("alice"), 0)

    def test_a_client_that_left_during_the_check_holds_nothing(self) -> None:
        left = [False]
        d = self.admit(gone=lambda: left[0])
        left[0] = True
        self.auth.accept()
        self.failureResultOf(d, ClientLeft)
        self.assertEqual(self.slots.count("alice"), 0)
        self.assertEqual(self.prepared, [])

    def test_a_client_that_left_while_keys_were_reread_gives_its_place_back(self) -> None:
        left = [False]
        self.settling["alice"] = settled = defer.Deferred()
        d = self.admit(gone=lambda: left[0])
        self.auth.accept()
        self.assertEqual(self.slots.count("alice"), 1)   # held while the keys are read
        left[0] = True
        settled.callback(None)
        self.failureResultOf(d, ClientLeft)
        self.assertEqual(self.slots.count("alice"), 0)

    def test_a_key_removed_while_the_login_was_checked_refuses_it(self) -> None:
        d = self.admit()
        self.changes.record("alice", frozenset({"k2"}))     # k1 went meanwhile
        self.auth.accept("k1")
        refused = self.refusal(d)
        self.assertEqual((refused.status, refused.kind), (403, "key_removed"))
        self.assertEqual(self.slots.count("alice"), 0)

    def test_a_key_that_stayed_is_not_refused(self) -> None:
        d = self.admit()
        self.changes.record("alice", frozenset({"k1", "k2"}))
        self.auth.accept("k1")
        self.successResultOf(d)

    def test_a_failure_while_preparing_gives_the_place_back(self) -> None:
        def broken(login: Login) -> None:
            raise RuntimeError("LISTEN failed")
        self.admission.prepare = broken
        d = self.admit()
        self.auth.accept()
        self.failureResultOf(d, RuntimeError)
        self.assertEqual(self.slots.count("alice"), 0)


class CountingSlots(LocalSlots):
    """LocalSlots that count the reservations asked of them."""

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.asked = 0

    def reserve(self, user: str) -> defer.Deferred:
        self.asked += 1
        return super().reserve(user)


class PlaceHeldTests(AdmissionCase):
    """A login whose credential check reserved its place already (a key login with the
    shared state): nothing more is asked, and the place is given back as any other."""

    def setUp(self) -> None:
        super().setUp()
        self.slots = self.admission.user_slots = CountingSlots(1)

    def held(self, key_x: str | None = "k1") -> None:
        """The check's answer with the place it reserved (counted, as the shared
        slots count theirs)."""
        self.slots.slots.reserve("alice")
        self.auth.accept(key_x, place=True)

    def test_a_held_place_is_not_asked_again(self) -> None:
        d = self.admit()
        self.held()
        admitted = self.successResultOf(d)
        self.assertEqual((self.slots.asked, self.slots.count("alice")), (0, 1))
        admitted.release()
        self.assertEqual(self.slots.count("alice"), 0)

    def test_a_refused_place_refuses_the_login(self) -> None:
        d = self.admit()
        self.auth.accept(place=False)
        refused = self.refusal(d)
        self.assertEqual((refused.status, refused.kind), (503, "user_capacity"))
        self.assertEqual((self.slots.asked, self.prepared), (0, []))

    def test_a_client_that_left_gives_the_held_place_back(self) -> None:
        left = [False]
        d = self.admit(gone=lambda: left[0])
        left[0] = True
        self.held()
        self.failureResultOf(d, ClientLeft)
        self.assertEqual((self.slots.count("alice"), self.prepared), (0, []))

    def test_a_key_removed_meanwhile_gives_the_held_place_back(self) -> None:
        d = self.admit()
        self.changes.record("alice", frozenset({"k2"}))
        self.held("k1")
        self.assertEqual(self.refusal(d).kind, "key_removed")
        self.assertEqual(self.slots.count("alice"), 0)
