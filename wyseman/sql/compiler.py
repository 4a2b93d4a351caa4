"""Request → SQL, with no I/O (docs/protocol.md, 7.1 "View names" to 7.8 "delete").

``compile_request(request, meta_columns, policy)`` returns a :class:`Statement`
(SQL with ``$n`` placeholders, the bound values, and the row-count rule) or
raises :class:`wyseman.errors.ProtocolError`. Identifiers are validated and
always quoted, values are always parameters, argument types are checked
against a strict grammar (D14) and system schemas are refused (D25), so no
request can produce more than one statement.

``meta``/``lang`` and custom actions are answered by the dispatcher, not here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any

from wyseman import errors
from wyseman.sql.json_rows import rows_as_json
from wyseman.sql.values import Param, bind, bind_field
from wyseman.sql.where import Params, WhereCompiler, order_clause, quote_ident

ACTIONS = frozenset({"select", "tuple", "insert", "update", "delete"})


@dataclass(frozen=True)
class Policy:
    """What requests may name and how big they may get."""

    denied_schemas: frozenset[str] = frozenset({"pg_catalog", "information_schema", "pg_toast"})
    allowed_schemas: frozenset[str] | None = None   # None: any schema that is not denied
    max_where_depth: int = 32
    max_in_list: int = 10000
    #: most rows a select may answer with (0: no bound), pushed into its SQL as a limit
    max_rows: int = 0
    #: most bytes of rows a select may answer with (0: no bound), counted by PostgreSQL
    max_bytes: int = 0


DEFAULT_POLICY = Policy()


@dataclass(frozen=True)
class ViewName:
    """The parsed ``view`` member: ``schema.name`` or ``schema.fn(type, …)``."""

    schema: str
    name: str
    arg_types: tuple[str, ...] | None = None   # None: no parentheses (a relation)

    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    def sql(self) -> str:
        return quote_ident(self.schema) + "." + quote_ident(self.name)


# A quoted identifier (copied, % doubled), a placeholder, or a bare %.
_PYFORMAT_TOKEN = re.compile(r'"(?:[^"]|"")*"|\$(\d+)|%')


def _pyformat_token(match: re.Match[str]) -> str:
    text: str = match.group(0)
    if match.group(1):
        return f"%(p{match.group(1)})s"
    return text.replace("%", "%%")


@dataclass(frozen=True)
class Statement:
    sql: str
    params: tuple[Param, ...]
    rows: str                  # 'many' → list, 'one' → exactly one row, 'none' → null
    view: ViewName
    #: the same statement with each row rendered as JSON text by PostgreSQL
    #: (:mod:`wyseman.sql.json_rows`), when every column's type allows it
    json_sql: str | None = None
    #: the bounds of :class:`Policy` ``max_rows`` and ``max_bytes`` this statement was
    #: compiled under (it returns at most one row, or the bytes' crossing row, more)
    row_cap: int = 0
    byte_cap: int = 0

    @cached_property
    def text_values(self) -> bool:
        """Every value is text or null: the statement may be PREPAREd with its values as
        parameters (bytes, binary fields of writes, are typed literals, which as EXECUTE
        arguments could resolve differently from what PREPARE inferred)."""
        return all(type(v) is str or v is None for v in self.params)

    @cached_property
    def batchable(self) -> bool:
        """May run in a batch of reads (:mod:`wyseman.sql.batch`): a read of a relation
        rendered as JSON rows (its values are text, as every read's are)."""
        return (self.json_sql is not None and self.view.arg_types is None
                and self.rows in ("many", "one") and self.text_values)

    def pyformat(self, as_json: bool = False) -> tuple[str, dict[str, Param]]:
        """The statement (or :attr:`json_sql`) for psycopg2: ``$n`` → ``%(pn)s``,
        every other ``%`` doubled.

        Double-quoted identifiers are copied as they are (``$1`` inside one is not a
        placeholder); the only other quoted text the compiler emits is constant
        literals without ``$`` or ``%`` (json_rows).
        """
        sql = self.json_sql if as_json and self.json_sql is not None else self.sql
        params = {f"p{n}": value for n, value in enumerate(self.params, 1)}
        return pyformat_sql(sql), params


@lru_cache(maxsize=4096)
def pyformat_sql(sql: str) -> str:
    """``$n`` → ``%(pn)s`` and ``%`` → ``%%`` outside double-quoted identifiers."""
    return _PYFORMAT_TOKEN.sub(_pyformat_token, sql)


# -- view names ----------------------------------------------------------------------

_WORD = r'(?:[A-Za-z_][A-Za-z0-9_]*|"(?:[^"\x00]|"")+")'
_MODIFIER = r"(?: ?\(\d{1,9}\))?"
_TYPE = re.compile(
    # PostgreSQL's type names of several words, and only those: any other word after a
    # name would be SQL (``text collate "C"``, ``text is not null``, ``text or true``)
    r"^(?:(?i:(?:timestamp|time)" + _MODIFIER + r"(?: with(?:out)? time zone)?"
    r"|interval(?: (?:year|month|day|hour|minute|second)"
    r"(?: to (?:month|hour|minute|second))?)?" + _MODIFIER +
    r"|(?:double precision|(?:national )?(?:character|char)(?: varying)?|bit varying)"
    + _MODIFIER + ")"
    rf"|{_WORD}(?:\.{_WORD})?"            # one name, optionally schema-qualified
    r"(?: ?\(\d{1,9}(?:, ?\d{1,9})?\))?)"  # a type modifier: varchar(8), numeric(10,2)
    r"(?:\[\d{0,9}\])*$")                 # array suffixes


def _split_types(text: str) -> list[str]:
    """Split the argument list on commas outside parentheses and double quotes."""
    parts: list[str] = []
    current: list[str] = []
    depth, quoted = 0, False
    for char in text:
        if char == '"':
            quoted = not quoted
        elif not quoted and char == "(":
            depth += 1
        elif not quoted and char == ")":
            depth -= 1
        elif not quoted and char == "," and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return parts


def called_view(name: ViewName, request: Mapping[str, Any]) -> ViewName:
    """``name`` as the request uses it: a view named without a type list but given
    ``params`` (a list) is a function called with those values uncast
    (``base.user_id`` with ``params ["alice"]`` → ``select base.user_id($1)``), as the
    Node server calls it."""
    if name.arg_types is None and isinstance(request.get("params"), list):
        return ViewName(name.schema, name.name, ())
    return name


def parse_view(view: object, policy: Policy = DEFAULT_POLICY) -> ViewName:
    """The ``view`` member → :class:`ViewName`, or a ProtocolError (results are cached:
    clients name the same few views over and over)."""
    if not isinstance(view, str) or not view:
        raise errors.bad_message("a request needs a 'view' (string)")
    return _parse_view(view, policy)


@lru_cache(maxsize=4096)
def _folded(schemas: frozenset[str]) -> frozenset[str]:
    return frozenset(s.lower() for s in schemas)


@lru_cache(maxsize=4096)
def _parse_view(view: str, policy: Policy) -> ViewName:
    head, paren, rest = view.partition("(")
    arg_types: tuple[str, ...] | None = None
    if paren:
        if not rest.endswith(")"):
            raise errors.bad_view(f"view {view!r}: the argument list must end with ')'")
        inner = rest[:-1].strip()
        types = [t.strip() for t in _split_types(inner)] if inner else []
        for type_name in types:
            if not _TYPE.match(type_name):
                raise errors.bad_view(f"view {view!r}: invalid argument type {type_name!r}")
        arg_types = tuple(types)
    parts = head.split(".")
    if len(parts) == 1:
        schema, name = "public", parts[0]
    elif len(parts) == 2:
        schema, name = parts
    else:
        raise errors.bad_view(f"view {view!r}: expected schema.name")
    if not schema or not name:
        raise errors.bad_view(f"view {view!r}: empty schema or name")
    folded = schema.lower()
    if folded in _folded(policy.denied_schemas) or (
            policy.allowed_schemas is not None
            and folded not in _folded(policy.allowed_schemas)):
        raise errors.bad_view(f"view {view!r}: schema {schema!r} is not open to clients")
    result = ViewName(schema, name, arg_types)
    result.sql()  # validates both identifiers
    return result


# -- the statement ----------------------------------------------------------------------

class _Compiler:
    def __init__(self, request: Mapping[str, Any], meta_columns: Mapping[str, str] | None,
                 policy: Policy, view: ViewName | None) -> None:
        self.request = request
        self.columns = meta_columns
        self.policy = policy
        self.view = called_view(
            view if view is not None else parse_view(request.get("view"), policy), request)
        self.params = Params()
        self.where = WhereCompiler(self.params, self.column, policy.max_where_depth,
                                   policy.max_in_list)

    def column(self, name: Any) -> str:
        quoted = quote_ident(name)
        if self.columns is not None and name not in self.columns:
            raise errors.ProtocolError(
                "badFieldName", f"unknown column {name!r} in {self.view.qualified()}")
        return quoted

    def relation(self) -> str:
        """The FROM item: the relation, or the function call with typed parameters."""
        target = self.view.sql()
        if self.view.arg_types is None:
            if "params" in self.request and self.request["params"] is not None:
                raise errors.bad_message("'params' must be a list")
            return target
        params = self.request.get("params")
        if params is None:
            params = []
        if not isinstance(params, list):
            raise errors.bad_message("'params' must be a list")
        types = self.view.arg_types
        placeholders = []
        for index, value in enumerate(params):
            placeholder = self.params.add(bind(value))
            if index < len(types):
                placeholder += "::" + types[index]
            placeholders.append(placeholder)
        return f"{target}({','.join(placeholders)})"

    def fields(self) -> str | None:
        fields = self.request.get("fields")
        if fields is None:
            # A function view without fields is a scalar call; for a relation the Node
            # server emits invalid SQL (`select schema.view`), so we select every column.
            return None if self.view.arg_types is not None else "*"
        if fields == "*":
            return "*"
        if isinstance(fields, str):
            return self.column(fields)
        if isinstance(fields, list) and fields and all(isinstance(f, str) for f in fields):
            return ",".join(self.column(f) for f in fields)
        raise errors.bad_message("'fields' must be \"*\", a column name or a list of names")

    def where_sql(self) -> str:
        where = self.where.compile(self.request.get("where"))
        return f" where {where}" if where else ""

    def select(self, action: str) -> Statement:
        where = self.where_sql()
        fields = self.fields()
        relation = self.relation()
        if fields is None:
            sql = f"select {relation}{where}"   # scalar function call form
        else:
            sql = f"select {fields} from {relation}{where}"
        cap = self.policy.max_rows
        if action == "select":
            order = order_clause(self.request.get("order"), self.column)
            if order:
                sql += f" order by {order}"
            limit = _count(self.request.get("limit"), "limit")
            if cap and (limit is None or limit > cap):
                limit = cap + 1          # one more: a reply over the bound is refused
            else:
                cap = 0                  # the client's own limit is within the bound
            if limit:
                sql += f" limit {limit}"
            offset = _count(self.request.get("offset"), "offset")
            if offset:
                sql += f" offset {offset}"
        elif cap:
            sql += f" limit {cap + 1}"   # a tuple: the count of rows is exact to the bound
        json_sql = self._json_sql(sql, fields)
        byte_cap = self.policy.max_bytes if action == "select" else 0
        if json_sql is not None and byte_cap:
            json_sql = bytes_bounded(json_sql, byte_cap)
        return Statement(sql, tuple(self.params.values), "many" if action == "select"
                         else "one", self.view, json_sql, cap, byte_cap)

    def _json_sql(self, sql: str, fields: str | None) -> str | None:
        """The select with rows rendered by PostgreSQL, when the output columns and
        their types are known (a relation whose metadata was given)."""
        if self.columns is None or fields is None or self.view.arg_types is not None:
            return None
        requested = self.request.get("fields")
        if fields == "*":
            names = list(self.columns)
        elif isinstance(requested, str):
            names = [requested]
        else:
            names = list(requested or ())
        return rows_as_json(sql, names, self.columns)

    def _writable(self) -> str:
        if self.view.arg_types is not None:
            raise errors.bad_view(f"cannot {self.request['action']} a function view")
        return self.view.sql()

    def _field_values(self, empty: errors.ProtocolError) -> dict[str, Any]:
        fields = self.request.get("fields")
        if fields is None or not isinstance(fields, dict):
            raise errors.bad_message("'fields' must be an object of column: value")
        if not fields:
            raise empty
        return fields

    def _bind_field(self, name: str, value: Any) -> str:
        column_type = self.columns.get(name) if self.columns is not None else None
        return self.params.add(bind_field(value, column_type))

    def insert(self) -> Statement:
        target = self._writable()
        fields = self._field_values(errors.bad_insert())
        columns = ", ".join(self.column(name) for name in fields)
        values = ", ".join(self._bind_field(name, value) for name, value in fields.items())
        return self._statement(
            f"insert into {target} ({columns}) values ({values}) returning *", "one")

    def update(self) -> Statement:
        target = self._writable()
        where = self.where_sql()
        if not len(self.params):
            raise errors.bad_where()
        fields = self._field_values(errors.bad_update())
        sets = ", ".join(f"{self.column(name)} = {self._bind_field(name, value)}"
                         for name, value in fields.items())
        return self._statement(f"update {target} set {sets}{where} returning *", "one")

    def delete(self) -> Statement:
        target = self._writable()
        where = self.where_sql()
        if not len(self.params):
            raise errors.bad_delete()
        return self._statement(f"delete from {target}{where}", "none")

    def _statement(self, sql: str, rows: str, json_sql: str | None = None) -> Statement:
        return Statement(sql, tuple(self.params.values), rows, self.view, json_sql)


def bytes_bounded(json_sql: str, max_bytes: int) -> str:
    """``json_sql`` (one JSON text a row) cut off by PostgreSQL once its rows pass
    ``max_bytes``: the rows up to and including the one that crosses it are sent, so
    that the reader sees the bound was passed without receiving everything. Counted in
    characters, as the reader counts them (one byte each for ASCII text).

    ``offset 0`` keeps the rows' query a subquery of its own: flattened into the window's
    query, its ``row_to_json`` would be computed for each of the three references to
    ``j``, which made a select of 100 rows cost PostgreSQL three times as much."""
    return ("select j from (select j, sum(length(j)) over "
            "(rows between unbounded preceding and current row) - length(j) as b "
            f"from ({json_sql} offset 0) q(j)) w where b <= {max_bytes}")


def _count(value: Any, word: str) -> int | None:
    """limit/offset: a whole number (or digits); fractions truncated like parseInt."""
    if value is None or value is False or value == "":
        return None
    if isinstance(value, bool):
        raise errors.bad_message(f"'{word}' must be a number")
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, float) and math.isfinite(value):
        value = int(value)
    if not isinstance(value, int) or value < 0:
        raise errors.bad_message(f"'{word}' must be a whole number >= 0")
    return value or None


def compile_request(request: dict[str, Any], meta_columns: Mapping[str, str] | None,
                    policy: Policy = DEFAULT_POLICY, view: ViewName | None = None) -> Statement:
    """One request → one statement, or :class:`~wyseman.errors.ProtocolError`.

    ``view`` is ``parse_view(request["view"], policy)`` when the caller has it already.
    """
    if not isinstance(request, dict):
        raise errors.bad_message("a request must be an object")
    action = request.get("action")
    if not isinstance(action, str) or action not in ACTIONS:
        raise errors.bad_action(action)
    try:
        compiler = _Compiler(request, meta_columns, policy, view)
        if action in ("select", "tuple"):
            return compiler.select(action)
        if action == "insert":
            return compiler.insert()
        if action == "update":
            return compiler.update()
        return compiler.delete()
    except RecursionError:
        raise errors.bad_message("request nested too deeply") from None
