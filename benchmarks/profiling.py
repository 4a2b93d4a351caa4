"""``--profile``: the server's cProfile stats of a measured run, summarized for the
report (top functions by own time, and wyseman's by cumulative time) and kept in
``benchmarks/results/server.prof`` for ``python -m pstats``."""

from __future__ import annotations

import os
import pstats
import re
import shutil
from typing import Any

from benchmarks.common import RESULTS, ROOT


def summarize_profile(path: str | None, top: int = 12) -> dict[str, Any] | None:
    """Top functions by own time (all code) and by cumulative time (wyseman's code)."""
    if not path or not os.path.exists(path):
        return None
    stats = pstats.Stats(path)
    rows = []
    for (filename, line, func), (_cc, calls, tottime, cumtime, _) in stats.stats.items():
        short = filename.replace(str(ROOT) + "/", "")
        short = re.sub(r".*/(site-packages|lib/python3[.0-9]*)/", "", short)
        rows.append({"function": f"{short}:{line}({func})", "calls": calls,
                     "tottime_s": tottime, "cumtime_s": cumtime})
    total = sum(r["tottime_s"] for r in rows) or 1.0
    for r in rows:
        r["tottime_pct"] = 100.0 * r["tottime_s"] / total
        r["cumtime_pct"] = 100.0 * r["cumtime_s"] / total
    by_tot = sorted(rows, key=lambda r: r["tottime_s"], reverse=True)[:top]
    ours = [r for r in rows if r["function"].startswith("wyseman/")]
    by_cum = sorted(ours, key=lambda r: r["cumtime_s"], reverse=True)[:top]
    RESULTS.mkdir(exist_ok=True)
    shutil.move(path, RESULTS / "server.prof")   # for a closer look: python -m pstats
    return {"profiled_s": total, "top_tottime": by_tot, "top_cumtime_wyseman": by_cum}
