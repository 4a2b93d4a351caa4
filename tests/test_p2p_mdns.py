"""``[p2p] mdns``: a js-libp2p client on the local network (``@libp2p/mdns``, pinned in
tests/js/package.json) finds the server by mDNS, without being told its peer id or
address, dials it by the peer id it discovered, and logs in over ``/wyseman/1.0.0``.

Multicast must not leave the machine, so each test runs the server and the client in a
private network namespace of its own (``unshare --net``, which needs root): its ``lo``
with multicast on, and an isolated veth pair (``wm0`` with a link-local IPv4 address,
``wm1`` its other end, both inside the namespace) standing for a LAN interface the
server does not listen on. The namespace's first process is tests/mdns_capture.py,
listening on ``wm1``: what a neighbour on that interface hears. The server and the
client enter the namespace with ``nsenter``; PostgreSQL stays outside, reached through
its Unix socket (a network namespace does not separate the file system).

Where network namespaces cannot be made (not root, no ``unshare``/``nsenter``/``ip``,
no veth), or the test database is reached over TCP, the tests skip and say why."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from twisted.internet import defer, reactor
from twisted.trial.unittest import SkipTest, TestCase

from tests import jsinterop
from tests.harness import ProcessOutput, add_user, checkout_pythonpath
from tests.pgtest import fresh_database
from wyseman.client import keys
from wyseman.db.pg import dsn_params
from wyseman.provision import admin

try:
    import wyseman.p2p.node  # noqa: F401
except ImportError as exc:
    MISSING: str | None = f"the wyseman[p2p] extra (py-libp2p) is not installed: {exc}"
else:
    MISSING = None

ROOT = Path(__file__).resolve().parent.parent
#: the "LAN" end's address: IPv4 link-local, on a veth pair that exists only in the
#: test's namespace
LAN_ADDRESS = "169.254.77.1"
#: the namespace: lo with multicast (the route sends the group's traffic there), and the
#: veth pair; then the command given
NAMESPACE_SETUP = (
    "set -e; ip link set lo up multicast on; ip route add 224.0.0.0/4 dev lo; "
    "ip link add wm0 type veth peer name wm1; "
    f"ip addr add {LAN_ADDRESS}/16 dev wm0; ip link set wm0 up; ip link set wm1 up; "
    'exec "$@"')
#: ms between two mDNS queries of the client, and how long it looks for a server
QUERY_INTERVAL = 1000
DISCOVERY_WAIT = 3500

_unavailable: list[str | None] = []


def namespaces_unavailable() -> str | None:
    """Why the tests cannot make their network namespace here (None: they can)."""
    if _unavailable:
        return _unavailable[0]
    reason = None
    missing = [tool for tool in ("unshare", "nsenter", "ip") if shutil.which(tool) is None]
    if missing:
        reason = f"no {', '.join(missing)} here: cannot make a private network namespace"
    else:
        try:
            probe = subprocess.run(["unshare", "--net", "sh", "-c", NAMESPACE_SETUP, "sh",
                                    "true"], capture_output=True, text=True, timeout=30,
                                   stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as exc:
            reason = f"cannot make a private network namespace: {exc}"
        else:
            if probe.returncode != 0:
                reason = ("cannot make a private network namespace with multicast on lo "
                          "and a veth pair (needs root): "
                          + (probe.stderr.strip() or f"exit {probe.returncode}"))
    _unavailable.append(reason)
    return reason


class _Process:
    """A child process: its output (:class:`ProcessOutput`), its transport; ended at
    cleanup if it is still there."""

    def __init__(self, testcase: TestCase, argv: list[str], path: str | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.output = ProcessOutput()
        self.transport = reactor.spawnProcess(self.output, argv[0], argv,
                                              env=env or dict(os.environ), path=path)
        testcase.addCleanup(self.end)

    def end(self) -> defer.Deferred:
        if not self.output.ended.called:
            self.transport.signalProcess("KILL")
        return self.output.ended

    def lines(self) -> list[dict]:
        """The JSON lines it printed on stdout or stderr."""
        found = []
        for line in self.output.out.decode(errors="replace").splitlines():
            if line.startswith("{"):
                found.append(json.loads(line))
        return found


class MdnsDiscoveryTests(TestCase):
    timeout = 120

    def setUp(self):
        if MISSING:
            raise SkipTest(MISSING)
        self.node = jsinterop.node()
        reason = namespaces_unavailable()
        if reason:
            raise SkipTest(reason)
        self.db = fresh_database(self)
        if not dsn_params(self.db.dsn).get("host", "").startswith("/"):
            raise SkipTest("the test database is reached over TCP, which a private "
                           "network namespace cannot reach (the tests need its Unix "
                           "socket)")
        self.user = add_user(self.db, "md")
        self.workdir = Path(self.mktemp()).resolve()
        self.workdir.mkdir(parents=True)
        self.env = dict(os.environ, PYTHONPATH=checkout_pythonpath())

    @defer.inlineCallbacks
    def namespace(self):
        """The namespace, made by its first process: the capture on ``wm1``."""
        capture = _Process(self, [shutil.which("unshare"), "--net", "sh", "-c",
                                  NAMESPACE_SETUP, "sh", sys.executable, "-m",
                                  "tests.mdns_capture", "wm1", LAN_ADDRESS],
                           path=str(ROOT), env=self.env)
        yield capture.output.wait_for("capturing")
        self.enter = [shutil.which("nsenter"), f"--net=/proc/{capture.transport.pid}/ns/net",
                      "--"]
        return capture

    @defer.inlineCallbacks
    def server(self, mdns):
        """A gateway process in the namespace, libp2p on 127.0.0.1 and 127.0.0.2 only,
        ``[p2p] mdns`` as given, once it listens; with mdns, once it announced its
        addresses too, → its full multiaddrs."""
        config = self.workdir / "wyseman.toml"
        config.write_text(
            '[server]\nlisten = "tcp:0:interface=127.0.0.1"\nclientinfo_listen = []\n'
            f'[database]\ndsn = {json.dumps(self.db.dsn)}\npool_size = 2\n'
            '[p2p]\nlisten = ["/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.2/tcp/0"]\n'
            f'key_file = {json.dumps(str(self.workdir / "p2p.key"))}\n'
            f'mdns = {json.dumps(mdns)}\n')
        server = _Process(self, [
            *self.enter, sys.executable, "-c", "import sys; from twisted.scripts.twistd "
            "import run; sys.argv[0] = 'twistd'; run()", "-n", "--pidfile=", "wyseman",
            "--config", str(config)], path=str(ROOT), env=self.env)

        def stop():
            if not server.output.ended.called:
                server.transport.signalProcess("TERM")
            return server.output.ended
        self.addCleanup(stop)
        out = yield server.output.wait_for("listening on libp2p /ip4/127.0.0.2/")
        if mdns:
            # registering takes zeroconf's probes, about two seconds; the lines that
            # name the addresses are complete by then
            out = yield server.output.wait_for("by mDNS on ").addTimeout(30, reactor)
        return [part.split()[0]
                for part in out.decode().split("listening on libp2p ")[1:]]

    @defer.inlineCallbacks
    def client(self, options):
        """The js-libp2p client in the namespace, finding its server by mDNS; → its
        JSON lines once it exited (with 0)."""
        options = dict(options, mdns={"interval": QUERY_INTERVAL, "wait": DISCOVERY_WAIT})
        client = _Process(self, [
            *self.enter, self.node, "--import", "./withresolvers.mjs", "p2p_client.mjs",
            "mdns", self.user, json.dumps(options)], path=str(jsinterop.JS_DIR))
        code = yield client.output.ended
        self.assertEqual(code, 0, client.output.out.decode(errors="replace"))
        return client.lines()

    @defer.inlineCallbacks
    def heard(self, capture):
        """What the capture heard on the LAN interface, once told to stop."""
        capture.transport.write(b"stop\n")
        capture.transport.closeStdin()
        code = yield capture.output.ended
        self.assertEqual(code, 0, capture.output.out.decode(errors="replace"))
        heard = capture.lines()[-1]
        self.assertTrue(heard["marker"], "the capture did not see its own marker")
        return heard

    @defer.inlineCallbacks
    def test_a_js_libp2p_client_discovers_the_server_and_logs_in(self):
        """Discovered: the server's peer id and both its listen addresses (a TXT string
        ``dnsaddr=…`` each, as the libp2p mDNS spec and js-libp2p read them), dialled by
        peer id; ticket login and a request over the stream. Nothing is announced on
        the interface the server does not listen on."""
        capture = yield self.namespace()
        addresses = yield self.server(mdns=True)
        self.assertEqual(len(addresses), 2, addresses)
        token = admin.issue_ticket(self.db.dsn, self.user).token
        lines = yield self.client({"token": token, "key": keys.generate_private_jwk(),
                                   "requests": [{"id": "t1", "action": "tuple",
                                                 "view": "base.curr_eid()"}]})
        discovered, answer, reply = lines
        peer = addresses[0].rsplit("/p2p/", 1)[1]
        self.assertEqual(discovered["discovered"], peer)
        self.assertEqual(sorted(discovered["multiaddrs"]),      # (in no particular order)
                         sorted(address.rsplit("/p2p/", 1)[0] for address in addresses))
        self.assertEqual((answer["login"], answer["method"], answer["user"]),
                         ("accepted", "ticket", self.user))
        expected = self.db.run("select id from base.ent where username = %s", (self.user,))
        self.assertEqual(reply["data"], {"curr_eid": expected[0][0]})
        heard = yield self.heard(capture)
        self.assertEqual(heard, {"responses": 0, "queries": 0, "marker": True})

    @defer.inlineCallbacks
    def test_without_mdns_the_client_discovers_nothing(self):
        """The negative control: the same server with ``mdns = false`` is not found
        within the client's wait (several of its queries)."""
        capture = yield self.namespace()
        yield self.server(mdns=False)
        lines = yield self.client({"token": "unused", "key": keys.generate_private_jwk()})
        self.assertEqual(lines, [{"discovered": None, "multiaddrs": []}])
        heard = yield self.heard(capture)
        self.assertEqual(heard, {"responses": 0, "queries": 0, "marker": True})
