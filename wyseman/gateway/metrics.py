"""Prometheus metrics of one gateway (own registry, so several gateways can coexist)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

#: the values of the ``transport`` label
TRANSPORTS = ("websocket", "libp2p")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        # ``transport``: "websocket" or "libp2p" (the Connection's ``transport_name``)
        self.connections = Gauge("wyseman_connections", "Open client connections",
                                 ["transport"], registry=r)
        self.handshakes = Counter("wyseman_handshakes", "Logins by outcome and reason",
                                  ["outcome", "reason", "transport"], registry=r)
        self.requests = Histogram("wyseman_request_seconds", "Request latency by action",
                                  ["action", "outcome"], registry=r)
        self._request_children: dict[tuple[str, str], Histogram] = {}
        self.notifications = Counter("wyseman_notifications_delivered",
                                     "Notification frames sent to sockets", registry=r)
        self.notification_fanout = Histogram(
            "wyseman_notification_fanout_seconds",
            "Time to hand one notification to all its subscribed sockets", registry=r,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0))
        self.notifications_dropped = Counter("wyseman_notifications_dropped",
                                             "Notifications not delivered", registry=r)
        self.slow_consumers = Counter("wyseman_slow_consumers",
                                      "Connections cut for not reading", ["transport"],
                                      registry=r)
        self.pool_connections = Gauge("wyseman_pool_connections",
                                      "Open user-session connections (all roles)", registry=r)
        self.pool_waiting = Gauge("wyseman_pool_waiting",
                                  "Requests waiting for a pooled connection", registry=r)
        self.pool_waits = Gauge("wyseman_pool_waits",
                                "Requests that had to wait for a pooled connection, in all",
                                registry=r)
        self.read_batches = Gauge(
            "wyseman_read_batches",
            "Statements that answered several reads at once, in all", registry=r)
        self.batched_reads = Gauge("wyseman_batched_reads",
                                   "Reads answered by a batch statement, in all", registry=r)
        self.failed_batches = Gauge(
            "wyseman_read_batches_failed",
            "Batches that failed, whose reads then ran again one by one, in all", registry=r)
        self.gc_pauses = Histogram(
            "wyseman_gc_pause_seconds",
            "Duration of Python's cyclic garbage collections, by generation", ["generation"],
            registry=r,
            buckets=(0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0))
        self.listen_reconnects = Gauge("wyseman_listen_reconnects",
                                       "Times the LISTEN connection was re-opened", registry=r)
        #: ``[server] route_by_user`` (set by the service when it routes)
        self.routed = Gauge("wyseman_routed_connections",
                            "Upgrades passed to their user's worker, taken from another "
                            "worker, or kept because the owner could not take them, in all",
                            ["outcome"], registry=r)
        #: ``[cluster] shared_state = "postgres"`` (set by the service when it shares)
        self.shared_state = Gauge("wyseman_shared_state",
                                  "Shared state in PostgreSQL: lease_ok 1 while this host's "
                                  "lease renewals succeed; replay_full 1 while key logins "
                                  "are refused because the shared replay table is full",
                                  ["state"], registry=r)

        # zero from the start, as unlabelled series are (a dashboard sees 0, not nothing)
        for transport in TRANSPORTS:
            self.connections.labels(transport)
            self.slow_consumers.labels(transport)

    def handshake(self, outcome: str, reason: str, transport: str = "websocket") -> None:
        self.handshakes.labels(outcome, reason, transport).inc()

    def request(self, action: str, outcome: str, seconds: float) -> None:
        # The labelled child, looked up once: ``labels()`` costs more than the observation.
        # (The labels come from a fixed set: the built-in actions, "custom", outcomes.)
        key = (action, outcome)
        child = self._request_children.get(key)
        if child is None:
            child = self._request_children[key] = self.requests.labels(action, outcome)
        child.observe(seconds)

    def slow_consumer(self, transport: str = "websocket") -> None:
        self.slow_consumers.labels(transport).inc()
