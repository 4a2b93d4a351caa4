"""The short soak and fault run (``benchmarks/soak.py``): ~25 s of mixed load from several
users and sockets while the gateway's PostgreSQL backends are terminated and PostgreSQL
is restarted; then every check of the long run, one test each (the run is made once, by
whichever test comes first, and its report shared).

``WYSEMAN_SOAK_SEED`` fixes the seed (it is printed with the report, so a failing run can
be made again); ``WYSEMAN_SOAK_SECONDS`` lengthens the load. On an external server
(``WYSEMAN_TEST_DSN``) PostgreSQL is not restarted, only its backends killed.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.trial.unittest import TestCase

from benchmarks import soak
from tests import pgtest

log = Logger(namespace="tests.test_soak")
_outcome: list[Any] = []       # [Report] or [Failure] once the run has been made


def options() -> soak.Options:
    seed = os.environ.get("WYSEMAN_SOAK_SEED")
    return soak.Options(
        seconds=float(os.environ.get("WYSEMAN_SOAK_SECONDS", "25")), warmup=5.0,
        users=3, sockets_per_user=2, depth=2, kills=2, restarts=1, quiet=2.0,
        seed=int(seed) if seed else None)


class SoakTests(TestCase):
    timeout = 300

    @defer.inlineCallbacks
    def report(self) -> Any:
        if not _outcome:
            db = pgtest.fresh_database(self)
            log_file = os.path.abspath(self.mktemp() + ".log")
            os.makedirs(os.path.dirname(log_file), exist_ok=True)
            try:
                report = yield soak.run(options(), db, pgtest.cluster(), log_file=log_file,
                                        log=lambda line: None)
            except Exception as exc:
                _outcome.append(exc)
            else:
                _outcome.append(report)
                log.info("{summary}", summary=report.summary())   # (into test.log)
        if isinstance(_outcome[0], Exception):
            raise _outcome[0]
        return _outcome[0]

    @defer.inlineCallbacks
    def assert_check(self, name: str) -> Any:
        report = yield self.report()
        [check] = [c for c in report.checks if c.name == name]
        if not check.ok:
            self.fail(f"{name}: {check.detail}\n\n{report.summary()}")

    def test_faults_happened(self):
        """At least one backend kill and (on our own cluster) one restart."""
        return self.assert_check("faults")

    def test_acknowledged_writes_stored_exactly_once(self):
        return self.assert_check("writes")

    def test_every_request_answered(self):
        return self.assert_check("replies")

    def test_every_user_recovers(self):
        return self.assert_check("recovery")

    def test_notifications_recover(self):
        return self.assert_check("notifications")

    def test_pools_match_pg_stat_activity(self):
        return self.assert_check("pools")

    def test_memory_bounded(self):
        return self.assert_check("memory")

    def test_server_logs_no_other_traceback(self):
        return self.assert_check("server log")

    def test_connect_hangups_not_logged_as_unhandled_errors(self):
        return self.assert_check("connect hang-ups logged")

