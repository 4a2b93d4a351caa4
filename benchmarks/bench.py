"""What every scenario works with: :class:`Bench` (the environment, the rows and
failures so far) and the measured window of a run.

A scenario is a function ``body(bench, deadline)`` (see :mod:`benchmarks.scenarios`);
:meth:`Bench.run` gives it a hard deadline, records its failure without stopping the
run, and stops whatever children it left. :meth:`Bench.request_run` is the closed-loop
request run that the tuple, select and scaling scenarios, and the Node baseline, share.
"""

from __future__ import annotations

import signal
import statistics
import time
from collections.abc import Callable
from typing import Any

from benchmarks.common import BenchError, Deadline, log
from benchmarks.environment import Environment, Server
from benchmarks.metrics import gauge_sum
from benchmarks.options import WS_ONLY
from benchmarks.procstat import CpuSnapshot
from benchmarks.report import cpu_per_event_us
from benchmarks.results import Row, percentile


class Bench:
    """One run's state: the environment, and the rows, failures, profiles and Node
    baseline statuses collected so far."""

    def __init__(self, env: Environment) -> None:
        self.env = env
        self.args = env.args
        self.rows: list[Row] = []
        self.failures: list[str] = []
        self.profiles: dict[str, Any] = {}
        self.node_status: dict[str, str] = {}

    def run(self, name: str, budget: float, body: Callable[[Bench, Deadline], None]) -> None:
        """``body`` over each of ``--transport`` (ws only for :data:`WS_ONLY`) within
        ``budget`` seconds in all; its rows are labelled with the transport."""
        transports = ["ws"] if name in WS_ONLY else self.args.transports
        if name in WS_ONLY and self.args.transports != ["ws"]:
            log(f"scenario {name}: over ws only")
        deadline = Deadline(budget, f"scenario {name}")
        for transport in transports:
            self.env.transport = transport
            label = self.label(name)
            log(f"scenario {label}: start (hard limit {deadline.end - time.monotonic():.0f} s)")
            first = len(self.rows)
            try:
                body(self, deadline)
            except BenchError as exc:
                self.failures.append(f"{label}: {exc}")
                log(f"scenario {label}: FAILED: {exc}")
            finally:
                self.env.finish(list(self.env.children))
                for row in self.rows[first:]:
                    row.transport = row.transport or transport
            log(f"scenario {label}: done")
        self.env.transport = "ws"

    @property
    def transport(self) -> str:
        """``ws`` or ``wss``: what the scenario running now is measured over."""
        return self.env.transport

    def label(self, name: str) -> str:
        """``name``, with `` over wss`` when the scenario runs over wss now."""
        return name if self.transport == "ws" else f"{name} over wss"

    # -- a closed-loop request run ----------------------------------------------------
    def request_run(self, server: Server, connections: int, message: dict[str, Any],
                    deadline: Deadline, expect_rows: int | None = None,
                    profile: bool = False, plain_user: bool = False, ip: str | None = None,
                    depth: int | None = None) -> dict[str, Any]:
        args, env = self.args, self.env
        env.place_cluster(serving=True)   # (after a pgbench run, with --server-cpus)
        base = {"mode": "requests", "port": server.port, "message": message,
                "plain_user": plain_user, "ip": ip,
                "depth": depth or args.depth, "warmup": args.warmup, "duration": args.duration,
                "open_concurrency": 32, "max_seconds": deadline.left()}
        gens = env.loadgens(connections, base)
        try:
            readies = [g.event("ready", deadline) for g in gens]
            opened = sum(r["opened"] for r in readies)
            problems = [r["open_errors"] for r in readies if r["open_errors"]]
            if opened < connections:
                raise BenchError(f"only {opened}/{connections} connections opened: {problems}")
            verify = dict(readies[0].get("verify") or {})
            reply = verify.pop("data", None)
            if verify.get("error"):
                raise BenchError(f"the request fails: {verify['error']}")
            if expect_rows is not None and verify.get("rows") != expect_rows:
                raise BenchError(f"expected {expect_rows} rows, got {verify}")
            warmed = sum(r.get("warmed", 0) for r in readies)
            if warmed < opened:
                log(f"  warning: only {warmed}/{opened} sockets answered the warm-up request")
            for g in gens:
                g.send("go")
            before, after, batches = measure_window(server, env, deadline, profile,
                                                    lambda: self.batch_counts(server))
            results = [g.event("result", deadline) for g in gens]
        finally:
            env.finish(gens)
        latencies = [v for r in results for v in r["latencies_ms"]]
        completed = sum(r["completed"] for r in results)
        errors = sum(r["errors"] for r in results)
        first_error = next((r["first_error"] for r in results if r["first_error"]), None)
        cpu = before.until(after)
        return {"rps": completed / args.duration, "completed": completed, "errors": errors,
                "server_cpu_us": cpu_per_event_us(cpu, completed / args.duration),
                "first_error": first_error, "reply": reply, "warmed": warmed,
                "p50": percentile(latencies, 50), "p99": percentile(latencies, 99),
                "pct": {q: percentile(latencies, q) for q in (10, 25, 50, 75, 90, 95, 99, 99.9)},
                "mean": statistics.fmean(latencies) if latencies else None,
                "cpu": cpu,
                "gen_cpu": [100.0 * r["cpu_s"] / args.duration for r in results],
                "read_batches": batches[0], "batched_reads": batches[1]}

    @staticmethod
    def batch_counts(server: Server) -> list[float]:
        """Batches and the reads they answered so far (0, 0 without a metrics page, as
        for the Node server)."""
        if not server.metrics_ports:
            return [0.0, 0.0]
        return [gauge_sum(server.metrics_ports, "wyseman_read_batches"),
                gauge_sum(server.metrics_ports, "wyseman_batched_reads")]


def measure_window(server: Server, env: Environment, deadline: Deadline,
                   profile: bool = False, counters: Callable[[], list[float]] | None = None
                   ) -> tuple[CpuSnapshot, CpuSnapshot, list[float]]:
    """Called right after 'go': skip the warm-up, then CPU snapshots around the measured
    seconds (cProfile of the server over exactly those seconds with ``profile``), and what
    ``counters`` counted in them."""
    args = env.args
    time.sleep(args.warmup)
    if profile:
        server.child.popen.send_signal(signal.SIGUSR1)
    counted = counters() if counters else []
    before = CpuSnapshot.take(server.pid, env.postmaster_pid)
    time.sleep(args.duration)
    after = CpuSnapshot.take(server.pid, env.postmaster_pid)
    if counters:
        counted = [b - a for a, b in zip(counted, counters(), strict=True)]
    if profile:
        server.child.popen.send_signal(signal.SIGUSR2)
        while server.child.readline(deadline, 60).strip() != b"PROFILED":
            pass
    return before, after, counted
