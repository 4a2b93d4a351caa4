"""The rows of a run, and how several runs of one measurement become one row (the
median run, with every run's figure in its notes)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Row:
    """One measured figure; ``baseline`` (pgbench's, the Node server's, one worker's)
    makes ``ratio``; ``transport`` is ``ws`` or ``wss``, set by the run, unless the
    scenario names another (``libp2p``: the p2p scenario's rows, whose baseline is the
    WebSocket)."""

    scenario: str
    params: str
    value: float | None
    unit: str
    baseline: float | None = None
    baseline_label: str = ""
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    transport: str = ""

    @property
    def ratio(self) -> float | None:
        if self.value is None or not self.baseline:
            return None
        return self.value / self.baseline

    def as_json(self) -> dict[str, Any]:
        return {"scenario": self.scenario, "transport": self.transport or "ws",
                "parameters": self.params, "value": self.value,
                "unit": self.unit, "baseline": self.baseline,
                "baseline_label": self.baseline_label, "ratio": self.ratio,
                "notes": self.notes, **self.extra}


def lower_median(items: list[Any], key: Any) -> Any:
    """The item whose ``key`` is the median (the lower middle one of an even count)."""
    return sorted(items, key=key)[(len(items) - 1) // 2]


def pairs_row(pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> Row:
    """The alternating pairs as one row: the pair whose ratio is the median (the lower
    middle one of an even count), every pair's ratio in the notes."""
    ratios = [ours["rps"] / base["tps"] for ours, base in pairs]
    ours, base = lower_median(pairs, key=lambda pair: pair[0]["rps"] / pair[1]["tps"])
    listed = ", ".join(f"{ratio:.2f}" for ratio in ratios)
    return Row("tuple vs pgbench -S, alternating", f"C=100 D=1 pairs={len(pairs)}",
               ours["rps"], "req/s", base["tps"], "pgbench -S TPS",
               f"median pair; each pair's ratio in run order: {listed} (ours "
               f"{min(o['rps'] for o, _ in pairs):,.0f}–{max(o['rps'] for o, _ in pairs):,.0f}"
               f" req/s, pgbench {min(b['tps'] for _, b in pairs):,.0f}–"
               f"{max(b['tps'] for _, b in pairs):,.0f} TPS)",
               {"pairs": [{"measured": o, "pgbench": b} for o, b in pairs]})


def median_run_row(label: str, runs: list[dict[str, Any]]) -> Row:
    """Handshake runs of one variant as one row: the median run (the lower middle one of
    an even count), every run's rate in the notes when there are several."""
    median = lower_median(runs, key=lambda run: run["rate"])
    if len(runs) == 1:
        return Row("handshake (key login)", label, median["rate"], "logins/s",
                   notes=median["notes"], extra=median["extra"])
    listed = ", ".join(f"{run['rate']:,.0f}" for run in runs)
    return Row("handshake (key login)", f"{label}, median of {len(runs)}", median["rate"],
               "logins/s", notes=f"runs in order: {listed} logins/s; the median run: "
               + median["notes"], extra={**median["extra"], "runs": [r["rate"] for r in runs]})


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    rank = min(len(ordered) - 1, max(0, round(q / 100.0 * (len(ordered) - 1))))
    return ordered[rank]
