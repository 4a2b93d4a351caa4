"""Scaling: tuple requests and parallel logins with ``[server] workers`` = 1, 2, … up to
the core count, with and without ``route_by_user``."""

from __future__ import annotations

import os
from typing import Any

from benchmarks.bench import Bench
from benchmarks.common import Deadline, log
from benchmarks.report import run_notes
from benchmarks.results import Row, lower_median
from benchmarks.scenarios.handshake import handshake_run
from benchmarks.scenarios.requests import TUPLE_MESSAGE


def scaling_scenario(bench: Bench, deadline: Deadline) -> None:
    """Tuple requests at C=100 and parallel key logins with [server] workers = 1, 2,
    … up to the core count (each worker count on a fresh server). Workers spread over
    every core: ``--server-cpus`` does not apply here."""
    args, env = bench.args, bench.env
    placed = args.server_cpus
    if placed:
        log("  scaling: every process on every CPU (--server-cpus does not apply)")
        env.place_cluster(serving=False)
    args.server_cpus = None
    try:
        scaling_runs(bench, deadline)
    finally:
        args.server_cpus = placed


def scaling_runs(bench: Bench, deadline: Deadline) -> None:
    """``--scaling-runs`` rounds of every worker count; the rows of the round whose
    ratio is the median (tuple: the routed ratio; logins: theirs), every round's
    ratio in the notes of the two-worker rows."""
    args = bench.args
    clients = 100
    counts = list(range(1, max(2, os.cpu_count() or 1) + 1))
    rounds = []
    for number in range(1, args.scaling_runs + 1):
        if args.scaling_runs > 1:
            log(f"  scaling: round {number}/{args.scaling_runs}")
        rounds.append(scaling_round(bench, deadline, clients, counts))

    def ratio(rows: list[Row], scenario: str, routed: bool = False) -> float:
        row = next(r for r in rows if r.scenario == scenario and r.baseline
                   and ("route_by_user" in r.params) == routed)
        return row.ratio or 0.0
    tuple_rows = [[r for r in rows if r.scenario != "handshakes, server workers"]
                  for rows in rounds]
    login_rows = [[r for r in rows if r.scenario == "handshakes, server workers"]
                  for rows in rounds]
    if len(rounds) > 1:
        for group, scenario, routed in ((tuple_rows, "tuple, server workers", True),
                                        (tuple_rows, "tuple, server workers", False),
                                        (login_rows, "handshakes, server workers", False)):
            listed = ", ".join(f"{ratio(rows, scenario, routed):.2f}" for rows in group)
            for rows in group:
                for row in rows:
                    if (row.scenario == scenario and row.baseline
                            and ("route_by_user" in row.params) == routed):
                        row.notes = f"rounds in order: {listed}×; this round: " + row.notes
    bench.rows.extend(lower_median(tuple_rows,
                                   key=lambda rows: ratio(rows, "tuple, server workers",
                                                          routed=len(counts) > 1)))
    bench.rows.extend(lower_median(login_rows,
                                   key=lambda rows: ratio(rows, "handshakes, server workers")))


def scaling_round(bench: Bench, deadline: Deadline, clients: int, counts: list[int]) -> list[Row]:
    args, env = bench.args, bench.env
    measured: dict[int, dict[str, Any]] = {}
    logins: dict[int, dict[str, Any]] = {}
    for count in counts:
        server = env.start_server(deadline, workers=count, route_by_user=False)
        try:
            log(f"  scaling: workers={count} C={clients} D={args.depth}")
            measured[count] = bench.request_run(server, clients, TUPLE_MESSAGE, deadline)
            measured[count].pop("reply", None)
            log(f"  scaling: workers={count} handshakes {args.loadgens}x{args.workers}")
            logins[count] = handshake_run(bench, server, args.loadgens, args.workers, False,
                                          deadline)
        finally:
            env.finish([server.child])
    routed: dict[int, dict[str, Any]] = {}
    for count in counts[1:]:   # the same with each user's sockets in one worker
        server = env.start_server(deadline, workers=count, route_by_user=True)
        try:
            log(f"  scaling: workers={count} route_by_user C={clients} D={args.depth}")
            routed[count] = bench.request_run(server, clients, TUPLE_MESSAGE, deadline)
            routed[count].pop("reply", None)
        finally:
            env.finish([server.child])
    one, one_logins = measured[1]["rps"], logins[1]["rate"]
    rows = []
    for count in counts:
        m = measured[count]
        later = count > 1
        rows.append(Row("tuple, server workers", f"workers={count} C={clients}",
                        m["rps"], "req/s", one if later else None,
                        "workers=1 req/s" if later else "", run_notes(m),
                        {"measured": m}))
        rows.append(Row("tuple latency p99", f"workers={count} C={clients}",
                        m["p99"], "ms"))
        if count in routed:
            m = routed[count]
            rows.append(Row("tuple, server workers",
                            f"workers={count} C={clients} route_by_user", m["rps"],
                            "req/s", one, "workers=1 req/s", run_notes(m),
                            {"measured": m}))
            rows.append(Row("tuple latency p99",
                            f"workers={count} C={clients} route_by_user", m["p99"], "ms"))
    for count in counts:
        m, later = logins[count], count > 1
        rows.append(Row("handshakes, server workers",
                        f"workers={count} {args.loadgens}x{args.workers}", m["rate"],
                        "logins/s", one_logins if later else None,
                        "workers=1 logins/s" if later else "", m["notes"], m["extra"]))
    return rows
