"""Several reads as one statement (no I/O; run by :mod:`wyseman.db.batch`).

When requests of one role wait for a connection, the reads among them can share
one statement: each read's rows become one column, ``array(<read>)``, of a single
result row. PostgreSQL is woken once, parses (or executes a prepared statement)
once and answers with one message, instead of once per request: most of a one-row
lookup's cost on both sides is that round trip, not the lookup.

A member is a read as :mod:`wyseman.sql.json_rows` renders it: one JSON text per
row, ``$n`` placeholders numbered from 1. ``ARRAY(subquery)`` keeps the
subquery's row order (its ``order by``, ``limit`` and ``offset`` apply inside).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from wyseman.sql.compiler import pyformat_sql

# A double-quoted identifier (copied: `$1` inside one is a name), or a placeholder.
# The compiler emits no other quoted text with `$` in it (see Statement.pyformat).
_TOKEN = re.compile(r'"(?:[^"]|"")*"|\$(\d+)')


def shift_placeholders(sql: str, offset: int) -> str:
    """``sql`` with every placeholder ``$n`` renumbered ``$(n + offset)``."""
    if not offset:
        return sql

    def shifted(match: re.Match[str]) -> str:
        number = match.group(1)
        return f"${int(number) + offset}" if number else match.group(0)
    return _TOKEN.sub(shifted, sql)


@dataclass(frozen=True)
class Batch:
    """One statement answering several reads."""

    sql: str                    #: ``$n`` placeholders
    values: tuple[Any, ...]     #: for ``$1``… in order
    order: tuple[int, ...]      #: result column i holds the rows of member ``order[i]``

    def pyformat(self) -> tuple[str, dict[str, Any]]:
        """The statement for psycopg2 (``%(pn)s`` placeholders and their values)."""
        return pyformat_sql(self.sql), {f"p{n}": v for n, v in enumerate(self.values, 1)}


def compose(members: Sequence[tuple[str, Sequence[Any]]]) -> Batch:
    """``members`` (each a read's SQL and its values) → one :class:`Batch`.

    Members are ordered by their SQL so that the same reads in another arrival order
    make the same text (one prepared statement serves them all).
    """
    if not members:
        raise ValueError("a batch needs at least one read")
    order = tuple(sorted(range(len(members)), key=lambda i: members[i][0]))
    sql = _batch_text(tuple(members[i][0] for i in order),
                      tuple(len(members[i][1]) for i in order))
    return Batch(sql, tuple(v for i in order for v in members[i][1]), order)


@lru_cache(maxsize=1024)
def _batch_text(sqls: tuple[str, ...], counts: tuple[int, ...]) -> str:
    """The statement for reads ``sqls`` (in this order) with ``counts`` values each:
    apps repeat the same mixes, and renumbering costs more than the rest of a batch."""
    columns: list[str] = []
    offset = 0
    for sql, count in zip(sqls, counts, strict=True):
        columns.append(f"array({shift_placeholders(sql, offset)})")
        offset += count
    return "select " + ", ".join(columns)


def split(row: Sequence[Any], batch: Batch) -> list[list[str]]:
    """The single result row of ``batch`` → each member's JSON row texts, in member order."""
    if len(row) != len(batch.order):
        raise ValueError(f"a batch of {len(batch.order)} reads answered {len(row)} columns")
    rows: list[list[str]] = [[] for _ in batch.order]
    for column, member in enumerate(batch.order):
        rows[member] = list(row[column])
    return rows
