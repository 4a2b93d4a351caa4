"""Protocol errors: the ``error`` member of a reply (docs/protocol.md, 8 "Errors").

A :class:`ProtocolError` is raised by any layer that refuses a request
(compiler, dispatcher, custom actions) and is turned into the reply shape
``{"message", "detail", "code", "pgCode"}`` with absent members omitted.
"""

from __future__ import annotations

from typing import Any

#: Prefix of the server's own translatable error codes.
LANG_PREFIX = "!wm.lang:"


class ProtocolError(Exception):
    """A request refused before or instead of reaching the database.

    ``tag`` is the short name (``badWhere``); ``code`` the wire code
    (``!wm.lang:badWhere``).
    """

    def __init__(self, tag: str, message: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.tag = tag
        self.message = message
        self.detail = detail

    @property
    def code(self) -> str:
        return LANG_PREFIX + self.tag

    def as_reply(self) -> dict[str, Any]:
        """The ``error`` object of the reply, absent members omitted."""
        error: dict[str, Any] = {"message": self.message}
        if self.detail is not None:
            error["detail"] = self.detail
        error["code"] = self.code
        return error

    def __repr__(self) -> str:
        return f"ProtocolError({self.tag!r}, {self.message!r})"


# Constructors for the codes of docs/protocol.md, 8 "Errors", so the texts live in one place.

def bad_action(action: Any) -> ProtocolError:
    return ProtocolError("badAction", f"Unhandled: {action}")


def bad_message(text: str) -> ProtocolError:
    return ProtocolError("badMessage", f"parsing: {text}")


def too_many_rows(cap: int) -> ProtocolError:
    return ProtocolError(
        "tooManyRows", f"the reply would have more than {cap} rows ([limits] "
        "max_reply_rows): ask for fewer with limit and offset, or a narrower where")


def reply_too_large(cap: int) -> ProtocolError:
    return ProtocolError(
        "replyTooLarge", f"the reply would be larger than {cap} bytes ([limits] "
        "max_reply_bytes): ask for fewer rows or fields")


def commit_unknown() -> ProtocolError:
    """The connection to the database broke after the change was sent to be committed."""
    return ProtocolError(
        "commitUnknown", "the database connection was lost while the change was being "
        "committed: it may have been saved; read it back before sending it again")


def no_database(why: str) -> ProtocolError:
    return ProtocolError("noDatabase", f"database unavailable: {why}")


def bad_tuples(count: int, why: str = "") -> ProtocolError:
    return ProtocolError("badTuples",
                         f"unexpected rows: {count} != 1" + (f" ({why})" if why else ""))


def bad_field_name() -> ProtocolError:
    return ProtocolError("badFieldName", "invalid null or undefined field")


def bad_left() -> ProtocolError:
    return ProtocolError("badLeft", "invalid null or undefined left hand side")


def bad_right() -> ProtocolError:
    return ProtocolError("badRight", "invalid or null right side")


def bad_operator(op: Any) -> ProtocolError:
    return ProtocolError("badOperator", f"invalid operator: {op}")


def bad_insert() -> ProtocolError:
    return ProtocolError("badInsert", "empty insert")


def bad_update() -> ProtocolError:
    return ProtocolError("badUpdate", "empty update")


def bad_where() -> ProtocolError:
    return ProtocolError("badWhere", "empty where clause")


def bad_delete() -> ProtocolError:
    return ProtocolError("badDelete", "unbounded delete")


def no_result() -> ProtocolError:
    return ProtocolError("noResult", "no result")


def bad_view(message: str) -> ProtocolError:
    """A view name that is malformed or names a schema closed to clients (D14, D25)."""
    return ProtocolError("badView", message)
