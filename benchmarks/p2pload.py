"""A libp2p load generator: ``python -m benchmarks.p2pload SPEC_JSON``.

The WebSocket load generator (``benchmarks.loadgen``) speaks the wire itself, on
asyncio; libp2p is only reachable through py-libp2p, which the gateway's adapter runs
on trio inside Twisted. So this one uses the Python client as an application would
(:func:`wyseman.client.p2p.connect_p2p`, key logins of the bench users): what it
measures includes the client library's own cost, which the notes say.

Spec: ``address`` (the server's multiaddr), ``users`` (name, key), ``connections``,
``message``, ``warmup``, ``duration``, ``max_seconds``. Prints one JSON line
``{"event": "result", "rps", "p50", "p99", "requests", "errors", "cpu"}`` (or an
``error`` event) and exits.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import orjson

from benchmarks.loadgen import cpu_seconds, emit


def percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def run(spec: dict[str, Any]) -> int:
    from twisted.internet import defer, reactor, task

    from wyseman.client.p2p import connect_p2p
    users = spec["users"]
    outcome: dict[str, Any] = {"code": 1}

    async def work() -> None:
        conns = await defer.gatherResults([defer.ensureDeferred(_login(i)) for i in
                                           range(spec["connections"])], consumeErrors=True)
        latencies: list[float] = []
        errors = [0]
        measuring = [False]
        stop_at = time.monotonic() + spec["warmup"] + spec["duration"]

        async def loop(conn: Any) -> None:
            while time.monotonic() < stop_at:
                began = time.monotonic()
                try:
                    await conn.request(spec["message"])
                except Exception:  # noqa: BLE001 (counted: the row says how many)
                    errors[0] += 1
                    continue
                if measuring[0]:
                    latencies.append((time.monotonic() - began) * 1000)
        loops = [defer.ensureDeferred(loop(c)) for c in conns]
        await task.deferLater(reactor, spec["warmup"], lambda: None)
        measuring[0], cpu0, t0 = True, cpu_seconds(), time.monotonic()
        await defer.gatherResults(loops)
        elapsed = time.monotonic() - t0
        emit("result", rps=len(latencies) / elapsed if elapsed else None,
             p50=percentile(latencies, 0.5), p99=percentile(latencies, 0.99),
             requests=len(latencies), errors=errors[0], cpu=cpu_seconds() - cpu0)
        await defer.gatherResults([c.close() for c in conns])
        outcome["code"] = 0

    async def _login(index: int) -> Any:
        user = users[index % len(users)]
        return await connect_p2p(spec["address"], user["name"], key=user["key"])

    def start() -> None:
        d = defer.ensureDeferred(work())
        d.addErrback(lambda f: emit("error", message=f.getErrorMessage()))
        d.addBoth(lambda _: reactor.stop())
    reactor.callWhenRunning(start)
    reactor.callLater(spec.get("max_seconds", 600), lambda: (
        emit("error", message="p2pload ran out of time"), reactor.stop()))
    reactor.run()
    return int(outcome["code"])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m benchmarks.p2pload SPEC_JSON", file=sys.stderr)
        return 2
    with open(argv[0], encoding="utf-8") as handle:
        return run(orjson.loads(handle.read()))


if __name__ == "__main__":
    sys.exit(main())
