"""The embedding API: ``makeService(config)`` builds the whole server as one Twisted
service (see docs/embedding.md). It lives in :mod:`wyseman.application.service`; this
name is the one applications import."""

from wyseman.application.service import GatewayService, makeService

__all__ = ["GatewayService", "makeService"]
