"""Result values rendered as the Node server renders them (docs/protocol.md,
6.5 "Values received").

psycopg2 lets a connection decide how each PostgreSQL type is read; we read
every value straight into its final JSON form, so replies need no second pass:
numeric stays a string, timestamps become ISO UTC with milliseconds and ``Z``,
bytea becomes ``{"type":"Buffer","data":[...]}``, intervals become objects of
their non-zero parts, json/jsonb text is spliced into the reply unparsed
(:class:`RawJSON`). The session runs with ``TimeZone=UTC``, ``DateStyle=ISO``
and ``IntervalStyle=postgres`` (see :data:`SESSION_SETUP`) so the text is
predictable.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC
from typing import Any, TypedDict, cast

import orjson
import psycopg2
import psycopg2.extensions as ext

#: statements run on every gateway connection, before any request
SESSION_SETUP = (
    "set timezone = 'UTC'",
    "set datestyle = 'ISO, YMD'",
    "set intervalstyle = 'postgres'",
    "set extra_float_digits = 1",
)

#: what psycopg2 hands a value's reader: the value's text (or None for NULL) and the cursor
Cursor = ext.cursor | None


class Buffer(TypedDict):
    """A bytea value as node-pg gives it to JSON (``Buffer#toJSON``)."""

    type: str
    data: list[int]


_TS = re.compile(
    r"^(?P<date>\d{4,}-\d\d-\d\d)[ T](?P<time>\d\d:\d\d:\d\d)(?:\.(?P<frac>\d+))?"
    r"(?P<zone>[+-]\d\d(?::?\d\d(?::?\d\d)?)?)?(?P<bc> BC)?$")


def _timestamp(value: str | None, cursor: Cursor) -> str | None:
    """JS ``Date#toJSON``: UTC, exactly three fraction digits (truncated), ``Z``;
    years outside 0–9999 as ±six digits (44 BC → ``-000043``, JS counts 1 BC as 0).

    The session's zone is UTC, so a timestamptz prints with ``+00``; a
    timestamp without zone is read as UTC (the Node server reads it in the
    process's zone; run it in UTC to get the same). ±infinity and dates past
    JS's range → null, as JS gives for an invalid Date.
    """
    if value is None or value in ("infinity", "-infinity"):
        return None
    match = _TS.match(value)
    if match is None:
        return None
    zone = match["zone"]
    if zone and zone.replace(":", "").lstrip("+-").strip("0"):
        # Not UTC (only possible if a function changed TimeZone): let Python convert.
        from datetime import datetime
        frac = (match["frac"] or "")[:6].ljust(6, "0")
        try:
            parsed = datetime.fromisoformat(
                f"{match['date']}T{match['time']}.{frac}{_normal_zone(zone)}")
            utc = parsed.astimezone(UTC)
        except (ValueError, OverflowError):
            return None   # BC or past year 9999 in a non-UTC session: not worth a parser
        return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"
    year_text, month_day = match["date"].split("-", 1)
    year = int(year_text)
    if match["bc"]:
        year = 1 - year
    if year > 275760 or (year == 275760 and month_day >= "09-13"):
        return None
    head = f"{year:04d}" if 0 <= year <= 9999 else f"{'-' if year < 0 else '+'}{abs(year):06d}"
    millis = (match["frac"] or "")[:3].ljust(3, "0")
    return f"{head}-{month_day}T{match['time']}.{millis}Z"


def _normal_zone(zone: str) -> str:
    sign, digits = zone[0], zone[1:].replace(":", "")
    digits = digits.ljust(4, "0")
    return f"{sign}{digits[:2]}:{digits[2:4]}"


def _text(value: str | None, cursor: Cursor) -> str | None:
    return value


class RawJSON(str):
    """JSON text from PostgreSQL, spliced unparsed into replies by :func:`dumps`."""

    __slots__ = ()

    def parse(self) -> Any:
        return orjson.loads(str(self))


def _json(value: str | None, cursor: Cursor) -> RawJSON | None:
    return None if value is None else RawJSON(value)


def _default(value: object) -> object:
    if isinstance(value, RawJSON):
        return orjson.Fragment(str(value))
    if isinstance(value, (bytes, bytearray, memoryview)):
        buffer: Buffer = {"type": "Buffer", "data": list(bytes(value))}
        return buffer
    if isinstance(value, str):  # any other str subclass
        return str(value)
    raise TypeError(f"cannot send {type(value).__name__} as JSON")


def dumps(value: Any) -> bytes:
    """Encode a reply or notification frame (PostgreSQL JSON text is not re-parsed)."""
    return orjson.dumps(value, default=_default, option=orjson.OPT_PASSTHROUGH_SUBCLASS)


def _bytea(value: str | None, cursor: Cursor) -> Buffer | None:
    if value is None:
        return None
    if value.startswith("\\x"):
        data = bytes.fromhex(value[2:])
    else:  # 'escape' bytea_output
        data = bytes(psycopg2.BINARY(value, cursor))
    return {"type": "Buffer", "data": list(data)}


_INTERVAL_PART = re.compile(r"(-?\d+) (year|mon|day)s?")
_INTERVAL_TIME = re.compile(r"(-)?(\d+):(\d\d):(\d\d)(?:\.(\d+))?")
_UNIT = {"year": "years", "mon": "months", "day": "days"}


def _interval(value: str | None, cursor: Cursor) -> dict[str, int | float] | None:
    """``1 day 02:03:04.5`` → ``{"days":1,"hours":2,"minutes":3,"seconds":4,
    "milliseconds":500}`` (zero parts omitted, as node-pg's postgres-interval does)."""
    if value is None:
        return None
    out: dict[str, int | float] = {}
    for number, unit in _INTERVAL_PART.findall(value):
        if int(number):
            out[_UNIT[unit]] = int(number)
    time = _INTERVAL_TIME.search(value)
    if time:
        sign = -1 if time[1] else 1
        for key, text in (("hours", time[2]), ("minutes", time[3]), ("seconds", time[4])):
            if int(text):
                out[key] = sign * int(text)
        if time[5]:
            millis = float("0." + time[5]) * 1000
            if millis:
                out["milliseconds"] = sign * (int(millis) if millis.is_integer() else millis)
    return out


def _float(value: str | None, cursor: Cursor) -> float | None:
    return None if value is None else float(value)


#: a value's reader (psycopg2 calls it a typecaster)
Caster = Callable[[str | None, Cursor], object]

def _date_timestamp(value: str | None, cursor: Cursor) -> str | None:
    """A date inside an array as node-pg gives it: a Date at midnight (the session and
    the Node server in UTC), so ``2024-02-29`` → ``2024-02-29T00:00:00.000Z``. (A date
    column itself stays text: npm wyseman sets that parser, not the array's.)"""
    if value is None:
        return None
    day, bc, _ = value.partition(" BC")
    return _timestamp(f"{day} 00:00:00{' BC' if bc else ''}", cursor)


def _js_number(text: str) -> float | int:
    """A number as JavaScript's JSON writes it (integral values without ``.0``)."""
    number = float(text)
    return int(number) if number.is_integer() and abs(number) < 2 ** 53 else number


_POINT = re.compile(r"^\(([^,()]+),([^,()]+)\)$")
_CIRCLE = re.compile(r"^<\(([^,()]+),([^,()]+)\),([^,()<>]+)>$")


def _point(value: str | None, cursor: Cursor) -> dict[str, float | int] | str | None:
    """``(1,2)`` → ``{"x": 1, "y": 2}``, as node-pg's point parser."""
    if value is None:
        return None
    match = _POINT.match(value)
    return value if match is None else {"x": _js_number(match[1]), "y": _js_number(match[2])}


def _circle(value: str | None, cursor: Cursor) -> dict[str, float | int] | str | None:
    """``<(1,2),3>`` → ``{"x": 1, "y": 2, "radius": 3}``, as node-pg's circle parser."""
    if value is None:
        return None
    match = _CIRCLE.match(value)
    if match is None:
        return value
    return {"x": _js_number(match[1]), "y": _js_number(match[2]),
            "radius": _js_number(match[3])}


# OIDs are fixed for built-in types.
_SCALARS: tuple[tuple[str, tuple[int, ...], Caster], ...] = (
    ("WYSEMAN_NUMERIC", (1700,), _text),
    ("WYSEMAN_DATE", (1082,), _text),
    ("WYSEMAN_TIME", (1083, 1266), _text),
    ("WYSEMAN_TIMESTAMP", (1114, 1184), _timestamp),
    ("WYSEMAN_JSON", (114, 3802), _json),
    ("WYSEMAN_BYTEA", (17,), _bytea),
    ("WYSEMAN_INTERVAL", (1186,), _interval),
    ("WYSEMAN_UUID", (2950,), _text),
    ("WYSEMAN_MONEY", (790,), _text),
    ("WYSEMAN_POINT", (600,), _point),
    ("WYSEMAN_CIRCLE", (718,), _circle),
    # arrays node-pg has no parser for reach Node clients as their text ("{release}"),
    # where psycopg2 would parse them: "char"[], name[], int2vector[], cstring[]
    ("WYSEMAN_RAW_ARRAY", (1002, 1003, 1006, 1263), _text),
    # and ranges, which psycopg2 would make Range objects of: their text, as for node-pg
    # (int4range, int8range, numrange, daterange, tsrange, tstzrange; their arrays but
    # numrange[], which node-pg reads as a list of strings)
    ("WYSEMAN_RANGE", (3904, 3926, 3906, 3912, 3908, 3910), _text),
    ("WYSEMAN_RAW_RANGE_ARRAY", (3905, 3927, 3913, 3909, 3911), _text),
)

# array oid, element caster: node-pg's choices (int8[] → strings, numeric[] → numbers).
_ARRAYS: tuple[tuple[str, tuple[int, ...], Caster], ...] = (
    ("WYSEMAN_INT8_ARRAY", (1016,), _text),
    ("WYSEMAN_NUMERIC_ARRAY", (1231,), _float),
    ("WYSEMAN_DATE_ARRAY", (1182,), _date_timestamp),
    ("WYSEMAN_TIME_ARRAY", (1183, 1270), _text),
    ("WYSEMAN_TIMESTAMP_ARRAY", (1115, 1185), _timestamp),
    ("WYSEMAN_JSON_ARRAY", (199, 3807), _json),
    ("WYSEMAN_BYTEA_ARRAY", (1001,), _bytea),
    ("WYSEMAN_INTERVAL_ARRAY", (1187,), _interval),
    ("WYSEMAN_UUID_ARRAY", (2951,), _text),
    # arrays node-pg parses into lists of strings, which psycopg2 leaves as text:
    # cidr[], macaddr[], inet[], regproc[], numrange[], money[]
    ("WYSEMAN_STRING_ARRAY", (651, 1040, 1041, 1008, 3907, 791), _text),
    ("WYSEMAN_POINT_ARRAY", (1017,), _point),
)



def _driver_caster(caster: Caster) -> Callable[[str | bytes | None, ext.cursor], Any]:
    """``caster`` as psycopg2's stubs want it: they allow bytes, which psycopg2 never
    passes a caster (it decodes the text with the connection's encoding first)."""
    return cast("Callable[[str | bytes | None, ext.cursor], Any]", caster)


_TYPES = [ext.new_type(oids, name, _driver_caster(caster)) for name, oids, caster in _SCALARS]
_TYPES += [ext.new_array_type(oids, name,
                              ext.new_type((0,), name + "_ELEMENT", _driver_caster(caster)))
           for name, oids, caster in _ARRAYS]


def register(connection: ext.connection) -> None:
    """Make ``connection`` read values in their reply form (call once after connect)."""
    for type_ in _TYPES:
        ext.register_type(type_, connection)
