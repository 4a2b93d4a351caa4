"""The end of a run: the table, the targets' verdicts, profiles, baselines that did not
run, failures and the noise warning on stdout; everything, raw figures included, in the
JSON file of ``--output`` (``benchmarks/results/latest.json``)."""

from __future__ import annotations

import json
import os
import platform
from datetime import datetime
from pathlib import Path

from benchmarks import targets
from benchmarks.bench import Bench
from benchmarks.node import node_baseline_missing, node_versions
from benchmarks.options import placement
from benchmarks.report import NOISE, noise_warning, table
from benchmarks.scenarios.requests import SELECT_MESSAGE, TUPLE_MESSAGE


def print_summary(bench: Bench) -> None:
    """Everything a reader of stdout needs, after the progress log on stderr."""
    args = bench.args
    print(table(bench.rows))
    print()
    print(targets.report(bench.rows, placement(args)))
    for name, prof in bench.profiles.items():
        if not prof:
            continue
        print(f"\nserver profile ({name}), % of profiled time; own time:")
        for r in prof["top_tottime"][:8]:
            print(f"  {r['tottime_pct']:5.1f}%  {r['calls']:>9}  {r['function']}")
        print("  cumulative, wyseman code:")
        for r in prof["top_cumtime_wyseman"][:8]:
            print(f"  {r['cumtime_pct']:5.1f}%  {r['calls']:>9}  {r['function']}")
    for scenario, status in bench.node_status.items():
        if not status.startswith("measured"):
            print(f"Node server baseline ({scenario}): {status}")
    for failure in bench.failures:
        print(f"FAILED: {failure}")
    warning = noise_warning(NOISE)
    if warning:
        print(warning)


def write_json(bench: Bench, started: datetime, command: str) -> None:
    """The whole run as JSON: settings, rows with their raw figures, verdicts."""
    args = bench.args
    report = {
        "date": started.isoformat(timespec="seconds"),
        "command": command.strip(),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "settings": {k: (str(v) if isinstance(v, Path) else
                         sorted(v) if isinstance(v, frozenset) else v)
                     for k, v in vars(args).items()},
        "placement": placement(args) or "none (the kernel places every process)",
        "rows": [r.as_json() for r in bench.rows],
        "targets": [vars(v) for v in targets.judge(bench.rows)],
        "profiles": bench.profiles,
        "node_baseline": {"status": bench.node_status,
                          "request": {"tuple": TUPLE_MESSAGE, "select": SELECT_MESSAGE},
                          "login": "requests: user name only over ws (insecure mode), signed "
                                   "key logins over wss; handshake: key logins",
                          **(node_versions() if node_baseline_missing() is None else {})},
        "failures": bench.failures,
        "max_other_cpu_pct": max((other for other, _ in NOISE), default=None),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=1, default=str) + "\n")
