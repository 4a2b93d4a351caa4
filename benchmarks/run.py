"""Run the gateway benchmarks: ``python -m benchmarks.run [--quick] [--scenario NAME]``.

One command does everything and cleans up after itself (see ``docs/performance.md``):

1. a throwaway PostgreSQL cluster (temp directory, TCP on a free loopback port) with
   the bootstrap schema, ``--users`` login users with P-521 keys, a table
   ``bench.item`` (100 rows) they may read, and a ``pgbench`` database for the baseline;
2. for every scenario a fresh gateway process (``benchmarks.server_proc``, key logins
   only, ``/clientinfo`` on the same port);
3. load from several ``benchmarks.loadgen`` processes, each reporting its own CPU time;
4. two baselines on the same cluster: ``pgbench``, and (``tuple``, ``select``) the
   Node.js Wyseman server (npm ``wyseman`` pinned in ``tests/js``, started with
   ``tests/js/node_server.js``) under the same load, logged in by user name only;
   skipped, with a message, when ``node`` or ``tests/js/node_modules`` is missing;
5. a plain-text table on stdout and ``benchmarks/results/latest.json``.

Every wait has a deadline; children are killed and the cluster removed at the end,
whatever happened.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import pstats
import queue
import random
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg2

from benchmarks import raise_fd_limit, targets
from wyseman.tuning.affinity import describe, place_process, place_process_tree

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
SCENARIOS = ("tuple", "select", "notify", "handshake", "memory", "scaling")
CHANNEL = "bench_fanout"
# One row by primary key: what pgbench -S does, and a request the Node server answers with
# the same data. (It fails {"action": "tuple", "view": "base.curr_eid()"}, the request of
# earlier runs, with 42P01: without "params" it drops a function view's parentheses and,
# without "fields", the from clause: `select base.curr_eid;`. With "params": [] both
# servers answer it.)
TUPLE_MESSAGE = {"action": "tuple", "view": "bench.item", "fields": ["id", "name", "qty"],
                 "where": {"id": 7}}
# Every column, named: without "fields" the Node server emits `select bench.item` (42P01).
SELECT_MESSAGE = {"action": "select", "view": "bench.item",
                  "fields": ["id", "name", "qty", "price", "made"]}
JS_DIR = ROOT / "tests" / "js"
CLK_TCK = os.sysconf("SC_CLK_TCK")
#: (CPU % of one core used by other processes, which run) for each measured window
NOISE: list[tuple[float, str]] = []


class BenchError(RuntimeError):
    """A scenario could not be run (the message says why)."""


class Deadline:
    """Seconds left until a hard limit; ``left()`` raises once it has passed."""

    def __init__(self, seconds: float, what: str) -> None:
        self.end = time.monotonic() + seconds
        self.what = what

    def left(self, cap: float | None = None) -> float:
        remaining = self.end - time.monotonic()
        if remaining <= 0:
            raise BenchError(f"{self.what}: hard timeout reached")
        return remaining if cap is None else min(cap, remaining)


# -- small system helpers ----------------------------------------------------------------

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


def placement(args: argparse.Namespace) -> str:
    """How ``--server-cpus`` placed the processes ("" without it)."""
    if not args.server_cpus:
        return ""
    rest = frozenset(os.sched_getaffinity(0)) - args.server_cpus
    return (f"our server's reactor thread (and the Node server) on CPU "
            f"{describe(args.server_cpus)}, load generators and PostgreSQL on "
            f"{describe(rest)}; pgbench on all")


def parse_cpus(text: str) -> frozenset[int]:
    """``0`` or ``0,2-3`` → the CPUs, all of which this process must be allowed."""
    cpus: set[int] = set()
    for part in text.split(","):
        low, _, high = part.strip().partition("-")
        cpus.update(range(int(low), int(high or low) + 1))
    allowed = os.sched_getaffinity(0)
    if not cpus or not cpus < allowed:
        raise argparse.ArgumentTypeError(
            f"{text!r}: CPUs among {sorted(allowed)}, leaving at least one for the rest")
    return frozenset(cpus)


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


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    rank = min(len(ordered) - 1, max(0, round(q / 100.0 * (len(ordered) - 1))))
    return ordered[rank]


# -- child processes ---------------------------------------------------------------------

class Child:
    """A child process speaking lines on stdout; stderr goes to a log file."""

    def __init__(self, name: str, args: list[str], log_path: Path,
                 extra_env: dict[str, str] | None = None, die_with_parent: bool = False
                 ) -> None:
        self.name = name
        self.log_path = log_path
        self._log = open(log_path, "ab")
        env = dict(os.environ)
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        env.update(extra_env or {})
        self.popen = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=self._log, cwd=ROOT, env=env,
                                      preexec_fn=_die_with_parent if die_with_parent else None)
        self.lines: queue.Queue[bytes | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.put(line)
        self.lines.put(None)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def readline(self, deadline: Deadline, cap: float | None = None) -> bytes:
        try:
            line = self.lines.get(timeout=deadline.left(cap))
        except queue.Empty:
            raise BenchError(f"{self.name}: no answer in time ({self.tail()})") from None
        if line is None:
            self.lines.put(None)
            raise BenchError(f"{self.name} exited ({self.popen.poll()}): {self.tail()}")
        return line

    def event(self, name: str, deadline: Deadline, cap: float | None = None) -> dict[str, Any]:
        """The next JSON line whose ``event`` is ``name`` (an ``error`` event raises)."""
        while True:
            line = self.readline(deadline, cap)
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if message.get("event") == "error":
                raise BenchError(f"{self.name}: {message.get('message')}")
            if message.get("event") == name:
                return message

    def send(self, line: str) -> None:
        try:
            assert self.popen.stdin is not None
            self.popen.stdin.write(line.encode() + b"\n")
            self.popen.stdin.flush()
        except (BrokenPipeError, OSError):
            pass

    def tail(self, lines: int = 8) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(text[-lines:])

    def stop(self, sig: int = signal.SIGTERM, wait: float = 10.0) -> None:
        """Ask politely (stdin closed, ``sig``), then kill; never leaves it running."""
        if self.popen.poll() is None:
            try:
                if self.popen.stdin is not None:
                    self.popen.stdin.close()
            except OSError:
                pass
            try:
                self.popen.send_signal(sig)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(wait)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        self._log.close()


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the runner dies (for children that do not
    watch their stdin or parent, such as the Node server)."""
    import ctypes
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)


def node_baseline_missing() -> str | None:
    """Why the Node server baseline cannot run here, or None."""
    if shutil.which("node") is None:
        return "`node` is not on PATH"
    if not (JS_DIR / "node_modules" / "wyseman").is_dir():
        return f"{JS_DIR / 'node_modules'} is missing (run `cd tests/js && npm ci`)"
    return None


def node_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"node": None, "wyseman": None}
    try:
        versions["node"] = subprocess.run(["node", "--version"], capture_output=True,
                                          text=True, timeout=20).stdout.strip() or None
        package = JS_DIR / "node_modules" / "wyseman" / "package.json"
        versions["wyseman"] = json.loads(package.read_text()).get("version")
    except (OSError, ValueError, subprocess.TimeoutExpired):
        pass
    return versions


# -- the environment: cluster, users, server --------------------------------------------

@dataclass
class Environment:
    args: argparse.Namespace
    workdir: Path
    cluster: Any = None
    bench_dsn: str = ""
    users: list[dict[str, Any]] = field(default_factory=list)
    children: list[Child] = field(default_factory=list)
    counter: int = 0

    @property
    def postmaster_pid(self) -> int | None:
        try:
            return int((self.cluster.data_dir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError, AttributeError):
            return None

    # -- where processes run (--server-cpus) ---------------------------------------------
    @property
    def all_cpus(self) -> frozenset[int]:
        return frozenset(os.sched_getaffinity(0))

    def place_cluster(self, serving: bool) -> None:
        """With ``--server-cpus``: PostgreSQL (the postmaster, its processes, and the
        backends it forks from now on) off the server's CPUs while a server is measured
        (``serving``), on every CPU for pgbench, whose own ceiling it is."""
        if not self.args.server_cpus or self.postmaster_pid is None:
            return
        place_process_tree(self.postmaster_pid,
                           self.all_cpus - self.args.server_cpus if serving else self.all_cpus)

    def setup(self) -> None:
        from wyseman.client import keys
        from wyseman.provision import admin, bootstrap
        from wyseman.provision.cluster import LocalCluster

        biggest = max(self.args.connections)
        # pgbench -c C, and the Node server's one database connection per socket
        wide = not self.args.no_baseline or not self.args.no_node
        max_conn = max(300, biggest + 100) if wide else 300
        self.cluster = LocalCluster(self.workdir / "pgdata", port=free_port(), listen_tcp=True,
                                    extra_settings=[f"max_connections={max_conn}"])
        log(f"cluster: initdb in {self.cluster.data_dir} (port {self.cluster.port})")
        self.cluster.init()
        self.cluster.start()
        server_dsn = self.cluster.dsn("postgres")
        bootstrap.ensure_database_sync(server_dsn, "bench")
        self.bench_dsn = self.cluster.dsn("bench")
        result = bootstrap.init_database_sync(self.bench_dsn)
        log(f"schema: {result}")
        for index in range(self.args.users):
            name = f"bench_u{index:03d}"
            admin.add_user(self.bench_dsn, name)
            private = keys.generate_private_jwk()
            self.users.append({"name": name, "key": private})
        with psycopg2.connect(self.bench_dsn) as conn, conn.cursor() as cur:
            for user in self.users:
                pub = {"default": keys.public_jwk(user["key"])}
                cur.execute("update base.ent set conn_pub = %s::jsonb where username = %s",
                            (json.dumps(pub), user["name"]))
            cur.execute("""
                create schema if not exists bench;
                create table bench.item (
                    id int primary key, name text not null, qty int not null,
                    price numeric(10, 2) not null, made timestamptz not null);
                insert into bench.item
                select g, 'item ' || g, g % 17, g * 1.25,
                       timestamptz '2025-01-01 00:00Z' + g * interval '1 hour'
                  from generate_series(1, 100) g;
                grant usage on schema bench to wyseman_user;
                grant select on bench.item to wyseman_user;
                analyze bench.item;""")
        conn.close()
        log(f"users: {len(self.users)} login roles with P-521 keys; bench.item: 100 rows")
        if not self.args.no_baseline:
            bootstrap.ensure_database_sync(server_dsn, "pgbench")
            self.pgbench(["-i", "-s", "1", "-q"], "pgbench", timeout=300)
            log("pgbench: initialised (-s 1)")

    # -- pgbench ---------------------------------------------------------------------
    def pgbench(self, options: list[str], dbname: str, timeout: float,
                sample: tuple[float, float] | None = None) -> tuple[str, dict[str, float]]:
        """Run pgbench → (stdout, CPU use between the ``sample`` offsets in seconds)."""
        from wyseman.provision.cluster import find_bindir
        self.place_cluster(serving=False)
        command = [str(find_bindir() / "pgbench"), "-h", str(self.cluster.socket_dir),
                   "-p", str(self.cluster.port), "-U", self.cluster.superuser, *options, dbname]
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=dict(os.environ, PGAPPNAME="bench"))
        cpu: dict[str, float] = {}
        try:
            if sample is not None:  # while it runs, so that its backends are counted
                time.sleep(sample[0])
                before = CpuSnapshot.take(proc.pid, self.postmaster_pid)
                time.sleep(sample[1] - sample[0])
                after = CpuSnapshot.take(proc.pid, self.postmaster_pid)
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

    def pgbench_tps(self, clients: int, seconds: float, script: str | None = None,
                    dbname: str = "pgbench") -> dict[str, Any]:
        # pgbench's -T includes opening the connections (a second or more per few hundred
        # backends here), which would leave a large C only a sliver of the run: add that.
        measured = max(1, round(seconds))
        secs = measured + (clients + 199) // 200 if clients >= 100 else measured
        options = ["-n", "-c", str(clients), "-j", str(min(2, clients)), "-T", str(secs)]
        if script is None:
            options.insert(0, "-S")
        else:
            path = self.workdir / "script.sql"
            path.write_text(script)
            options += ["-f", str(path)]
        # CPU is sampled near the end, once every connection is open.
        out, cpu = self.pgbench(options, dbname, timeout=secs + 120,
                                sample=(secs - 0.5 * measured - 0.5, secs - 0.5))
        tps = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", out)
        lat = re.search(r"latency average = ([0-9.]+) ms", out)
        if not tps:
            raise BenchError(f"pgbench output not understood: {out[-300:]}")
        return {"tps": float(tps.group(1)), "latency_avg_ms": float(lat.group(1)) if lat else 0,
                "command": "pgbench " + " ".join(options), "cpu": cpu}

    # -- children --------------------------------------------------------------------
    def spawn(self, name: str, module: str, spec: dict[str, Any]) -> Child:
        self.counter += 1
        spec_path = self.workdir / f"{self.counter:03d}-{name}.json"
        spec_path.write_text(json.dumps(spec))
        child = Child(name, [sys.executable, "-m", module, str(spec_path)],
                      self.workdir / f"{self.counter:03d}-{name}.log")
        self.children.append(child)
        if self.args.server_cpus and module == "benchmarks.loadgen":
            place_process(child.pid, self.all_cpus - self.args.server_cpus)
        return child

    def start_server(self, deadline: Deadline, profile: bool = False,
                     workers: int | None = None, metrics: bool = False,
                     route_by_user: bool | None = None) -> Server:
        workers = workers or self.args.server_workers
        if route_by_user is None:
            route_by_user = self.args.route_by_user
        metrics_ports = []
        config = {
            "server": {"listen": ["tcp:0:interface=127.0.0.1"], "clientinfo_listen": [],
                       "workers": workers, "fanout_threads": self.args.fanout_threads,
                       "cpu_affinity": sorted(self.args.server_cpus or ()),
                       "log_connections": not self.args.no_connection_log,
                       "route_by_user": route_by_user},
            "database": {"dsn": self.bench_dsn, "pool_size": self.args.pool_size,
                         "pool_total": 200, "pool_queue": 1_000_000,
                         "read_batch": self.args.read_batch},
            "channels": {"allow": ["bench_*"]},
            "auth": {"max_failures": 1_000_000, "verify_threads": self.args.verify_threads},
            "limits": {"max_connections": 1_000_000, "max_connections_per_user": 1_000_000},
        }
        if metrics:
            first = free_ports(workers)
            config["metrics"] = {"listen": f"tcp:{first}:interface=127.0.0.1"}
            metrics_ports = list(range(first, first + workers))
        spec = {"config": config, "log_file": str(self.workdir / f"server-{self.counter}.log")}
        if profile:
            spec["profile_file"] = str(self.workdir / "server.prof")
        self.place_cluster(serving=True)
        child = self.spawn("server", "benchmarks.server_proc", spec)
        while True:
            line = child.readline(deadline, 60).decode(errors="replace").split()
            if line and line[0] == "READY":
                return Server(child, int(line[1]), int(line[2]), spec.get("profile_file"),
                              metrics_ports)
            if line and line[0] == "FAILED":
                raise BenchError(f"server did not start: {' '.join(line[1:])}; "
                                 f"log: {spec['log_file']}")

    def start_node_server(self, deadline: Deadline) -> Server:
        """The Node.js Wyseman server (npm ``wyseman``, pinned in tests/js, run by
        ``tests/js/node_server.js``) on the same database, over the same Unix socket.
        It connects to PostgreSQL as each socket's user (one connection per socket, opened
        on its first request), i.e. as the same login roles our server uses. Insecure mode:
        any user name logs in on plain ws://. Its logs go nowhere (node_server.js is quiet
        unless WYSEMAN_NODE_LOG is set)."""
        missing = node_baseline_missing()
        if missing:
            raise BenchError(f"node baseline: {missing}")
        from wyseman.db.pg import dsn_params
        params = dsn_params(self.bench_dsn)
        port = free_port()
        config = {"port": port, "pg": {"host": params.get("host", "127.0.0.1"),
                                       "port": int(params.get("port", 5432)),
                                       "database": params["dbname"],
                                       "user": params.get("user", "postgres")}}
        self.counter += 1
        child = Child("node-server", [shutil.which("node") or "node",
                                      str(JS_DIR / "node_server.js"), json.dumps(config)],
                      self.workdir / f"{self.counter:03d}-node-server.log",
                      extra_env={"TZ": "UTC"}, die_with_parent=True)
        self.children.append(child)
        try:
            while child.readline(deadline, 60).strip() != b"ready":
                pass
        except BenchError:
            self.finish([child])
            raise
        if self.args.server_cpus:   # where our server's reactor thread runs (all its threads)
            place_process(child.pid, self.args.server_cpus)
            self.place_cluster(serving=True)
        return Server(child, port, child.pid, None)

    def loadgens(self, total: int, base: dict[str, Any], processes: int | None = None
                 ) -> list[Child]:
        processes = max(1, min(processes or self.args.loadgens, total or 1))
        children, first = [], 0
        for index in range(processes):
            share = total // processes + (1 if index < total % processes else 0)
            spec = dict(base, users=self.users, first=first, connections=share, index=index)
            first += share
            children.append(self.spawn(f"loadgen{index}", "benchmarks.loadgen", spec))
        return children

    def finish(self, children: Iterable[Child]) -> None:
        for child in children:
            child.send("end")
        for child in children:
            child.stop(wait=10)
            if child in self.children:
                self.children.remove(child)

    def teardown(self) -> None:
        self.finish(list(self.children))
        if self.cluster is not None:
            try:
                self.cluster.remove()
                log("cluster: stopped and removed")
            except Exception as exc:  # keep cleaning up
                log(f"cluster: removal failed: {exc}")


@dataclass
class Server:
    child: Child
    port: int
    pid: int
    profile_file: str | None
    metrics_ports: list[int] = field(default_factory=list)


# -- results -----------------------------------------------------------------------------

@dataclass
class Row:
    scenario: str
    params: str
    value: float | None
    unit: str
    baseline: float | None = None
    baseline_label: str = ""
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.value is None or not self.baseline:
            return None
        return self.value / self.baseline

    def as_json(self) -> dict[str, Any]:
        return {"scenario": self.scenario, "parameters": self.params, "value": self.value,
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


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def table(rows: list[Row]) -> str:
    header = ["scenario", "parameters", "value", "unit", "baseline", "ratio", "notes"]
    body = [[r.scenario, r.params, fmt(r.value), r.unit,
             (fmt(r.baseline) + (f" ({r.baseline_label})" if r.baseline_label else ""))
             if r.baseline is not None else "-",
             f"{r.ratio:.2f}" if r.ratio is not None else "-", r.notes] for r in rows]
    widths = [max(len(str(line[i])) for line in [header, *body]) for i in range(len(header))]
    right = {2, 5}
    out = []
    for n, line in enumerate([header, *body]):
        cells = [str(c).rjust(w) if i in right else str(c).ljust(w)
                 for i, (c, w) in enumerate(zip(line, widths, strict=True))]
        out.append("  ".join(cells).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


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


def run_notes(m: dict[str, Any], run: str = "our server") -> str:
    """CPU notes of a request run, and its errors if any."""
    notes = cpu_notes(m["cpu"], m["gen_cpu"], run)
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


# -- scenarios ---------------------------------------------------------------------------

class Bench:
    def __init__(self, env: Environment) -> None:
        self.env = env
        self.args = env.args
        self.rows: list[Row] = []
        self.failures: list[str] = []
        self.profiles: dict[str, Any] = {}
        self.node_status: dict[str, str] = {}

    def run(self, name: str, budget: float, body: Callable[[Deadline], None]) -> None:
        log(f"scenario {name}: start (hard limit {budget:.0f} s)")
        deadline = Deadline(budget, f"scenario {name}")
        try:
            body(deadline)
        except BenchError as exc:
            self.failures.append(f"{name}: {exc}")
            log(f"scenario {name}: FAILED: {exc}")
        finally:
            self.env.finish(list(self.env.children))
        log(f"scenario {name}: done")

    # -- a closed-loop request run ----------------------------------------------------
    def request_run(self, server: Server, connections: int, message: dict[str, Any],
                    deadline: Deadline, expect_rows: int | None = None,
                    profile: bool = False, plain_user: bool = False,
                    depth: int | None = None) -> dict[str, Any]:
        args, env = self.args, self.env
        env.place_cluster(serving=True)   # (after a pgbench run, with --server-cpus)
        base = {"mode": "requests", "port": server.port, "message": message,
                "plain_user": plain_user,
                "depth": depth or args.depth, "warmup": args.warmup, "duration": args.duration,
                "open_concurrency": 32, "max_seconds": deadline.left()}
        gens = env.loadgens(connections, base)
        try:
            readies = [g.event("ready", deadline) for g in gens]
            opened = sum(r["opened"] for r in readies)
            problems = [r["open_errors"] for r in readies if r["open_errors"]]
            if opened < connections:
                raise BenchError(f"only {opened}/{connections} connections opened: {problems}")
            verify = dict(readies[0].get("verify") or {})
            reply = verify.pop("data", None)
            if verify.get("error"):
                raise BenchError(f"the request fails: {verify['error']}")
            if expect_rows is not None and verify.get("rows") != expect_rows:
                raise BenchError(f"expected {expect_rows} rows, got {verify}")
            warmed = sum(r.get("warmed", 0) for r in readies)
            if warmed < opened:
                log(f"  warning: only {warmed}/{opened} sockets answered the warm-up request")
            for g in gens:
                g.send("go")
            before, after, batches = measure_window(server, env, deadline, profile,
                                                    lambda: self.batch_counts(server))
            results = [g.event("result", deadline) for g in gens]
        finally:
            env.finish(gens)
        latencies = [v for r in results for v in r["latencies_ms"]]
        completed = sum(r["completed"] for r in results)
        errors = sum(r["errors"] for r in results)
        first_error = next((r["first_error"] for r in results if r["first_error"]), None)
        return {"rps": completed / args.duration, "completed": completed, "errors": errors,
                "first_error": first_error, "reply": reply, "warmed": warmed,
                "p50": percentile(latencies, 50), "p99": percentile(latencies, 99),
                "pct": {q: percentile(latencies, q) for q in (10, 25, 50, 75, 90, 95, 99, 99.9)},
                "mean": statistics.fmean(latencies) if latencies else None,
                "cpu": before.until(after),
                "gen_cpu": [100.0 * r["cpu_s"] / args.duration for r in results],
                "read_batches": batches[0], "batched_reads": batches[1]}

    @staticmethod
    def batch_counts(server: Server) -> list[float]:
        """Batches and the reads they answered so far (0, 0 without a metrics page, as
        for the Node server)."""
        if not server.metrics_ports:
            return [0.0, 0.0]
        return [gauge_sum(server.metrics_ports, "wyseman_read_batches"),
                gauge_sum(server.metrics_ports, "wyseman_batched_reads")]

    # -- the Node.js server baseline ---------------------------------------------------
    def node_runs(self, scenario: str, runs: list[tuple[int, int]], message: dict[str, Any],
                  ours: dict[tuple[int, int], dict[str, Any]], deadline: Deadline,
                  expect_rows: int | None = None) -> dict[tuple[int, int], dict[str, Any]]:
        """The same request runs ((C, D) pairs, message, load generators) against the Node
        server, logged in by user name only; {(C, D): result}. Skipped (and said so) when
        node or its modules are missing; a failure is reported without losing our rows."""
        args, env = self.args, self.env
        results: dict[tuple[int, int], dict[str, Any]] = {}
        replies = {key: m.pop("reply", None) for key, m in ours.items()}  # not for the JSON
        if args.no_node:
            self.node_status[scenario] = "skipped (--no-node)"
            return results
        missing = node_baseline_missing()
        if missing:
            self.node_status[scenario] = f"skipped: {missing}"
            log(f"  Node server baseline SKIPPED: {missing}")
            return results
        node_server = None
        try:
            node_server = env.start_node_server(deadline)
            log(f"  Node server: pid {node_server.pid}, port {node_server.port}")
            for clients, depth in runs:
                label = f"C={clients} D={depth}"
                log(f"  Node server: {scenario} {label}")
                try:
                    n = self.request_run(node_server, clients, message, deadline,
                                         expect_rows=expect_rows, plain_user=True, depth=depth)
                except BenchError as exc:
                    self.failures.append(f"{scenario} Node baseline {label}: {exc}")
                    continue
                theirs = n.pop("reply", None)
                n["same_reply"] = theirs == replies.get((clients, depth))
                if not n["same_reply"]:
                    self.failures.append(
                        f"{scenario} Node baseline {label}: the servers answer "
                        f"differently: ours {str(replies.get((clients, depth)))[:200]}, "
                        f"Node {str(theirs)[:200]}")
                results[(clients, depth)] = n
        except BenchError as exc:
            self.failures.append(f"{scenario} Node baseline: {exc}")
        finally:
            if node_server is not None:
                env.finish([node_server.child])  # killed whatever happened
        measured = ",".join(f"C={c} D={d}" for c, d in sorted(results))
        self.node_status[scenario] = f"measured at {measured}" if results else "failed"
        return results

    def pgbench_rows(self, name: str, label: str, params: str, m: dict[str, Any],
                     base: dict[str, Any] | None) -> None:
        """Ours next to pgbench: req/s (ratio to its TPS), p50 (to its average), p99."""
        self.rows.append(Row(name, params, m["rps"], "req/s", base["tps"] if base else None,
                             f"{label} TPS" if base else "",
                             run_notes(m, f"our server, {name.split()[0]} {params}"),
                             {"measured": m, "pgbench": base}))
        scenario = name.split()[0]
        self.rows.append(Row(f"{scenario} latency p50", params, m["p50"], "ms",
                             base["latency_avg_ms"] if base else None,
                             "pgbench avg" if base else "", pgbench_notes(base)))
        self.rows.append(Row(f"{scenario} latency p99", params, m["p99"], "ms"))

    def node_rows(self, scenario: str, params: str, m: dict[str, Any],
                  n: dict[str, Any] | None) -> None:
        """Ours next to the Node server: req/s, p50, p99; ratio = ours / Node."""
        if n is None:
            return
        self.rows.append(Row(f"{scenario} vs Node server", params, m["rps"], "req/s",
                             n["rps"], "Node req/s",
                             "Node server run " + run_notes(n, f"the Node server, {params}"),
                             {"node": n}))
        self.rows.append(Row(f"{scenario} p50 vs Node", params, m["p50"], "ms",
                             n["p50"], "Node p50"))
        self.rows.append(Row(f"{scenario} p99 vs Node", params, m["p99"], "ms",
                             n["p99"], "Node p99"))

    def tuple_runs(self) -> list[tuple[int, int]]:
        """(C, D) of the tuple runs: every C at ``--depth``, and one at C=100 (or the
        largest C) with ``--queued-depth`` requests in flight per socket, where requests
        queue for the users' connections."""
        args = self.args
        runs = [(clients, args.depth) for clients in args.connections]
        if args.queued_depth and args.queued_depth != args.depth:
            target = 100 if 100 in args.connections else max(args.connections)
            runs.append((target, args.queued_depth))
        return runs

    def tuple_scenario(self, deadline: Deadline) -> None:
        args, env = self.args, self.env
        server = env.start_server(deadline, profile=args.profile, metrics=True)
        baselines: dict[int, dict[str, float]] = {}
        measured: dict[tuple[int, int], dict[str, Any]] = {}
        runs = self.tuple_runs()
        for clients, depth in runs:
            log(f"  tuple: C={clients} D={depth}")
            measured[(clients, depth)] = self.request_run(server, clients, TUPLE_MESSAGE,
                                                          deadline, depth=depth)
        if args.profile:
            target = max([c for c in args.connections if c <= 100] or args.connections)
            log(f"  tuple: profiling the server at C={target} (not a measured run)")
            self.request_run(server, target, TUPLE_MESSAGE, deadline, profile=True)
            self.profiles[f"tuple C={target} D={args.depth}"] = summarize_profile(
                server.profile_file)
        pairs = self.alternating_pairs(server, deadline)
        env.finish([server.child])
        node = self.node_runs("tuple", runs, TUPLE_MESSAGE, measured, deadline)
        if not args.no_baseline:
            for clients in args.connections:
                log(f"  pgbench -S -c {clients}")
                try:
                    baselines[clients] = env.pgbench_tps(clients, args.duration)
                except BenchError as exc:
                    self.failures.append(f"tuple baseline C={clients}: {exc}")
        for clients, depth in runs:
            m = measured[(clients, depth)]
            base = baselines.get(clients)
            params = f"C={clients} D={depth}"
            self.pgbench_rows("tuple bench.item by id", "pgbench -S", params, m, base)
            self.node_rows("tuple", params, m, node.get((clients, depth)))
        if pairs:
            self.rows.append(pairs_row(pairs))

    def alternating_pairs(self, server: Server, deadline: Deadline
                          ) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """``--pairs`` times: our tuple run at C=100 D=1, then ``pgbench -S -c 100`` right
        after it. Both move by ±20 % from minute to minute on a shared VM; a ratio taken
        from runs seconds apart, and the median of several, says more than one ratio of
        runs a minute apart."""
        args, env = self.args, self.env
        if not args.pairs or args.no_baseline or args.depth != 1:
            return []
        pairs = []
        for number in range(1, args.pairs + 1):
            log(f"  tuple: alternating pair {number}/{args.pairs}: ours, then pgbench -S, "
                "C=100 D=1")
            try:
                ours = self.request_run(server, 100, TUPLE_MESSAGE, deadline, depth=1)
                ours.pop("reply", None)
                pairs.append((ours, env.pgbench_tps(100, args.duration)))
            except BenchError as exc:
                self.failures.append(f"tuple alternating pair {number}: {exc}")
        return pairs

    def select_scenario(self, deadline: Deadline) -> None:
        args, env = self.args, self.env
        clients = 10
        server = env.start_server(deadline, metrics=True)
        log(f"  select 100 rows: C={clients}")
        m = self.request_run(server, clients, SELECT_MESSAGE, deadline, expect_rows=100)
        env.finish([server.child])
        run = (clients, args.depth)
        node = self.node_runs("select", [run], SELECT_MESSAGE, {run: m}, deadline,
                              expect_rows=100)
        base = None
        if not args.no_baseline:
            try:
                base = env.pgbench_tps(clients, args.duration, "select * from bench.item;\n",
                                       dbname="bench")
            except BenchError as exc:
                self.failures.append(f"select baseline: {exc}")
        params = f"C={clients} D={args.depth} 100 rows"
        self.pgbench_rows("select bench.item", "pgbench -f select", params, m, base)
        self.node_rows("select", params, m, node.get(run))

    def scaling_scenario(self, deadline: Deadline) -> None:
        """Tuple requests at C=100 and parallel key logins with [server] workers = 1, 2,
        … up to the core count (each worker count on a fresh server). Workers spread over
        every core: ``--server-cpus`` does not apply here."""
        args, env = self.args, self.env
        placed = args.server_cpus
        if placed:
            log("  scaling: every process on every CPU (--server-cpus does not apply)")
            env.place_cluster(serving=False)
        args.server_cpus = None
        try:
            self.scaling_runs(deadline)
        finally:
            args.server_cpus = placed

    def scaling_runs(self, deadline: Deadline) -> None:
        """``--scaling-runs`` rounds of every worker count; the rows of the round whose
        ratio is the median (tuple: the routed ratio; logins: theirs), every round's
        ratio in the notes of the two-worker rows."""
        args = self.args
        clients = 100
        counts = list(range(1, max(2, os.cpu_count() or 1) + 1))
        rounds = []
        for number in range(1, args.scaling_runs + 1):
            if args.scaling_runs > 1:
                log(f"  scaling: round {number}/{args.scaling_runs}")
            rounds.append(self.scaling_round(deadline, clients, counts))

        def ratio(rows: list[Row], scenario: str, routed: bool = False) -> float:
            row = next(r for r in rows if r.scenario == scenario and r.baseline
                       and ("route_by_user" in r.params) == routed)
            return row.ratio or 0.0
        tuple_rows = [[r for r in rows if r.scenario != "handshakes, server workers"]
                      for rows in rounds]
        login_rows = [[r for r in rows if r.scenario == "handshakes, server workers"]
                      for rows in rounds]
        if len(rounds) > 1:
            for group, scenario, routed in ((tuple_rows, "tuple, server workers", True),
                                            (tuple_rows, "tuple, server workers", False),
                                            (login_rows, "handshakes, server workers", False)):
                listed = ", ".join(f"{ratio(rows, scenario, routed):.2f}" for rows in group)
                for rows in group:
                    for row in rows:
                        if (row.scenario == scenario and row.baseline
                                and ("route_by_user" in row.params) == routed):
                            row.notes = f"rounds in order: {listed}×; this round: " + row.notes
        self.rows.extend(lower_median(tuple_rows,
                                      key=lambda rows: ratio(rows, "tuple, server workers",
                                                             routed=len(counts) > 1)))
        self.rows.extend(lower_median(login_rows,
                                      key=lambda rows: ratio(rows, "handshakes, server workers")))

    def scaling_round(self, deadline: Deadline, clients: int, counts: list[int]) -> list[Row]:
        args, env = self.args, self.env
        measured: dict[int, dict[str, Any]] = {}
        logins: dict[int, dict[str, Any]] = {}
        for count in counts:
            server = env.start_server(deadline, workers=count, route_by_user=False)
            try:
                log(f"  scaling: workers={count} C={clients} D={args.depth}")
                measured[count] = self.request_run(server, clients, TUPLE_MESSAGE, deadline)
                measured[count].pop("reply", None)
                log(f"  scaling: workers={count} handshakes {args.loadgens}x{args.workers}")
                logins[count] = self.handshake_run(server, args.loadgens, args.workers, False,
                                                   deadline)
            finally:
                env.finish([server.child])
        routed: dict[int, dict[str, Any]] = {}
        for count in counts[1:]:   # the same with each user's sockets in one worker
            server = env.start_server(deadline, workers=count, route_by_user=True)
            try:
                log(f"  scaling: workers={count} route_by_user C={clients} D={args.depth}")
                routed[count] = self.request_run(server, clients, TUPLE_MESSAGE, deadline)
                routed[count].pop("reply", None)
            finally:
                env.finish([server.child])
        one, one_logins = measured[1]["rps"], logins[1]["rate"]
        rows = []
        for count in counts:
            m = measured[count]
            later = count > 1
            rows.append(Row("tuple, server workers", f"workers={count} C={clients}",
                            m["rps"], "req/s", one if later else None,
                            "workers=1 req/s" if later else "", run_notes(m),
                            {"measured": m}))
            rows.append(Row("tuple latency p99", f"workers={count} C={clients}",
                            m["p99"], "ms"))
            if count in routed:
                m = routed[count]
                rows.append(Row("tuple, server workers",
                                f"workers={count} C={clients} route_by_user", m["rps"],
                                "req/s", one, "workers=1 req/s", run_notes(m),
                                {"measured": m}))
                rows.append(Row("tuple latency p99",
                                f"workers={count} C={clients} route_by_user", m["p99"], "ms"))
        for count in counts:
            m, later = logins[count], count > 1
            rows.append(Row("handshakes, server workers",
                            f"workers={count} {args.loadgens}x{args.workers}", m["rate"],
                            "logins/s", one_logins if later else None,
                            "workers=1 logins/s" if later else "", m["notes"], m["extra"]))
        return rows

    def notify_scenario(self, deadline: Deadline) -> None:
        """``--notify-runs`` runs, each on a fresh server with fresh subscribers; the rows
        of the run whose paced p99 is the median, with every run's p99 in its notes."""
        runs = []
        for number in range(1, self.args.notify_runs + 1):
            if self.args.notify_runs > 1:
                log(f"  notify: run {number}/{self.args.notify_runs}")
            runs.append(self.notify_run(deadline, profile=self.args.profile and number == 1))
        median = lower_median(runs, key=lambda rows: rows[-1].value)
        if len(runs) > 1:
            p99 = median[-1]
            listed = ", ".join(fmt(rows[-1].value) for rows in runs)
            p99.params += f", median of {len(runs)}"
            p99.notes = f"runs in order: p99 {listed} ms; the median run: " + p99.notes
            p99.extra = {**(p99.extra or {}), "runs_p99_ms": [rows[-1].value for rows in runs]}
        self.rows.extend(median)

    def notify_run(self, deadline: Deadline, profile: bool) -> list[Row]:
        """One notify run → its rows: burst deliveries/s, paced p50, paced p99 (last)."""
        args, env = self.args, self.env
        subscribers = args.subscribers
        paced, burst = args.notifies, args.notifies
        # One paced NOTIFY at a time: the interval must exceed a whole fan-out, or the
        # latencies would measure a queue (Python fans out ~10-100 µs per socket).
        interval = max(0.25, subscribers / 5000)
        server = env.start_server(deadline, profile=profile, metrics=True)
        base = {"mode": "notify", "port": server.port, "channel": CHANNEL,
                "expected": paced + burst, "open_concurrency": 32,
                "max_seconds": deadline.left()}
        gens = env.loadgens(subscribers, base)
        try:
            t0 = time.monotonic()
            readies = [g.event("ready", deadline) for g in gens]
            opened = sum(r["opened"] for r in readies)
            log(f"  notify: {opened} subscribers in {time.monotonic() - t0:.1f} s")
            if opened < subscribers:
                raise BenchError(f"only {opened}/{subscribers} subscribers: "
                                 f"{[r['open_errors'] for r in readies]}")
            for g in gens:
                g.send("go")
            conn = psycopg2.connect(env.bench_dsn)
            conn.autocommit = True
            try:
                with conn.cursor() as cur:
                    time.sleep(0.5)
                    for k in range(paced):
                        payload = json.dumps({"p": "paced", "k": k, "t": time.time()})
                        cur.execute("select pg_notify(%s, %s)", (CHANNEL, payload))
                        time.sleep(interval)
                    time.sleep(max(1.0, 2 * interval))
                    paced_fanout = histogram_stats(server.metrics_ports,
                                                   "wyseman_notification_fanout_seconds")
                    full_gc = histogram_stats(server.metrics_ports, "wyseman_gc_pause_seconds",
                                              'generation="2",')
                    if profile:  # the burst only (profiling slows it down a little)
                        server.child.popen.send_signal(signal.SIGUSR1)
                    before = CpuSnapshot.take(server.pid, env.postmaster_pid)
                    burst_start = time.time()
                    for k in range(burst):
                        payload = json.dumps({"p": "burst", "k": k, "t": time.time()})
                        cur.execute("select pg_notify(%s, %s)", (CHANNEL, payload))
                    results = []
                    for g in gens:
                        try:
                            results.append(g.event("result", deadline, cap=args.notify_wait))
                        except BenchError:
                            g.send("stop")
                            results.append(g.event("result", deadline, cap=30))
                    after = CpuSnapshot.take(server.pid, env.postmaster_pid)
                    if profile:
                        server.child.popen.send_signal(signal.SIGUSR2)
                        while server.child.readline(deadline, 60).strip() != b"PROFILED":
                            pass
                        self.profiles[f"notify burst S={subscribers}"] = summarize_profile(
                            server.profile_file)
            finally:
                conn.close()
        finally:
            env.finish(gens)
            env.finish([server.child])
        received = sum(r["received"] for r in results)
        expected = sum(r["expected"] for r in results)
        phase = {p: [v for r in results for v in r["phases"].get(p, {}).get("latencies_ms", [])]
                 for p in ("paced", "burst")}
        rounds = sorted({k for r in results for k in r.get("rounds", {})}, key=int)
        round_p99 = []
        for k in rounds:
            values = [v for r in results for v in r["rounds"].get(k, [])]
            round_p99.append(percentile(values, 99))
            log(f"  paced NOTIFY {k}: p50 {fmt(percentile(values, 50))}, p90 "
                f"{fmt(percentile(values, 90))}, p99 {fmt(percentile(values, 99))}, max "
                f"{fmt(max(values, default=None))} ms")
        if any(r.get("other") for r in results):
            log(f"  generators' other frames: {[r.get('other') for r in results]}")
        last_burst = max((r["phases"]["burst"]["last"] for r in results
                          if "burst" in r["phases"]), default=None)
        burst_count = sum(r["phases"].get("burst", {}).get("count", 0) for r in results)
        rate = burst_count / (last_burst - burst_start) if last_burst else None
        # CPU seconds, not %: the generators read the burst after it has arrived
        gen_ms = [1000.0 * r["burst_cpu_s"] for r in results if r.get("burst_cpu_s") is not None]
        server_ms = 1000.0 * (after.server - before.server)
        notes = (f"delivered {received}/{expected}; burst CPU: server {server_ms:,.0f} ms "
                 f"({1000.0 * server_ms / max(1, burst_count):.1f} µs a delivery), pg "
                 f"{1000.0 * (after.pg - before.pg):,.0f} ms, generators "
                 f"{'+'.join(f'{g:,.0f}' for g in gen_ms) or '-'} ms (reading after it)")
        if profile:
            notes += "; burst run under cProfile (slower)"
        params = f"S={subscribers}"
        extra = {"received": received, "expected": expected, "paced_notifies": paced,
                 "paced_interval_s": interval, "burst_notifies": burst,
                 "burst_p50_ms": percentile(phase["burst"], 50),
                 "burst_p99_ms": percentile(phase["burst"], 99),
                 "paced_server_fanout": paced_fanout, "server_full_gc": full_gc,
                 "paced_round_p99_ms": round_p99}
        return [
            Row("notify fan-out", f"{params} K={burst} burst", rate, "deliveries/s",
                notes=notes, extra=extra),
            Row("notify latency p50", f"{params} K={paced} paced",
                percentile(phase["paced"], 50), "ms"),
            Row("notify latency p99", f"{params} K={paced} paced",
                percentile(phase["paced"], 99), "ms", notes=(
                    f"each paced NOTIFY's p99: {fmt(min(round_p99, default=None))}"
                    f"–{fmt(max(round_p99, default=None))} ms; "
                    f"burst: p50 {fmt(extra['burst_p50_ms'])} ms, "
                    f"p99 {fmt(extra['burst_p99_ms'])} ms; server's own "
                    f"fan-out (paced): mean {fmt(paced_fanout['mean_ms'])} ms, "
                    f"all ≤ {fmt(paced_fanout['max_bucket_ms'])} ms; "
                    f"full GCs until then: {full_gc['count']}, mean "
                    f"{fmt(full_gc['mean_ms'])} ms, all ≤ "
                    f"{fmt(full_gc['max_bucket_ms'])} ms")),
        ]

    def handshake_scenario(self, deadline: Deadline) -> None:
        args, env = self.args, self.env
        server = env.start_server(deadline, profile=args.profile)
        variants = [("sequential, 1 worker", 1, 1, False),
                    (f"parallel, {args.loadgens}x{args.workers} workers", args.loadgens,
                     args.workers, False),
                    (f"parallel + GET /clientinfo each, {args.loadgens}x{args.workers}",
                     args.loadgens, args.workers, True)]
        try:
            for label, processes, workers, each in variants:
                repeats = args.handshake_runs if label.startswith("parallel,") else 1
                runs = []
                for number in range(1, repeats + 1):
                    log(f"  handshake: {label}"
                        + (f" ({number}/{repeats})" if repeats > 1 else ""))
                    runs.append(self.handshake_run(server, processes, workers, each,
                                                   deadline))
                self.rows.append(median_run_row(label, runs))
            if args.profile:
                log("  handshake: profile (not a measured run)")
                self.handshake_run(server, args.loadgens, args.workers, False, deadline,
                                   profile=True)
                self.profiles[f"handshake {args.loadgens}x{args.workers} workers"] = (
                    summarize_profile(server.profile_file))
        finally:
            env.finish([server.child])

    def handshake_run(self, server: Server, processes: int, workers: int, each: bool,
                      deadline: Deadline, profile: bool = False) -> dict[str, Any]:
        """Key logins in a loop by ``processes`` generators × ``workers`` → the rate, the
        notes of its row and the raw figures (``extra``)."""
        args, env = self.args, self.env
        presign = int(min(20000, 2500 * (args.duration + args.warmup) / processes))
        base = {"mode": "handshake", "port": server.port, "workers": workers,
                "warmup": args.warmup, "duration": args.duration,
                "clientinfo_each": each, "presign": presign,
                "max_seconds": deadline.left()}
        gens = env.loadgens(processes, base, processes)
        try:
            for g in gens:
                g.event("ready", deadline)
            for g in gens:
                g.send("go")
            before, after, _ = measure_window(server, env, deadline, profile)
            results = [g.event("result", deadline) for g in gens]
        finally:
            env.finish(gens)
        completed = sum(r["completed"] for r in results)
        lat = [v for r in results for v in r["latencies_ms"]]
        errors: dict[str, int] = {}
        for r in results:
            for k, v in r["errors"].items():
                errors[k] = errors.get(k, 0) + v
        gen_cpu = [100.0 * r["cpu_s"] / args.duration for r in results]
        notes = (f"upgrade p50 {fmt(percentile(lat, 50))} ms, "
                 f"p99 {fmt(percentile(lat, 99))} ms; "
                 + cpu_notes(before.until(after), gen_cpu))
        if errors:
            notes += f"; errors {errors}"
        if any(r["presign_left"] == 0 and not each for r in results):
            notes += "; presigned pool ran out (generator signed inline)"
        return {"rate": completed / args.duration, "notes": notes,
                "extra": {"completed": completed, "errors": errors,
                          "cpu": before.until(after),
                          "p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99)}}

    def memory_scenario(self, deadline: Deadline) -> None:
        args, env = self.args, self.env
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
        self.rows.append(Row("memory per idle socket", f"N={sockets}", per_socket, "KiB",
                             notes=notes,
                             extra={"rss_before_kib": rss_before, "rss_after_kib": rss_after,
                                    "opened": opened, "warm": sum(r.get("warm_replies", 0)
                                                                  for r in readies)}))


def measure_window(server: Server, env: Environment, deadline: Deadline,
                   profile: bool = False, counters: Callable[[], list[float]] | None = None
                   ) -> tuple[CpuSnapshot, CpuSnapshot, list[float]]:
    """Called right after 'go': skip the warm-up, then CPU snapshots around the measured
    seconds (cProfile of the server over exactly those seconds with ``profile``), and what
    ``counters`` counted in them."""
    args = env.args
    time.sleep(args.warmup)
    if profile:
        server.child.popen.send_signal(signal.SIGUSR1)
    counted = counters() if counters else []
    before = CpuSnapshot.take(server.pid, env.postmaster_pid)
    time.sleep(args.duration)
    after = CpuSnapshot.take(server.pid, env.postmaster_pid)
    if counters:
        counted = [b - a for a, b in zip(counted, counters(), strict=True)]
    if profile:
        server.child.popen.send_signal(signal.SIGUSR2)
        while server.child.readline(deadline, 60).strip() != b"PROFILED":
            pass
    return before, after, counted


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


# -- main --------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="smaller and shorter (C up to 100, 1000 subscribers, 2 s runs)")
    parser.add_argument("--scenario", action="append", choices=SCENARIOS,
                        help="run only this scenario (repeatable); default: all")
    parser.add_argument("--duration", type=float, help="measured seconds per run (5; quick 2)")
    parser.add_argument("--warmup", type=float, help="unmeasured seconds first (1; quick 0.5)")
    parser.add_argument("--connections", type=lambda s: [int(x) for x in s.split(",")],
                        help="tuple: comma-separated C values (1,10,100,1000; quick 1,10,100)")
    parser.add_argument("--depth", type=int, default=1, help="requests in flight per socket")
    parser.add_argument("--queued-depth", type=int, default=4,
                        help="tuple: one more run at C=100 with this many requests in flight "
                             "per socket, so that requests queue for the users' connections "
                             "(default 4; 0: none)")
    parser.add_argument("--pairs", type=int,
                        help="tuple: this many more runs at C=100 D=1, each followed at once "
                             "by pgbench -S -c 100; the target uses the median pair's ratio "
                             "(default 3; quick 0)")
    parser.add_argument("--handshake-runs", type=int,
                        help="handshake: measure the parallel logins this many times; the "
                             "target uses the median run (default 3; quick 1)")
    parser.add_argument("--notify-runs", type=int,
                        help="notify: this many runs, each with fresh subscribers; the "
                             "target uses the median run's p99 (default 3; quick 1)")
    parser.add_argument("--scaling-runs", type=int,
                        help="scaling: this many rounds of every worker count; the targets "
                             "use the median round's ratios (default 3; quick 1)")
    parser.add_argument("--users", type=int, default=10, help="login users (default 10)")
    parser.add_argument("--pool-size", type=int, default=4, help="[database] pool_size")
    parser.add_argument("--read-batch", type=int, default=16,
                        help="[database] read_batch (1: no batching)")
    parser.add_argument("--loadgens", type=int, default=2, help="load generator processes")
    parser.add_argument("--workers", type=int, default=16,
                        help="handshake: concurrent logins per generator process")
    parser.add_argument("--route-by-user", action="store_true",
                        help="the server's [server] route_by_user (with --server-workers > 1; "
                        "the scaling scenario runs its worker counts > 1 both ways)")
    parser.add_argument("--fanout-threads", type=int, default=0,
                        help="the server's [server] fanout_threads (0: its default)")
    parser.add_argument("--verify-threads", type=int, default=0,
                        help="the server's [auth] verify_threads (0: its default)")
    parser.add_argument("--server-cpus", type=parse_cpus,
                        help="our server's [server] cpu_affinity (e.g. 0); its load "
                             "generators and PostgreSQL then run on the other CPUs (the Node "
                             "server too, on these); pgbench on all (default: the kernel "
                             "places everything)")
    parser.add_argument("--no-connection-log", action="store_true",
                        help="our server's [server] log_connections = false (no line per "
                             "login and disconnect)")
    parser.add_argument("--server-workers", type=int, default=1,
                        help="[server] workers of the server under test (default 1)")
    parser.add_argument("--subscribers", type=int, help="notify: sockets (10000; quick 1000)")
    parser.add_argument("--notifies", type=int, default=10,
                        help="notify: NOTIFYs per phase (paced, then burst)")
    parser.add_argument("--idle", type=int, help="memory: idle sockets (10000; quick 2000)")
    parser.add_argument("--no-baseline", action="store_true", help="skip pgbench")
    parser.add_argument("--no-node", action="store_true",
                        help="skip the Node.js Wyseman server baseline (tuple, select)")
    parser.add_argument("--profile", action="store_true",
                        help="cProfile the server in an extra tuple run at C=100 "
                        "(stats kept in benchmarks/results/server.prof)")
    parser.add_argument("--output", type=Path, default=RESULTS / "latest.json")
    parser.add_argument("--keep-logs", action="store_true",
                        help="copy server/generator logs to benchmarks/results/logs/ "
                        "(always done when a scenario fails)")
    args = parser.parse_args(argv)
    quick = args.quick
    args.duration = args.duration or (2.0 if quick else 5.0)
    args.warmup = args.warmup if args.warmup is not None else (0.5 if quick else 1.0)
    args.connections = args.connections or ([1, 10, 100] if quick else [1, 10, 100, 1000])
    args.pairs = args.pairs if args.pairs is not None else (0 if quick else 3)
    args.handshake_runs = max(1, args.handshake_runs or (1 if quick else 3))
    args.notify_runs = max(1, args.notify_runs or (1 if quick else 3))
    args.scaling_runs = max(1, args.scaling_runs or (1 if quick else 3))
    args.subscribers = args.subscribers or (1000 if quick else 10000)
    args.idle = args.idle or (2000 if quick else 10000)
    args.notify_wait = 30.0 if quick else 60.0
    args.scenarios = args.scenario or list(SCENARIOS)
    return args


def budgets(args: argparse.Namespace) -> dict[str, float]:
    run = args.duration + args.warmup
    node = 0 if args.no_node else 1  # the Node server runs: the same load again
    return {
        "tuple": 60 + sum(4 * run + 40 + c / 10 for c in args.connections)
        + node * (60 + sum(run + 30 + c / 10 for c in args.connections))
        + (3 * run + 30 if args.profile else 0)
        + args.pairs * (2 * run + 60),
        "select": 60 + 3 * run + 30 + node * (60 + run + 30),
        "notify": args.notify_runs * (
            120 + args.subscribers / 100 + args.notifies * (1 + args.subscribers / 5000)),
        "handshake": 60 + (4 if args.profile else 3) * (run + 40),
        "memory": 60 + args.idle / 100,
        "scaling": args.scaling_runs * (60 + max(2, os.cpu_count() or 1) * (5 * run + 90)),
    }


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    fd_limit = raise_fd_limit()
    limits = budgets(args)
    total = 300 + sum(limits[s] for s in args.scenarios)
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGALRM, _terminate)
    signal.alarm(int(total))  # the whole run ends by itself, whatever happens
    started = datetime.now(UTC)
    workdir = Path(tempfile.mkdtemp(prefix="wyseman-bench-"))
    env = Environment(args, workdir)
    bench = Bench(env)
    command = "python -m benchmarks.run " + " ".join(shlex.quote(a) for a in (
        sys.argv[1:] if argv is None else argv))
    log(f"{command.strip()} (fd limit {fd_limit}, hard limit {total:.0f} s)")
    interrupted = None
    try:
        env.setup()
        scenario_bodies = {"tuple": bench.tuple_scenario, "select": bench.select_scenario,
                           "notify": bench.notify_scenario,
                           "handshake": bench.handshake_scenario,
                           "memory": bench.memory_scenario,
                           "scaling": bench.scaling_scenario}
        for name in args.scenarios:
            bench.run(name, limits[name], scenario_bodies[name])
    except KeyboardInterrupt as exc:
        interrupted = f"interrupted ({exc or 'SIGINT'})"
        bench.failures.append(interrupted)
    except Exception as exc:
        bench.failures.append(f"setup: {type(exc).__name__}: {exc}")
        log(f"FAILED: {type(exc).__name__}: {exc}")
    finally:
        signal.alarm(0)
        env.teardown()
        if args.keep_logs or bench.failures:
            keep = RESULTS / "logs"
            shutil.rmtree(keep, ignore_errors=True)
            keep.mkdir(parents=True)
            for path in workdir.glob("*.log"):
                shutil.copy(path, keep / path.name)
            log(f"logs kept in {keep}")
        shutil.rmtree(workdir, ignore_errors=True)

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
                          "login": "user name only (insecure mode, plain ws://)",
                          **(node_versions() if node_baseline_missing() is None else {})},
        "failures": bench.failures,
        "max_other_cpu_pct": max((other for other, _ in NOISE), default=None),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=1, default=str) + "\n")
    log(f"results written to {args.output}")
    return 1 if bench.failures else 0


if __name__ == "__main__":
    sys.exit(main())
