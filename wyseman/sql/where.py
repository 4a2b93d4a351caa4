"""The ``where`` and ``order`` grammars → SQL text (docs/protocol.md, 7.3 "where" and
7.4 "order, limit, offset").

Values are always bound parameters; identifiers are always quoted. Unlike the
Node server, every logic group and clause is parenthesised (D12), ``diff`` is
``is distinct from`` and ``in`` lists are one bound array (``= any($n)``), never
``in ()`` (D13).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

from wyseman import errors
from wyseman.sql.values import Param, array_literal, bind, scalar_text

OPERATORS = frozenset({"=", "!=", "<", "<=", ">", ">=", "~", "diff", "in", "isnull",
                       "notnull", "true"})
_IN_SPLIT = re.compile(r"[\s,]+")


def quote_ident(name: Any) -> str:
    """An always-quoted identifier; refuses what PostgreSQL could not name."""
    if not isinstance(name, str) or not name:
        raise errors.bad_field_name()
    if len(name) <= 63:   # (a longer one cannot be valid: not worth a cache slot)
        return _quote_short(name)
    return _quote(name)


@lru_cache(maxsize=8192)
def _quote_short(name: str) -> str:
    return _quote(name)   # clients name the same few columns over and over


def _quote(name: str) -> str:
    if "\x00" in name:
        raise errors.bad_message("identifier contains NUL")
    if len(name.encode("utf-8")) > 63:
        raise errors.bad_message(f"identifier longer than 63 bytes: {name[:20]!r}…")
    return '"' + name.replace('"', '""') + '"'


class Params:
    """Numbers bound values in the order they are added (``$1``, ``$2``, …)."""

    def __init__(self) -> None:
        self.values: list[Param] = []

    def add(self, value: Param) -> str:
        self.values.append(value)
        return f"${len(self.values)}"

    def __len__(self) -> int:
        return len(self.values)


class WhereCompiler:
    """Compiles one request's where tree; ``column`` checks (and quotes) a column name."""

    def __init__(self, params: Params, column: Callable[[Any], str], max_depth: int,
                 max_in_list: int) -> None:
        self.params = params
        self.column = column
        self.max_depth = max_depth
        self.max_in_list = max_in_list

    def compile(self, node: Any, depth: int = 0) -> str | None:
        if depth > self.max_depth:
            raise errors.bad_message(f"where nested deeper than {self.max_depth}")
        if not js_truthy(node):
            return None
        if isinstance(node, list):
            return _join([self._list_element(e) for e in node], "and")
        if isinstance(node, dict):
            if "items" in node:
                return self._logic(node, depth)
            if "left" in node:
                return self._clause(node)
            return _join([f"{self.column(k)} = {self.params.add(bind(v))}"
                          for k, v in node.items()], "and")
        raise errors.bad_message(f"where must be an object or a list, not {_kind(node)}")

    # -- the three node kinds -------------------------------------------------------
    def _logic(self, node: Mapping[str, Any], depth: int) -> str | None:
        items = node["items"]
        if not isinstance(items, list):
            raise errors.bad_message("logic node 'items' must be a list")
        flag = node.get("and")
        conjunction = "and" if flag is None or js_truthy(flag) else "or"
        parts = [self.compile(item, depth + 1) for item in items]
        return _join(parts, conjunction)

    def _clause(self, node: Mapping[str, Any]) -> str | None:
        oper = node.get("oper")
        if oper == "nop":
            return None
        if oper is None or oper == "":
            oper = "="
        left = node.get("left")
        if left is None or left == "" or left == []:
            raise errors.bad_field_name()
        if not is_operator(oper):
            raise errors.bad_operator(oper)
        if oper == "in":
            text = self._clause_in(left, node.get("entry"), node.get("right"))
        else:
            column = self.column(left)
            if oper in ("isnull", "notnull", "true"):
                text = _unary(column, oper)
            else:
                entry, right = node.get("entry"), node.get("right")
                value = entry if entry is not None else (right if right is not None else "")
                text = _binary(column, oper, self.params.add(bind(value)))
        if js_truthy(node.get("not")):
            return f"not ({text})"
        return f"({text})"

    def _clause_in(self, left: Any, entry: Any, right: Any) -> str:
        if isinstance(left, list):
            column = "(" + "||'~'||".join(self.column(c) for c in left) + ")"
        else:
            column = self.column(left)
        if js_truthy(entry):
            values = self._in_values(entry)
            return f"{column} = any({self.params.add(array_literal(values))})"
        if js_truthy(right):
            return f"{column} = any({self.column(right)})"
        raise errors.bad_right()

    def _in_values(self, entry: Any) -> list[str | None]:
        if isinstance(entry, str):
            values: list[Any] = [v for v in _IN_SPLIT.split(entry) if v]
        elif isinstance(entry, list):
            values = ["~".join(scalar_text(x) for x in v) if isinstance(v, list) else v
                      for v in entry]
        else:
            values = [entry]
        if not values:
            raise errors.ProtocolError("badRight", "empty list for 'in'")
        if len(values) > self.max_in_list:
            raise errors.bad_message(f"'in' list longer than {self.max_in_list}")
        return [scalar_text(v) if v is not None else None for v in values]

    def _list_element(self, element: Any) -> str:
        if isinstance(element, str):
            words = element.split(" ")
            left, oper, right = (words + [None, None, None])[:3]
        elif isinstance(element, list):
            left, oper, right = (element + [None, None, None])[:3]
        else:
            raise errors.bad_message("a where list element must be a list or a string")
        if left is None or left == "":
            raise errors.bad_left()
        if not is_operator(oper):
            raise errors.bad_operator(oper)
        column = self.column(left)
        if oper in ("isnull", "notnull", "true"):
            return f"({_unary(column, oper)})"
        if oper == "in":
            if right is None or right == "":
                raise errors.bad_right()
            values = self._in_values(right)
            return f"({column} = any({self.params.add(array_literal(values))}))"
        return f"({_binary(column, str(oper), self.params.add(bind(right)))})"


def is_operator(value: Any) -> bool:
    return isinstance(value, str) and value in OPERATORS


def js_truthy(value: Any) -> bool:
    """JavaScript truthiness ([] and {} are true, 0 and "" are not)."""
    if isinstance(value, float) and math.isnan(value):
        return False
    return value not in (None, False, 0, "")


def _unary(column: str, oper: str) -> str:
    if oper == "isnull":
        return f"{column} is null"
    if oper == "notnull":
        return f"{column} is not null"
    return column  # 'true'


def _binary(column: str, oper: str, placeholder: str) -> str:
    if oper == "diff":
        return f"{column} is distinct from {placeholder}"
    return f"{column} {oper} {placeholder}"


def _join(parts: list[str | None], conjunction: str) -> str | None:
    present = [p for p in parts if p]
    if not present:
        return None
    if len(present) == 1:
        return present[0]
    return "(" + f" {conjunction} ".join(present) + ")"


def _kind(value: Any) -> str:
    return {bool: "a boolean", str: "a string", int: "a number", float: "a number"}.get(
        type(value), type(value).__name__)


def order_clause(order: Any, column: Callable[[Any], str]) -> str | None:
    """``order``: one item or a list; numbers are positions, strings column names,
    objects ``{field|column|columnId, asc|sortAsc}`` (descending unless asc is truthy)."""
    if order is None or order == "" or order == []:
        return None
    items = order if isinstance(order, list) else [order]
    out: list[str] = []
    for item in items:
        if item is None:
            raise errors.bad_message("null order item")
        if isinstance(item, bool):
            continue
        if isinstance(item, int):
            if item < 1:
                raise errors.bad_message(f"order position must be >= 1, not {item}")
            out.append(str(item))
        elif isinstance(item, str):
            out.append(column(item))
        elif isinstance(item, dict):
            name = item.get("field") or item.get("column") or item.get("columnId")
            if not name:
                raise errors.bad_field_name()
            ascending = js_truthy(item.get("asc")) or js_truthy(item.get("sortAsc"))
            direction = "asc" if ascending else "desc"
            out.append(f"{column(name)} {direction}")
        else:
            raise errors.bad_message(f"order item must be a number, name or object, "
                                     f"not {_kind(item)}")
    return ", ".join(out) or None
