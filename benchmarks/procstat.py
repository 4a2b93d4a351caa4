"""Readings of the machine and its processes: free ports, RSS and CPU time from
``/proc`` (``utime + stime`` of ``/proc/PID/stat``), whole-machine busy time.

The runner reads these around each measured window, so a server's CPU is measured from
outside it and the same way for our server, the Node server and pgbench.
"""

from __future__ import annotations

import os
import random
import socket
import time
from dataclasses import dataclass

from benchmarks.common import BenchError

CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_ports(count: int) -> int:
    """A port P with P … P+count-1 all free now (metrics of worker i are on P+i).

    Taken below the kernel's ephemeral range: after a 10,000-socket run most ports in
    that range are the local ends of connections in TIME_WAIT, which a listening socket
    cannot bind (SO_REUSEADDR does not help when the other socket did not set it)."""
    low = 10_000
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as ranges:
            high = int(ranges.read().split()[0]) - count
    except (OSError, ValueError, IndexError):
        high = 32_768 - count
    for _ in range(200):
        first = random.randrange(low, max(low + 1, high))
        try:
            for port in range(first, first + count):
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Twisted
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return first
    raise BenchError(f"no {count} consecutive free ports")


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise BenchError(f"no VmRSS for pid {pid}")


def _stat_fields(pid: int | str) -> list[str]:
    with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
        text = handle.read()
    return text[text.rindex(")") + 2:].split()


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of one process."""
    try:
        fields = _stat_fields(pid)
    except (OSError, ValueError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def children_cpu(parent: int) -> float:
    """CPU seconds of ``parent`` and its live children (the postmaster's backends)."""
    total = proc_cpu(parent)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = _stat_fields(entry)
        except (OSError, ValueError):
            continue
        if fields[1] == str(parent):
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


def machine_cpu() -> tuple[float, float]:
    """(idle, total) jiffies of the whole machine."""
    with open("/proc/stat", encoding="ascii") as handle:
        values = [int(v) for v in handle.readline().split()[1:9]]
    return float(values[3] + values[4]), float(sum(values))


@dataclass
class CpuSnapshot:
    at: float
    server: float
    pg: float
    machine: tuple[float, float]

    @classmethod
    def take(cls, server_pid: int | None, postmaster_pid: int | None) -> CpuSnapshot:
        # children: the worker processes of a server with [server] workers > 1
        return cls(time.monotonic(), children_cpu(server_pid) if server_pid else 0.0,
                   children_cpu(postmaster_pid) if postmaster_pid else 0.0, machine_cpu())

    def until(self, later: CpuSnapshot) -> dict[str, float]:
        wall = max(later.at - self.at, 1e-6)
        idle = later.machine[0] - self.machine[0]
        total = max(later.machine[1] - self.machine[1], 1.0)
        return {"server_pct": 100.0 * (later.server - self.server) / wall,
                "pg_pct": 100.0 * (later.pg - self.pg) / wall,
                "machine_busy_pct": 100.0 * (1.0 - idle / total)}
