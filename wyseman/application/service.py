"""The service tree: ``makeService(config)`` is the embedding API.

::

    MultiService
    ├── EmbeddedPostgresService   (only with [database] embedded)
    └── GatewayService            database pools + LISTEN, then the listening ports
        or WorkerSupervisor       with [server] workers > 1: N worker processes, each
                                  a GatewayService on the same ports (SO_REUSEPORT)

Ports open only after the database answers, so a client never meets a server
that cannot check its login. Add the returned service to your own application
(``service.setServiceParent(application)``) to embed the gateway.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from twisted.application.service import MultiService, Service
from twisted.internet import defer, endpoints
from twisted.internet.interfaces import IOpenSSLContextFactory, IProtocolFactory
from twisted.logger import Logger
from twisted.web import server
from twisted.web.resource import IResource

from wyseman.application import startfail
from wyseman.application.fdlimit import ensure_descriptors
from wyseman.application.sighup import SighupHandler
from wyseman.application.tls import ReloadableContextFactory, TLSConfigError
from wyseman.auth.login import is_loopback
from wyseman.config import Config, ConfigError
from wyseman.db.database import Database
from wyseman.db.shared import SharedSchemaMissing
from wyseman.gateway.cluster import ClusterState, host_id_for
from wyseman.gateway.hub import Gateway
from wyseman.gateway.seams import TransportHub
from wyseman.tuning import affinity, busypoll
from wyseman.tuning.affinity import auto_threads
from wyseman.tuning.gcpause import freeze_startup_objects, set_young_threshold
from wyseman.ws import webroot
from wyseman.ws.fanout import FanOut
from wyseman.ws.protocol import build_site

log = Logger(namespace="wyseman.service")

#: the close code sent to every socket when the server stops (RFC 6455: going away)
CLOSE_GOING_AWAY = 1001
#: seconds clients have to answer that close frame before their sockets are dropped
CLOSE_GRACE_SECONDS = 2.0


@dataclass(frozen=True)
class ListenSpec:
    """One endpoint string, understood well enough to derive ports and policies."""

    text: str
    kind: str            # 'tcp', 'tls', 'ssl', 'unix', ...
    port: int | None
    interface: str
    #: ``haproxy:…``: each connection starts with a PROXY protocol header
    proxy: bool = False

    @property
    def inner(self) -> str:
        """The endpoint string without its ``haproxy:`` prefix."""
        return self.text.removeprefix("haproxy:") if self.proxy else self.text

    @property
    def secure(self) -> bool:
        return self.kind in ("tls", "ssl")

    @property
    def loopback(self) -> bool:
        return self.kind == "unix" or (bool(self.interface) and is_loopback(self.interface))


def _split_endpoint(text: str) -> list[str]:
    """Split on ':' except escaped '\\:' (as Twisted's endpoint parser does), unescaping."""
    parts, current, escaped = [], "", False
    for char in text:
        if escaped:
            current += char
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return parts


def parse_listen(text: str) -> ListenSpec:
    proxy = text.startswith("haproxy:")
    parts = _split_endpoint(text.removeprefix("haproxy:"))
    kind = parts[0] if not parts[0].isdigit() else "tcp"
    if parts[0].isdigit():
        parts = ["tcp", *parts]
    port: int | None = None
    interface = ""
    for part in parts[1:]:
        key, sep, value = part.partition("=")
        if not sep and port is None and key.isdigit():
            port = int(key)
        elif key == "port" and value.isdigit():
            port = int(value)
        elif key == "interface":
            interface = value
    return ListenSpec(text, kind, port, interface, proxy)


def derived_clientinfo(spec: ListenSpec) -> str | None:
    """The JS client fetches /clientinfo from the WebSocket port − 1 (docs/protocol.md,
    2 "Transport and URL")."""
    if spec.kind not in ("tcp", "tls") or not spec.port or spec.port <= 1:
        return None
    iface = f":interface={spec.interface.replace(':', chr(92) + ':')}" if spec.interface else ""
    return f"{'haproxy:' if spec.proxy else ''}{spec.kind}:{spec.port - 1}{iface}"


def reuse_port_socket(spec: ListenSpec) -> socket.socket:
    """A TCP socket bound to ``spec``'s interface and port with SO_REUSEPORT, not yet
    listening (a supervisor holds one like this to keep a port-0 port reserved)."""
    interface = spec.interface or "0.0.0.0"
    family = socket.AF_INET6 if ":" in interface else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((interface, spec.port or 0))
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"endpoint {spec.text!r}: {exc.strerror or exc}") from None
    return sock


def _tls_factory(config: Config) -> ReloadableContextFactory | None:
    tls = config.tls
    if not tls.cert:
        return None
    try:
        return ReloadableContextFactory(
            config.resolve_path(tls.cert), config.resolve_path(tls.key),
            config.resolve_path(tls.chain) if tls.chain else None, tls.min_version,
            tls.session_tickets)
    except TLSConfigError as exc:
        raise ConfigError(f"{config.source}: [tls]: {exc}") from None


def _endpoint(reactor: Any, spec: ListenSpec, tls: ReloadableContextFactory | None,
              backlog: int = 1024) -> Any:
    """The server endpoint of ``spec``, with ``[server] listen_backlog`` unless its
    string names a ``backlog`` of its own. A ``haproxy:tls:`` endpoint is a TCP one (its
    TLS is the factory's, after the PROXY header: :meth:`GatewayService._factory`)."""
    if spec.kind == "tls":
        assert tls is not None and spec.port is not None
        if spec.proxy:
            return endpoints.TCP4ServerEndpoint(reactor, spec.port, backlog=backlog,
                                                interface=spec.interface or "")
        return endpoints.SSL4ServerEndpoint(reactor, spec.port, tls, backlog=backlog,
                                            interface=spec.interface or "")
    text = spec.inner if not spec.inner[:1].isdigit() else "tcp:" + spec.inner
    if spec.kind in ("tcp", "tcp6", "ssl", "unix") and "backlog=" not in text:
        text += f":backlog={backlog}"
    try:
        return endpoints.serverFromString(reactor, text)
    except Exception as exc:
        raise ConfigError(f"endpoint {spec.text!r}: {exc}") from None


def check_cpu_affinity(config: Config) -> None:
    """:raises ConfigError: ``[server] cpu_affinity`` names CPUs this process cannot use."""
    if config.server.cpu_affinity:
        try:
            affinity.check(config.server.cpu_affinity)
        except affinity.AffinityError as exc:
            raise ConfigError(f"{config.source}: {exc}") from None


def check_web(config: Config) -> None:
    """:raises ConfigError: ``[web]`` names a root or mount that is not a directory, or a
    ``spa_fallback`` that is not a file under the root (a start would serve 404s only)."""
    problems = webroot.check_web(config)
    if problems:
        key, problem = problems[0]
        raise ConfigError(f"{config.source}: [web] {key}: {problem}")


def check_p2p(config: Config, *, key: bool = True) -> None:
    """:raises ConfigError: ``[p2p] listen`` is set but the ``wyseman[p2p]`` extra
    (py-libp2p) is not installed, a multiaddr is not one py-libp2p listens on, or (with
    ``key``) the key file exists but cannot be used."""
    p2p = config.p2p
    if not p2p.listen:
        return
    try:
        from wyseman.p2p import node
    except ImportError as exc:
        raise ConfigError(f"{config.source}: [p2p] listen: needs the wyseman[p2p] extra "
                          f"(pip install 'wyseman[p2p]'): {exc}") from None
    for text in p2p.listen:
        try:
            node.check_multiaddr(text)
        except ValueError as exc:
            raise ConfigError(f"{config.source}: [p2p] listen: {text!r}: {exc}") from None
    path = config.resolve_path(p2p.key_file)
    if key and path.exists():
        try:
            node.load_or_create_key(path)
        except node.P2PKeyError as exc:
            raise ConfigError(f"{config.source}: [p2p] key_file: {exc}") from None


class StartingService(Service):
    """``startService`` runs :meth:`_start`; if that fails, the failure is logged, fails
    :attr:`ready`, and stops the reactor (a server that cannot start exits) unless
    :attr:`stop_reactor_on_failure` is false (embedded, tests)."""

    ready: defer.Deferred
    reactor: Any
    stop_reactor_on_failure = True
    #: a failed start also prints its reason to stderr and makes the process exit with
    #: status 1 (the twistd plugin; an embedding application decides for itself)
    exit_on_failure = False
    failure_message = "wyseman could not start"

    def __init__(self, config: Config, admin_dsn: Callable[[], defer.Deferred],
                 reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor
            reactor = default_reactor
        self.config = config
        self.reactor = reactor
        self._admin_dsn = admin_dsn
        #: fires with the service once it serves, or fails if it could not start
        self.ready: defer.Deferred = defer.Deferred()

    def startService(self) -> defer.Deferred:  # noqa: N802
        super().startService()
        return self._start().addErrback(self._start_failed)

    def _start(self) -> defer.Deferred:
        raise NotImplementedError

    def _start_failed(self, failure: Any) -> None:
        why = startfail.reason(failure, self.config)
        if why is None:      # a bug: its traceback helps
            log.failure(self.failure_message, failure)
        else:
            log.error("{what}: {why}", what=self.failure_message, why=why)
        if not self.ready.called:
            self.ready.errback(failure)
        if self.exit_on_failure:
            # (twistd sends sys.stderr to its log: this line goes to the real one)
            stderr = sys.__stderr__ or sys.stderr
            stderr.write(f"wyseman: error: {why or failure.getErrorMessage()}\n")
            stderr.flush()
            startfail.exit_nonzero_at_exit(1)
        if self.stop_reactor_on_failure:
            # (a failure before the reactor runs, a refused connect say, stops it then)
            startfail.stop_reactor(self.reactor)


class GatewayService(StartingService):
    """Database, gateway and listening ports; starts once the database answers."""

    name = "gateway"  # type: ignore[assignment]  # (Twisted: unannotated `name = None`)

    def __init__(self, config: Config, admin_dsn: Callable[[], defer.Deferred],
                 reactor: Any = None, actions: Any = None, *, reuse_port: bool = False,
                 replay: Any = None, user_slots: Any = None, router: Any = None,
                 host_id: str | None = None) -> None:
        """``reuse_port``: bind the ``tcp:``/``tls:`` ports with SO_REUSEPORT, so that
        several processes serve one port (a worker of
        :mod:`wyseman.application.workers.supervisor`);
        ``replay``, ``user_slots``: the shared replay cache and per-user connection
        count of such a worker (see Authenticator, wyseman.gateway.userslots);
        ``router``: such a worker's :class:`~wyseman.application.workers.routing.Router` (``[server]
        route_by_user``), which passes upgrades on its ``tcp:`` ports to their users'
        workers. With ``[cluster] shared_state = "postgres"`` the replay cache and the
        per-user count are the database's instead (:mod:`wyseman.gateway.cluster`, for
        every host and worker alike), ``replay`` and ``user_slots`` are not used, and
        ``host_id`` names this process in the shared tables (default:
        :func:`~wyseman.gateway.cluster.host_id_for`)."""
        super().__init__(config, admin_dsn, reactor)
        reactor = self.reactor
        self._actions = actions
        self.reuse_port = reuse_port
        self._replay = replay
        self._user_slots = user_slots
        self.router = router
        self._host_id = host_id
        #: this host's part in the shared state (``[cluster] shared_state = "postgres"``)
        self.cluster: ClusterState | None = None
        self._cluster_started = False
        self.tls = _tls_factory(config)
        self.specs = [parse_listen(text) for text in config.server.listen]
        self.clientinfo_specs = [parse_listen(t) for t in self._clientinfo_endpoints()]
        for spec in self.specs + self.clientinfo_specs:
            if spec.kind == "tls" and self.tls is None:
                raise ConfigError(f"{config.source}: [tls]: {spec.text!r} needs a certificate")
        self.gateway: Gateway | None = None
        #: the libp2p host (``[p2p] listen``), once started
        self.p2p: Any = None
        self._pinned = False
        self._busy_polling = False
        self._sighup = SighupHandler(reactor, lambda: self.tls.reload() if self.tls else None)
        self.ports: list[Any] = []
        self._warn_insecure()

    def _clientinfo_endpoints(self) -> list[str]:
        configured = self.config.server.clientinfo_listen
        if configured is not None:
            return list(configured)
        derived = (derived_clientinfo(parse_listen(t)) for t in self.config.server.listen)
        return [d for d in derived if d]

    def _insecure_allowed(self, spec: ListenSpec) -> bool:
        auth = self.config.auth
        # (behind a PROXY protocol port the clients are the balancer's: not loopback)
        return auth.insecure and not spec.secure and (
            (spec.loopback and not spec.proxy) or auth.insecure_on_public_interfaces)

    def _warn_insecure(self) -> None:
        for spec in self.specs:
            if self._insecure_allowed(spec):
                log.warn("INSECURE logins (user name only, no credentials) are accepted on "
                         "{endpoint}", endpoint=spec.text)
            elif self.config.auth.insecure and not spec.secure:
                log.warn("[auth] insecure is set but ignored on non-loopback endpoint "
                         "{endpoint} (see insecure_on_public_interfaces)", endpoint=spec.text)

    @defer.inlineCallbacks
    def _start(self) -> Any:
        cpus = self.config.server.cpu_affinity
        check_cpu_affinity(self.config)   # before anything opens: a bad list stops the start
        check_web(self.config)
        check_p2p(self.config)
        ensure_descriptors(self.config, len(self.specs) + len(self.clientinfo_specs))
        dsn = yield self._admin_dsn()
        db_conf = self.config.database
        db = Database(
            admin_dsn=dsn, session_dsn=db_conf.session_dsn, session_mode=db_conf.session_mode,
            reactor=self.reactor, pool_size=db_conf.pool_size, pool_total=db_conf.pool_total,
            pool_queue=db_conf.pool_queue, idle_timeout=db_conf.pool_idle_timeout,
            max_lifetime=db_conf.pool_max_lifetime, connect_timeout=db_conf.connect_timeout,
            statement_timeout=db_conf.statement_timeout,
            prepared_statements=db_conf.prepared_statements, read_batch=db_conf.read_batch,
            on_listener_reconnect=self._listener_reconnected)
        server = self.config.server
        broadcaster = FanOut(server.fanout_threads or auto_threads(server.workers))
        replay, user_slots = self._replay, self._user_slots
        if self.config.cluster.shared_state == "postgres":
            self.cluster = ClusterState(db, self.config, self.reactor,
                                        self._host_id or host_id_for(self.config))
            replay, user_slots = self.cluster.replay, self.cluster.slots
        self.gateway = Gateway(self.config, db, self.reactor, self._actions, replay,
                               user_slots, broadcaster=broadcaster)
        yield self.gateway.start()
        if self.cluster is not None:
            try:
                yield self.cluster.start()    # before the ports: logins need it
            except SharedSchemaMissing as exc:
                raise startfail.StartError(str(exc)) from None
            self._cluster_started = True
            cluster, shared = self.cluster, self.gateway.metrics.shared_state
            shared.labels("lease_ok").set_function(lambda: float(cluster.lease_ok))
            shared.labels("replay_full").set_function(lambda: float(cluster.replay.full))
        hub: TransportHub = self.gateway
        for spec in self.specs:
            site = build_site(hub, secure=spec.secure,
                              insecure_allowed=self._insecure_allowed(spec))
            if self.router is not None and spec.kind == "tcp" and not spec.proxy:
                self.router.add_site(site)
            yield self._listen(spec, site)
        if self.router is not None:
            router, routed = self.router, self.gateway.metrics.routed
            routed.labels("passed").set_function(lambda: router.passed)
            routed.labels("taken").set_function(lambda: router.taken)
            routed.labels("kept").set_function(lambda: router.kept)
            router.start()
        for spec in self.clientinfo_specs:
            site = build_site(hub, secure=spec.secure, insecure_allowed=False,
                              clientinfo_only=True)
            yield self._listen(spec, site)
        if self.config.p2p.listen:
            yield self._start_p2p()
        if self.config.metrics.listen:
            yield self._listen(parse_listen(self.config.metrics.listen), self._metrics_site())
        if self.tls is not None:
            self._sighup.install()   # kill -HUP re-reads the certificate
        if self.config.server.gc_threshold:
            set_young_threshold(self.config.server.gc_threshold)
        if self.config.server.gc_freeze:
            freeze_startup_objects()
        if cpus:
            # last: the embedded PostgreSQL (a child process starts with the affinity of
            # the thread that forks it) is not started from a pinned thread
            pinned = affinity.pin_reactor_thread(cpus)
            self._pinned = True
            log.info("reactor thread on CPU {cpus} ([server] cpu_affinity); helper threads "
                     "on {all}", cpus=affinity.describe(pinned),
                     all=affinity.describe(affinity.available_cpus()))
        self._busy_polling = busypoll.install(
            self.reactor, busypoll.configured_us(self.config.server.busy_poll_us, cpus))
        self.ready.callback(self)
        return self

    @defer.inlineCallbacks
    def _start_p2p(self) -> Any:
        """The libp2p host beside the WebSocket ports, on the same gateway."""
        from wyseman.p2p.node import P2PKeyError
        from wyseman.p2p.server import P2PServer
        assert self.gateway is not None
        server = P2PServer(self.gateway, self.config.p2p,
                           self.config.resolve_path(self.config.p2p.key_file), self.reactor)
        try:
            yield server.start()
        except P2PKeyError as exc:
            raise ConfigError(f"{self.config.source}: [p2p] key_file: {exc}") from None
        except Exception as exc:
            raise ConfigError(f"{self.config.source}: [p2p] listen: cannot listen: "
                              f"{exc}") from None
        self.p2p = server

    def _listener_reconnected(self) -> None:
        if self.gateway is not None:
            self.gateway.listener_reconnected()

    @defer.inlineCallbacks
    def _listen(self, spec: ListenSpec, site: server.Site) -> Any:
        if self.reuse_port and spec.kind in ("tcp", "tls"):
            port = self._listen_shared(spec, site)
        else:
            port = yield _endpoint(self.reactor, spec, self.tls,
                                   self.config.server.listen_backlog).listen(
                                       self._factory(spec, site, tls_here=spec.proxy))
        self.ports.append(port)
        log.info("listening on {endpoint}", endpoint=spec.text)
        return port

    def _listen_shared(self, spec: ListenSpec, site: server.Site) -> Any:
        """Listen on a socket bound with SO_REUSEPORT (Twisted's endpoints cannot set it)."""
        factory = self._factory(spec, site, tls_here=True)
        sock = reuse_port_socket(spec)
        try:
            sock.listen(self.config.server.listen_backlog)
            return self.reactor.adoptStreamPort(sock.fileno(), sock.family, factory)
        finally:
            sock.close()   # the reactor holds its own duplicate

    def _factory(self, spec: ListenSpec, site: server.Site, tls_here: bool) -> Any:
        """What serves ``spec``'s connections: ``site``, inside TLS when ``tls_here`` (the
        endpoint is plain TCP), inside the PROXY protocol for a ``haproxy:`` endpoint
        (its header comes first, in the clear)."""
        factory: Any = site
        if spec.kind == "tls" and tls_here:
            from twisted.protocols.tls import TLSMemoryBIOFactory
            assert self.tls is not None   # (checked when the service was made)
            # (the casts: plain mypy cannot see zope interfaces; a Site is an
            # IProtocolFactory, a context factory (getContext) an IOpenSSLContextFactory)
            factory = TLSMemoryBIOFactory(cast(IOpenSSLContextFactory, self.tls), False,
                                          cast(IProtocolFactory, site))
        if spec.proxy:
            from wyseman.ws.proxyproto import ProxyProtocolFactory
            factory = ProxyProtocolFactory(
                factory, trusted=self.config.server.trusted_proxies,
                timeout=self.config.limits.open_handshake_timeout, reactor=self.reactor)
        return factory

    def _metrics_site(self) -> server.Site:
        from prometheus_client.twisted import MetricsResource
        from twisted.web.resource import Resource

        from wyseman.gateway.health import HealthResource
        from wyseman.ws.httpbounds import GatewaySite
        assert self.gateway is not None
        root = Resource()
        # (resources are IResources; plain mypy cannot see zope interfaces)
        root.putChild(b"metrics", cast(IResource, MetricsResource(
            registry=self.gateway.metrics.registry)))
        root.putChild(b"healthz", cast(IResource, HealthResource(self.gateway.health)))
        # the same bounds as the clients' ports: no bodies, idle and pending connections
        return GatewaySite.bounded_by(root, self.config.limits)

    @defer.inlineCallbacks
    def stopService(self) -> Any:  # noqa: N802
        super().stopService()
        self._sighup.remove()
        ports, self.ports = self.ports, []
        for port in ports:
            yield port.stopListening()
        if self.router is not None:
            self.router.stop()
        p2p, self.p2p = self.p2p, None
        if p2p is not None:
            p2p.stop_accepting()
        if self.gateway is not None:
            # 1001 "going away": clients reconnect (to another host, or this one back)
            yield self.gateway.close_all(CLOSE_GOING_AWAY, "server shutting down",
                                         CLOSE_GRACE_SECONDS)
        if p2p is not None:
            yield p2p.stop()      # the host, and the trio run with it
        if self.cluster is not None and self._cluster_started:
            self._cluster_started = False
            yield self.cluster.stop()     # its sockets and streams are closed: places freed
        if self.gateway is not None:
            yield self.gateway.stop()
        if self._busy_polling:
            self._busy_polling = False
            busypoll.uninstall(self.reactor)
        if self._pinned:
            self._pinned = False
            affinity.restore()   # an embedding application's reactor thread goes on


class _StopInOrder(MultiService):
    """Stops its services one after the other, the last started first (Twisted's
    MultiService stops them all at once): the embedded PostgreSQL stops only once the
    gateway has closed its sockets and pools. Says at start what it serves."""

    def __init__(self, config: Config) -> None:
        super().__init__()
        self.config = config

    def startService(self) -> None:  # noqa: N802
        from wyseman import __version__
        config = self.config
        database = config.database
        if config.embedded:
            target = f"embedded {config.resolve_path(database.embedded)} ({database.name})"
        else:
            target = startfail.describe_dsn(database.dsn)
        channels = ", ".join(config.channels.allow) or "none for every user"
        if config.channels.roles:
            channels += f"; more for {', '.join(sorted(config.channels.roles))}"
        log.info("wyseman {version} starting: config {config}; database {target}; "
                 "channels {channels}", version=__version__, config=config.source,
                 target=target, channels=channels)
        super().startService()

    @defer.inlineCallbacks
    def stopService(self) -> Any:  # noqa: N802
        Service.stopService(self)
        for service in reversed(list(self)):
            try:
                yield service.stopService()
            except Exception:
                log.failure("stopping {name} failed", name=service.name)


def makeService(config: Config, reactor: Any = None, actions: Any = None,  # noqa: N802
                exit_on_failure: bool = False) -> MultiService:
    """The whole server as one service: add it to your Twisted application.

    ``exit_on_failure``: a start that fails prints its reason to stderr and ends the
    process with status 1 (what ``twistd -n wyseman`` does); otherwise the reactor is
    stopped and the reason logged, for the embedding application to decide."""
    top = _StopInOrder(config)
    if config.embedded:
        from wyseman.provision.embedded import EmbeddedPostgresService
        embedded = EmbeddedPostgresService(config.resolve_path(config.database.embedded),
                                           config.database.name, config.database.admin_user,
                                           keep_off=config.server.cpu_affinity)
        embedded.setServiceParent(top)

        def admin_dsn() -> defer.Deferred:
            return embedded.ready
    else:
        from wyseman.provision.admin import admin_dsn_sync  # no I/O for an external database

        def admin_dsn() -> defer.Deferred:
            return defer.succeed(admin_dsn_sync(config))
    if config.server.workers > 1:
        from wyseman.application.workers.supervisor import WorkerSupervisor, check_embedding
        check_embedding(actions)
        supervisor = WorkerSupervisor(config, admin_dsn, reactor)
        supervisor.exit_on_failure = exit_on_failure
        supervisor.setServiceParent(top)
        return top
    if actions is None:
        from wyseman.gateway.actions import ActionRegistry
        actions = ActionRegistry.from_config(config)
    gateway = GatewayService(config, admin_dsn, reactor, actions)
    gateway.exit_on_failure = exit_on_failure
    gateway.setServiceParent(top)
    return top
