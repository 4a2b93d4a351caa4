"""How a run is shown: the plain-text table, the notes on CPU use beside each row, and
the warning when processes outside the run took CPU during a measured window.

``NOISE`` collects, for every measured window, the CPU (% of one core) that no process
of the run used; :func:`noise_warning` names the windows where it was high.
"""

from __future__ import annotations

import os
from typing import Any

from benchmarks.results import Row

#: (CPU % of one core used by other processes, which run) for each measured window
NOISE: list[tuple[float, str]] = []


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def table(rows: list[Row]) -> str:
    header = ["scenario", "transport", "parameters", "value", "unit", "baseline", "ratio",
              "notes"]
    body = [[r.scenario, r.transport or "ws", r.params, fmt(r.value), r.unit,
             (fmt(r.baseline) + (f" ({r.baseline_label})" if r.baseline_label else ""))
             if r.baseline is not None else "-",
             f"{r.ratio:.2f}" if r.ratio is not None else "-", r.notes] for r in rows]
    widths = [max(len(str(line[i])) for line in [header, *body]) for i in range(len(header))]
    right = {3, 6}
    out = []
    for n, line in enumerate([header, *body]):
        cells = [str(c).rjust(w) if i in right else str(c).ljust(w)
                 for i, (c, w) in enumerate(zip(line, widths, strict=True))]
        out.append("  ".join(cells).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def cpu_notes(cpu: dict[str, float], gen: list[float], run: str = "our server") -> str:
    """CPU in % of one core; 'other' is what the rest of the machine used meanwhile
    (a sign of a noisy neighbour, or of kernel time no process is charged with),
    'machine' the busy share of all cores."""
    gens = "+".join(f"{g:.0f}" for g in gen) if gen else "-"
    other = (cpu["machine_busy_pct"] * (os.cpu_count() or 1) - cpu["server_pct"]
             - cpu["pg_pct"] - sum(gen))
    NOISE.append((other, run))
    return (f"cpu: server {cpu['server_pct']:.0f}%, pg {cpu['pg_pct']:.0f}%, "
            f"gen {gens}%, other {max(0.0, other):.0f}%, "
            f"machine {cpu['machine_busy_pct']:.0f}%")


def noise_warning(noise: list[tuple[float, str]], bound: float = 25.0) -> str | None:
    """The warning for windows in which 'other' CPU passed ``bound`` % of a core, naming
    those runs (a baseline's disturbed window is not ours), or None."""
    noisy = [(other, run) for other, run in noise if other > bound]
    if not noisy:
        return None
    worst = max(other for other, _ in noisy)
    runs = sorted({run for _, run in noisy})
    return (f"WARNING: 'other' CPU (processes outside the run, or kernel time no process is "
            f"charged with, as with 1,000 PostgreSQL connections) reached {worst:.0f}% of a "
            f"core in: {'; '.join(runs)}. Those numbers may be depressed.")


def cpu_per_event_us(cpu: dict[str, float], rate: float | None) -> float | None:
    """The server's CPU time per request (or login) in µs: its CPU share of one core over
    the window (``/proc/PID/stat`` utime + stime, before and after) over the rate."""
    if not rate:
        return None
    return 10_000.0 * cpu["server_pct"] / rate


def run_notes(m: dict[str, Any], run: str = "our server") -> str:
    """CPU notes of a request run (the server's CPU a request first), and its errors."""
    per = cpu_per_event_us(m["cpu"], m["rps"])
    notes = (f"server CPU {per:.0f} µs a request; " if per is not None else "")
    notes += cpu_notes(m["cpu"], m["gen_cpu"], run)
    if m.get("batched_reads"):
        notes += (f"; {100 * m['batched_reads'] / max(1, m['completed']):.0f}% of requests "
                  f"in read batches of {m['batched_reads'] / m['read_batches']:.1f} on average")
    if m["errors"]:
        notes += f"; {m['errors']} errors: {m['first_error']}"
    return notes


def pgbench_notes(base: dict[str, Any] | None) -> str:
    cpu = (base or {}).get("cpu")
    if not cpu:
        return ""
    other = cpu["machine_busy_pct"] * (os.cpu_count() or 1) - cpu["pgbench_pct"] - cpu["pg_pct"]
    return (f"pgbench run cpu: pgbench {cpu['pgbench_pct']:.0f}%, pg {cpu['pg_pct']:.0f}%, "
            f"other {max(0.0, other):.0f}%, machine {cpu['machine_busy_pct']:.0f}%")
