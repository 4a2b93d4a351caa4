"""A real load balancer (HAProxy, TCP mode, round robin, PROXY protocol v2) in front of
two gateway processes (``twistd -n wyseman``) on one database with ``[cluster]
shared_state = "postgres"``: what clients see of several hosts (docs/operations.md,
"Several hosts").

The balancer has three ports, each balancing over both hosts on its own round robin:
``ws`` (plain WebSocket, the Python client's logins), ``info`` (the Python client's
``/clientinfo``: kept apart so that the ``ws`` port's connections alternate host by
host) and ``wss`` (TLS passed through, the npm client: its ``/clientinfo`` fetch and
its upgrade go to that same port, so to different hosts). HAProxy logs the server of
each connection (``conn N FRONTEND SERVER``) on its stdout."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.trial.unittest import SkipTest, TestCase

from tests.harness import ProcessOutput, add_user, checkout_pythonpath, http_get
from tests.jsinterop import run_node
from tests.pgtest import fresh_database
from tests.tlsutil import TestCA
from wyseman.client import keys
from wyseman.client.connection import connect
from wyseman.client.session import ReconnectingSession
from wyseman.provision import admin

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports free on 127.0.0.1 (held open together while chosen)."""
    probes = []
    try:
        for _ in range(count):
            probe = socket.socket()
            probe.bind((HOST, 0))
            probes.append(probe)
        return [probe.getsockname()[1] for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def bounded(d: defer.Deferred, seconds: float, what: str,
            output: ProcessOutput | None = None) -> defer.Deferred:
    """``d``, failed with a message naming ``what`` (and the output of the process
    waited for) if it has not fired in ``seconds``."""
    def late(failure: Any, timeout: float) -> Any:
        if failure.check(defer.TimeoutError):
            said = output.out.decode(errors="replace")[-3000:] if output else ""
            raise AssertionError(f"{what}: nothing after {timeout} s\n{said}") from None
        return failure
    return d.addTimeout(seconds, reactor).addErrback(late, seconds)


HAPROXY_CFG = """\
global
    log stdout format raw local0
defaults
    mode tcp
    log global
    option logasap
    log-format "conn %rt %ft %s"
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    retries 3
    option redispatch 1
"""


class BalancerTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        haproxy = shutil.which("haproxy") or next(
            (p for p in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy")
             if os.access(p, os.X_OK)), None)
        if haproxy is None:
            raise SkipTest("haproxy is not installed (Debian: apt-get install haproxy; "
                           "scripts/test.sh installs it as root): balancer tests skipped")
        self.haproxy = haproxy
        self.directory = Path(self.mktemp()).resolve()
        self.directory.mkdir(parents=True)
        ca = TestCA.create()
        self.cert, self.key, _ = ca.issue(self.directory, "server")
        self.ca_pem = self.directory / "ca.pem"
        self.ca_pem.write_bytes(ca.pem)
        self.tls_options = optionsForClientTLS("localhost",
                                               trustRoot=Certificate.loadPEM(ca.pem))
        self.db = fresh_database(self)
        # per host: plain, TLS; the balancer: ws, info, wss
        (self.a_plain, self.a_tls, self.b_plain, self.b_tls,
         self.ws_port, self.info_port, self.wss_port) = free_ports(7)

    # -- processes ---------------------------------------------------------------------
    def spawn(self, output: ProcessOutput, argv: list[str], env: dict[str, str]) -> Any:
        """Start ``argv``; at cleanup, SIGTERM it (then SIGKILL after 15 s) if still there."""
        transport = reactor.spawnProcess(output, argv[0], argv, env=env, path=str(ROOT))
        output.transport = transport

        def stop() -> Any:
            if output.ended.called:
                return None
            transport.signalProcess("TERM")
            killer = reactor.callLater(15, lambda: (not output.ended.called
                                                    and transport.signalProcess("KILL")))
            return output.ended.addBoth(lambda r: killer.active() and killer.cancel())
        self.addCleanup(stop)
        return transport

    @defer.inlineCallbacks
    def gateway(self, name: str, plain: int, tls: int) -> Any:
        """A gateway process on two PROXY-protocol ports of 127.0.0.1."""
        config = self.directory / f"{name}.toml"
        config.write_text(
            f'[server]\nlisten = ["haproxy:tcp:{plain}:interface={HOST}", '
            f'"haproxy:tls:{tls}:interface={HOST}"]\n'
            f'trusted_proxies = ["{HOST}"]\nclientinfo_listen = []\n'
            f'[tls]\ncert = {json.dumps(str(self.cert))}\nkey = {json.dumps(str(self.key))}\n'
            '[channels]\nallow = ["app_*"]\n'
            f'[database]\ndsn = {json.dumps(self.db.dsn)}\npool_size = 2\n'
            f'[cluster]\nshared_state = "postgres"\nhost_id = "{name}"\n')
        output = ProcessOutput()
        self.spawn(output, [sys.executable, "-c", "import sys; from twisted.scripts.twistd "
                            "import run; sys.argv[0] = 'twistd'; run()", "-n", "--pidfile=",
                            "wyseman", "--config", str(config)],
                   dict(os.environ, PYTHONPATH=checkout_pythonpath()))
        yield bounded(output.wait_for(f"listening on haproxy:tls:{tls}:"), 60,
                      f"{name} listening", output)
        output.name = name
        return output

    @defer.inlineCallbacks
    def balancer(self) -> Any:
        servers = {"plain": (self.a_plain, self.b_plain), "tls": (self.a_tls, self.b_tls)}
        text = HAPROXY_CFG
        for front, port, kind in (("ws", self.ws_port, "plain"),
                                  ("info", self.info_port, "plain"),
                                  ("wss", self.wss_port, "tls")):
            a, b = servers[kind]
            text += (f"frontend {front}\n    bind {HOST}:{port}\n"
                     f"    default_backend {front}_hosts\n"
                     f"backend {front}_hosts\n    balance roundrobin\n"
                     f"    server a {HOST}:{a} send-proxy-v2\n"
                     f"    server b {HOST}:{b} send-proxy-v2\n")
        cfg = self.directory / "haproxy.cfg"
        cfg.write_text(text)
        output = ProcessOutput()
        # -W: the master binds the ports, forks the worker, then says "Loading success."
        self.spawn(output, [self.haproxy, "-W", "-db", "-f", str(cfg)], dict(os.environ))
        yield bounded(output.wait_for("Loading success."), 30, "haproxy start", output)
        return output

    @defer.inlineCallbacks
    def cluster(self) -> Any:
        a = yield self.gateway("gw-a", self.a_plain, self.a_tls)
        b = yield self.gateway("gw-b", self.b_plain, self.b_tls)
        lb = yield self.balancer()
        return a, b, lb

    def hosts_of(self, lb: ProcessOutput, front: str) -> list[str]:
        """The server ("a"/"b") of each connection through ``front``, in order."""
        lines = [line.split() for line in lb.out.decode(errors="replace").splitlines()
                 if line.startswith("conn ")]
        rows = sorted((int(n), server) for _, n, f, server in lines if f == front)
        return [server for _, server in rows]

    @defer.inlineCallbacks
    def register_key(self, user: str) -> Any:
        """A key pair registered for ``user`` by a ticket login through the balancer."""
        private = keys.generate_private_jwk()
        conn = yield connect(self.ws_url, user, token=admin.issue_ticket(self.db.dsn, user).token,
                             new_key=private)
        yield conn.close()
        return private

    @property
    def ws_url(self) -> str:
        return f"ws://{HOST}:{self.ws_port}"

    @property
    def info_url(self) -> str:
        return f"http://{HOST}:{self.info_port}/clientinfo"

    def key_login(self, user: str, private: Any, **options: Any) -> defer.Deferred:
        return connect(self.ws_url, user, key=private, clientinfo_url=self.info_url, **options)

    # -- cases -------------------------------------------------------------------------
    @defer.inlineCallbacks
    def test_the_npm_client_logs_in_by_ticket_then_by_key_across_hosts(self) -> None:
        a, b, lb = yield self.cluster()
        user = add_user(self.db)
        request = {"id": 1, "action": "tuple", "view": "base.curr_eid()"}
        base = {"proto": "wss", "host": "localhost", "port": self.wss_port, "user": user,
                "httpPort": self.wss_port, "userAgent": "Mozilla/5.0 balancer", "request": request}
        env = {"NODE_EXTRA_CA_CERTS": str(self.ca_pem)}
        token = admin.issue_ticket(self.db.dsn, user).token
        # ticket login (one upgrade), then /clientinfo and the signed upgrade
        out, code = yield run_node("client_login.js", {**base, "token": token}, env=env,
                                   timeout=60)
        self.assertEqual(code, 0, out)
        self.assertIn("&sign=", out["urls"]["key"])
        expected = self.db.run("select id from base.ent where username = %s", (user,))[0][0]
        self.assertEqual(out["reply"]["data"], {"curr_eid": expected})
        # round robin: ticket upgrade, /clientinfo, key upgrade alternate hosts, so the
        # address signed (from one host's /clientinfo) was checked by the other host
        ticket_host, info_host, key_host = self.hosts_of(lb, "wss")[:3]
        self.assertNotEqual(info_host, key_host)
        checker = {"a": a, "b": b}[key_host]
        yield bounded(checker.wait_for(f"login {user} (key) from"), 10, "the key login")
        # later: the stored key alone, as an app reconnects (again two hosts)
        out, code = yield run_node("client_login.js", {**base, "key": out["savedKey"]},
                                   env=env, timeout=60)
        self.assertEqual(code, 0, out)
        self.assertEqual(out["reply"]["data"], {"curr_eid": expected})
        hosts = self.hosts_of(lb, "wss")
        self.assertEqual(len(hosts), 5, hosts)
        self.assertNotEqual(hosts[3], hosts[4])
        self.assertEqual({"a", "b"}, set(hosts))

    @defer.inlineCallbacks
    def test_both_hosts_see_the_client_behind_the_balancer_alike(self) -> None:
        a, b, lb = yield self.cluster()
        seen = []
        for _ in range(2):   # one /clientinfo from each host (the socket's peer: HAProxy)
            status, _, body = yield http_get(self.info_port, "/clientinfo", source="127.0.0.5")
            self.assertEqual(status, 200, body)
            seen.append(json.loads(body)["ip"])
        self.assertEqual(seen, ["::ffff:127.0.0.5"] * 2)
        self.assertEqual(sorted(self.hosts_of(lb, "info")), ["a", "b"])

    @defer.inlineCallbacks
    def test_notify_and_a_removed_key_reach_sockets_on_both_hosts(self) -> None:
        a, b, lb = yield self.cluster()
        user = add_user(self.db)
        private = yield self.register_key(user)
        conns = []
        for _ in range(2):
            conn = yield self.key_login(user, private, listen=["app_both"])
            self.addCleanup(conn.close)
            conns.append(conn)
        self.assertEqual(sorted(self.hosts_of(lb, "ws")[1:]), ["a", "b"])
        for host in (a, b):   # one key socket each
            yield bounded(host.wait_for(f"login {user} (key) from"), 10, host.name)
        got = [defer.Deferred(), defer.Deferred()]
        for conn, d in zip(conns, got, strict=True):
            conn.on_notify("app_both", d.callback)
        self.db.run("""notify app_both, '{"to": "both hosts"}'""")
        results = yield bounded(defer.gatherResults(got), 10, "the notifications")
        self.assertEqual(results, [{"to": "both hosts"}] * 2)
        # the user's key removed: each host closes its socket with 4001
        self.db.run("update base.ent set conn_pub = null where username = %s", (user,))
        closed = yield bounded(defer.gatherResults([c.closed for c in conns]), 15,
                               "the 4001 closes")
        self.assertEqual([code for code, _ in closed], [4001, 4001])

    @defer.inlineCallbacks
    def test_a_host_stopped_by_sigterm_closes_with_1001_and_clients_move_on(self) -> None:
        a, b, lb = yield self.cluster()
        user = add_user(self.db)
        private = yield self.register_key(user)
        session = ReconnectingSession(self.ws_url, user, private, clientinfo_url=self.info_url)
        self.addCleanup(session.stop)
        session.start()
        reply = yield bounded(session.request({"action": "tuple", "view": "base.curr_eid()"}),
                              20, "the first request")
        self.assertIn("curr_eid", reply)
        first = session.connection
        assert first is not None
        on = {"a": a, "b": b}[self.hosts_of(lb, "ws")[-1]]
        other = b if on is a else a
        yield bounded(on.wait_for(f"login {user} (key) from"), 10, "the first login")
        # a plain socket on each host too, to see which sockets the stopping host closes
        others = [add_user(self.db) for _ in range(2)]
        others_keys = []
        for other_user in others:
            others_keys.append((yield self.register_key(other_user)))
        bystanders = []
        for other_user, other_key in zip(others, others_keys, strict=True):
            conn = yield self.key_login(other_user, other_key)
            self.addCleanup(conn.close)
            bystanders.append(conn)
        on.transport.signalProcess("TERM")
        code, _ = yield bounded(first.closed, 20, "the close of the stopping host")
        self.assertEqual(code, 1001)
        # twistd stops cleanly, then ends by the signal it got (as Twisted's runner does
        # since 19.7: systemd counts SIGTERM as a clean stop)
        self.assertEqual((yield bounded(on.ended, 30, "the host's exit", on)),
                         -signal.SIGTERM)
        self.assertIn(b"Server Shut Down.", on.out)
        # the session logs in again through the balancer, which now reaches only the other
        yield bounded(other.wait_for(f"login {user} (key) from"), 30, "the login elsewhere")
        reply = yield bounded(session.request({"action": "tuple", "view": "base.curr_eid()"}),
                              20, "a request after the move")
        self.assertIn("curr_eid", reply)
        self.assertEqual(session.connects, 2)
        # of the bystanders, the stopped host's closed with 1001, the other's is still open
        codes = sorted(conn.close_code or 0 for conn in bystanders)
        self.assertEqual(codes, [0, 1001])

    @defer.inlineCallbacks
    def test_a_host_killed_under_load_loses_no_acknowledged_write(self) -> None:
        a, b, lb = yield self.cluster()
        self.db.run("create table public.lb_entry (seq bigserial primary key, "
                    "cid text not null, who text not null default session_user); "
                    "grant select, insert on public.lb_entry to wyseman_user; "
                    "grant usage on sequence public.lb_entry_seq_seq to wyseman_user")
        users = [add_user(self.db) for _ in range(4)]
        private = []
        for user in users:
            private.append((yield self.register_key(user)))
        sessions = []
        for user, key in zip(users, private, strict=True):
            session = ReconnectingSession(self.ws_url, user, key, listen=["app_load"],
                                          clientinfo_url=self.info_url)
            self.addCleanup(session.stop)
            session.start()
            # one at a time, so that the balancer's round robin puts two on each host
            yield bounded(session.request({"action": "tuple", "view": "base.curr_eid()"}),
                          20, f"the first request of {user}")
            sessions.append(session)
        placed = self.hosts_of(lb, "ws")[-len(sessions):]
        self.assertEqual(sorted(placed), ["a", "a", "b", "b"])
        acked: list[list[str]] = [[] for _ in sessions]
        unsure: list[str] = []          # sent, then the socket was lost: stored or not
        running = True
        progress: dict[int, tuple[int, defer.Deferred]] = {}

        def wait_for_acks(count: int) -> defer.Deferred:
            """Fires once every writer has ``count`` more acknowledged writes."""
            waits = []
            for n in range(len(sessions)):
                d: defer.Deferred = defer.Deferred()
                progress[n] = (len(acked[n]) + count, d)
                waits.append(d)
            return defer.gatherResults(waits)

        @defer.inlineCallbacks
        def writer(n: int, session: ReconnectingSession) -> Any:
            seq = 0
            while running:
                seq += 1
                cid = f"{n}.{seq}"
                try:
                    row = yield session.request({"action": "insert", "view": "public.lb_entry",
                                                 "fields": {"cid": cid}}, timeout=20)
                except Exception:
                    unsure.append(cid)
                    continue
                self.assertEqual((row["cid"], row["who"]), (cid, users[n]))
                acked[n].append(cid)
                target, d = progress.get(n, (0, None))
                if d is not None and len(acked[n]) >= target:
                    del progress[n]
                    d.callback(None)

        writers = [writer(n, s) for n, s in enumerate(sessions)]
        yield bounded(wait_for_acks(20), 30, "writes before the kill")
        before = sum(len(w) for w in acked)
        a.transport.signalProcess("KILL")
        self.assertEqual((yield bounded(a.ended, 30, "the killed host's exit")),
                         -signal.SIGKILL)
        # every writer goes on: those of the killed host after logging in again on b
        yield bounded(wait_for_acks(20), 60, "writes after the kill", b)
        running = False
        yield bounded(defer.gatherResults(writers), 30, "the writers' end")
        moved = [s for s, host in zip(sessions, placed, strict=True) if host == "a"]
        self.assertEqual([s.connects for s in moved], [2, 2])
        # the moved sessions listen again on their new host
        heard = [defer.Deferred() for _ in sessions]
        for session, d in zip(sessions, heard, strict=True):
            session.on_notify("app_load", d.callback)
        self.db.run("""notify app_load, '{"after": "the kill"}'""")
        self.assertEqual((yield bounded(defer.gatherResults(heard), 15, "the notifications")),
                         [{"after": "the kill"}] * len(sessions))
        # each acknowledged write stored exactly once; nothing stored that was not sent
        stored = dict(self.db.run("select cid, count(*) from public.lb_entry group by cid"))
        everything = [cid for writes in acked for cid in writes]
        self.assertGreater(len(everything), before)
        self.assertEqual({cid: stored.get(cid) for cid in everything if stored.get(cid) != 1},
                         {})
        self.assertEqual(set(stored) - set(everything) - set(unsure), set())
        self.assertLessEqual(len(unsure), len(moved))
