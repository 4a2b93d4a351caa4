"""The open-file limit the limits imply, and how the start raises or warns about it."""

from __future__ import annotations

import resource

from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from wyseman import config as cfg
from wyseman.application.fdlimit import (
    SPARE_DESCRIPTORS,
    Plan,
    descriptors_needed,
    ensure_descriptors,
    plan,
)

INFINITY = resource.RLIM_INFINITY


class PlanTests(SynchronousTestCase):
    def test_what_the_limits_imply(self):
        config = cfg.from_dict({"database": {"dsn": "dbname=x", "pool_total": 50},
                                "limits": {"max_connections": 2000,
                                           "max_pending_connections": 300}})
        self.assertEqual(descriptors_needed(config, 2), 2000 + 600 + 50 + SPARE_DESCRIPTORS)

    def test_raised_to_what_is_needed_up_to_the_hard_limit(self):
        self.assertEqual(plan(5000, 1024, 1_048_576), Plan(5000, False))
        self.assertEqual(plan(5000, 1024, INFINITY), Plan(5000, False))
        self.assertEqual(plan(5000, 8192, 8192), Plan(None, False))       # enough already
        self.assertEqual(plan(5000, INFINITY, INFINITY), Plan(None, False))
        self.assertEqual(plan(5000, 1024, 4096), Plan(4096, True))         # short even so
        self.assertEqual(plan(5000, 4096, 4096), Plan(None, True))


class EnsureTests(SynchronousTestCase):
    """On this process's real limit (restored afterwards)."""

    def test_the_soft_limit_is_raised_or_the_shortfall_said(self):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))
        low = 512
        if hard != INFINITY and hard < low:
            low = hard
        resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))
        config = cfg.from_dict({"database": {"dsn": "dbname=x"}})
        needed = descriptors_needed(config, 2)
        with capturedLogs() as events:
            ensure_descriptors(config, 2)
        lines = [formatEvent(e) for e in events]
        now, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == INFINITY or hard >= needed:
            self.assertEqual(now, needed)
            self.assertEqual(lines, [f"open-file limit (RLIMIT_NOFILE) raised from {low} "
                                     f"to {needed}"])
        else:
            self.assertEqual(now, hard)
            self.assertIn(f"for {needed} that [limits] allow", lines[-1])
