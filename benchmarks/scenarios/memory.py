"""Memory: the server's RSS growth per idle, logged-in socket."""

from __future__ import annotations

import time

from benchmarks.bench import Bench
from benchmarks.common import Deadline
from benchmarks.procstat import rss_kib
from benchmarks.results import Row


def memory_scenario(bench: Bench, deadline: Deadline) -> None:
    args, env = bench.args, bench.env
    sockets = args.idle
    server = env.start_server(deadline)
    # Before the 'before' reading, each generator opens a few sockets and sends one
    # request on each: code paths, pools and caches are then warm.
    base = {"mode": "idle", "port": server.port, "open_concurrency": 32,
            "warm": max(1, 50 // args.loadgens), "max_seconds": deadline.left()}
    gens = env.loadgens(sockets, base)
    try:
        readies = [g.event("ready", deadline) for g in gens]
        time.sleep(1.0)
        rss_before = rss_kib(server.pid)
        t0 = time.monotonic()
        for g in gens:
            g.send("go")
        results = [g.event("result", deadline) for g in gens]
        seconds = time.monotonic() - t0
        time.sleep(2.0)
        rss_after = rss_kib(server.pid)
    finally:
        env.finish(gens)
        env.finish([server.child])
    opened = sum(r["opened"] for r in results)
    errors = [r["open_errors"] for r in results if r["open_errors"]]
    per_socket = (rss_after - rss_before) / opened if opened else None
    notes = (f"server RSS {rss_before / 1024:.1f} -> {rss_after / 1024:.1f} MiB; "
             f"{opened} opened in {seconds:.1f} s")
    if errors:
        notes += f"; open errors {errors}"
    bench.rows.append(Row("memory per idle socket", f"N={sockets}", per_socket, "KiB",
                          notes=notes,
                          extra={"rss_before_kib": rss_before, "rss_after_kib": rss_after,
                                 "opened": opened, "warm": sum(r.get("warm_replies", 0)
                                                               for r in readies)}))
