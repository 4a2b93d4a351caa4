"""The environment of a run: a throwaway PostgreSQL cluster with the bench schema and
login users, the gateway under test in its own process, and the load generators.

One :class:`Environment` lives for the whole run; :meth:`Environment.teardown` kills
every child still running and removes the cluster, whatever happened. ``transport``
(``ws`` or ``wss``) says how the servers started next listen and how the load generators
connect: over ``wss`` with a certificate the run makes (``tls``: a CA of its own and a
P-256 ECDSA server certificate for 127.0.0.1), trusted by the generators only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg2

from benchmarks import pgbench
from benchmarks.children import Child
from benchmarks.common import BenchError, Deadline, log
from benchmarks.procstat import free_port, free_ports
from wyseman.localca import LocalTLS, ensure_local_tls
from wyseman.tuning.affinity import place_process, place_process_tree


@dataclass
class Server:
    """A server under test (ours or the Node one): its process, WebSocket port, the pid
    whose CPU is read, and where its profile and metrics pages are."""

    child: Child
    port: int
    pid: int
    profile_file: str | None
    metrics_ports: list[int] = field(default_factory=list)
    #: the libp2p multiaddr (with /p2p/PEER), when started with ``p2p=True``
    p2p_address: str | None = None


@dataclass
class Environment:
    """The cluster, its users, and every child process started so far."""

    args: argparse.Namespace
    workdir: Path
    cluster: Any = None
    bench_dsn: str = ""
    users: list[dict[str, Any]] = field(default_factory=list)
    children: list[Child] = field(default_factory=list)
    counter: int = 0
    transport: str = "ws"
    tls: LocalTLS | None = None

    @property
    def postmaster_pid(self) -> int | None:
        try:
            return int((self.cluster.data_dir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError, AttributeError):
            return None

    @property
    def tls_on(self) -> bool:
        """Whether servers started now serve ``wss://`` (and generators speak it)."""
        return self.transport == "wss"

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

        if "wss" in self.args.transports:
            self.tls = ensure_local_tls(self.workdir / "tls")
            log(f"tls: CA and P-256 server certificate in {self.tls.ca.parent}")
        biggest = max(self.args.connections)
        # pgbench -c C, and the Node server's one database connection per socket
        wide = not self.args.no_baseline or not self.args.no_node
        if not self.args.no_node and "notify" in self.args.scenarios:
            biggest = max(biggest, self.args.node_subscribers)
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
                # the bare JWK: the form both servers read (the Node server imports
                # conn_pub as a JWK as it is; ours also takes {"default": jwk})
                pub = keys.public_jwk(user["key"])
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
            pgbench.run(self, ["-i", "-s", "1", "-q"], "pgbench", timeout=300)
            log("pgbench: initialised (-s 1)")

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
                     route_by_user: bool | None = None, p2p: bool = False,
                     shared_state: bool | None = None) -> Server:
        """Start our server (``workers``, ``route_by_user``, ``shared_state``: None for
        what the command line says) and wait for its port."""
        workers = workers or self.args.server_workers
        if shared_state is None:
            shared_state = self.args.shared_state
        if route_by_user is None:
            route_by_user = self.args.route_by_user
        metrics_ports = []
        config = {
            "server": {"listen": [f"{'tls' if self.tls_on else 'tcp'}:0:interface=127.0.0.1"],
                       "clientinfo_listen": [],
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
            "cluster": {"shared_state": "postgres" if shared_state else "off"},
        }
        if self.args.busy_poll is not None:
            config["server"]["busy_poll_us"] = self.args.busy_poll
        if self.tls_on:
            assert self.tls is not None
            config["tls"] = {"cert": str(self.tls.cert), "key": str(self.tls.key)}
        if metrics:
            first = free_ports(workers)
            config["metrics"] = {"listen": f"tcp:{first}:interface=127.0.0.1"}
            metrics_ports = list(range(first, first + workers))
        if p2p:   # (one process: libp2p is not served with workers)
            config["server"]["workers"] = 1
            config["p2p"] = {"listen": ["/ip4/127.0.0.1/tcp/0"],
                             "key_file": str(self.workdir / "p2p.key")}
        spec = {"config": config, "log_file": str(self.workdir / f"server-{self.counter}.log")}
        if profile:
            spec["profile_file"] = str(self.workdir / "server.prof")
        self.place_cluster(serving=True)
        child = self.spawn("server", "benchmarks.server_proc", spec)
        p2p_address = None
        while True:
            line = child.readline(deadline, 60).decode(errors="replace").split()
            if line and line[0] == "P2P" and len(line) > 1:
                p2p_address = line[1]
            if line and line[0] == "READY":
                return Server(child, int(line[1]), int(line[2]), spec.get("profile_file"),
                              metrics_ports, p2p_address)
            if line and line[0] == "FAILED":
                raise BenchError(f"server did not start: {' '.join(line[1:])}; "
                                 f"log: {spec['log_file']}")

    def loadgens(self, total: int, base: dict[str, Any], processes: int | None = None
                 ) -> list[Child]:
        processes = max(1, min(processes or self.args.loadgens, total or 1))
        children, first = [], 0
        for index in range(processes):
            share = total // processes + (1 if index < total % processes else 0)
            spec = dict(base, users=self.users, first=first, connections=share, index=index)
            if self.tls_on:
                assert self.tls is not None
                spec["tls_ca"] = str(self.tls.ca)
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
