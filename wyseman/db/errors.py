"""What PostgreSQL said when a statement failed, read off the driver's exception here,
so that the layers above never import the driver to tell its errors apart."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg2
from twisted.python.failure import Failure


@dataclass(frozen=True)
class ServerError:
    """An error PostgreSQL reported for a statement (its fields as libpq gives them)."""

    message: str
    detail: str | None
    constraint: str | None
    sqlstate: str | None


def server_error(failure: Failure | BaseException) -> ServerError | None:
    """The PostgreSQL error ``failure`` carries; None if it is not one (a lost connection
    is not: :func:`wyseman.db.pg.is_connection_error` tells those)."""
    exc = failure.value if isinstance(failure, Failure) else failure
    if not isinstance(exc, psycopg2.Error):
        return None
    diag = exc.diag
    text = str(exc).strip()
    message = diag.message_primary or (text.splitlines()[0] if text else "")
    return ServerError(message, diag.message_detail, diag.constraint_name, exc.pgcode)
