"""Soak and fault test of the gateway: ``python -m benchmarks.soak --seconds 120``.

The real server runs in its own process (:mod:`benchmarks.server_proc`, so that its
memory can be read from ``/proc``) on a throwaway PostgreSQL (:mod:`tests.pgtest`).
Several users, each with several sockets (a ticket login, then key logins), keep a mix of
requests going: inserts with a client-made id (``cid``: each sent once, never retried),
selects (among them reads of the socket's own acknowledged inserts), ``tuple`` of a
function view, and ``tuple`` of a function that NOTIFYs a channel every socket LISTENs
to. At moments drawn from a seeded RNG (the seed is printed) the gateway's PostgreSQL
backends are terminated (``pg_terminate_backend``) and PostgreSQL is stopped and started
again. Once the load has stopped and a quiet period has passed, the run checks:

* **writes**: every acknowledged insert is in the table exactly once, under the role
  that sent it; one answered ``noDatabase``, ``commitUnknown``, a closed socket or a
  timeout may be either; one answered with any other error is absent; nothing is in the
  table that was never sent; a read of an acknowledged insert found it;
* **replies**: every request was answered, or failed because its socket closed; none
  timed out; every error is a fault code (``noDatabase``, ``commitUnknown``, ``busy``);
  every successful reply holds what was asked for;
* **recovery**: every socket of every user (logged in again if the server closed it)
  answers a request within a bound;
* **notifications**: a NOTIFY sent after the faults reaches every socket within a bound;
* **pools**: for each user role the server's open pool connections (asked of the server
  process, see ``control`` in :mod:`benchmarks.server_proc`) equal PostgreSQL's
  ``pg_stat_activity`` rows of that role, none busy or waiting; their total equals the
  capacity the pool set counts and the ``wyseman_pool_connections`` metric;
* **memory**: the server's RSS at the end is within ``rss_factor`` × + ``rss_slack_mib``
  of its RSS after the warm-up;
* **faults**: at least one backend kill and one restart happened (the restart is
  skipped on an external server, ``WYSEMAN_TEST_DSN``);
* **server log**: no traceback (an error the server did not expect).

It prints a one-screen summary and exits non-zero if a check failed. ``tests/test_soak.py``
runs the short form with :func:`run`. See docs/operations.md, "Soak and fault test".
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from twisted.internet import defer, protocol, threads
from twisted.internet.error import ProcessDone, ProcessExitedAlready

ROOT = Path(__file__).resolve().parent.parent
CHANNEL = "app_soak"
NO_DATABASE = "!wm.lang:noDatabase"
COMMIT_UNKNOWN = "!wm.lang:commitUnknown"
BUSY = "!wm.lang:busy"
#: the codes a request may be answered with while PostgreSQL fails under it
FAULT_CODES = frozenset({NO_DATABASE, COMMIT_UNKNOWN, BUSY})
#: outcomes of an insert after which it may or may not be stored
MAYBE_STORED = frozenset({NO_DATABASE, COMMIT_UNKNOWN, "closed", "timeout", "sent"})

SCHEMA = f"""
create table public.soak_entry (
    seq bigserial primary key,
    cid text not null,                      -- not unique: a write stored twice shows
    who text not null default session_user,
    body text
);
create index soak_entry_cid on public.soak_entry (cid);
create index soak_entry_who on public.soak_entry (who, seq);
grant select, insert on public.soak_entry to wyseman_user;
grant usage on sequence public.soak_entry_seq_seq to wyseman_user;
create function public.soak_twice(n int) returns int language sql immutable
    as $$ select n * 2 $$;
create function public.soak_notify(tag text) returns text language plpgsql volatile as $$
begin perform pg_notify('{CHANNEL}', tag); return tag; end $$;
grant execute on function public.soak_twice(int), public.soak_notify(text) to wyseman_user;
"""


@dataclass
class Options:
    """One run. ``seconds`` of load in all: ``warmup`` first (the memory baseline is taken
    at its end, no fault before it), faults at random moments after it."""

    seconds: float = 120.0
    users: int = 4
    sockets_per_user: int = 3
    #: requests each socket keeps in flight
    depth: int = 2
    #: mean pause (s) between a reply and its lane's next request (0: none)
    think: float = 0.02
    seed: int | None = None
    warmup: float | None = None          # default: min(10, seconds / 5)
    #: seconds without load or faults before the recovery checks
    quiet: float = 3.0
    kills: int | None = None             # default: one per 20 s of load, at least one
    restarts: int | None = None          # default: one per 45 s of load, at least one
    #: how long PostgreSQL stays down in a restart (drawn in this range)
    outage: tuple[float, float] = (0.3, 2.0)
    pool_size: int = 3
    request_timeout: float = 20.0
    #: seconds within which recovery, notification and pool accounting must succeed
    recover_bound: float = 15.0
    rss_factor: float = 1.5
    rss_slack_mib: float = 30.0
    #: mix of operations (relative weights)
    mix: dict[str, float] = field(default_factory=lambda: {
        "insert": 4.0, "select": 2.5, "tuple": 2.5, "notify": 1.0})

    def resolved(self) -> Options:
        o = Options(**asdict(self))
        if o.seed is None:
            o.seed = random.SystemRandom().randrange(1, 2**31)
        if o.warmup is None:
            o.warmup = min(10.0, o.seconds / 5)
        fault_window = max(0.0, o.seconds - o.warmup)
        if o.kills is None:
            o.kills = max(1, round(fault_window / 20))
        if o.restarts is None:
            o.restarts = max(1, round(fault_window / 45))
        return o


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class Report:
    options: Options
    checks: list[Check] = field(default_factory=list)
    numbers: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def check(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append(Check(name, bool(ok), detail))

    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def summary(self) -> str:
        o, n = self.options, self.numbers
        lines = [f"soak: seed {o.seed}, {o.seconds:g} s of load ({o.warmup:g} s warm-up), "
                 f"{o.users} users x {o.sockets_per_user} sockets x depth {o.depth}, "
                 f"pool_size {o.pool_size}"]
        if "requests" in n:
            rate = n["requests"] / max(o.seconds, 1e-9)
            lines.append(f"  requests {n['requests']} ({rate:.0f}/s): ok {n['ok']}, "
                         f"error replies {n['error_replies']}, closed {n['closed']}, "
                         f"timed out {n['timeouts']}")
            lines.append("  by action: " + ", ".join(
                f"{a} {c['sent']}/{c['ok']} ok" for a, c in sorted(n["actions"].items())))
            if n["codes"]:
                lines.append("  error codes: " + ", ".join(
                    f"{code} x{count}" for code, count in sorted(n["codes"].items())))
        if "faults" in n:
            lines.append("  faults: " + "; ".join(n["faults"]))
        if n.get("recovery_after_restart"):
            lines.append("  first success once PostgreSQL was back: " + ", ".join(
                f"{t:.2f}s" for t in n["recovery_after_restart"]))
        if "inserts" in n:
            w = n["inserts"]
            lines.append(f"  inserts: {w['acked']} acknowledged, {w['rows']} rows; "
                         f"answered noDatabase {w['no_database']} "
                         f"(stored {w['no_database_stored']}), commitUnknown "
                         f"{w['commit_unknown']} (stored {w['commit_unknown_stored']}), "
                         f"closed/timeout {w['lost_reply']} (stored {w['lost_reply_stored']})")
        if "notifications" in n:
            nt = n["notifications"]
            lines.append(f"  notify: {nt['acked']} acknowledged, {nt['frames']} frames "
                         f"received, {nt['own_seen']} seen by their sender")
        if "sockets" in n:
            s = n["sockets"]
            lines.append(f"  sockets: {s['closed']} closed during the run "
                         f"{s['close_codes']}, {s['reconnects']} logged in again "
                         f"({s['login_failures']} failed attempts)")
        if "rss_warm_kib" in n:
            lines.append(f"  server RSS: {n['rss_warm_kib'] / 1024:.1f} MiB after warm-up, "
                         f"{n['rss_end_kib'] / 1024:.1f} MiB at the end "
                         f"(bound {n['rss_bound_kib'] / 1024:.1f} MiB)")
        for c in self.checks:
            lines.append(f"  [{'ok' if c.ok else 'FAIL'}] {c.name}: {c.detail}")
        lines += [f"  note: {note}" for note in self.notes]
        lines.append("soak: " + ("PASSED" if self.ok else
                                 f"FAILED ({', '.join(c.name for c in self.failed())})"))
        return "\n".join(lines)


# -- the server process --------------------------------------------------------------

class ServerProcess(protocol.ProcessProtocol):
    """``python -m benchmarks.server_proc`` with its stdin control channel."""

    def __init__(self) -> None:
        self.ready: defer.Deferred = defer.Deferred()
        self.ended: defer.Deferred = defer.Deferred()
        self.port = 0
        self.pid = 0
        self.stderr = b""
        self._buffer = b""
        self._answers: list[defer.Deferred] = []
        self.running = True

    def outReceived(self, data: bytes) -> None:  # noqa: N802 (Twisted name)
        self._buffer += data
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            self._line(line.decode("utf-8", "replace").strip())

    def _line(self, line: str) -> None:
        if line.startswith("READY ") and not self.ready.called:
            _, port, pid = line.split()
            self.port, self.pid = int(port), int(pid)
            self.ready.callback(self)
        elif line.startswith("FAILED") and not self.ready.called:
            self.ready.errback(RuntimeError(f"server did not start: {line}"))
        elif line.startswith("POOLS ") and self._answers:
            self._answers.pop(0).callback(json.loads(line[len("POOLS "):]))

    def errReceived(self, data: bytes) -> None:  # noqa: N802 (Twisted name)
        self.stderr = (self.stderr + data)[-20000:]

    def processEnded(self, reason: Any) -> None:  # noqa: N802 (Twisted name)
        self.running = False
        error = RuntimeError(f"server process ended: {reason.getErrorMessage()}; stderr: "
                             + self.stderr.decode("utf-8", "replace")[-2000:])
        if not self.ready.called:
            self.ready.errback(error)
        answers, self._answers = self._answers, []
        for d in answers:
            d.errback(error)
        self.ended.callback([reason])     # (a list: a Failure would errback)

    def pools(self) -> defer.Deferred:
        """The server's user pools: ``{"roles": {role: {...}}, "total": n}``."""
        if not self.running:
            return defer.fail(RuntimeError("server process not running"))
        d: defer.Deferred = defer.Deferred()
        self._answers.append(d)
        self.transport.write(b"pools\n")
        return d

    def rss_kib(self) -> int:
        with open(f"/proc/{self.pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def signal(self, name: str) -> None:
        try:
            self.transport.signalProcess(name)
        except ProcessExitedAlready:
            pass


def start_server(reactor: Any, spec: dict[str, Any]) -> ServerProcess:
    proc = ServerProcess()
    reactor.spawnProcess(proc, sys.executable,
                         [sys.executable, "-m", "benchmarks.server_proc", json.dumps(spec)],
                         env=dict(os.environ), path=str(ROOT))
    return proc


def log_tracebacks(path: str) -> list[list[str]]:
    """Each traceback of a Twisted log file: its event line and its own lines."""
    try:
        lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []
    blocks: list[list[str]] = []
    for i, line in enumerate(lines):
        if "Traceback (most recent call last)" in line:
            block = [lines[i - 1].strip()[:200] if i else ""]
            for following in lines[i + 1:]:
                if not following.startswith(("\t", " ")) or not following.strip():
                    break
                block.append(following.strip())
            blocks.append(block)
    return blocks


def is_connect_hangup(block: list[str]) -> bool:
    """The adapter's known noise: a connection attempt the server closed during the
    startup handshake (a restart, a backend ended meanwhile) is reported by the reactor
    as an unhandled ``ValueError`` from txpostgres' ``doRead`` re-adding a reader whose
    socket libpq has dropped (the connect itself fails as it should)."""
    text = "\n".join(block)
    return "txpostgres" in text and "doRead" in text and \
        "file descriptor cannot be a negative integer" in text


# -- load ------------------------------------------------------------------------------

@dataclass(eq=False)
class User:
    index: int
    name: str
    key: dict[str, Any]
    sockets: list[Sock] = field(default_factory=list)


@dataclass(eq=False)
class Sock:
    user: User
    index: int
    rng: random.Random
    conn: Any = None
    #: lanes waiting for a login in progress
    waiters: list[defer.Deferred] = field(default_factory=list)
    logging_in: bool = False
    #: cids of this socket's acknowledged inserts (the newest ones)
    acked: list[str] = field(default_factory=list)
    seq: int = 0
    final_seen: bool = False

    @property
    def label(self) -> str:
        return f"u{self.user.index}s{self.index}"


class Soak:
    def __init__(self, options: Options, reactor: Any, db: Any, cluster: Any,
                 log: Callable[[str], None], log_file: str) -> None:
        self.o = options
        self.reactor = reactor
        self.db = db
        self.cluster = cluster
        self.say = log
        self.log_file = log_file
        self.report = Report(options)
        self.server: ServerProcess | None = None
        self.metrics_port = 0
        self.users: list[User] = []
        self.sockets: list[Sock] = []
        self.loading = False        # lanes send requests
        self.alive = True           # sockets log in again when closed
        self.timers: set[Any] = set()
        # bookkeeping
        self.actions: dict[str, Counter[str]] = {}
        self.codes: Counter[str] = Counter()
        self.outcomes: dict[str, str] = {}          # cid → "ok" / code / closed / timeout
        self.cid_user: dict[str, str] = {}
        self.wrong: list[str] = []                  # replies that hold the wrong thing
        self.missing_reads: list[str] = []          # acknowledged inserts a read missed
        self.unexpected: Counter[str] = Counter()   # exceptions that are not replies
        self.close_codes: Counter[str] = Counter()
        self.reconnects = 0
        self.login_failures = 0
        self.notify_acked = 0
        self.notify_frames = 0
        self.notify_own: set[str] = set()
        self.notify_sent: set[str] = set()
        self.faults: list[str] = []
        self.kills_done = 0
        self.restarts_done = 0
        self.fault_errors: list[str] = []
        self.awaiting_recovery: list[float] = []
        self.recovery: list[float] = []
        self.final_tag = ""
        self.own_reads = 0          # reads of an acknowledged insert that answered
        self.load_end = float("inf")

    # -- helpers ---------------------------------------------------------------------
    def sleep(self, seconds: float) -> defer.Deferred:
        """A pause of load or of a fault (never a wait for a condition)."""
        d: defer.Deferred = defer.Deferred()

        def fire() -> None:
            self.timers.discard(call)
            d.callback(None)
        call = self.reactor.callLater(max(0.0, seconds), fire)
        self.timers.add(call)
        return d

    def count(self, action: str, what: str) -> None:
        self.actions.setdefault(action, Counter())[what] += 1

    def sql(self, statement: str, params: Any = None) -> defer.Deferred:
        from tests.pgtest import run_sync
        return threads.deferToThread(run_sync, self.db.dsn, statement, params)

    # -- set-up ----------------------------------------------------------------------
    @defer.inlineCallbacks
    def setup(self) -> Any:
        from tests import pgtest
        from wyseman.client import keys
        from wyseman.provision import admin
        yield self.sql(SCHEMA)
        for i in range(self.o.users):
            name = self.db.role_name(f"soak{i}")
            yield threads.deferToThread(admin.add_user, self.db.dsn, name)
            self.users.append(User(i, name, keys.generate_private_jwk()))
        self.metrics_port = pgtest.free_port()
        spec = {"log_file": self.log_file, "control": True, "config": {
            "server": {"listen": "tcp:0:interface=127.0.0.1", "clientinfo_listen": []},
            "database": {"dsn": self.db.dsn, "pool_size": self.o.pool_size,
                         "connect_timeout": 5.0, "statement_timeout": 10.0},
            "channels": {"allow": [CHANNEL]},
            "metrics": {"listen": f"tcp:{self.metrics_port}:interface=127.0.0.1"},
        }}
        self.server = start_server(self.reactor, spec)
        yield self.server.ready
        self.url = f"ws://127.0.0.1:{self.server.port}"
        self.clientinfo_url = f"http://127.0.0.1:{self.server.port}/clientinfo"
        for user in self.users:
            for j in range(self.o.sockets_per_user):
                rng = random.Random(f"{self.o.seed}/{user.index}/{j}")
                sock = Sock(user, j, rng)
                user.sockets.append(sock)
                self.sockets.append(sock)
        for user in self.users:       # the ticket login registers the key the others sign
            token = (yield threads.deferToThread(admin.issue_ticket, self.db.dsn,
                                                 user.name)).token
            yield self._connect(user.sockets[0], token=token)
            yield defer.gatherResults([self._connect(s) for s in user.sockets[1:]],
                                      consumeErrors=True)

    @defer.inlineCallbacks
    def _connect(self, sock: Sock, token: str | None = None) -> Any:
        from wyseman.client.connection import connect
        user = sock.user
        if token:
            d = connect(self.url, user.name, token=token, new_key=user.key, listen=[CHANNEL],
                        timeout=self.o.request_timeout)
        else:
            d = connect(self.url, user.name, key=user.key, listen=[CHANNEL],
                        clientinfo_url=self.clientinfo_url, timeout=self.o.request_timeout)
        # the server bounds a login (open_handshake_timeout, connect_timeout); this is
        # only so that a login that hangs is reported instead of hanging the run
        d.addTimeout(self.o.recover_bound * 2, self.reactor)
        conn = yield d
        sock.conn = conn
        conn.on_notify(CHANNEL, lambda data, sock=sock: self._notified(sock, data))
        conn.closed.addCallback(self._closed, sock, conn)
        return conn

    def _closed(self, code_reason: Any, sock: Sock, conn: Any) -> None:
        if self.alive:
            code, reason = code_reason
            self.close_codes[f"{code} {reason or ''}".strip()] += 1
        if sock.conn is conn:
            sock.conn = None

    def _notified(self, sock: Sock, data: Any) -> None:
        self.notify_frames += 1
        if not isinstance(data, str):
            return
        if data.startswith(f"n{sock.label}."):
            self.notify_own.add(data)
        if self.final_tag and data.startswith(self.final_tag):
            sock.final_seen = True

    def ensure_open(self, sock: Sock) -> defer.Deferred:
        """Fires once ``sock`` is connected (logging in again if it was closed), or the
        run no longer wants it."""
        if sock.conn is not None and sock.conn.connected:
            return defer.succeed(sock.conn)
        d: defer.Deferred = defer.Deferred()
        sock.waiters.append(d)
        if not sock.logging_in:
            self._login_again(sock)
        return d

    @defer.inlineCallbacks
    def _login_again(self, sock: Sock) -> Any:
        sock.logging_in = True
        attempt = 0
        started = self.reactor.seconds()
        try:
            while self.alive:
                # once the load is over, a login gets recover_bound seconds to succeed
                if self.reactor.seconds() - max(started, self.load_end) > self.o.recover_bound:
                    break
                try:
                    yield self._connect(sock)
                except Exception:
                    self.login_failures += 1
                    attempt += 1
                    yield self.sleep(min(2.0, 0.1 * 2 ** min(attempt, 5)))  # retry pacing
                else:
                    self.reconnects += 1
                    break
        finally:
            sock.logging_in = False
            waiters, sock.waiters = sock.waiters, []
            for d in waiters:
                d.callback(sock.conn)

    # -- the load --------------------------------------------------------------------
    @defer.inlineCallbacks
    def lane(self, sock: Sock) -> Any:
        mix = list(self.o.mix.items())
        names, weights = [m[0] for m in mix], [m[1] for m in mix]
        while self.loading:
            conn = yield self.ensure_open(sock)
            if conn is None or not self.loading:
                break
            op = sock.rng.choices(names, weights)[0]
            yield self.one(sock, conn, op)
            if self.o.think > 0 and self.loading:
                yield self.sleep(sock.rng.uniform(0, 2 * self.o.think))

    def request(self, sock: Sock, conn: Any, action: str, message: dict[str, Any],
                timeout: float | None = None) -> defer.Deferred:
        """Send; → ``(True, data)`` or ``(False, outcome)``, ``outcome`` an error code,
        ``"closed"``, ``"timeout"`` or ``"exception …"`` (every case counted)."""
        from wyseman.client.connection import ConnectionClosed, RequestError
        self.count(action, "sent")

        def ok(data: Any) -> Any:
            self.count(action, "ok")
            if self.awaiting_recovery:
                now = self.reactor.seconds()
                self.recovery += [now - t for t in self.awaiting_recovery]
                self.awaiting_recovery = []
            return True, data

        def failed(failure: Any) -> Any:
            if failure.check(RequestError):
                code = str(failure.value.code)
                self.count(action, "error")
                self.codes[f"{action} {code}"] += 1
                return False, code
            if failure.check(ConnectionClosed):
                self.count(action, "closed")
                return False, "closed"
            if failure.check(defer.TimeoutError):
                self.count(action, "timeout")
                return False, "timeout"
            what = f"{failure.type.__name__}: {failure.getErrorMessage()}"[:120]
            self.count(action, "exception")
            self.unexpected[what] += 1
            return False, "exception " + what

        return conn.request(message, timeout=timeout or self.o.request_timeout).addCallbacks(
            ok, failed)

    @defer.inlineCallbacks
    def one(self, sock: Sock, conn: Any, op: str) -> Any:
        user, rng = sock.user, sock.rng
        if op == "insert":
            sock.seq += 1
            cid = f"{sock.label}.{sock.seq}"
            self.outcomes[cid] = "sent"
            self.cid_user[cid] = user.name
            ok, data = yield self.request(sock, conn, "insert", {
                "action": "insert", "view": "public.soak_entry",
                "fields": {"cid": cid, "body": f"soak {rng.random():.6f}"}})
            self.outcomes[cid] = "ok" if ok else data
            if ok:
                if not isinstance(data, dict) or data.get("cid") != cid \
                        or data.get("who") != user.name:
                    self.wrong.append(f"insert {cid}: {str(data)[:100]}")
                sock.acked.append(cid)
                del sock.acked[:-64]
        elif op == "select" and sock.acked and rng.random() < 0.6:
            cid = rng.choice(sock.acked)
            ok, data = yield self.request(sock, conn, "select", {
                "action": "select", "view": "public.soak_entry", "fields": ["cid", "who"],
                "where": {"cid": cid}})
            self.own_reads += ok
            if ok and data != [{"cid": cid, "who": user.name}]:
                (self.missing_reads if data == [] else self.wrong).append(
                    f"select {cid}: {str(data)[:100]}")
        elif op == "select":
            ok, data = yield self.request(sock, conn, "select", {
                "action": "select", "view": "public.soak_entry", "fields": ["cid", "who"],
                "where": {"who": user.name}, "order": [{"field": "seq", "asc": False}],
                "limit": 5})
            if ok and (not isinstance(data, list) or len(data) > 5
                       or any(row.get("who") != user.name for row in data)):
                self.wrong.append(f"select who={user.name}: {str(data)[:100]}")
        elif op == "tuple":
            n = rng.randrange(1_000_000)
            ok, data = yield self.request(sock, conn, "tuple", {
                "action": "tuple", "view": "public.soak_twice(int)", "params": [n]})
            if ok and data != {"soak_twice": 2 * n}:
                self.wrong.append(f"tuple twice({n}): {str(data)[:100]}")
        elif op == "notify":
            sock.seq += 1
            tag = f"n{sock.label}.{sock.seq}"
            self.notify_sent.add(tag)
            ok, data = yield self.request(sock, conn, "notify", {
                "action": "tuple", "view": "public.soak_notify(text)", "params": [tag]})
            if ok:
                self.notify_acked += 1
                if data != {"soak_notify": tag}:
                    self.wrong.append(f"tuple notify({tag}): {str(data)[:100]}")

    # -- faults ------------------------------------------------------------------------
    def schedule(self) -> list[tuple[float, str, float]]:
        """``(seconds after the start of the load, kind, parameter)``, in time order: a
        kill's parameter is the share of the gateway's backends it terminates (1: all),
        a restart's how long PostgreSQL stays down."""
        o = self.o
        rng = random.Random(o.seed)
        restarts = o.restarts if self.cluster is not None else 0
        kinds = ["kill"] * (o.kills or 0) + ["restart"] * (restarts or 0)
        rng.shuffle(kinds)
        tail = min(5.0, o.seconds / 10)
        start, end = o.warmup, max(o.warmup, o.seconds - tail)
        plan = []
        for kind in kinds:
            at = rng.uniform(start, end)
            param = rng.choice([1.0, 1.0, 0.5, 0.3]) if kind == "kill" \
                else rng.uniform(*o.outage)
            plan.append((at, kind, param))
        return sorted(plan)

    @defer.inlineCallbacks
    def run_faults(self, t0: float, plan: list[tuple[float, str, float]]) -> Any:
        for i, (at, kind, param) in enumerate(plan):
            yield self.sleep(t0 + at - self.reactor.seconds())
            if not self.loading:
                break
            when = self.reactor.seconds() - t0
            try:
                if kind == "kill":
                    killed = yield threads.deferToThread(
                        self._kill, param, random.Random(f"{self.o.seed}/kill/{i}"))
                    self.kills_done += bool(killed)
                    self.faults.append(f"{when:.1f}s kill {killed}")
                else:
                    took = yield threads.deferToThread(self._restart, param)
                    self.restarts_done += 1
                    self.awaiting_recovery.append(self.reactor.seconds())
                    self.faults.append(f"{when:.1f}s restart (down {took:.1f}s)")
            except Exception as exc:
                self.fault_errors.append(f"{kind} at {when:.1f}s: {exc}")
                self.faults.append(f"{when:.1f}s {kind} FAILED")

    def _kill(self, share: float, rng: random.Random) -> str:
        """(thread) Terminate ``share`` of the gateway's backends → what was killed."""
        from tests.pgtest import connect_sync
        conn = connect_sync(self.db.dsn)
        try:
            with conn.cursor() as cur:
                cur.execute("select pid, usename from pg_stat_activity where datname = "
                            "current_database() and pid <> pg_backend_pid() "
                            "and backend_type = 'client backend' order by pid")
                rows = cur.fetchall()
                chosen = rows if share >= 1 else rng.sample(
                    rows, max(1, round(len(rows) * share))) if rows else []
                for pid, _ in chosen:
                    cur.execute("select pg_terminate_backend(%s)", (pid,))
        finally:
            conn.close()
        roles = {user.name for user in self.users}
        users = sum(1 for _, name in chosen if name in roles)
        return f"{len(chosen)}/{len(rows)} backends ({users} of users' pools)" if chosen \
            else ""

    def _restart(self, down: float) -> float:
        """(thread) Stop PostgreSQL (fast), leave it down ``down`` s, start it."""
        began = time.monotonic()
        self.cluster.stop("fast")
        time.sleep(down)            # the outage itself: a fixed duration, not a wait
        self.cluster.start()
        return time.monotonic() - began

    # -- the run -----------------------------------------------------------------------
    @defer.inlineCallbacks
    def run(self) -> Any:
        o, n = self.o, self.report.numbers
        self.say(f"soak: seed {o.seed}; {len(self.sockets)} sockets; server pid "
                 f"{self.server.pid}, log {self.log_file}")
        plan = self.schedule()
        self.loading = True
        t0 = self.reactor.seconds()
        lanes = [self.lane(sock) for sock in self.sockets for _ in range(o.depth)]
        yield self.sleep(o.warmup)
        n["rss_warm_kib"] = self.server.rss_kib()
        faults = self.run_faults(t0, plan)
        yield self.sleep(t0 + o.seconds - self.reactor.seconds())
        self.loading = False
        self.load_end = self.reactor.seconds()
        yield faults
        yield defer.DeferredList(lanes)     # each request ends: reply, close or timeout
        self.say(f"soak: load stopped after {self.reactor.seconds() - t0:.1f} s; quiet")
        yield self.sleep(o.quiet)
        yield self.check_recovery()
        yield self.check_notifications()
        yield self.check_pools()
        n["rss_end_kib"] = self.server.rss_kib()
        yield self.check_writes()
        self.summarise()

    @defer.inlineCallbacks
    def check_recovery(self) -> Any:
        """(c) every user's every socket answers within the bound (logged in again first
        if the server had closed it)."""
        o = self.o
        began = self.reactor.seconds()
        results: list[defer.Deferred] = []

        @defer.inlineCallbacks
        def probe(sock: Sock) -> Any:
            start = self.reactor.seconds()
            conn = yield self.ensure_open(sock)
            left = o.recover_bound - (self.reactor.seconds() - start)
            if conn is None or left <= 0:
                return sock.label, False, "not logged in again"
            ok, data = yield self.request(sock, conn, "recover", {
                "action": "tuple", "view": "public.soak_twice(int)", "params": [21]},
                timeout=left)
            took = self.reactor.seconds() - start
            good = ok and data == {"soak_twice": 42}
            return sock.label, good, f"{took:.2f}s" if good else f"{data} after {took:.2f}s"

        for sock in self.sockets:
            results.append(probe(sock))
        outcomes = yield defer.gatherResults(results)
        bad = [f"{label}: {why}" for label, good, why in outcomes if not good]
        slowest = max((self.reactor.seconds() - began), 0.0)
        self.report.check(
            "recovery", not bad,
            f"all {len(outcomes)} sockets of {len(self.users)} users answered "
            f"(all within {slowest:.2f}s)" if not bad else "; ".join(bad[:4]))

    @defer.inlineCallbacks
    def check_notifications(self) -> Any:
        """(f) a NOTIFY reaches every socket: sent again every half second until each has
        seen one (poll by request), at most ``recover_bound`` seconds."""
        self.final_tag = f"final.{self.o.seed}."
        began = self.reactor.seconds()
        k = 0
        while True:
            missing = [s for s in self.sockets if not s.final_seen]
            if not missing or self.reactor.seconds() - began > self.o.recover_bound:
                break
            k += 1
            try:
                yield self.sql(f"notify {CHANNEL}, '{self.final_tag}{k}'")
            except Exception as exc:
                self.report.notes.append(f"notify from the test failed: {exc}")
            yield self.sleep(0.5)
        took = self.reactor.seconds() - began
        self.report.check(
            "notifications", not missing and self.notify_frames > 0,
            f"every socket got a NOTIFY sent after the faults ({k} sent, {took:.2f}s); "
            f"{self.notify_frames} frames during the run" if not missing else
            f"{len(missing)} sockets got none of {k} NOTIFYs in {took:.1f}s: "
            + ", ".join(s.label for s in missing[:6]))

    @defer.inlineCallbacks
    def check_pools(self) -> Any:
        """(d) the server's pools match pg_stat_activity (polled until they do, within the
        bound: a terminated backend leaves the view shortly after)."""
        roles = [u.name for u in self.users]
        began = self.reactor.seconds()
        while True:
            report = yield self.server.pools()
            if "error" in report:
                raise RuntimeError(f"the server cannot report its pools: {report['error']}")
            rows = yield self.sql(
                "select usename, count(*) from pg_stat_activity where datname = "
                "current_database() and usename = any(%s) group by usename", (roles,))
            metric = yield threads.deferToThread(self._metric, "wyseman_pool_connections")
            activity = dict(rows)
            problems = []
            for role in roles:
                pool = report["roles"].get(role, {"open": 0, "in_use": 0, "idle": 0,
                                                  "waiting": 0})
                if pool["open"] != activity.get(role, 0):
                    problems.append(f"{role}: pool open {pool['open']}, pg_stat_activity "
                                    f"{activity.get(role, 0)}")
                if pool["in_use"] or pool["waiting"] or pool["idle"] != pool["open"]:
                    problems.append(f"{role}: {pool}")
            total = sum(p["open"] for p in report["roles"].values())
            if report["total"] != total or metric != total:
                problems.append(f"total: pools {total}, pool set {report['total']}, "
                                f"metric {metric}")
            if not problems or self.reactor.seconds() - began > self.o.recover_bound:
                break
            yield self.sleep(0.2)
        self.report.numbers["pools"] = {"roles": report["roles"], "activity": activity}
        self.report.check(
            "pools", not problems,
            f"{total} connections, per role as pg_stat_activity "
            f"({', '.join(str(activity.get(r, 0)) for r in roles)}), none busy"
            if not problems else "; ".join(problems[:4]))

    def _metric(self, name: str) -> float | None:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        found = re.search(rf"^{name} (\S+)$", text, re.M)
        return float(found.group(1)) if found else None

    @defer.inlineCallbacks
    def check_writes(self) -> Any:
        """(a) every acknowledged insert is stored once, under its sender's role; refused
        ones are absent; nothing else is there."""
        rows = yield self.sql("select cid, who, count(*) from public.soak_entry "
                              "group by cid, who")
        stored: dict[str, list[tuple[str, int]]] = {}
        for cid, who, count in rows:
            stored.setdefault(cid, []).append((who, count))
        problems: list[str] = []
        stats = Counter()
        for cid, outcome in self.outcomes.items():
            found = stored.get(cid, [])
            copies = sum(c for _, c in found)
            if copies > 1:
                problems.append(f"{cid} ({outcome}) stored {copies} times")
            if outcome == "ok":
                stats["acked"] += 1
                if copies == 0:
                    problems.append(f"{cid} acknowledged but not stored")
                elif found[0][0] != self.cid_user[cid]:
                    problems.append(f"{cid} stored as {found[0][0]}")
            elif outcome in MAYBE_STORED:
                key = {NO_DATABASE: "no_database", COMMIT_UNKNOWN: "commit_unknown"}.get(
                    outcome, "lost_reply")
                stats[key] += 1
                stats[key + "_stored"] += bool(copies)
            elif copies:
                problems.append(f"{cid} answered {outcome} but stored")
        strangers = [cid for cid in stored if cid not in self.outcomes]
        if strangers:
            problems.append(f"{len(strangers)} rows never sent, e.g. {strangers[0]}")
        problems += [f"a read missed {m}" for m in self.missing_reads]
        self.report.numbers["inserts"] = {
            "acked": stats["acked"], "rows": sum(r[2] for r in rows),
            "no_database": stats["no_database"],
            "no_database_stored": stats["no_database_stored"],
            "commit_unknown": stats["commit_unknown"],
            "commit_unknown_stored": stats["commit_unknown_stored"],
            "lost_reply": stats["lost_reply"], "lost_reply_stored": stats["lost_reply_stored"]}
        if stats["no_database_stored"]:
            self.report.notes.append(
                f"{stats['no_database_stored']} inserts answered noDatabase were stored "
                "(docs/protocol.md: for insert and update nothing was stored)")
        self.report.check(
            "writes", not problems,
            f"{stats['acked']} acknowledged inserts stored once each under their role, "
            f"{self.own_reads} reads of them found them; no refused insert stored"
            if not problems else "; ".join(problems[:4]) + (
                f" (+{len(problems) - 4} more)" if len(problems) > 4 else ""))

    def summarise(self) -> None:
        o, n, r = self.o, self.report.numbers, self.report
        totals = Counter()
        for action, counts in self.actions.items():
            if action != "recover":
                totals.update(counts)
        n["requests"] = totals["sent"]
        n["ok"] = totals["ok"]
        n["error_replies"] = totals["error"]
        n["closed"] = totals["closed"]
        n["timeouts"] = totals["timeout"]
        n["actions"] = {a: dict(c) for a, c in self.actions.items()}
        n["codes"] = dict(self.codes)
        n["faults"] = self.faults
        n["recovery_after_restart"] = self.recovery
        n["notifications"] = {"acked": self.notify_acked, "frames": self.notify_frames,
                              "own_seen": len(self.notify_own)}
        n["sockets"] = {"closed": sum(self.close_codes.values()),
                        "close_codes": dict(self.close_codes), "reconnects": self.reconnects,
                        "login_failures": self.login_failures}
        unexpected_codes = {c: k for c, k in self.codes.items()
                            if c.split(" ", 1)[1] not in FAULT_CODES}
        answered = totals["ok"] + totals["error"] + totals["closed"]
        hung = totals["timeout"] + totals["exception"]
        problems = []
        if hung:
            problems.append(f"{totals['timeout']} timed out (no reply in "
                            f"{o.request_timeout:g}s), {totals['exception']} failed "
                            f"otherwise {dict(self.unexpected)}")
        if unexpected_codes:
            problems.append(f"errors that are not fault codes: {unexpected_codes}")
        if self.wrong:
            problems.append(f"{len(self.wrong)} wrong replies, e.g. {self.wrong[0]}")
        if totals["sent"] != answered + hung:
            problems.append(f"{totals['sent'] - answered - hung} requests unaccounted for")
        if not totals["ok"]:
            problems.append("no request succeeded")
        r.check("replies", not problems,
                f"all {totals['sent']} answered ({totals['closed']} by their socket "
                "closing), errors only fault codes, replies right" if not problems
                else "; ".join(problems))
        warm, end = n["rss_warm_kib"], n["rss_end_kib"]
        bound = warm * o.rss_factor + o.rss_slack_mib * 1024
        n["rss_bound_kib"] = bound
        r.check("memory", end <= bound,
                f"RSS {warm / 1024:.1f} -> {end / 1024:.1f} MiB "
                f"(bound {o.rss_factor:g}x + {o.rss_slack_mib:g} MiB = {bound / 1024:.1f})")
        want_restart = self.cluster is not None and (o.restarts or 0) > 0
        fault_ok = (self.kills_done >= min(1, o.kills or 0) and not self.fault_errors
                    and (self.restarts_done >= 1 or not want_restart))
        r.check("faults", fault_ok,
                f"{self.kills_done} backend kills, {self.restarts_done} restarts"
                + ("" if want_restart else " (restart skipped: external PostgreSQL)")
                + (f"; errors: {self.fault_errors}" if self.fault_errors else ""))
        blocks = log_tracebacks(self.log_file)
        hangups = [b for b in blocks if is_connect_hangup(b)]
        others = [b for b in blocks if not is_connect_hangup(b)]
        r.check("server log", not others,
                "no traceback" + (" but the connect hang-ups below" if hangups else "")
                if not others else f"{len(others)} tracebacks, the first: "
                + " / ".join(others[0][:1] + others[0][-1:]))
        r.check("connect hang-ups logged", not hangups,
                "none" if not hangups else
                f"{len(hangups)} 'Unhandled Error' tracebacks for connection attempts that "
                "PostgreSQL hung up on: " + hangups[0][-1])

    # -- clean-up ----------------------------------------------------------------------
    @defer.inlineCallbacks
    def close(self) -> Any:
        """Close every socket, stop the server process, cancel our timers."""
        self.loading = False
        self.alive = False
        for call in list(self.timers):
            if call.active():
                call.cancel()
        self.timers.clear()
        closing = [s.conn.close() for s in self.sockets if s.conn is not None]
        if closing:
            yield defer.DeferredList(closing)
        server = self.server
        if server is not None and server.running:
            server.signal("TERM")
            kill = self.reactor.callLater(15, server.signal, "KILL")
            (reason,) = yield server.ended
            if kill.active():
                kill.cancel()
            if not reason.check(ProcessDone):
                self.report.notes.append(f"server exit: {reason.getErrorMessage()}")


@defer.inlineCallbacks
def run(options: Options, db: Any, cluster: Any = None, *, reactor: Any = None,
        log: Callable[[str], None] = print, log_file: str | None = None) -> Any:
    """One soak run on ``db`` (a :class:`tests.pgtest.TestDatabase`; the roles it makes
    are the database's, dropped with it); ``cluster``: the
    :class:`~wyseman.provision.cluster.LocalCluster` to restart (None: no restarts).
    → :class:`Report`."""
    if reactor is None:
        from twisted.internet import reactor as default_reactor
        reactor = default_reactor
    options = options.resolved()
    if log_file is None:
        handle, log_file = tempfile.mkstemp(prefix="wyseman-soak-", suffix=".log")
        os.close(handle)
    soak = Soak(options, reactor, db, cluster, log, log_file)
    try:
        yield soak.setup()
        yield soak.run()
    finally:
        yield soak.close()
    return soak.report


def parse(argv: list[str]) -> tuple[Options, argparse.Namespace]:
    p = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=(
        "Sustained mixed load on the gateway while PostgreSQL backends are killed and "
        "PostgreSQL restarted; checks writes, replies, recovery, pools and memory."))
    d = Options()
    p.add_argument("--seconds", type=float, default=d.seconds, help="seconds of load (120)")
    p.add_argument("--users", type=int, default=d.users)
    p.add_argument("--sockets-per-user", type=int, default=d.sockets_per_user)
    p.add_argument("--depth", type=int, default=d.depth, help="requests in flight a socket")
    p.add_argument("--think", type=float, default=d.think * 1000,
                   help="mean pause (ms) before a lane's next request (20)")
    p.add_argument("--seed", type=int, default=None, help="of the fault schedule and load")
    p.add_argument("--warmup", type=float, default=None, help="s (min(10, seconds/5))")
    p.add_argument("--quiet", type=float, default=d.quiet, help="s without load or faults "
                   "before the recovery checks (3)")
    p.add_argument("--kills", type=int, default=None, help="backend kills (1 per 20 s)")
    p.add_argument("--restarts", type=int, default=None, help="restarts (1 per 45 s)")
    p.add_argument("--pool-size", type=int, default=d.pool_size)
    p.add_argument("--request-timeout", type=float, default=d.request_timeout)
    p.add_argument("--recover-bound", type=float, default=d.recover_bound)
    p.add_argument("--rss-factor", type=float, default=d.rss_factor)
    p.add_argument("--rss-slack-mib", type=float, default=d.rss_slack_mib)
    p.add_argument("--log", default=None, help="the server's log file (a temporary file)")
    p.add_argument("--json", default=None, help="also write the report here as JSON")
    a = p.parse_args(argv)
    options = Options(seconds=a.seconds, users=a.users, sockets_per_user=a.sockets_per_user,
                      depth=a.depth, think=a.think / 1000, seed=a.seed, warmup=a.warmup,
                      quiet=a.quiet, kills=a.kills, restarts=a.restarts,
                      pool_size=a.pool_size, request_timeout=a.request_timeout,
                      recover_bound=a.recover_bound, rss_factor=a.rss_factor,
                      rss_slack_mib=a.rss_slack_mib)
    return options, a


def main(argv: list[str] | None = None) -> int:
    options, args = parse(sys.argv[1:] if argv is None else argv)
    from twisted.internet import task

    from tests import pgtest
    outcome: list[Report] = []

    @defer.inlineCallbacks
    def go(reactor: Any) -> Any:
        db = yield threads.deferToThread(pgtest.TestDatabase)
        try:
            report = yield run(options, db, pgtest.cluster(), reactor=reactor,
                               log_file=args.log)
            outcome.append(report)
        finally:
            yield threads.deferToThread(db.cleanup)

    try:
        task.react(lambda reactor: go(reactor), [])
    except SystemExit as exit_:
        if exit_.code not in (0, None) or not outcome:
            print("soak: the run itself failed (see above)", file=sys.stderr)
            return 2
    report = outcome[0]
    print(report.summary())
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"options": asdict(report.options), "checks": [asdict(c) for c in report.checks],
             "numbers": report.numbers, "notes": report.notes}, indent=2, default=str))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
