"""Request values → bound parameters, as node-pg binds them
(docs/protocol.md, 6.4 "Values sent").

Every scalar is sent as text of unknown type so that PostgreSQL infers the type
from the context (``text_col = '5'`` works, where a typed integer would not):
JS number formatting, ``true``/``false``, arrays as array literals, objects as
JSON text, ``None`` as NULL. Binary fields arrive base64-encoded and are bound
as bytes.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from wyseman import errors

Param = str | bytes | None


def js_number(value: float | int) -> str:
    """``String(n)`` in JavaScript: shortest round-trip digits, positional from
    1e-6 up to 1e21, ``1e+21``/``1.5e-7`` style exponents outside."""
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    if value == 0:
        return "0"
    if value.is_integer() and abs(value) < 1e21:
        return str(int(value))
    exact = Decimal(repr(value))
    if 1e-6 <= abs(value) < 1e21:
        text = format(exact, "f")
        return text.rstrip("0").rstrip(".") if "." in text else text
    sign, digits, exponent = exact.as_tuple()
    assert isinstance(exponent, int)     # (a finite number: not 'n', 'N' or 'F')
    mantissa = "".join(map(str, digits)).rstrip("0") or "0"
    power = exponent + len(digits) - 1
    head = mantissa[0] + ("." + mantissa[1:] if len(mantissa) > 1 else "")
    return f"{'-' if sign else ''}{head}e{'+' if power >= 0 else '-'}{abs(power)}"


def _json_text(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _array_element(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, list):
        return array_literal(value)
    text = value if isinstance(value, str) else scalar_text(value)
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def array_literal(values: Sequence[Any]) -> str:
    """``[1, "a b", None, [2, 3]]`` → ``{"1","a b",NULL,{"2","3"}}``."""
    return "{" + ",".join(_array_element(v) for v in values) + "}"


def scalar_text(value: Any) -> str:
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, (int, float)):
        return js_number(value)
    if isinstance(value, str):
        return value
    try:
        return _json_text(value)
    except ValueError as exc:  # NaN inside an object
        raise errors.bad_message(f"value cannot be sent: {exc}") from None


def bind(value: Any) -> Param:
    """A where/params value as node-pg would bind it."""
    if value is None:
        return None
    if isinstance(value, list):
        return array_literal(value)
    return scalar_text(value)


def is_binary(value: Any) -> bool:
    return isinstance(value, dict) and value.get("_type_") == "binary"


def decode_binary(value: Mapping[str, Any]) -> bytes:
    data = value.get("_data_")
    if not isinstance(data, str):
        raise errors.bad_message("binary field without base64 _data_")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise errors.bad_message("binary field: _data_ is not base64") from None


def bind_field(value: Any, column_type: str | None) -> Param:
    """An insert/update value: binary fields as bytes; json/jsonb columns get the
    JSON text of the value whatever its type (a string becomes a JSON string)."""
    if value is None:
        return None  # SQL NULL (the Node server would store a JSON null in json columns)
    if is_binary(value):
        return decode_binary(value)
    if column_type in ("json", "jsonb"):
        try:
            return _json_text(value)
        except ValueError as exc:
            raise errors.bad_message(f"value cannot be sent as JSON: {exc}") from None
    return bind(value)
