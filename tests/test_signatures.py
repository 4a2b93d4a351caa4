"""Key-login signatures checked on helper threads (wyseman.auth.signatures)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import TestCase

from tests.harness import add_user, js_date, raw_upgrade, start_gateway
from tests.pgtest import fresh_database
from tests.vectors import VECTOR_JWK, VECTOR_MESSAGE, VECTOR_SIGN
from wyseman.auth import credentials as cred
from wyseman.auth.signatures import SignatureChecker
from wyseman.client import keys
from wyseman.client.connection import connect
from wyseman.provision import admin

STORED = {"websocket": VECTOR_JWK}


class SignatureCheckerTests(TestCase):
    timeout = 30

    def record_threads(self) -> list[int]:
        """The threads :func:`credentials.verifying_key` runs on from now on."""
        seen: list[int] = []
        original = cred.verifying_key

        def recording(*args):
            seen.append(threading.get_ident())
            return original(*args)
        self.patch(cred, "verifying_key", recording)
        return seen

    def checker(self, threads: int, clock=reactor) -> SignatureChecker:
        checker = SignatureChecker(threads, clock)
        self.addCleanup(checker.close)
        return checker

    @defer.inlineCallbacks
    def test_checked_on_a_helper_thread(self):
        seen = self.record_threads()
        checker = self.checker(2)
        key = yield checker.verifying_key(STORED, VECTOR_MESSAGE, VECTOR_SIGN)
        self.assertEqual(key, VECTOR_JWK)
        bad = yield checker.verifying_key(STORED, VECTOR_MESSAGE + b" ", VECTOR_SIGN)
        self.assertIsNone(bad)
        self.assertEqual(len(seen), 2)
        self.assertNotIn(threading.get_ident(), seen)

    @defer.inlineCallbacks
    def test_checks_overlap_on_the_threads(self):
        # Each check waits until the other has started too: possible only if two run
        # at once (one thread: the barrier breaks after its timeout and both fail).
        barrier = threading.Barrier(2, timeout=10)
        original = cred.verifying_key

        def meeting(*args):
            barrier.wait()
            return original(*args)
        self.patch(cred, "verifying_key", meeting)
        checker = self.checker(2)
        keys_found = yield defer.gatherResults(
            [checker.verifying_key(STORED, VECTOR_MESSAGE, VECTOR_SIGN) for _ in range(2)],
            consumeErrors=True)
        self.assertEqual(keys_found, [VECTOR_JWK, VECTOR_JWK])

    @defer.inlineCallbacks
    def test_a_check_that_raises_fails_its_deferred(self):
        """An unexpected error on a helper thread comes back as the check's failure (the
        login is then refused with 503, handshake.Authenticator), and the thread goes on."""
        def broken(*args):
            raise ValueError("broken key store")
        original = cred.verifying_key
        self.patch(cred, "verifying_key", broken)
        checker = self.checker(2)
        failed = yield self.assertFailure(
            checker.verifying_key(STORED, VECTOR_MESSAGE, VECTOR_SIGN), ValueError)
        self.assertEqual(str(failed), "broken key store")
        self.patch(cred, "verifying_key", original)
        results = yield defer.gatherResults(
            [checker.verifying_key(STORED, VECTOR_MESSAGE, VECTOR_SIGN) for _ in range(4)])
        self.assertEqual(results, [VECTOR_JWK] * 4)

    def test_one_thread_is_the_callers(self):
        seen = self.record_threads()
        checker = self.checker(1)
        self.assertFalse(checker.threaded)
        key = self.successResultOf(checker.verifying_key(STORED, VECTOR_MESSAGE, VECTOR_SIGN))
        self.assertEqual((key, seen), (VECTOR_JWK, [threading.get_ident()]))

    def test_a_clock_without_threads_checks_inline(self):
        checker = self.checker(4, task.Clock())
        self.assertFalse(checker.threaded)
        self.assertIsNone(self.successResultOf(
            checker.verifying_key(STORED, VECTOR_MESSAGE, b"x" * 10)))

    @defer.inlineCallbacks
    def test_closed_checker_stops_its_threads_and_checks_inline(self):
        checker = self.checker(2)
        yield checker.verifying_key(STORED, VECTOR_MESSAGE, VECTOR_SIGN)
        self.assertIn("wyseman-verify", " ".join(t.name for t in threading.enumerate()))
        checker.close()
        self.assertNotIn("wyseman-verify", " ".join(t.name for t in threading.enumerate()))
        seen = self.record_threads()
        key = self.successResultOf(checker.verifying_key(STORED, VECTOR_MESSAGE, VECTOR_SIGN))
        self.assertEqual((key, seen), (VECTOR_JWK, [threading.get_ident()]))


class ServerTests(TestCase):
    """Key logins through a real server whose signatures are checked on helper threads."""

    timeout = 60

    @defer.inlineCallbacks
    def test_key_logins_checked_off_the_reactor_thread(self):
        db = fresh_database(self)
        user = add_user(db, "kim")
        server = yield start_gateway(self, db, auth={"verify_threads": 2})
        self.assertTrue(server.gateway.signatures.threaded)
        private = keys.generate_private_jwk()
        conn = yield connect(server.url, user, token=admin.issue_ticket(db.dsn, user).token,
                             new_key=private)
        yield conn.close()
        seen = self.record_threads()

        def query(key):
            date = js_date(datetime.now(UTC))
            sign = keys.sign(key, cred.signed_message("::ffff:127.0.0.1", None, None, date))
            return f"user={user}&sign={sign}&date={date}"
        status, _ = yield raw_upgrade(server.port, query(private))
        self.assertEqual(status, 101)
        status, body = yield raw_upgrade(server.port, query(keys.generate_private_jwk()))
        self.assertEqual((status, body), (403, "Invalid Login"))
        self.assertEqual(len(seen), 2)
        self.assertNotIn(threading.get_ident(), seen)
        # stopping the server stops the helper threads
        yield server.stopService()
        self.assertNotIn("wyseman-verify", " ".join(t.name for t in threading.enumerate()))

    record_threads = SignatureCheckerTests.record_threads
