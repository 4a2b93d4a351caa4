"""Example custom action: a CSV export of a select, run as the requesting user.

Register it for a view in the config::

    [actions.handlers]
    "base.ent_v:csv" = "wyseman.examples.csv_export:export"

and send ``{"id": 1, "action": "action", "view": "base.ent_v", "name": "csv",
"data": {"fields": ["id", "std_name"], "where": {...}, "order": [...]}}``.
The reply's ``data`` is ``{"csv": "<text>", "rows": N}``; with ``"download": true`` in
``data`` the CSV is published instead (a file the browser downloads, readable by this
session's client only) and the reply is ``{"url": "/_wyseman/resources/…", "rows": N}``.
"""

from __future__ import annotations

import csv
import io
from typing import Any

from twisted.internet import defer

from wyseman import errors
from wyseman.sql import compiler

MAX_ROWS = 100_000


@defer.inlineCallbacks
def export(ctx: Any) -> Any:
    options = ctx.request.get("data") or {}
    if not isinstance(options, dict):
        raise errors.bad_message("'data' must be an object")
    select = {"action": "select", "view": ctx.request["view"],
              "fields": options.get("fields", "*"), "where": options.get("where"),
              "order": options.get("order"), "limit": options.get("limit") or MAX_ROWS}
    statement = compiler.compile_request(select, None)
    sql, params = statement.pyformat()
    result = yield ctx.run(sql, params)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(result.columns)
    for row in result.rows:
        writer.writerow(["" if value is None else value for value in row])
    if options.get("download"):
        name = ctx.request["view"].replace('"', "").replace("/", "_") + ".csv"
        url = ctx.publish(out.getvalue(), "text/csv; charset=utf-8", filename=name)
        return {"url": url, "rows": len(result.rows)}
    return {"csv": out.getvalue(), "rows": len(result.rows)}
