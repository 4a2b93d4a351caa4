"""Handshake: signed key logins in a loop (log in → 101 → close), sequential and
parallel, and with a ``GET /clientinfo`` before each as the JS client does."""

from __future__ import annotations

from typing import Any

from benchmarks.bench import Bench, measure_window
from benchmarks.common import Deadline, log
from benchmarks.environment import Server
from benchmarks.profiling import summarize_profile
from benchmarks.report import cpu_notes, fmt
from benchmarks.results import median_run_row, percentile


def handshake_scenario(bench: Bench, deadline: Deadline) -> None:
    args, env = bench.args, bench.env
    server = env.start_server(deadline, profile=args.profile)
    variants = [("sequential, 1 worker", 1, 1, False),
                (f"parallel, {args.loadgens}x{args.workers} workers", args.loadgens,
                 args.workers, False),
                (f"parallel + GET /clientinfo each, {args.loadgens}x{args.workers}",
                 args.loadgens, args.workers, True)]
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
        if args.profile:
            log("  handshake: profile (not a measured run)")
            handshake_run(bench, server, args.loadgens, args.workers, False, deadline,
                          profile=True)
            bench.profiles[f"handshake {args.loadgens}x{args.workers} workers"] = (
                summarize_profile(server.profile_file))
    finally:
        env.finish([server.child])


def handshake_run(bench: Bench, server: Server, processes: int, workers: int, each: bool,
                  deadline: Deadline, profile: bool = False) -> dict[str, Any]:
    """Key logins in a loop by ``processes`` generators × ``workers`` → the rate, the
    notes of its row and the raw figures (``extra``)."""
    args, env = bench.args, bench.env
    presign = int(min(20000, 2500 * (args.duration + args.warmup) / processes))
    base = {"mode": "handshake", "port": server.port, "workers": workers,
            "warmup": args.warmup, "duration": args.duration,
            "clientinfo_each": each, "presign": presign,
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
    notes = (f"upgrade p50 {fmt(percentile(lat, 50))} ms, "
             f"p99 {fmt(percentile(lat, 99))} ms; "
             + cpu_notes(before.until(after), gen_cpu))
    if errors:
        notes += f"; errors {errors}"
    if any(r["presign_left"] == 0 and not each for r in results):
        notes += "; presigned pool ran out (generator signed inline)"
    return {"rate": completed / args.duration, "notes": notes,
            "extra": {"completed": completed, "errors": errors,
                      "cpu": before.until(after),
                      "p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99)}}
