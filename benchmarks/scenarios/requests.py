"""Tuple and select: closed-loop request runs at each C (sockets) and D (requests in
flight per socket), next to ``pgbench`` and the Node server doing the same reads."""

from __future__ import annotations

from typing import Any

from benchmarks import node, pgbench
from benchmarks.bench import Bench
from benchmarks.common import BenchError, Deadline, log
from benchmarks.environment import Server
from benchmarks.profiling import summarize_profile
from benchmarks.report import pgbench_notes, run_notes
from benchmarks.results import Row, pairs_row

# One row by primary key: what pgbench -S does, and a request the Node server answers with
# the same data. (It fails {"action": "tuple", "view": "base.curr_eid()"}, the request of
# earlier runs, with 42P01: without "params" it drops a function view's parentheses and,
# without "fields", the from clause: `select base.curr_eid;`. With "params": [] both
# servers answer it.)
TUPLE_MESSAGE = {"action": "tuple", "view": "bench.item", "fields": ["id", "name", "qty"],
                 "where": {"id": 7}}
# Every column, named: without "fields" the Node server emits `select bench.item` (42P01).
SELECT_MESSAGE = {"action": "select", "view": "bench.item",
                  "fields": ["id", "name", "qty", "price", "made"]}


def pgbench_rows(bench: Bench, name: str, label: str, params: str, m: dict[str, Any],
                 base: dict[str, Any] | None) -> None:
    """Ours next to pgbench: req/s (ratio to its TPS), p50 (to its average), p99."""
    bench.rows.append(Row(name, params, m["rps"], "req/s", base["tps"] if base else None,
                          f"{label} TPS" if base else "",
                          run_notes(m, f"our server, {name.split()[0]} {params}"),
                          {"measured": m, "pgbench": base}))
    scenario = name.split()[0]
    bench.rows.append(Row(f"{scenario} latency p50", params, m["p50"], "ms",
                          base["latency_avg_ms"] if base else None,
                          "pgbench avg" if base else "", pgbench_notes(base)))
    bench.rows.append(Row(f"{scenario} latency p99", params, m["p99"], "ms"))


def tuple_runs(bench: Bench) -> list[tuple[int, int]]:
    """(C, D) of the tuple runs: every C at ``--depth``, and one at C=100 (or the
    largest C) with ``--queued-depth`` requests in flight per socket, where requests
    queue for the users' connections."""
    args = bench.args
    runs = [(clients, args.depth) for clients in args.connections]
    if args.queued_depth and args.queued_depth != args.depth:
        target = 100 if 100 in args.connections else max(args.connections)
        runs.append((target, args.queued_depth))
    return runs


def tuple_scenario(bench: Bench, deadline: Deadline) -> None:
    args, env = bench.args, bench.env
    server = env.start_server(deadline, profile=args.profile, metrics=True)
    baselines: dict[int, dict[str, float]] = {}
    measured: dict[tuple[int, int], dict[str, Any]] = {}
    runs = tuple_runs(bench)
    for clients, depth in runs:
        log(f"  tuple: C={clients} D={depth}")
        measured[(clients, depth)] = bench.request_run(server, clients, TUPLE_MESSAGE,
                                                       deadline, depth=depth)
    if args.profile:
        target = max([c for c in args.connections if c <= 100] or args.connections)
        log(f"  tuple: profiling the server at C={target} (not a measured run)")
        bench.request_run(server, target, TUPLE_MESSAGE, deadline, profile=True)
        bench.profiles[f"tuple C={target} D={args.depth}"] = summarize_profile(
            server.profile_file)
    pairs = alternating_pairs(bench, server, deadline)
    env.finish([server.child])
    theirs = node.request_runs(bench, "tuple", runs, TUPLE_MESSAGE, measured, deadline)
    if not args.no_baseline:
        for clients in args.connections:
            log(f"  pgbench -S -c {clients}")
            try:
                baselines[clients] = pgbench.tps(env, clients, args.duration)
            except BenchError as exc:
                bench.failures.append(f"tuple baseline C={clients}: {exc}")
    for clients, depth in runs:
        m = measured[(clients, depth)]
        base = baselines.get(clients)
        params = f"C={clients} D={depth}"
        pgbench_rows(bench, "tuple bench.item by id", "pgbench -S", params, m, base)
        node.rows(bench, "tuple", params, m, theirs.get((clients, depth)))
    if pairs:
        bench.rows.append(pairs_row(pairs))


def alternating_pairs(bench: Bench, server: Server, deadline: Deadline
                      ) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """``--pairs`` times: our tuple run at C=100 D=1, then ``pgbench -S -c 100`` right
    after it. Both move by ±20 % from minute to minute on a shared VM; a ratio taken
    from runs seconds apart, and the median of several, says more than one ratio of
    runs a minute apart."""
    args, env = bench.args, bench.env
    if not args.pairs or args.no_baseline or args.depth != 1:
        return []
    pairs = []
    for number in range(1, args.pairs + 1):
        log(f"  tuple: alternating pair {number}/{args.pairs}: ours, then pgbench -S, "
            "C=100 D=1")
        try:
            ours = bench.request_run(server, 100, TUPLE_MESSAGE, deadline, depth=1)
            ours.pop("reply", None)
            pairs.append((ours, pgbench.tps(env, 100, args.duration)))
        except BenchError as exc:
            bench.failures.append(f"tuple alternating pair {number}: {exc}")
    return pairs


def select_scenario(bench: Bench, deadline: Deadline) -> None:
    args, env = bench.args, bench.env
    clients = 10
    server = env.start_server(deadline, metrics=True)
    log(f"  select 100 rows: C={clients}")
    m = bench.request_run(server, clients, SELECT_MESSAGE, deadline, expect_rows=100)
    env.finish([server.child])
    run = (clients, args.depth)
    theirs = node.request_runs(bench, "select", [run], SELECT_MESSAGE, {run: m}, deadline,
                               expect_rows=100)
    base = None
    if not args.no_baseline:
        try:
            base = pgbench.tps(env, clients, args.duration, "select * from bench.item;\n",
                               dbname="bench")
        except BenchError as exc:
            bench.failures.append(f"select baseline: {exc}")
    params = f"C={clients} D={args.depth} 100 rows"
    pgbench_rows(bench, "select bench.item", "pgbench -f select", params, m, base)
    node.rows(bench, "select", params, m, theirs.get(run))
