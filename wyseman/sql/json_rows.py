"""Let PostgreSQL render reply rows as JSON (docs/performance.md).

A select's rows come back as one JSON text each (``row_to_json``), which the
dispatcher splices into the reply unparsed: Python builds no dict per row and no
object per value. The text must be what the Python renderer
(:mod:`wyseman.db.types`) produces, which is the Node server's form, so each
column type is either rendered as it is (its ``row_to_json`` form already
matches), rendered through an expression, or unknown — and one unknown column
sends the whole statement back to the Python renderer. Types are PostgreSQL's
``typname`` (base type for domains, ``anyenum`` for enums), as
:meth:`wyseman.db.database.Database.column_types` reports them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from wyseman.sql.where import quote_ident

#: row_to_json renders these as the Node server does
AS_IS = frozenset({
    "int2", "int4", "int8", "oid", "bool", "text", "varchar", "bpchar", "name", "citext",
    "uuid", "date", "json", "jsonb", "anyenum",
    "_int2", "_int4", "_bool", "_text", "_varchar", "_bpchar", "_uuid", "_json", "_jsonb",
    # node-pg reads these arrays as lists of their elements' text
    "_inet", "_cidr", "_macaddr", "_regproc", "_numrange", "_money",
})

_ISO_MILLIS = "'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'"
_ISO_TAIL = "'-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'"


def _js_date(u: str) -> str:
    """Date#toJSON of the UTC timestamp ``u``: years 0–9999 as four digits, others
    as ±six digits (44 BC is -000043: JS counts 1 BC as year 0); ±infinity and
    dates past JS's range → null."""
    year = (f"(case when {u} < '0001-01-01' then extract(year from {u}) + 1 "
            f"else extract(year from {u}) end)")
    return (f"case when {u} >= '0001-01-01' and {u} < '10000-01-01' "
            f"then to_char({u}, {_ISO_MILLIS}) "
            f"when isfinite({u}) and {u} < '275760-09-13' then "
            f"(case when {u} >= '0001-01-01 BC' and {u} < '0001-01-01' then '0000' "
            f"else to_char({year}, 'S000000') end) || to_char({u}, {_ISO_TAIL}) end")


#: type → SQL expression over ``{c}`` giving the Node form
EXPRESSIONS: Mapping[str, str] = {
    # numeric and money stay strings (JSON numbers would lose digits in JS)
    "numeric": "{c}::text",
    "money": "{c}::text",
    "time": "{c}::text",
    "timetz": "{c}::text",
    # JS has no NaN/Infinity in JSON: null, as JSON.stringify writes them
    "float4": "case when {c} in ('NaN', 'Infinity', '-Infinity') then null else {c} end",
    "float8": "case when {c} in ('NaN', 'Infinity', '-Infinity') then null else {c} end",
    # Date#toJSON (milliseconds truncated, as node-pg does)
    "timestamptz": _js_date("({c} at time zone 'UTC')"),
    "timestamp": _js_date("{c}"),
    # node-pg reads int8[] as strings (but int8 as a number: wyseman sets that parser)
    "_int8": "{c}::text[]",
    # arrays node-pg has no parser for: their text, as it reaches Node clients
    "_name": "{c}::text",
    "_char": "{c}::text",
}


def rows_as_json(sql: str, names: Sequence[str], types: Mapping[str, str]) -> str | None:
    """``sql`` (a select whose output columns are ``names``) wrapped so that each row
    is one JSON text in the Node form; None if some column needs the Python renderer.

    The casts sit in an outer query so that ORDER BY inside ``sql`` still sees the
    original columns (``order by price`` must sort numbers, not their text).
    """
    if len(set(names)) != len(names):
        return None          # `fields: ["a", "a"]`: an outer reference would be ambiguous
    columns, plain = [], True
    for name in names:
        type_name = types.get(name) or ""
        quoted = quote_ident(name)
        if type_name in AS_IS:
            columns.append("r." + quoted)
        elif type_name in EXPRESSIONS:
            columns.append(EXPRESSIONS[type_name].format(c="r." + quoted) + " as " + quoted)
            plain = False
        else:
            return None
    if plain:
        return f"select row_to_json(r.*)::text from ({sql}) r"
    return f"select row_to_json(t.*)::text from (select {','.join(columns)} from ({sql}) r) t"
