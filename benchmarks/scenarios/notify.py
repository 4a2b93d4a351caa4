"""Notify: fan-out of NOTIFYs to many LISTENing sockets — paced ones (one at a time: the
latency of a whole fan-out) and a burst (deliveries per second)."""

from __future__ import annotations

import json
import signal
import time

import psycopg2

from benchmarks.bench import Bench
from benchmarks.common import BenchError, Deadline, log
from benchmarks.metrics import histogram_stats
from benchmarks.procstat import CpuSnapshot
from benchmarks.profiling import summarize_profile
from benchmarks.report import fmt
from benchmarks.results import Row, lower_median, percentile

CHANNEL = "bench_fanout"


def notify_scenario(bench: Bench, deadline: Deadline) -> None:
    """``--notify-runs`` runs, each on a fresh server with fresh subscribers; the rows
    of the run whose paced p99 is the median, with every run's p99 in its notes."""
    runs = []
    for number in range(1, bench.args.notify_runs + 1):
        if bench.args.notify_runs > 1:
            log(f"  notify: run {number}/{bench.args.notify_runs}")
        runs.append(notify_run(bench, deadline, profile=bench.args.profile and number == 1))
    median = lower_median(runs, key=lambda rows: rows[-1].value)
    if len(runs) > 1:
        p99 = median[-1]
        listed = ", ".join(fmt(rows[-1].value) for rows in runs)
        p99.params += f", median of {len(runs)}"
        p99.notes = f"runs in order: p99 {listed} ms; the median run: " + p99.notes
        p99.extra = {**(p99.extra or {}), "runs_p99_ms": [rows[-1].value for rows in runs]}
    bench.rows.extend(median)


def notify_run(bench: Bench, deadline: Deadline, profile: bool) -> list[Row]:
    """One notify run → its rows: burst deliveries/s, paced p50, paced p99 (last)."""
    args, env = bench.args, bench.env
    subscribers = args.subscribers
    paced, burst = args.notifies, args.notifies
    # One paced NOTIFY at a time: the interval must exceed a whole fan-out, or the
    # latencies would measure a queue (Python fans out ~10-100 µs per socket); one a
    # second at 10,000 sockets, what the targets ask for.
    interval = max(0.25, min(1.0, subscribers / 5000))
    server = env.start_server(deadline, profile=profile, metrics=True)
    base = {"mode": "notify", "port": server.port, "channel": CHANNEL,
            "expected": paced + burst, "open_concurrency": 32,
            "max_seconds": deadline.left()}
    gens = env.loadgens(subscribers, base)
    try:
        t0 = time.monotonic()
        readies = [g.event("ready", deadline) for g in gens]
        opened = sum(r["opened"] for r in readies)
        log(f"  notify: {opened} subscribers in {time.monotonic() - t0:.1f} s")
        if opened < subscribers:
            raise BenchError(f"only {opened}/{subscribers} subscribers: "
                             f"{[r['open_errors'] for r in readies]}")
        for g in gens:
            g.send("go")
        conn = psycopg2.connect(env.bench_dsn)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                time.sleep(0.5)
                for k in range(paced):
                    payload = json.dumps({"p": "paced", "k": k, "t": time.time()})
                    cur.execute("select pg_notify(%s, %s)", (CHANNEL, payload))
                    time.sleep(interval)
                time.sleep(max(1.0, 2 * interval))
                paced_fanout = histogram_stats(server.metrics_ports,
                                               "wyseman_notification_fanout_seconds")
                full_gc = histogram_stats(server.metrics_ports, "wyseman_gc_pause_seconds",
                                          'generation="2",')
                if profile:  # the burst only (profiling slows it down a little)
                    server.child.popen.send_signal(signal.SIGUSR1)
                before = CpuSnapshot.take(server.pid, env.postmaster_pid)
                burst_start = time.time()
                for k in range(burst):
                    payload = json.dumps({"p": "burst", "k": k, "t": time.time()})
                    cur.execute("select pg_notify(%s, %s)", (CHANNEL, payload))
                results = []
                for g in gens:
                    try:
                        results.append(g.event("result", deadline, cap=args.notify_wait))
                    except BenchError:
                        g.send("stop")
                        results.append(g.event("result", deadline, cap=30))
                after = CpuSnapshot.take(server.pid, env.postmaster_pid)
                if profile:
                    server.child.popen.send_signal(signal.SIGUSR2)
                    while server.child.readline(deadline, 60).strip() != b"PROFILED":
                        pass
                    bench.profiles[f"notify burst S={subscribers}"] = summarize_profile(
                        server.profile_file)
        finally:
            conn.close()
    finally:
        env.finish(gens)
        env.finish([server.child])
    received = sum(r["received"] for r in results)
    expected = sum(r["expected"] for r in results)
    phase = {p: [v for r in results for v in r["phases"].get(p, {}).get("latencies_ms", [])]
             for p in ("paced", "burst")}
    rounds = sorted({k for r in results for k in r.get("rounds", {})}, key=int)
    round_p99 = []
    for k in rounds:
        values = [v for r in results for v in r["rounds"].get(k, [])]
        round_p99.append(percentile(values, 99))
        log(f"  paced NOTIFY {k}: p50 {fmt(percentile(values, 50))}, p90 "
            f"{fmt(percentile(values, 90))}, p99 {fmt(percentile(values, 99))}, max "
            f"{fmt(max(values, default=None))} ms")
    if any(r.get("other") for r in results):
        log(f"  generators' other frames: {[r.get('other') for r in results]}")
    last_burst = max((r["phases"]["burst"]["last"] for r in results
                      if "burst" in r["phases"]), default=None)
    burst_count = sum(r["phases"].get("burst", {}).get("count", 0) for r in results)
    rate = burst_count / (last_burst - burst_start) if last_burst else None
    # CPU seconds, not %: the generators read the burst after it has arrived
    gen_ms = [1000.0 * r["burst_cpu_s"] for r in results if r.get("burst_cpu_s") is not None]
    server_ms = 1000.0 * (after.server - before.server)
    notes = (f"delivered {received}/{expected}; burst CPU: server {server_ms:,.0f} ms "
             f"({1000.0 * server_ms / max(1, burst_count):.1f} µs a delivery), pg "
             f"{1000.0 * (after.pg - before.pg):,.0f} ms, generators "
             f"{'+'.join(f'{g:,.0f}' for g in gen_ms) or '-'} ms (reading after it)")
    if profile:
        notes += "; burst run under cProfile (slower)"
    params = f"S={subscribers}"
    extra = {"received": received, "expected": expected, "paced_notifies": paced,
             "paced_interval_s": interval, "burst_notifies": burst,
             "burst_p50_ms": percentile(phase["burst"], 50),
             "burst_p99_ms": percentile(phase["burst"], 99),
             "paced_server_fanout": paced_fanout, "server_full_gc": full_gc,
             "paced_round_p99_ms": round_p99}
    return [
        Row("notify fan-out", f"{params} K={burst} burst", rate, "deliveries/s",
            notes=notes, extra=extra),
        Row("notify latency p50", f"{params} K={paced} paced every {interval:g} s",
            percentile(phase["paced"], 50), "ms"),
        Row("notify latency p99", f"{params} K={paced} paced every {interval:g} s",
            percentile(phase["paced"], 99), "ms", notes=(
                f"each paced NOTIFY's p99: {fmt(min(round_p99, default=None))}"
                f"–{fmt(max(round_p99, default=None))} ms; "
                f"burst: p50 {fmt(extra['burst_p50_ms'])} ms, "
                f"p99 {fmt(extra['burst_p99_ms'])} ms; server's own "
                f"fan-out (paced): mean {fmt(paced_fanout['mean_ms'])} ms, "
                f"all ≤ {fmt(paced_fanout['max_bucket_ms'])} ms; "
                f"full GCs until then: {full_gc['count']}, mean "
                f"{fmt(full_gc['mean_ms'])} ms, all ≤ "
                f"{fmt(full_gc['max_bucket_ms'])} ms")),
    ]
