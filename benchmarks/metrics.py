"""The server's Prometheus page (``[metrics] listen``), read between runs.

Histograms and gauges summed over the pages of every worker process: what the server
itself says it did (its own fan-out time, its collector pauses, its read batches).
"""

from __future__ import annotations

import re
from typing import Any


def histogram_stats(ports: list[int], name: str, labels: str = "") -> dict[str, Any]:
    """A histogram of the server's metrics pages (one per process), summed: count, mean
    and the upper bound of the bucket that holds the largest observation. ``labels`` is
    the label text before ``le`` (e.g. ``generation="2",``)."""
    import urllib.request
    count, total, worst = 0, 0.0, 0.0
    sel = "{" + labels[:-1] + "}" if labels else ""
    for port in ports:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as page:
            text = page.read().decode()
        found = re.search(rf"^{name}_count{re.escape(sel)} (\S+)$", text, re.M)
        if not found:
            continue
        n = float(found.group(1))
        total += float(re.search(rf"^{name}_sum{re.escape(sel)} (\S+)$", text,
                                 re.M).group(1))
        count += int(n)
        buckets = [(float(le), float(c)) for le, c in re.findall(
            rf'^{name}_bucket\{{{re.escape(labels)}le="([^"]+)"\}} (\S+)$', text, re.M)]
        worst = max([worst] + [min((le for le, c in buckets if c >= n), default=0.0)])
    return {"count": count, "mean_ms": 1000 * total / count if count else None,
            "max_bucket_ms": 1000 * worst if count else None}


def gauge_sum(ports: list[int], name: str) -> float:
    """An unlabelled gauge (or counter) of the server's metrics pages, summed."""
    import urllib.request
    total = 0.0
    for port in ports:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as page:
            text = page.read().decode()
        found = re.search(rf"^{name} (\S+)$", text, re.M)
        if found:
            total += float(found.group(1))
    return total
