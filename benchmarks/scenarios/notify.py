"""Notify: fan-out of NOTIFYs to many LISTENing sockets — paced ones (one at a time: the
latency of a whole fan-out) and a burst (deliveries per second) — and the same against
the Node.js Wyseman server at a count it can hold (it opens a database connection per
socket), the two servers alternating."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from typing import Any

import psycopg2

from benchmarks import node
from benchmarks.bench import Bench
from benchmarks.common import BenchError, Deadline, log
from benchmarks.environment import Server
from benchmarks.metrics import histogram_stats
from benchmarks.procstat import CpuSnapshot
from benchmarks.profiling import summarize_profile
from benchmarks.report import fmt
from benchmarks.results import Row, lower_median, percentile

CHANNEL = "bench_fanout"


def notify_scenario(bench: Bench, deadline: Deadline) -> None:
    """``--notify-runs`` runs, each on a fresh server with fresh subscribers; the rows
    of the run whose paced p99 is the median, with every run's p99 in its notes. Then
    the Node server baseline (:func:`node_baseline`)."""
    runs = []
    for number in range(1, bench.args.notify_runs + 1):
        if bench.args.notify_runs > 1:
            log(f"  notify: run {number}/{bench.args.notify_runs}")
        server = bench.env.start_server(deadline, profile=bench.args.profile and number == 1,
                                        metrics=True)
        runs.append(rows_of(notify_run(bench, deadline, server, bench.args.subscribers,
                                       profile=bench.args.profile and number == 1)))
    median = lower_median(runs, key=lambda rows: rows[-1].value)
    if len(runs) > 1:
        p99 = median[-1]
        listed = ", ".join(fmt(rows[-1].value) for rows in runs)
        p99.params += f", median of {len(runs)}"
        p99.notes = f"runs in order: p99 {listed} ms; the median run: " + p99.notes
        p99.extra = {**(p99.extra or {}), "runs_p99_ms": [rows[-1].value for rows in runs]}
    bench.rows.extend(median)
    node_baseline(bench, deadline)


def node_baseline(bench: Bench, deadline: Deadline) -> None:
    """Ours and the Node server, alternating, ``--notify-runs`` times each, at
    ``--node-subscribers`` sockets (the Node server holds a PostgreSQL connection, and
    a LISTEN, per socket: 10,000 would need 10,000 backends). Rows: the median run of
    each server, paced p50 and p99, burst deliveries/s and server CPU a delivery."""
    if node.skipped(bench, "notify"):
        return
    env, count = bench.env, bench.args.node_subscribers
    label = bench.label("notify")
    ours_runs: list[dict[str, Any]] = []
    node_runs: list[dict[str, Any]] = []
    for number in range(1, bench.args.notify_runs + 1):
        log(f"  notify at S={count}: ours and the Node server, round "
            f"{number}/{bench.args.notify_runs}")
        ours_runs.append(notify_run(bench, deadline, env.start_server(deadline, metrics=True),
                                    count))
        try:
            theirs = node.start_server(env, deadline)
            node_runs.append(notify_run(bench, deadline, theirs, count,
                                        login=node.login(bench),
                                        listening=lambda: _listening(env.bench_dsn)))
        except BenchError as exc:
            bench.failures.append(f"{label} Node baseline: {exc}")
            log(f"  Node server: FAILED: {exc}")
            break
    if not node_runs:
        bench.node_status[label] = "failed"
        return
    bench.node_status[label] = f"measured at S={count}, {len(node_runs)} runs"
    ours = lower_median(ours_runs, key=lambda m: m["p99"])
    theirs = lower_median(node_runs, key=lambda m: m["p99"])
    params = f"S={count} K={ours['paced']} paced every {ours['interval']:g} s"
    if len(node_runs) > 1:
        params += f", median of {len(node_runs)}"
    runs_note = (f"runs in order: ours p99 {', '.join(fmt(m['p99']) for m in ours_runs)} ms, "
                 f"Node {', '.join(fmt(m['p99']) for m in node_runs)} ms")
    extra = {"ours": _summary(ours), "node": _summary(theirs)}
    bench.rows.append(Row("notify p99 vs Node", params, ours["p99"], "ms", theirs["p99"],
                          "Node p99", runs_note, extra))
    bench.rows.append(Row("notify p50 vs Node", params, ours["p50"], "ms", theirs["p50"],
                          "Node p50"))
    burst = f"S={count} K={ours['burst']} burst"
    bench.rows.append(Row("notify fan-out vs Node", burst, ours["rate"], "deliveries/s",
                          theirs["rate"], "Node deliveries/s",
                          f"ours: {ours['cpu_note']}; Node: {theirs['cpu_note']}"))
    bench.rows.append(Row("server CPU a delivery vs Node", burst, ours["cpu_us"], "µs",
                          theirs["cpu_us"], "Node µs"))


def _summary(m: dict[str, Any]) -> dict[str, Any]:
    return {k: m[k] for k in ("p50", "p99", "rate", "cpu_us", "received", "expected")}


def _listening(dsn: str) -> int:
    """How many database sessions have LISTENed to the channel (the Node server LISTENs
    on each socket's own connection, after the socket is open)."""
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("select count(*) from pg_stat_activity"
                        " where backend_type = 'client backend' and query ilike %s",
                        (f"listen%{CHANNEL}%",))
            return int(cur.fetchone()[0])
    finally:
        conn.close()


def notify_run(bench: Bench, deadline: Deadline, server: Server, subscribers: int,
               profile: bool = False, login: dict[str, Any] | None = None,
               listening: Callable[[], int] | None = None) -> dict[str, Any]:
    """One notify run on ``server`` (stopped at the end) with ``subscribers`` fresh
    sockets, logged in as ``login`` says (the generators' spec; ours by default);
    ``listening`` counts the LISTENs in place, waited for before the first NOTIFY.
    → the measurement :func:`rows_of` makes rows of."""
    args, env = bench.args, bench.env
    paced, burst = args.notifies, args.notifies
    # One paced NOTIFY at a time: the interval must exceed a whole fan-out, or the
    # latencies would measure a queue (Python fans out ~10-100 µs per socket); one a
    # second at 10,000 sockets, what the targets ask for.
    interval = max(0.25, min(1.0, subscribers / 5000))
    base = {"mode": "notify", "port": server.port, "channel": CHANNEL,
            "expected": paced + burst, "open_concurrency": 32,
            "max_seconds": deadline.left(), **(login or {})}
    paced_fanout = full_gc = None
    gens = []
    try:
        gens = env.loadgens(subscribers, base)
        t0 = time.monotonic()
        readies = [g.event("ready", deadline) for g in gens]
        opened = sum(r["opened"] for r in readies)
        log(f"  notify: {opened} subscribers in {time.monotonic() - t0:.1f} s")
        if opened < subscribers:
            raise BenchError(f"only {opened}/{subscribers} subscribers: "
                             f"{[r['open_errors'] for r in readies]}")
        if listening is not None:
            _wait_listening(listening, subscribers, deadline)
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
                if server.metrics_ports:
                    paced_fanout = histogram_stats(server.metrics_ports,
                                                   "wyseman_notification_fanout_seconds")
                    full_gc = histogram_stats(server.metrics_ports,
                                              "wyseman_gc_pause_seconds", 'generation="2",')
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
    cpu_us = 1000.0 * server_ms / max(1, burst_count)
    cpu_note = (f"burst CPU: server {server_ms:,.0f} ms ({cpu_us:.1f} µs a delivery), pg "
                f"{1000.0 * (after.pg - before.pg):,.0f} ms, generators "
                f"{'+'.join(f'{g:,.0f}' for g in gen_ms) or '-'} ms (reading after it)")
    if received < expected:
        log(f"  notify: delivered {received}/{expected}")
    return {"subscribers": subscribers, "paced": paced, "burst": burst,
            "interval": interval, "received": received, "expected": expected,
            "rate": rate, "cpu_us": cpu_us, "cpu_note": cpu_note,
            "p50": percentile(phase["paced"], 50), "p99": percentile(phase["paced"], 99),
            "burst_p50": percentile(phase["burst"], 50),
            "burst_p99": percentile(phase["burst"], 99),
            "round_p99": round_p99, "paced_fanout": paced_fanout, "full_gc": full_gc,
            "profile": profile}


def _wait_listening(listening: Callable[[], int], subscribers: int,
                    deadline: Deadline) -> None:
    """Until ``listening()`` reaches ``subscribers`` (a minute at most)."""
    give_up = min(time.monotonic() + 60.0, deadline.end)
    while (count := listening()) < subscribers:
        if time.monotonic() > give_up:
            raise BenchError(f"only {count}/{subscribers} sockets LISTEN after a minute")
        time.sleep(0.2)


def rows_of(m: dict[str, Any]) -> list[Row]:
    """One run of our server (:func:`notify_run`) → its rows: burst deliveries/s, paced
    p50, paced p99 (last)."""
    notes = f"delivered {m['received']}/{m['expected']}; {m['cpu_note']}"
    if m["profile"]:
        notes += "; burst run under cProfile (slower)"
    params = f"S={m['subscribers']}"
    paced = f"{params} K={m['paced']} paced every {m['interval']:g} s"
    fanout, full_gc = m["paced_fanout"], m["full_gc"]
    extra = {"received": m["received"], "expected": m["expected"],
             "paced_notifies": m["paced"], "paced_interval_s": m["interval"],
             "burst_notifies": m["burst"], "burst_p50_ms": m["burst_p50"],
             "burst_p99_ms": m["burst_p99"], "paced_server_fanout": fanout,
             "server_full_gc": full_gc, "paced_round_p99_ms": m["round_p99"]}
    round_p99 = m["round_p99"]
    return [
        Row("notify fan-out", f"{params} K={m['burst']} burst", m["rate"], "deliveries/s",
            notes=notes, extra=extra),
        Row("notify latency p50", paced, m["p50"], "ms"),
        Row("notify latency p99", paced, m["p99"], "ms", notes=(
            f"each paced NOTIFY's p99: {fmt(min(round_p99, default=None))}"
            f"–{fmt(max(round_p99, default=None))} ms; "
            f"burst: p50 {fmt(m['burst_p50'])} ms, p99 {fmt(m['burst_p99'])} ms; "
            f"server's own fan-out (paced): mean {fmt(fanout['mean_ms'])} ms, "
            f"all ≤ {fmt(fanout['max_bucket_ms'])} ms; "
            f"full GCs until then: {full_gc['count']}, mean "
            f"{fmt(full_gc['mean_ms'])} ms, all ≤ {fmt(full_gc['max_bucket_ms'])} ms")),
    ]
