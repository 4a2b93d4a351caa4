"""twistd plugin: ``twistd -n wyseman --config FILE`` (the work is in wyseman.server_tap)."""

from twisted.application.service import ServiceMaker

Wyseman = ServiceMaker(
    "wyseman",
    "wyseman.server_tap",
    "Authenticated WebSocket gateway to PostgreSQL (Wyseman protocol)",
    "wyseman",
)
