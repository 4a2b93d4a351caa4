"""p2p: the tuple request at C=1/10/100 over libp2p (``/wyseman/1.0.0``) next to the
same request over the WebSocket, from the same server process in the same run.

The WebSocket runs use the usual load generators; the libp2p runs use
``benchmarks.p2pload`` (the Python client on py-libp2p), one process for all C
connections, depth 1. Skipped, with a message, without the ``wyseman[p2p]`` extra."""

from __future__ import annotations

import importlib.util

from benchmarks.bench import Bench
from benchmarks.common import BenchError, Deadline, log
from benchmarks.report import fmt
from benchmarks.results import Row
from benchmarks.scenarios.requests import TUPLE_MESSAGE

#: the connection counts of the comparison (those of --connections among them)
P2P_CONNECTIONS = (1, 10, 100)


def p2p_scenario(bench: Bench, deadline: Deadline) -> None:
    if importlib.util.find_spec("libp2p") is None:
        log("  p2p: skipped: the wyseman[p2p] extra (py-libp2p) is not installed")
        return
    args, env = bench.args, bench.env
    server = env.start_server(deadline, p2p=True)
    if not server.p2p_address:
        raise BenchError("the server named no libp2p address")
    counts = [c for c in P2P_CONNECTIONS if c in args.connections] or list(P2P_CONNECTIONS)
    for clients in counts:
        log(f"  p2p: WebSocket C={clients} D=1")
        ws = bench.request_run(server, clients, TUPLE_MESSAGE, deadline, depth=1)
        log(f"  p2p: libp2p C={clients} D=1")
        child = env.spawn("p2pload", "benchmarks.p2pload", {
            "address": server.p2p_address, "users": env.users, "connections": clients,
            "message": TUPLE_MESSAGE, "warmup": args.warmup, "duration": args.duration,
            "max_seconds": deadline.left()})
        p2p = child.event("result", deadline)
        env.finish([child])
        params = f"C={clients} D=1"
        notes = (f"libp2p: {p2p['requests']} requests, {p2p['errors']} errors, client "
                 f"CPU {fmt(p2p['cpu'])} s (the Python client on py-libp2p; the WebSocket "
                 "load generator is a lean asyncio one)")
        bench.rows.append(Row("tuple over libp2p", params, p2p["rps"], "req/s", ws["rps"],
                              "WebSocket req/s", notes, {"p2p": p2p, "ws": ws},
                              transport="libp2p"))
        bench.rows.append(Row("tuple over libp2p latency p50", params, p2p["p50"], "ms",
                              ws["p50"], "WebSocket p50", transport="libp2p"))
        bench.rows.append(Row("tuple over libp2p latency p99", params, p2p["p99"], "ms",
                              ws["p99"], "WebSocket p99", transport="libp2p"))
    env.finish([server.child])
