"""The benchmark's verdicts on the performance targets (benchmarks/targets.py)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from benchmarks.results import Row
from benchmarks.targets import MET, NOT_MEASURED, NOT_MET, judge, report


def full_run(**changes: float) -> list[Row]:
    """The rows of a run that measured every target (values as in a real run)."""
    values = {"tuple": 20_610.0, "pgbench": 47_166.0, "node": 11_126.0, "p99": 10.1,
              "node_p99": 13.7, "notify_p99": 87.1, "logins": 998.0, "kib": 12.9,
              "tuple_w2": 15_074.0, "logins_w2": 1_016.0}
    values.update(changes)
    return [
        Row("tuple bench.item by id", "C=10 D=1", 9_816.0, "req/s", 61_540.0),
        Row("tuple bench.item by id", "C=100 D=4", 26_592.0, "req/s", values["pgbench"]),
        Row("tuple bench.item by id", "C=100 D=1", values["tuple"], "req/s",
            values["pgbench"]),
        Row("tuple vs Node server", "C=100 D=4", 26_592.0, "req/s", 8_941.0),
        Row("tuple vs Node server", "C=100 D=1", values["tuple"], "req/s", values["node"]),
        Row("tuple p99 vs Node", "C=100 D=1", values["p99"], "ms", values["node_p99"]),
        Row("notify latency p99", "S=10000 K=10 paced", values["notify_p99"], "ms"),
        Row("handshake (key login)", "sequential, 1 worker", 453.0, "logins/s"),
        Row("handshake (key login)", "parallel, 2x16 workers", values["logins"], "logins/s"),
        Row("memory per idle socket", "N=2000", values["kib"], "KiB"),
        Row("tuple, server workers", "workers=1 C=100", 14_734.0, "req/s"),
        Row("tuple, server workers", "workers=2 C=100", values["tuple_w2"], "req/s",
            14_734.0),
        Row("handshakes, server workers", "workers=1 2x16", 856.0, "logins/s"),
        Row("handshakes, server workers", "workers=2 2x16", values["logins_w2"], "logins/s",
            856.0),
    ]


class JudgeTests(SynchronousTestCase):
    def verdicts(self, rows: list[Row]) -> dict[str, str]:
        return {v.target: v.verdict for v in judge(rows)}

    def test_each_target_judged_on_its_own_row(self) -> None:
        verdicts = dict(list(self.verdicts(full_run()).items())[:8])  # (then: wss and more)
        self.assertEqual(verdicts, {
            "tuple C=100 ≥ 50 % of pgbench -S": NOT_MET,     # 0.44: the D=1 run, not D=4
            "tuple C=100 ≥ 1.5× the Node server": MET,
            "tuple p99 at C=100 ≤ the Node server's": MET,
            "10,000 subscribers: p99 delivery < 100 ms": MET,
            "handshakes ≥ 1,000/s": NOT_MET,                  # the parallel run's 998
            "idle socket < 30 KiB RSS": MET,
            "tuple C=100 scales with workers": MET,           # 15,074 / 14,734
            "parallel logins scale with workers": MET,
        })

    def test_bounds(self) -> None:
        verdicts = self.verdicts(full_run(tuple=23_583.0, logins=1_000.0, notify_p99=100.0,
                                          p99=13.8, kib=30.0, tuple_w2=14_000.0))
        self.assertEqual(verdicts["tuple C=100 ≥ 50 % of pgbench -S"], MET)
        self.assertEqual(verdicts["handshakes ≥ 1,000/s"], MET)
        self.assertEqual(verdicts["10,000 subscribers: p99 delivery < 100 ms"], NOT_MET)
        self.assertEqual(verdicts["tuple p99 at C=100 ≤ the Node server's"], NOT_MET)
        self.assertEqual(verdicts["idle socket < 30 KiB RSS"], NOT_MET)
        self.assertEqual(verdicts["tuple C=100 scales with workers"], NOT_MET)

    def test_scaling_verdicts_say_how_busy_the_machine_was(self) -> None:
        rows = full_run()
        measured = {v.target: v.measured for v in judge(rows)}
        self.assertEqual(measured["tuple C=100 scales with workers"], "workers=2 1.02× workers=1")
        for row, server, busy in [(rows[-4], 84.0, 84.0), (rows[-3], 103.0, 100.0),
                                  (rows[-2], 124.0, 82.0), (rows[-1], 151.0, 98.0)]:
            cpu = {"server_pct": server, "pg_pct": 40.0, "machine_busy_pct": busy}
            row.extra = {"measured": {"cpu": cpu}} if "tuple" in row.scenario else {"cpu": cpu}
        measured = {v.target: v.measured for v in judge(rows)}
        self.assertEqual(measured["tuple C=100 scales with workers"],
                         "workers=2 1.02× workers=1 (machine 100 % busy with two; server CPU "
                         "a request: 57 µs with one worker, 68 µs with two)")
        self.assertEqual(measured["parallel logins scale with workers"],
                         "workers=2 1.19× workers=1 (machine 98 % busy with two; server CPU "
                         "a login: 1449 µs with one worker, 1486 µs with two)")

    def test_tuple_scaling_judged_with_route_by_user_when_measured(self) -> None:
        rows = full_run(tuple_w2=12_000.0)                 # 0.81× with the kernel's spread
        self.assertEqual(self.verdicts(rows)["tuple C=100 scales with workers"], NOT_MET)
        rows.append(Row("tuple, server workers", "workers=2 C=100 route_by_user", 17_000.0,
                        "req/s", 14_734.0))
        [verdict] = [v for v in judge(rows) if v.target == "tuple C=100 scales with workers"]
        self.assertEqual((verdict.verdict, verdict.measured),
                         (MET, "workers=2 1.15× workers=1 with route_by_user; without "
                          "route_by_user 0.81×"))
        rows[-1].value = 14_000.0
        self.assertEqual(self.verdicts(rows)["tuple C=100 scales with workers"], NOT_MET)

    def test_quick_runs_do_not_judge_the_10000_subscriber_target(self) -> None:
        rows = [r for r in full_run() if r.scenario != "notify latency p99"]
        rows.append(Row("notify latency p99", "S=1000 K=10 paced", 15.3, "ms"))
        verdict = next(v for v in judge(rows) if v.target.startswith("10,000"))
        self.assertEqual(verdict.verdict, NOT_MEASURED)
        self.assertIn("not --quick", verdict.measured)

    def test_missing_baselines_and_scenarios(self) -> None:
        rows = [Row("tuple bench.item by id", "C=100 D=1", 20_000.0, "req/s")]  # no pgbench
        verdicts = self.verdicts(rows)
        self.assertEqual(set(verdicts.values()), {NOT_MEASURED})
        self.assertEqual(len(verdicts), 18)

    def test_report_lines(self) -> None:
        text = report(full_run())
        self.assertTrue(text.startswith("targets (this run):\n"))
        self.assertIn("NOT MET       tuple C=100 ≥ 50 % of pgbench -S: 20,610 req/s = 0.44 of "
                      "47,166 TPS", text)
        self.assertIn("NOT MET       handshakes ≥ 1,000/s: 998 logins/s (parallel, 2x16 workers)",
                      text)
        self.assertIn("met           idle socket < 30 KiB RSS: 12.9 KiB (N=2000)", text)


class AlternatingPairsTests(SynchronousTestCase):
    """--pairs: our C=100 run and pgbench -S alternate; the median pair is judged."""

    @staticmethod
    def pairs(*values: tuple[float, float]) -> list:
        return [({"rps": ours}, {"tps": tps}) for ours, tps in values]

    def test_the_median_pair_is_the_row(self) -> None:
        from benchmarks.results import pairs_row
        row = pairs_row(self.pairs((18_000.0, 45_000.0), (19_000.0, 30_000.0),
                                   (20_000.0, 40_000.0)))
        self.assertEqual((row.value, row.baseline), (20_000.0, 40_000.0))   # 0.40 0.63 0.50
        self.assertEqual(row.params, "C=100 D=1 pairs=3")
        self.assertIn("0.40, 0.63, 0.50", row.notes)
        # an even count: the lower middle one
        row = pairs_row(self.pairs((10.0, 20.0), (30.0, 20.0)))
        self.assertEqual(row.ratio, 0.5)

    def test_the_target_uses_the_pairs_when_there_are(self) -> None:
        from benchmarks.results import pairs_row
        rows = full_run()                    # its single C=100 D=1 ratio: 0.44
        single = {v.target: v for v in judge(rows)}["tuple C=100 ≥ 50 % of pgbench -S"]
        self.assertEqual(single.verdict, NOT_MET)
        rows.append(pairs_row(self.pairs((20_000.0, 38_000.0), (19_000.0, 45_000.0),
                                         (21_000.0, 36_000.0))))
        verdict = {v.target: v for v in judge(rows)}["tuple C=100 ≥ 50 % of pgbench -S"]
        self.assertEqual(verdict.verdict, MET)
        self.assertIn("0.53 of 38,000 TPS, the median of 3 alternating pairs",
                      verdict.measured)


class HandshakeRunsTests(SynchronousTestCase):
    """--handshake-runs: the parallel logins measured several times, the median judged."""

    @staticmethod
    def runs(*rates: float) -> list:
        return [{"rate": rate, "notes": f"notes of {rate:.0f}", "extra": {"p99_ms": rate / 100}}
                for rate in rates]

    def test_the_median_run_is_the_row(self) -> None:
        from benchmarks.results import median_run_row
        row = median_run_row("parallel, 2x16 workers", self.runs(1_100.0, 907.0, 1_010.0))
        self.assertEqual((row.value, row.params), (1_010.0, "parallel, 2x16 workers, median of 3"))
        self.assertEqual(row.notes, "runs in order: 1,100, 907, 1,010 logins/s; the median run: "
                                    "notes of 1010")
        self.assertEqual(row.extra, {"p99_ms": 10.1, "runs": [1_100.0, 907.0, 1_010.0]})
        verdict = {v.target: v for v in judge([row])}["handshakes ≥ 1,000/s"]
        self.assertEqual(verdict.verdict, MET)
        self.assertEqual(verdict.measured,
                         "1,010 logins/s (parallel, 2x16 workers, median of 3)")
        # an even count: the lower middle one; one run: the row as it was
        self.assertEqual(median_run_row("x", self.runs(990.0, 1_200.0)).value, 990.0)
        single = median_run_row("parallel, 2x16 workers", self.runs(950.0))
        self.assertEqual((single.params, single.notes), ("parallel, 2x16 workers",
                                                         "notes of 950"))


class PlacementTests(SynchronousTestCase):
    def test_the_heading_says_how_processes_were_placed(self) -> None:
        self.assertTrue(report(full_run()).startswith("targets (this run):\n"))
        text = report(full_run(), "our server's reactor thread on CPU 0")
        self.assertTrue(text.startswith(
            "targets (this run; our server's reactor thread on CPU 0):\n"))

    def test_server_cpus_leave_one_for_the_rest(self) -> None:
        import argparse
        import os

        from benchmarks.options import parse_cpus, placement
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            self.skipTest("needs 2 CPUs")
        self.assertEqual(parse_cpus(str(cpus[0])), {cpus[0]})
        for bad in (",".join(map(str, cpus)), str(cpus[-1] + 1)):
            self.assertRaises(argparse.ArgumentTypeError, parse_cpus, bad)
        text = placement(argparse.Namespace(server_cpus=frozenset({cpus[0]})))
        self.assertIn(f"on CPU {cpus[0]}, load generators and PostgreSQL on", text)
        self.assertEqual(placement(argparse.Namespace(server_cpus=None)), "")


class NoiseWarningTests(SynchronousTestCase):
    def test_the_warning_names_the_disturbed_runs(self) -> None:
        from benchmarks.report import noise_warning
        self.assertIsNone(noise_warning([(3.0, "our server, tuple C=100 D=1"), (25.0, "x")]))
        text = noise_warning([(3.0, "our server, tuple C=100 D=1"),
                              (130.0, "the Node server, C=1000 D=1"),
                              (246.0, "pgbench -n -c 1000"), (40.0, "pgbench -n -c 1000")])
        self.assertIn("reached 246% of a core in: pgbench -n -c 1000; the Node server, "
                      "C=1000 D=1.", text)
        self.assertNotIn("our server", text)


class TransportTargetsTests(SynchronousTestCase):
    """wss against the Node server over wss; notification latency and idle memory of
    both transports; the ws targets read ws rows only."""

    @staticmethod
    def wss(row: Row) -> Row:
        row.transport = "wss"
        return row

    def rows(self, logins: float = 2.0, c100: float = 3.0, p99: float = 0.4,
             c1: float = 1.3, notify_wss: float = 70.0, kib_wss: float = 35.0) -> list[Row]:
        wss = self.wss
        return [
            Row("notify latency p99", "S=10000 K=10 paced every 1 s", 40.0, "ms"),
            Row("memory per idle socket", "N=10000", 9.0, "KiB"),
            wss(Row("handshake vs Node", "parallel, 2x16 workers", 300.0 * logins,
                    "logins/s", 300.0)),
            wss(Row("tuple vs Node server", "C=100 D=1", 1000.0 * c100, "req/s", 1000.0)),
            wss(Row("tuple p99 vs Node", "C=100 D=1", 10.0 * p99, "ms", 10.0)),
            wss(Row("tuple vs Node server", "C=1 D=1", 500.0 * c1, "req/s", 500.0)),
            wss(Row("notify latency p99", "S=10000 K=10 paced every 1 s, median of 3",
                    notify_wss, "ms")),
            wss(Row("memory per idle socket", "N=10000", kib_wss, "KiB")),
        ]

    def verdicts(self, rows: list[Row]) -> dict[str, str]:
        return {v.target: v.verdict for v in judge(rows)}

    def test_all_met(self) -> None:
        verdicts = self.verdicts(self.rows())
        for target in ("wss key logins ≥ 1.5× the Node server",
                       "wss tuple C=100 ≥ 2.5× the Node server",
                       "wss tuple p99 at C=100 ≤ half the Node server's",
                       "wss tuple C=1 ≥ 1.2× the Node server",
                       "10,000 subscribers, 1 NOTIFY/s: p99 < 50 ms over ws",
                       "10,000 subscribers, 1 NOTIFY/s: p99 < 80 ms over wss",
                       "idle socket < 10 KiB RSS over ws",
                       "idle socket < 40 KiB RSS over wss"):
            self.assertEqual(verdicts[target], MET, target)

    def test_not_met(self) -> None:
        verdicts = self.verdicts(self.rows(logins=1.4, c100=2.4, p99=0.6, c1=1.1,
                                           notify_wss=81.0, kib_wss=41.0))
        for target in ("wss key logins ≥ 1.5× the Node server",
                       "wss tuple C=100 ≥ 2.5× the Node server",
                       "wss tuple p99 at C=100 ≤ half the Node server's",
                       "wss tuple C=1 ≥ 1.2× the Node server",
                       "10,000 subscribers, 1 NOTIFY/s: p99 < 80 ms over wss",
                       "idle socket < 40 KiB RSS over wss"):
            self.assertEqual(verdicts[target], NOT_MET, target)

    def test_wss_rows_are_not_judged_as_ws(self) -> None:
        rows = [r for r in self.rows() if r.transport == "wss"]
        verdicts = self.verdicts(rows)
        self.assertEqual(verdicts["idle socket < 30 KiB RSS"], NOT_MEASURED)
        self.assertEqual(verdicts["idle socket < 10 KiB RSS over ws"], NOT_MEASURED)
        self.assertEqual(verdicts["idle socket < 40 KiB RSS over wss"], MET)

    def test_a_slower_pace_is_not_one_a_second(self) -> None:
        rows = [Row("notify latency p99", "S=10000 K=10 paced every 2 s", 40.0, "ms")]
        self.assertEqual(self.verdicts(rows)["10,000 subscribers, 1 NOTIFY/s: p99 < 50 ms "
                                             "over ws"], NOT_MEASURED)


class SharedStateTests(SynchronousTestCase):
    """The shared scenario: rounds of logins against a server with the shared state off
    and one with it on, as two rows of the median rounds, and their verdict."""

    @staticmethod
    def login_run(rate: float, cpu_us: float, pg_pct: float = 50.0) -> dict:
        return {"rate": rate, "notes": f"{rate:.0f}/s",
                "extra": {"server_cpu_us": cpu_us, "cpu": {"pg_pct": pg_pct}}}

    def rounds(self, *figures: tuple[float, float, float, float]) -> list[dict]:
        """(off rate, off CPU µs, on rate, on CPU µs) per round."""
        return [{False: self.login_run(off, off_cpu), True: self.login_run(on, on_cpu)}
                for off, off_cpu, on, on_cpu in figures]

    def test_each_row_is_the_round_with_the_median_ratio(self) -> None:
        from benchmarks.scenarios.shared import CPU, LOGINS, shared_rows
        rounds = self.rounds((1000.0, 900.0, 800.0, 990.0),    # 0.80, 1.10
                             (900.0, 1000.0, 891.0, 1200.0),   # 0.99, 1.20
                             (1000.0, 1000.0, 950.0, 1000.0))  # 0.95, 1.00
        logins, cpu = shared_rows("parallel, 2x16 workers", rounds)
        self.assertEqual((logins.scenario, cpu.scenario), (LOGINS, CPU))
        self.assertEqual(logins.params, "parallel, 2x16 workers, median of 3 rounds")
        self.assertEqual((logins.value, logins.baseline), (950.0, 1000.0))   # round 3
        self.assertEqual((cpu.value, cpu.baseline), (990.0, 900.0))          # round 1
        self.assertIn("on ÷ off in round order: 0.800, 0.990, 0.950;", logins.notes)
        self.assertIn("on ÷ off in round order: 1.100, 1.200, 1.000;", cpu.notes)
        self.assertIn("PostgreSQL CPU a login on 526 µs, off 500 µs", logins.notes)
        self.assertEqual(shared_rows("x", []), [])

    def rows(self, logins: float, cpu: float, transport: str = "ws") -> list[Row]:
        return [Row("handshake, shared state", "parallel", 1000.0 * logins, "logins/s",
                    1000.0, transport=transport),
                Row("server CPU a login, shared state", "parallel", 800.0 * cpu, "µs",
                    800.0, transport=transport)]

    def verdicts(self, rows: list[Row]) -> dict[str, str]:
        return {v.target: v.verdict for v in judge(rows)
                if v.target.startswith("shared state")}

    def test_ten_percent_dearer_at_most(self) -> None:
        ws, wss = ("shared state: a key login ≤ 10 % dearer over ws",
                   "shared state: a key login ≤ 10 % dearer over wss")
        self.assertEqual(self.verdicts(self.rows(0.91, 1.10)), {ws: MET, wss: NOT_MEASURED})
        self.assertEqual(self.verdicts(self.rows(0.90, 1.0))[ws], NOT_MET)   # 1.11× the time
        self.assertEqual(self.verdicts(self.rows(1.0, 1.11))[ws], NOT_MET)
        self.assertEqual(self.verdicts(self.rows(0.95, 1.05, "wss"))[wss], MET)
        line = next(v for v in judge(self.rows(0.95, 1.05)) if v.target == ws).line()
        self.assertIn("logins/s 0.950× off (950 vs 1,000), server CPU a login 1.050× off "
                      "(840 vs 800 µs)", line)
