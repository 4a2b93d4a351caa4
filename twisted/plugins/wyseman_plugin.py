"""twistd plugin: ``twistd -n wyseman --config FILE`` (the work is in wyseman.application.tap)."""

from twisted.application.service import ServiceMaker

Wyseman = ServiceMaker(
    "wyseman",
    "wyseman.application.tap",
    "Authenticated WebSocket gateway to PostgreSQL (Wyseman protocol)",
    "wyseman",
)
