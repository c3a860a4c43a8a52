"""Rendering rows for the CLI: an aligned table, JSON, or CSV. Pure functions."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from datetime import date, datetime
from decimal import Decimal

FORMATS = ("table", "json", "csv")


def _plain(value: object) -> object:
    """JSON-ready: decimals as exact strings, dates as ISO strings."""
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, Decimal):
        return format(value.quantize(Decimal("0.000001")), "f")
    return str(_plain(value))


def render(rows: Sequence[Mapping[str, object]], columns: Sequence[str], fmt: str) -> str:
    """``rows`` in ``fmt``; JSON keeps exact decimal strings, the table rounds money to 1e-6."""
    if fmt == "json":
        return json.dumps([{c: _plain(r.get(c)) for c in columns} for r in rows], indent=2)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        for r in rows:
            writer.writerow(["" if r.get(c) is None else _plain(r.get(c)) for c in columns])
        return out.getvalue().rstrip("\n")
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]
    numeric = [all(_numeric(r.get(c)) for r in rows) and bool(rows) for c in columns]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    for row in cells:
        lines.append(
            "  ".join(
                v.rjust(w) if num else v.ljust(w)
                for v, w, num in zip(row, widths, numeric, strict=True)
            ).rstrip()
        )
    return "\n".join(lines)


def _numeric(value: object) -> bool:
    return value is None or (isinstance(value, int | Decimal) and not isinstance(value, bool))
