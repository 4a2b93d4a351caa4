"""The Node.js Wyseman server baseline: the server this project re-implements (npm
``wyseman``, pinned in ``tests/js``, run by ``tests/js/node_server.js``), under the same
load on the same cluster, and its rows next to ours.

Skipped, with a message, when ``node`` or ``tests/js/node_modules`` is missing; a
failure is reported without losing our rows.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import TYPE_CHECKING, Any

from benchmarks.children import Child
from benchmarks.common import JS_DIR, BenchError, Deadline, log
from benchmarks.environment import Environment, Server
from benchmarks.procstat import free_port
from benchmarks.report import run_notes
from benchmarks.results import Row
from wyseman.tuning.affinity import place_process

if TYPE_CHECKING:
    from benchmarks.bench import Bench


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


def start_server(env: Environment, deadline: Deadline) -> Server:
    """The Node.js Wyseman server (npm ``wyseman``, pinned in tests/js, run by
    ``tests/js/node_server.js``) on the same database, over the same Unix socket.
    It connects to PostgreSQL as each socket's user (one connection per socket, opened
    on its first request), i.e. as the same login roles our server uses. Insecure mode:
    any user name logs in on plain ws://; over wss:// (``env.transport``), with the run's
    certificate, it takes signed key logins only. Its logs go nowhere (node_server.js is
    quiet unless WYSEMAN_NODE_LOG is set)."""
    missing = node_baseline_missing()
    if missing:
        raise BenchError(f"node baseline: {missing}")
    from wyseman.db.pg import dsn_params
    params = dsn_params(env.bench_dsn)
    port = free_port()
    config = {"port": port, "pg": {"host": params.get("host", "127.0.0.1"),
                                   "port": int(params.get("port", 5432)),
                                   "database": params["dbname"],
                                   "user": params.get("user", "postgres")}}
    if env.tls_on:
        assert env.tls is not None
        config["tls"] = {"cert": str(env.tls.cert), "key": str(env.tls.key)}
    env.counter += 1
    child = Child("node-server", [shutil.which("node") or "node",
                                  str(JS_DIR / "node_server.js"), json.dumps(config)],
                  env.workdir / f"{env.counter:03d}-node-server.log",
                  extra_env={"TZ": "UTC"}, die_with_parent=True)
    env.children.append(child)
    try:
        while child.readline(deadline, 60).strip() != b"ready":
            pass
    except BenchError:
        env.finish([child])
        raise
    if env.args.server_cpus:   # where our server's reactor thread runs (all its threads)
        place_process(child.pid, env.args.server_cpus)
        env.place_cluster(serving=True)
    return Server(child, port, child.pid, None)


# -- the Node.js server baseline ---------------------------------------------------
#: the address the Node server sees and checks key logins against (it has no /clientinfo)
LOOPBACK = "127.0.0.1"


def login(bench: Bench) -> dict[str, Any]:
    """How the generators log in to the Node server: by user name only over ws (its
    insecure mode, as before key logins were measured there), signed key logins over
    wss (where it refuses user names alone)."""
    if bench.transport == "ws":
        return {"plain_user": True}
    return {"ip": LOOPBACK}


def skipped(bench: Bench, scenario: str) -> bool:
    """True (and said so in ``node_status``) when the Node baseline does not run."""
    if bench.args.no_node:
        bench.node_status[bench.label(scenario)] = "skipped (--no-node)"
        return True
    missing = node_baseline_missing()
    if missing:
        bench.node_status[bench.label(scenario)] = f"skipped: {missing}"
        log(f"  Node server baseline SKIPPED: {missing}")
        return True
    return False


def request_runs(bench: Bench, scenario: str, runs: list[tuple[int, int]],
                 message: dict[str, Any], ours: dict[tuple[int, int], dict[str, Any]],
                 deadline: Deadline, expect_rows: int | None = None
                 ) -> dict[tuple[int, int], dict[str, Any]]:
    """The same request runs ((C, D) pairs, message, load generators) against the Node
    server (logged in as :func:`login` says); {(C, D): result}. Skipped (and said so) when
    node or its modules are missing; a failure is reported without losing our rows."""
    env = bench.env
    results: dict[tuple[int, int], dict[str, Any]] = {}
    replies = {key: m.pop("reply", None) for key, m in ours.items()}  # not for the JSON
    if skipped(bench, scenario):
        return results
    scenario = bench.label(scenario)
    node_server = None
    try:
        node_server = start_server(env, deadline)
        log(f"  Node server: pid {node_server.pid}, port {node_server.port}")
        for clients, depth in runs:
            label = f"C={clients} D={depth}"
            log(f"  Node server: {scenario} {label}")
            try:
                n = bench.request_run(node_server, clients, message, deadline,
                                      expect_rows=expect_rows, depth=depth, **login(bench))
            except BenchError as exc:
                bench.failures.append(f"{scenario} Node baseline {label}: {exc}")
                continue
            theirs = n.pop("reply", None)
            n["same_reply"] = theirs == replies.get((clients, depth))
            if not n["same_reply"]:
                bench.failures.append(
                    f"{scenario} Node baseline {label}: the servers answer "
                    f"differently: ours {str(replies.get((clients, depth)))[:200]}, "
                    f"Node {str(theirs)[:200]}")
            results[(clients, depth)] = n
    except BenchError as exc:
        bench.failures.append(f"{scenario} Node baseline: {exc}")
    finally:
        if node_server is not None:
            env.finish([node_server.child])  # killed whatever happened
    measured = ",".join(f"C={c} D={d}" for c, d in sorted(results))
    bench.node_status[scenario] = f"measured at {measured}" if results else "failed"
    return results


def rows(bench: Bench, scenario: str, params: str, m: dict[str, Any],
         n: dict[str, Any] | None) -> None:
    """Ours next to the Node server: req/s, p50, p99; ratio = ours / Node."""
    if n is None:
        return
    bench.rows.append(Row(f"{scenario} vs Node server", params, m["rps"], "req/s",
                          n["rps"], "Node req/s",
                          "Node server run " + run_notes(n, f"the Node server, {params}"),
                          {"node": n}))
    bench.rows.append(Row(f"{scenario} p50 vs Node", params, m["p50"], "ms",
                          n["p50"], "Node p50"))
    bench.rows.append(Row(f"{scenario} p99 vs Node", params, m["p99"], "ms",
                          n["p99"], "Node p99"))
