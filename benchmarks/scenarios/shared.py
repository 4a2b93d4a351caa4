"""Shared state: what ``[cluster] shared_state = "postgres"`` costs a key login.

Two of our servers run side by side on the same cluster, one with the shared state off
and one with it on, and the parallel key logins are measured against each in turn,
``--shared-runs`` rounds, the order swapped every round (off/on, on/off, …) so that a
neighbour's load drifting over the run weighs on both alike. A round gives two ratios,
on ÷ off: logins/s and our server's CPU time a login; each row is the round with the
median ratio, every round's ratio in its notes. Comparing two runs of separate
invocations would measure the machine's mood between them as much as the shared state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from benchmarks.bench import Bench
from benchmarks.common import Deadline, log
from benchmarks.environment import Server
from benchmarks.report import fmt
from benchmarks.results import Row, lower_median
from benchmarks.scenarios.handshake import handshake_run

#: the rows' scenario names (benchmarks/targets.py finds them by these)
LOGINS = "handshake, shared state"
CPU = "server CPU a login, shared state"

#: one round: the parallel login run against each server (False: off, True: on)
Round = dict[bool, dict[str, Any]]


def shared_scenario(bench: Bench, deadline: Deadline) -> None:
    args, env = bench.args, bench.env
    label = f"parallel, {args.loadgens}x{args.workers} workers"
    servers: dict[bool, Server] = {}
    rounds: list[Round] = []
    try:
        for shared in (False, True):
            servers[shared] = env.start_server(deadline, shared_state=shared)
        for number in range(1, args.shared_runs + 1):
            order = (False, True) if number % 2 else (True, False)
            measured: Round = {}
            for shared in order:
                state = "on" if shared else "off"
                log(f"  shared state: round {number}/{args.shared_runs}, {state}, {label}")
                measured[shared] = handshake_run(
                    bench, servers[shared], args.loadgens, args.workers, False, deadline,
                    run=f"our server, shared state {state}")
            rounds.append(measured)
    finally:
        env.finish([server.child for server in servers.values()])
    bench.rows.extend(shared_rows(label, rounds))


def _rate(run: dict[str, Any]) -> float:
    return float(run["rate"])


def _cpu(run: dict[str, Any]) -> float:
    """Our server's CPU µs a login (0 when nothing was logged in: no ratio)."""
    return float(run["extra"]["server_cpu_us"] or 0.0)


def _pg_cpu(run: dict[str, Any]) -> float | None:
    """PostgreSQL's CPU µs a login (its backends are where the shared tables cost)."""
    return 10_000.0 * run["extra"]["cpu"]["pg_pct"] / run["rate"] if run["rate"] else None


def shared_rows(label: str, rounds: list[Round]) -> list[Row]:
    """The rounds as two rows, logins/s and CPU a login, on against off: each the round
    whose ratio of that figure is the median (the lower middle one of an even count)."""
    if not rounds:
        return []
    params = label + (f", median of {len(rounds)} rounds" if len(rounds) > 1 else "")

    def ratio(figure: Callable[[dict[str, Any]], float]) -> Callable[[Round], float]:
        return lambda measured: (figure(measured[True]) / figure(measured[False])
                                 if figure(measured[False]) else 0.0)

    def listed(figure: Callable[[dict[str, Any]], float]) -> str:
        return ", ".join(f"{ratio(figure)(measured):.3f}" for measured in rounds)

    rows = []
    for scenario, figure, unit in ((LOGINS, _rate, "logins/s"), (CPU, _cpu, "µs")):
        median = lower_median(rounds, key=ratio(figure))
        on, off = median[True], median[False]
        notes = (f"on ÷ off in round order: {listed(figure)}; median round: PostgreSQL "
                 f"CPU a login on {fmt(_pg_cpu(on))} µs, off {fmt(_pg_cpu(off))} µs; "
                 f"on: {on['notes']}; off: {off['notes']}")
        rows.append(Row(scenario, params, figure(on), unit, figure(off),
                        f"shared state off {unit}", notes,
                        {"on": on["extra"], "off": off["extra"],
                         "ratios": [ratio(figure)(measured) for measured in rounds]}))
    return rows
