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

The runner's parts: ``options`` (command line), ``environment`` (cluster, users, the
server under test, load generators), ``scenarios/`` (one module per scenario family),
``pgbench`` and ``node`` (the baselines), ``results``, ``report`` and ``summary`` (rows,
the table, the JSON); this module only runs them in order.
"""

from __future__ import annotations

import shlex
import shutil
import signal
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import raise_fd_limit
from benchmarks.bench import Bench
from benchmarks.common import RESULTS, log
from benchmarks.environment import Environment
from benchmarks.options import budgets, parse_args
from benchmarks.scenarios import BODIES
from benchmarks.summary import print_summary, write_json


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv, __doc__)
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
        for name in args.scenarios:
            bench.run(name, limits[name], BODIES[name])
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

    print_summary(bench)
    write_json(bench, started, command)
    log(f"results written to {args.output}")
    return 1 if bench.failures else 0


if __name__ == "__main__":
    sys.exit(main())
