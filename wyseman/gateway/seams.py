"""What the gateway needs from the layers around it, and what it offers a transport, as
typed seams: a transport provides connections, the db layer runs statements, the
application wires them in.

The gateway keeps who is subscribed to what; how a message reaches many sockets at
once (framing once, writing from several threads) is the transport's business."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet import defer

#: (the login decision reserves the slots: its seam, here for the gateway's callers)
from wyseman.auth.seams import UserSlots as UserSlots

if TYPE_CHECKING:
    from wyseman.auth.admission import Admission
    from wyseman.config import Config
    from wyseman.gateway.dispatch import Dispatcher, Session
    from wyseman.gateway.metrics import Metrics
    from wyseman.gateway.resources import ResourceStore


class Connection(Protocol):
    """One client connection of a transport, as the gateway sees it once it is open."""

    session: Session
    #: the transport's name in metrics and logs ("websocket", "libp2p"): a label only,
    #: the gateway treats every connection alike
    transport_name: str

    def end_session(self, code: int, reason: str) -> None:
        """Close politely with a close ``code`` (4001: credentials changed, 1001: going
        away) and ``reason``."""
        ...

    def abort(self) -> None:
        """Cut the connection at once (it did not answer a close in time)."""
        ...


class Broadcaster(Protocol):
    """Delivers one encoded message to many subscribers of a channel."""

    def broadcast(self, subscribers: Sequence[Any], payload: bytes) -> int:
        """Send ``payload`` to each of ``subscribers``; → how many took it (the others
        are closing)."""
        ...

    def close(self) -> None:
        """No more broadcasts after this (stop helper threads)."""
        ...


class StatementRunner(Protocol):
    """What requests need from the database: reads and transactions as a user's role,
    and the process-wide metadata caches (the db layer's ``Database``)."""

    read_batch: int
    prepared_statements: bool
    #: changes whenever the metadata caches are dropped (compiled statements with them)
    generation: int

    def read_as(self, role: str, sql: str, values: tuple[Any, ...],
                plain: tuple[str, dict[str, Any]]) -> defer.Deferred[Any]:
        ...

    def read_as_then(self, role: str, sql: str, values: tuple[Any, ...],
                     plain: tuple[str, dict[str, Any]], then: Callable[[Any], None]) -> None:
        ...

    def run_as(self, role: str, work: Callable[[Any], defer.Deferred[Any]]) -> defer.Deferred[Any]:
        ...

    def column_types(self, relation: str) -> defer.Deferred[Any]:
        ...

    def meta(self, view: str) -> defer.Deferred[Any]:
        ...

    def lang(self, view: str, language: str) -> defer.Deferred[Any]:
        ...


class TransportHub(Protocol):
    """What a transport needs from the gateway of its process (``Gateway``): the login
    decision, the dispatcher, the registry of open connections, the limits and the
    metrics. A transport sees nothing else of it."""

    # (read-only: a transport only reads them, and so a hub may hold narrower types)
    @property
    def config(self) -> Config: ...
    @property
    def clock(self) -> Any: ...
    @property
    def admission(self) -> Admission: ...
    @property
    def dispatcher(self) -> Dispatcher: ...
    @property
    def metrics(self) -> Metrics: ...
    @property
    def trusted_proxies(self) -> Sequence[Any]: ...
    @property
    def ip_style(self) -> str: ...
    @property
    def log_connections(self) -> bool: ...
    @property
    def max_in_flight(self) -> int: ...
    @property
    def max_outbound_bytes(self) -> int: ...
    @property
    def resources(self) -> ResourceStore: ...

    def register(self, connection: Connection) -> defer.Deferred[Any]:
        """An opened connection, its channels subscribed."""
        ...

    def unregister(self, connection: Connection) -> None:
        ...
