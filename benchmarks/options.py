"""The runner's command line: its options, their defaults (``--quick`` or not), the CPU
placement they ask for, and each scenario's hard time limit."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from benchmarks.common import RESULTS
from wyseman.tuning.affinity import describe

SCENARIOS = ("tuple", "select", "notify", "handshake", "memory", "scaling", "p2p", "shared")
TRANSPORTS = ("ws", "wss")
#: scenarios that run over one transport only: ``tls:`` ports are not routed by user
#: between server workers, so the worker scaling is measured over ws
#: (p2p: libp2p next to ws, each run once)
WS_ONLY = frozenset({"scaling", "p2p"})


def parse_transports(text: str) -> list[str]:
    """``ws``, ``wss`` or ``ws,wss`` → the transports, in the order given."""
    chosen = [part.strip() for part in text.split(",") if part.strip()]
    wrong = [part for part in chosen if part not in TRANSPORTS]
    if not chosen or wrong or len(set(chosen)) != len(chosen):
        raise argparse.ArgumentTypeError(f"{text!r}: a comma-separated list of {TRANSPORTS}")
    return chosen


def placement(args: argparse.Namespace) -> str:
    """How ``--server-cpus`` placed the processes ("" without it)."""
    if not args.server_cpus:
        return ""
    rest = frozenset(os.sched_getaffinity(0)) - args.server_cpus
    return (f"our server's reactor thread (and the Node server) on CPU "
            f"{describe(args.server_cpus)}, load generators and PostgreSQL on "
            f"{describe(rest)}; pgbench on all")


def parse_cpus(text: str) -> frozenset[int]:
    """``0`` or ``0,2-3`` → the CPUs, all of which this process must be allowed."""
    cpus: set[int] = set()
    for part in text.split(","):
        low, _, high = part.strip().partition("-")
        cpus.update(range(int(low), int(high or low) + 1))
    allowed = os.sched_getaffinity(0)
    if not cpus or not cpus < allowed:
        raise argparse.ArgumentTypeError(
            f"{text!r}: CPUs among {sorted(allowed)}, leaving at least one for the rest")
    return frozenset(cpus)


def parse_args(argv: list[str] | None, description: str | None = None
               ) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="smaller and shorter (C up to 100, 1000 subscribers, 2 s runs)")
    parser.add_argument("--scenario", action="append", choices=SCENARIOS,
                        help="run only this scenario (repeatable); default: all")
    parser.add_argument("--transport", type=parse_transports, default=list(TRANSPORTS),
                        dest="transports",
                        help="ws, wss or ws,wss (default): every scenario but scaling (ws "
                             "only) runs over each, our server and the Node server alike; "
                             "wss with a certificate the run makes")
    parser.add_argument("--duration", type=float, help="measured seconds per run (5; quick 2)")
    parser.add_argument("--warmup", type=float, help="unmeasured seconds first (1; quick 0.5)")
    parser.add_argument("--connections", type=lambda s: [int(x) for x in s.split(",")],
                        help="tuple: comma-separated C values (1,10,100,1000; quick 1,10,100)")
    parser.add_argument("--depth", type=int, default=1, help="requests in flight per socket")
    parser.add_argument("--queued-depth", type=int, default=4,
                        help="tuple: one more run at C=100 with this many requests in flight "
                             "per socket, so that requests queue for the users' connections "
                             "(default 4; 0: none)")
    parser.add_argument("--pairs", type=int,
                        help="tuple: this many more runs at C=100 D=1, each followed at once "
                             "by pgbench -S -c 100; the target uses the median pair's ratio "
                             "(default 3; quick 0)")
    parser.add_argument("--handshake-runs", type=int,
                        help="handshake: measure the parallel logins this many times; the "
                             "target uses the median run (default 3; quick 1)")
    parser.add_argument("--notify-runs", type=int,
                        help="notify: this many runs, each with fresh subscribers; the "
                             "target uses the median run's p99 (default 3; quick 1)")
    parser.add_argument("--scaling-runs", type=int,
                        help="scaling: this many rounds of every worker count; the targets "
                             "use the median round's ratios (default 3; quick 1)")
    parser.add_argument("--shared-runs", type=int,
                        help="shared: rounds of parallel logins against our server with "
                             "[cluster] shared_state off and on, the order swapped each "
                             "round; the rows use the median round's ratios (default 3; "
                             "quick 1)")
    parser.add_argument("--users", type=int, default=10, help="login users (default 10)")
    parser.add_argument("--pool-size", type=int, default=4, help="[database] pool_size")
    parser.add_argument("--read-batch", type=int, default=16,
                        help="[database] read_batch (1: no batching)")
    parser.add_argument("--loadgens", type=int, default=2, help="load generator processes")
    parser.add_argument("--workers", type=int, default=16,
                        help="handshake: concurrent logins per generator process")
    parser.add_argument("--route-by-user", action="store_true",
                        help="the server's [server] route_by_user (with --server-workers > 1; "
                        "the scaling scenario runs its worker counts > 1 both ways)")
    parser.add_argument("--fanout-threads", type=int, default=0,
                        help="the server's [server] fanout_threads (0: its default)")
    parser.add_argument("--verify-threads", type=int, default=0,
                        help="the server's [auth] verify_threads (0: its default)")
    parser.add_argument("--server-cpus", type=parse_cpus,
                        help="our server's [server] cpu_affinity (e.g. 0); its load "
                             "generators and PostgreSQL then run on the other CPUs (the Node "
                             "server too, on these); pgbench on all (default: the kernel "
                             "places everything)")
    parser.add_argument("--busy-poll", type=int, metavar="US",
                        help="our server's [server] busy_poll_us (default: the server's "
                             "own, 200 with --server-cpus and 0 without)")
    parser.add_argument("--no-connection-log", action="store_true",
                        help="our server's [server] log_connections = false (no line per "
                             "login and disconnect)")
    parser.add_argument("--shared-state", action="store_true",
                        help="our server's [cluster] shared_state = \"postgres\" (the replay "
                             "cache and per-user counts in the database; the shared "
                             "scenario runs it both ways whatever this says)")
    parser.add_argument("--server-workers", type=int, default=1,
                        help="[server] workers of the server under test (default 1)")
    parser.add_argument("--subscribers", type=int, help="notify: sockets (10000; quick 1000)")
    parser.add_argument("--node-subscribers", type=int,
                        help="notify: sockets of the runs against the Node server, ours "
                             "alternating with it (it opens a PostgreSQL connection per "
                             "socket; default 1000, or --subscribers if fewer)")
    parser.add_argument("--notifies", type=int, default=10,
                        help="notify: NOTIFYs per phase (paced, then burst)")
    parser.add_argument("--idle", type=int, help="memory: idle sockets (10000; quick 2000)")
    parser.add_argument("--no-baseline", action="store_true", help="skip pgbench")
    parser.add_argument("--no-node", action="store_true",
                        help="skip the Node.js Wyseman server baseline (tuple, select, "
                             "handshake, notify)")
    parser.add_argument("--profile", action="store_true",
                        help="cProfile the server in an extra tuple run at C=100 "
                        "(stats kept in benchmarks/results/server.prof)")
    parser.add_argument("--output", type=Path, default=RESULTS / "latest.json")
    parser.add_argument("--keep-logs", action="store_true",
                        help="copy server/generator logs to benchmarks/results/logs/ "
                        "(always done when a scenario fails)")
    args = parser.parse_args(argv)
    quick = args.quick
    args.duration = args.duration or (2.0 if quick else 5.0)
    args.warmup = args.warmup if args.warmup is not None else (0.5 if quick else 1.0)
    args.connections = args.connections or ([1, 10, 100] if quick else [1, 10, 100, 1000])
    args.pairs = args.pairs if args.pairs is not None else (0 if quick else 3)
    args.handshake_runs = max(1, args.handshake_runs or (1 if quick else 3))
    args.notify_runs = max(1, args.notify_runs or (1 if quick else 3))
    args.scaling_runs = max(1, args.scaling_runs or (1 if quick else 3))
    args.shared_runs = max(1, args.shared_runs or (1 if quick else 3))
    args.subscribers = args.subscribers or (1000 if quick else 10000)
    args.node_subscribers = args.node_subscribers or min(args.subscribers, 1000)
    args.idle = args.idle or (2000 if quick else 10000)
    args.notify_wait = 30.0 if quick else 60.0
    args.scenarios = args.scenario or list(SCENARIOS)
    return args


def budgets(args: argparse.Namespace) -> dict[str, float]:
    """Each scenario's hard time limit in seconds, every transport it runs over included."""
    run = args.duration + args.warmup
    node = 0 if args.no_node else 1  # the Node server runs: the same load again
    node_runs = node  # notify: ours and the Node server at --node-subscribers, alternating
    over = len(args.transports)
    once = {
        "tuple": 60 + sum(4 * run + 40 + c / 10 for c in args.connections)
        + node * (60 + sum(run + 30 + c / 10 for c in args.connections))
        + (3 * run + 30 if args.profile else 0)
        + args.pairs * (2 * run + 60),
        "select": 60 + 3 * run + 30 + node * (60 + run + 30),
        "notify": args.notify_runs * (
            120 + args.subscribers / 100 + args.notifies * (1 + args.subscribers / 5000)
            + node_runs * 2 * (120 + args.node_subscribers / 100 + args.notifies
                               * (1 + args.node_subscribers / 5000))),
        "handshake": 60 + (4 if args.profile else 3) * (run + 40)
        + node * (60 + args.handshake_runs * (run + 40)),
        "memory": 60 + args.idle / 100,
        "p2p": 60 + sum(2 * run + 60 + c / 5 for c in (1, 10, 100)),
        "shared": 120 + args.shared_runs * 2 * (run + 40),
        "scaling": args.scaling_runs * (60 + max(2, os.cpu_count() or 1) * (5 * run + 90)),
    }
    return {name: limit * (1 if name in WS_ONLY else over) for name, limit in once.items()}
