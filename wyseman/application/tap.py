"""What the twistd plugin runs: options, then :func:`wyseman.application.service.makeService`."""

from __future__ import annotations

import os

from twisted.application.service import MultiService, Service
from twisted.python import usage

from wyseman.config import Config, ConfigError, load


class Options(usage.Options):
    synopsis = "--config FILE"
    longdesc = ("Serve the Wyseman WebSocket protocol in front of PostgreSQL. "
                "Every setting is in the TOML config file; see docs/configuration.md.")
    optParameters = [
        ["config", "c", os.environ.get("WYSEMAN_CONFIG", "wyseman.toml"),
         "TOML configuration file (default: $WYSEMAN_CONFIG or ./wyseman.toml)."],
    ]

    def postOptions(self) -> None:  # noqa: N802
        try:
            self["parsed"] = load(self["config"])
        except ConfigError as exc:
            raise SystemExit(f"wyseman: error: {exc}") from None


class _StopOnHangup(Service):
    """In a terminal, SIGHUP (the terminal closed) stops the server cleanly."""

    name = "stop-on-hangup"  # type: ignore[assignment]  # (Twisted: unannotated `name = None`)
    _handler = None

    def startService(self) -> None:  # noqa: N802
        super().startService()
        from twisted.internet import reactor

        from wyseman.application.sighup import stop_on_hangup
        self._handler = stop_on_hangup(reactor)

    def stopService(self) -> None:  # noqa: N802
        super().stopService()
        if self._handler is not None:
            self._handler.remove()


def makeService(options: Options) -> MultiService:  # noqa: N802
    from wyseman.application.service import makeService as make
    config: Config = options["parsed"]
    from wyseman.application.tls import TLSConfigError
    try:
        top = make(config, exit_on_failure=True)
    except (ConfigError, TLSConfigError) as exc:
        # one line and status 1 (a service manager sees it), not twistd's traceback
        raise SystemExit(f"wyseman: error: {exc}") from None
    _StopOnHangup().setServiceParent(top)
    return top
