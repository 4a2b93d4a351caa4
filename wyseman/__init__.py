"""wyseman: an authenticated WebSocket gateway to PostgreSQL, on Twisted."""

__version__ = "0.1.0"
