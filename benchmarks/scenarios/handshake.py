"""Handshake: signed key logins in a loop (log in → 101 → close), sequential and
parallel, and with a ``GET /clientinfo`` before each as the JS client does; then the
parallel logins against the Node server (key logins too, over ws as over wss), with
each server's CPU time a login."""

from __future__ import annotations

from typing import Any

from benchmarks import node
from benchmarks.bench import Bench, measure_window
from benchmarks.common import BenchError, Deadline, log
from benchmarks.environment import Server
from benchmarks.profiling import summarize_profile
from benchmarks.report import cpu_notes, cpu_per_event_us, fmt
from benchmarks.results import Row, lower_median, median_run_row, percentile


def handshake_scenario(bench: Bench, deadline: Deadline) -> None:
    args, env = bench.args, bench.env
    server = env.start_server(deadline, profile=args.profile)
    variants = [("sequential, 1 worker", 1, 1, False),
                (f"parallel, {args.loadgens}x{args.workers} workers", args.loadgens,
                 args.workers, False),
                (f"parallel + GET /clientinfo each, {args.loadgens}x{args.workers}",
                 args.loadgens, args.workers, True)]
    parallel: list[dict[str, Any]] = []
    try:
        for label, processes, workers, each in variants:
            repeats = args.handshake_runs if label.startswith("parallel,") else 1
            runs = []
            for number in range(1, repeats + 1):
                log(f"  handshake: {label}"
                    + (f" ({number}/{repeats})" if repeats > 1 else ""))
                runs.append(handshake_run(bench, server, processes, workers, each,
                                          deadline))
            bench.rows.append(median_run_row(label, runs))
            if label.startswith("parallel,"):
                parallel = runs
        if args.profile:
            log("  handshake: profile (not a measured run)")
            handshake_run(bench, server, args.loadgens, args.workers, False, deadline,
                          profile=True)
            bench.profiles[f"handshake {args.loadgens}x{args.workers} workers"] = (
                summarize_profile(server.profile_file))
    finally:
        env.finish([server.child])
    node_logins(bench, deadline, parallel)


def node_logins(bench: Bench, deadline: Deadline, ours: list[dict[str, Any]]) -> None:
    """The parallel key logins against the Node server, ``--handshake-runs`` times; one
    row of the median runs, ours against theirs, with both servers' CPU a login."""
    args, env = bench.args, bench.env
    if not ours or node.skipped(bench, "handshake"):
        return
    label = f"parallel, {args.loadgens}x{args.workers} workers"
    scenario = bench.label("handshake")
    runs: list[dict[str, Any]] = []
    server = None
    try:
        server = node.start_server(env, deadline)
        for number in range(1, args.handshake_runs + 1):
            log(f"  Node server: handshake {label} ({number}/{args.handshake_runs})")
            runs.append(handshake_run(bench, server, args.loadgens, args.workers, False,
                                      deadline, ip=node.LOOPBACK, run="the Node server"))
    except BenchError as exc:
        bench.failures.append(f"{scenario} Node baseline: {exc}")
    finally:
        if server is not None:
            env.finish([server.child])
    if not runs:
        bench.node_status[scenario] = "failed"
        return
    bench.node_status[scenario] = f"measured at {label}"
    mine = lower_median(ours, key=lambda run: run["rate"])
    theirs = lower_median(runs, key=lambda run: run["rate"])
    if not theirs["extra"]["completed"]:
        bench.failures.append(f"{scenario} Node baseline: no login succeeded "
                              f"({theirs['extra']['errors']})")
    bench.rows.append(Row(
        "handshake vs Node", label + (f", median of {len(runs)}" if len(runs) > 1 else ""),
        mine["rate"], "logins/s", theirs["rate"], "Node logins/s",
        f"server CPU a login: ours {fmt(mine['extra']['server_cpu_us'])} µs, Node "
        f"{fmt(theirs['extra']['server_cpu_us'])} µs; Node server run: " + theirs["notes"],
        {"node": theirs["extra"], "node_runs": [r["rate"] for r in runs]}))


def handshake_run(bench: Bench, server: Server, processes: int, workers: int, each: bool,
                  deadline: Deadline, profile: bool = False, ip: str | None = None,
                  run: str = "our server") -> dict[str, Any]:
    """Key logins in a loop by ``processes`` generators × ``workers`` → the rate, the
    notes of its row and the raw figures (``extra``); ``ip``: signed for that address
    without ``/clientinfo`` (the Node server's)."""
    args, env = bench.args, bench.env
    presign = int(min(20000, 2500 * (args.duration + args.warmup) / processes))
    base = {"mode": "handshake", "port": server.port, "workers": workers,
            "warmup": args.warmup, "duration": args.duration,
            "clientinfo_each": each, "presign": presign, "ip": ip,
            "max_seconds": deadline.left()}
    gens = env.loadgens(processes, base, processes)
    try:
        for g in gens:
            g.event("ready", deadline)
        for g in gens:
            g.send("go")
        before, after, _ = measure_window(server, env, deadline, profile)
        results = [g.event("result", deadline) for g in gens]
    finally:
        env.finish(gens)
    completed = sum(r["completed"] for r in results)
    lat = [v for r in results for v in r["latencies_ms"]]
    errors: dict[str, int] = {}
    for r in results:
        for k, v in r["errors"].items():
            errors[k] = errors.get(k, 0) + v
    gen_cpu = [100.0 * r["cpu_s"] / args.duration for r in results]
    cpu = before.until(after)
    rate = completed / args.duration
    per = cpu_per_event_us(cpu, rate)
    notes = (f"upgrade p50 {fmt(percentile(lat, 50))} ms, "
             f"p99 {fmt(percentile(lat, 99))} ms; "
             + (f"server CPU {per:.0f} µs a login; " if per is not None else "")
             + cpu_notes(cpu, gen_cpu, run))
    if errors:
        notes += f"; errors {errors}"
    if any(r["presign_left"] == 0 and not each for r in results):
        notes += "; presigned pool ran out (generator signed inline)"
    return {"rate": rate, "notes": notes,
            "extra": {"completed": completed, "errors": errors, "cpu": cpu,
                      "server_cpu_us": per,
                      "p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99)}}
