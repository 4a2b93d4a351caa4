"""Custom actions: the dispatcher hook of docs/protocol.md, 7.11 "Custom actions".

A request whose ``action`` is not built in is offered to the handler
registered for its ``(view, name)`` — wylib sends ``{"action": "action",
"view": V, "name": N, "data": {...}}`` — or, for any other action word, for
``(view, action)``. A handler is called as ``handler(ctx)`` with an
:class:`ActionContext` and returns the reply's ``data`` (or a Deferred of it),
or raises :class:`wyseman.errors.ProtocolError`. Register handlers in code
(``registry.register("base.ent_v", "csv", fn)``) or in the config::

    [actions.handlers]
    "base.ent_v:csv" = "wyseman.examples.csv_export:export"
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from twisted.internet import defer

from wyseman.config import Config, ConfigError
from wyseman.errors import ProtocolError

if TYPE_CHECKING:
    from wyseman.gateway.dispatch import Session
    from wyseman.gateway.resources import ResourceStore
    from wyseman.gateway.seams import StatementRunner

Handler = Callable[["ActionContext"], Any]


@dataclass
class ActionContext:
    """What a handler gets: who asks, what they asked, and SQL as that user."""

    session: Session        # .user, .listen, .peer
    request: Mapping[str, Any]
    db: StatementRunner
    #: where :meth:`publish` keeps what it is given (None: this server publishes nothing)
    resources: ResourceStore | None = None

    @property
    def user(self) -> str:
        return self.session.user

    def run(self, sql: str, params: Mapping[str, Any] | None = None) -> defer.Deferred[Any]:
        """Run one statement (psycopg2 ``%(name)s`` placeholders) as the user
        → Deferred of ``wyseman.db.pg.Result``."""
        return self.db.run_as(self.session.user, lambda conn: conn.execute(sql, params))

    def publish(self, body: bytes | str, content_type: str, filename: str | None = None,
                ttl: float | None = None) -> str:
        """Serve ``body`` to this session's client (a report, an export) → the URL path
        to put in the reply. It is readable from the session's client address only, while
        the session lives, for ``ttl`` seconds at most (``[actions] resource_ttl``);
        ``filename``: offered as a download under that name."""
        if self.resources is None:
            raise ProtocolError("badAction", "this server publishes no resources")
        return self.resources.publish(self.session, body, content_type, filename, ttl)


class ActionRegistry:
    def __init__(self) -> None:
        self._handlers: dict[tuple[str, str], Handler] = {}

    def register(self, view: str, name: str, handler: Handler) -> None:
        self._handlers[(view, name)] = handler

    def find(self, view: str, request: Mapping[str, Any]) -> Callable[..., Any] | None:
        action = request.get("action")
        name = request.get("name") if action == "action" else action
        if not isinstance(name, str) or not isinstance(view, str):
            return None
        handler = self._handlers.get((view, name))
        if handler is None:
            return None

        def call(session: Any, request: Mapping[str, Any], db: Any,
                 resources: ResourceStore | None = None) -> defer.Deferred[Any]:
            return defer.maybeDeferred(handler, ActionContext(session, request, db,
                                                              resources))
        return call

    @classmethod
    def from_config(cls, config: Config) -> ActionRegistry:
        registry = cls()
        for (view, name), target in config.actions.handlers.items():
            registry.register(view, name, load_handler(target, config.source))
        return registry


def load_handler(target: str, source: str = "<config>") -> Handler:
    module_name, _, attribute = target.partition(":")
    if not attribute:
        module_name, _, attribute = target.rpartition(".")
    try:
        module = importlib.import_module(module_name)
        handler = getattr(module, attribute)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"{source}: [actions] handlers: cannot load {target!r}: {exc}") \
            from None
    if not callable(handler):
        raise ConfigError(f"{source}: [actions] handlers: {target!r} is not callable")
    return cast(Handler, handler)
