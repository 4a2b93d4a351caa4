"""The pgbench baseline: PostgreSQL's own ceiling for the same reads, on the same
cluster, with its CPU use sampled while it runs (its backends included)."""

from __future__ import annotations

import os
import re
import subprocess
import time
from typing import TYPE_CHECKING, Any

from benchmarks.common import BenchError
from benchmarks.procstat import CpuSnapshot
from benchmarks.report import NOISE

if TYPE_CHECKING:
    from benchmarks.environment import Environment


def run(env: Environment, options: list[str], dbname: str, timeout: float,
        sample: tuple[float, float] | None = None) -> tuple[str, dict[str, float]]:
    """Run pgbench → (stdout, CPU use between the ``sample`` offsets in seconds)."""
    from wyseman.provision.cluster import find_bindir
    env.place_cluster(serving=False)
    command = [str(find_bindir() / "pgbench"), "-h", str(env.cluster.socket_dir),
               "-p", str(env.cluster.port), "-U", env.cluster.superuser, *options, dbname]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=dict(os.environ, PGAPPNAME="bench"))
    cpu: dict[str, float] = {}
    try:
        if sample is not None:  # while it runs, so that its backends are counted
            time.sleep(sample[0])
            before = CpuSnapshot.take(proc.pid, env.postmaster_pid)
            time.sleep(sample[1] - sample[0])
            after = CpuSnapshot.take(proc.pid, env.postmaster_pid)
            cpu = before.until(after)
            cpu["pgbench_pct"] = cpu.pop("server_pct")
            NOISE.append((cpu["machine_busy_pct"] * (os.cpu_count() or 1)
                          - cpu["pgbench_pct"] - cpu["pg_pct"],
                          "pgbench " + " ".join(options)))
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchError(f"pgbench {' '.join(options)}: timed out") from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode != 0:
        raise BenchError(f"pgbench {' '.join(options)} failed: {err.strip()[-300:]}")
    return out, cpu


def tps(env: Environment, clients: int, seconds: float, script: str | None = None,
        dbname: str = "pgbench") -> dict[str, Any]:
    """``pgbench -S`` (or ``script``) with ``clients`` connections for about ``seconds``
    → its TPS, average latency, command line and CPU use."""
    # pgbench's -T includes opening the connections (a second or more per few hundred
    # backends here), which would leave a large C only a sliver of the run: add that.
    measured = max(1, round(seconds))
    secs = measured + (clients + 199) // 200 if clients >= 100 else measured
    options = ["-n", "-c", str(clients), "-j", str(min(2, clients)), "-T", str(secs)]
    if script is None:
        options.insert(0, "-S")
    else:
        path = env.workdir / "script.sql"
        path.write_text(script)
        options += ["-f", str(path)]
    # CPU is sampled near the end, once every connection is open.
    out, cpu = run(env, options, dbname, timeout=secs + 120,
                   sample=(secs - 0.5 * measured - 0.5, secs - 0.5))
    found = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", out)
    lat = re.search(r"latency average = ([0-9.]+) ms", out)
    if not found:
        raise BenchError(f"pgbench output not understood: {out[-300:]}")
    return {"tps": float(found.group(1)), "latency_avg_ms": float(lat.group(1)) if lat else 0,
            "command": "pgbench " + " ".join(options), "cpu": cpu}
