"""The performance targets, judged on one run's rows (printed after the table).

Each target (docs/performance.md, "Targets") that a run can measure gets a verdict:
``met``, ``NOT MET``, or ``not measured`` (with what to run to measure it). The rows are those
of :mod:`benchmarks.results` (anything with ``scenario``, ``params``, ``value`` and
``ratio``); nothing here runs anything.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

MET, NOT_MET, NOT_MEASURED = "met", "NOT MET", "not measured"


@dataclass(frozen=True)
class Verdict:
    target: str
    verdict: str
    measured: str

    def line(self) -> str:
        return f"{self.verdict:<12}  {self.target}: {self.measured}"


def _param(row: Any, name: str) -> int | None:
    match = re.search(rf"\b{name}=(\d+)", row.params)
    return int(match.group(1)) if match else None


def _transport(row: Any) -> str:
    """``ws`` or ``wss`` (rows made before there was wss are ws rows)."""
    return getattr(row, "transport", "ws") or "ws"


def _find(rows: Sequence[Any], scenario: str,
          where: Callable[[Any], bool] = lambda row: True, transport: str = "ws") -> Any:
    return next((r for r in rows if r.scenario == scenario and r.value is not None
                 and _transport(r) == transport and where(r)), None)


def _c1(row: Any) -> bool:
    return _param(row, "C") == 1 and _param(row, "D") == 1


def _paced_every(row: Any) -> float | None:
    """The seconds between paced NOTIFYs (``every 1 s`` in the parameters)."""
    match = re.search(r"\bevery ([0-9.]+) s\b", row.params)
    return float(match.group(1)) if match else None


def _each_second(row: Any) -> bool:
    """10,000 subscribers or more, a paced NOTIFY a second or more often."""
    every = _paced_every(row)
    return (_param(row, "S") or 0) >= 10_000 and every is not None and every <= 1.0


def _c100(row: Any) -> bool:
    return _param(row, "C") == 100 and _param(row, "D") == 1


def _workers(count: int, routed: bool = False) -> Callable[[Any], bool]:
    """Rows of ``count`` server workers, with ``[server] route_by_user`` or without."""
    return lambda row: (_param(row, "workers") == count
                        and ("route_by_user" in row.params) == routed)


def _judge(target: str, row: Any, passed: Callable[[Any], bool],
           measured: Callable[[Any], str], how: str) -> Verdict:
    if row is None:
        return Verdict(target, NOT_MEASURED, how)
    return Verdict(target, MET if passed(row) else NOT_MET, measured(row))


def judge(rows: Iterable[Any]) -> list[Verdict]:
    """The verdicts this run's ``rows`` allow, one per target, in the order of the targets
    table of docs/performance.md."""
    rows = list(rows)
    subscribers = _find(rows, "notify latency p99",
                        lambda r: (_param(r, "S") or 0) >= 10_000)
    # the median of alternating pairs (``--pairs``) when the run has them
    ceiling = (_find(rows, "tuple vs pgbench -S, alternating", lambda r: r.ratio)
               or _find(rows, "tuple bench.item by id", lambda r: _c100(r) and r.ratio))
    logins = _find(rows, "handshake (key login)",
                   lambda r: r.params.startswith("parallel,"))
    # two workers with each user's sockets in one of them ([server] route_by_user) when
    # the run has it: the configuration docs/operations.md recommends for many sockets
    # per user, as the benchmark's (the verdict gives the other one's ratio too)
    spread_two = _find(rows, "tuple, server workers", _workers(2))
    routed_two = _find(rows, "tuple, server workers", _workers(2, routed=True))
    tuple_scaling = routed_two or spread_two
    return [
        _judge("tuple C=100 ≥ 50 % of pgbench -S",
               ceiling,
               lambda r: r.ratio >= 0.5,
               lambda r: f"{r.value:,.0f} req/s = {r.ratio:.2f} of {r.baseline:,.0f} TPS"
               + (f", the median of {_param(r, 'pairs') or '?'} alternating pairs"
                  if "alternating" in r.scenario else ""),
               "needs --scenario tuple with C=100 and pgbench (no --no-baseline)"),
        _judge("tuple C=100 ≥ 1.5× the Node server",
               _find(rows, "tuple vs Node server", _c100),
               lambda r: r.ratio >= 1.5,
               lambda r: f"{r.value:,.0f} vs {r.baseline:,.0f} req/s = {r.ratio:.2f}×",
               "needs --scenario tuple with C=100 and the Node server (no --no-node)"),
        _judge("tuple p99 at C=100 ≤ the Node server's",
               _find(rows, "tuple p99 vs Node", _c100),
               lambda r: r.ratio <= 1.0,
               lambda r: f"{r.value:.1f} vs {r.baseline:.1f} ms = {r.ratio:.2f}×",
               "needs --scenario tuple with C=100 and the Node server (no --no-node)"),
        _judge("10,000 subscribers: p99 delivery < 100 ms", subscribers,
               lambda r: r.value < 100,
               lambda r: f"p99 {r.value:.1f} ms ({r.params})",
               "needs --scenario notify with 10,000 subscribers (not --quick)"),
        _judge("handshakes ≥ 1,000/s", logins,
               lambda r: r.value >= 1000,
               lambda r: f"{r.value:,.0f} logins/s ({r.params})",
               "needs --scenario handshake"),
        _judge("idle socket < 30 KiB RSS", _find(rows, "memory per idle socket"),
               lambda r: r.value < 30,
               lambda r: f"{r.value:.1f} KiB ({r.params})",
               "needs --scenario memory"),
        _judge("tuple C=100 scales with workers", tuple_scaling,
               lambda r: r.ratio > 1.0,
               lambda r: f"workers=2 {r.ratio:.2f}× workers=1"
               + (" with route_by_user" if r is routed_two else "")
               + _machine(rows, "tuple, server workers", r, "request")
               + (f"; without route_by_user {spread_two.ratio:.2f}×"
                  if r is routed_two and spread_two is not None else ""),
               "needs --scenario scaling"),
        _judge("parallel logins scale with workers",
               _find(rows, "handshakes, server workers", _workers(2)),
               lambda r: r.ratio > 1.0,
               lambda r: f"workers=2 {r.ratio:.2f}× workers=1"
               + _machine(rows, "handshakes, server workers", r, "login"),
               "needs --scenario scaling"),
        *_transport_targets(rows),
        *_shared_state_targets(rows),
    ]


def _transport_targets(rows: Sequence[Any]) -> list[Verdict]:
    """The targets of wss against the Node server over wss, and of both transports'
    notification latency and idle memory."""
    node_wss = "needs --scenario {} over wss (--transport with wss) and the Node server"
    return [
        _judge("wss key logins ≥ 1.5× the Node server",
               _find(rows, "handshake vs Node", transport="wss"),
               lambda r: r.ratio >= 1.5,
               lambda r: f"{r.value:,.0f} vs {r.baseline:,.0f} logins/s = {r.ratio:.2f}×",
               node_wss.format("handshake")),
        _judge("wss tuple C=100 ≥ 2.5× the Node server",
               _find(rows, "tuple vs Node server", _c100, "wss"),
               lambda r: r.ratio >= 2.5,
               lambda r: f"{r.value:,.0f} vs {r.baseline:,.0f} req/s = {r.ratio:.2f}×",
               node_wss.format("tuple")),
        _judge("wss tuple p99 at C=100 ≤ half the Node server's",
               _find(rows, "tuple p99 vs Node", _c100, "wss"),
               lambda r: r.ratio <= 0.5,
               lambda r: f"{r.value:.1f} vs {r.baseline:.1f} ms = {r.ratio:.2f}×",
               node_wss.format("tuple")),
        _judge("wss tuple C=1 ≥ 1.2× the Node server",
               _find(rows, "tuple vs Node server", _c1, "wss"),
               lambda r: r.ratio >= 1.2,
               lambda r: f"{r.value:,.0f} vs {r.baseline:,.0f} req/s = {r.ratio:.2f}×",
               node_wss.format("tuple")),
        *(_judge(f"10,000 subscribers, 1 NOTIFY/s: p99 < {bound} ms over {transport}",
                 _find(rows, "notify latency p99", _each_second, transport),
                 lambda r, bound=bound: r.value < bound,
                 lambda r: f"p99 {r.value:.1f} ms ({r.params})",
                 f"needs --scenario notify over {transport} with 10,000 subscribers "
                 "(not --quick)")
          for transport, bound in (("ws", 50), ("wss", 80))),
        *(_judge(f"idle socket < {bound} KiB RSS over {transport}",
                 _find(rows, "memory per idle socket", transport=transport),
                 lambda r, bound=bound: r.value < bound,
                 lambda r: f"{r.value:.1f} KiB ({r.params})",
                 f"needs --scenario memory over {transport}")
          for transport, bound in (("ws", 10), ("wss", 40))),
    ]


#: how much dearer ``[cluster] shared_state = "postgres"`` may make a key login: its
#: logins/s at least 1 ÷ this of those without, its server CPU a login at most this times
SHARED_STATE_COST = 1.10


def _shared_state_targets(rows: Sequence[Any]) -> list[Verdict]:
    """A key login with the shared state on against off (the ``shared`` scenario's
    rows, both servers measured in the same run), over each transport."""
    verdicts = []
    for transport in ("ws", "wss"):
        logins = _find(rows, "handshake, shared state", lambda r: r.ratio, transport)
        cpu = _find(rows, "server CPU a login, shared state", lambda r: r.ratio, transport)
        target = f"shared state: a key login ≤ 10 % dearer over {transport}"
        if logins is None or cpu is None:
            verdicts.append(Verdict(target, NOT_MEASURED,
                                    f"needs --scenario shared over {transport}"))
            continue
        passed = logins.ratio * SHARED_STATE_COST >= 1.0 and cpu.ratio <= SHARED_STATE_COST
        verdicts.append(Verdict(
            target, MET if passed else NOT_MET,
            f"logins/s {logins.ratio:.3f}× off ({logins.value:,.0f} vs "
            f"{logins.baseline:,.0f}), server CPU a login {cpu.ratio:.3f}× off "
            f"({cpu.value:,.0f} vs {cpu.baseline:,.0f} µs)"))
    return verdicts


def _cpu(row: Any) -> dict[str, float] | None:
    """The CPU readings of a run's row (``extra``: ``cpu``, or ``measured.cpu``)."""
    extra = row.extra or {}
    cpu = extra.get("cpu") or (extra.get("measured") or {}).get("cpu")
    return cpu if cpu and row.value else None


def _machine(rows: Sequence[Any], scenario: str, row: Any, unit: str) -> str:
    """What a scaling verdict needs beside the ratio: how busy the whole machine was
    (at 100 % more workers have no core to go to: the server, PostgreSQL and the load
    generators share it), and the server's CPU time per request with one worker and
    with two (flat: a worker added costs nothing per request; it is the machine that
    is full)."""
    cpu, one = _cpu(row), _find(rows, scenario, _workers(1))
    one_cpu = _cpu(one) if one is not None else None
    if cpu is None or one_cpu is None:
        return ""
    per = [10_000.0 * c["server_pct"] / r.value for c, r in ((one_cpu, one), (cpu, row))]
    return (f" (machine {cpu['machine_busy_pct']:.0f} % busy with two; server CPU a "
            f"{unit}: {per[0]:.0f} µs with one worker, {per[1]:.0f} µs with two)")


def report(rows: Iterable[Any], placement: str = "") -> str:
    """The verdicts as lines under a heading (which says how the run placed its
    processes on the CPUs, if it did)."""
    heading = f"targets (this run; {placement}):" if placement else "targets (this run):"
    return "\n".join([heading, *("  " + v.line() for v in judge(rows))])
