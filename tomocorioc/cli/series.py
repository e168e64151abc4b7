"""``tomocorioc fix-outliers TABLE.json``: run Fix COR Outliers on a table and print the result.

TABLE.json is ``[{"file": ..., "cor": number|null, "selected": bool}, ...]``
(``selected`` defaults to true).  The output is the new table with a
``reason`` on every changed row: an aligned text table plus the series left
empty, or with ``--json`` the JSON list alone on stdout (the series left
empty then go to stderr, so stdout stays machine-readable).

Exit status: 0 done, 2 bad input or arguments, 1 the table cannot be read.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from tomocorioc.core.series import DEFAULT_MAX_DELTA, OutlierResult, fix_cor_outliers, series_key

PROG = "tomocorioc fix-outliers"


def add_fix_outliers_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``fix-outliers`` arguments to a (sub)parser."""
    parser.add_argument("table", metavar="TABLE.json",
                        help='JSON list of {"file": ..., "cor": number|null, "selected": bool} ("-" reads stdin)')
    parser.add_argument("--max-delta", type=float, default=DEFAULT_MAX_DELTA, metavar="PX",
                        help=f"cap on the outlier threshold, px (default {DEFAULT_MAX_DELTA:g})")
    parser.add_argument("--json", action="store_true", help="print the new table as a JSON list")


class _InputError(ValueError):
    """The table or an argument is malformed (exit 2)."""


def _load_table(source: str) -> List[Dict[str, Any]]:
    text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    try:
        table = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _InputError(f"{source}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(table, list):
        raise _InputError(f"{source}: expected a JSON list of rows, got a JSON {type(table).__name__}")
    return table


def _cor_text(cor: Optional[float]) -> str:
    return "-" if cor is None else f"{cor:.2f}"


def format_table(result: OutlierResult) -> str:
    """The new table as aligned text, then what could not be fixed."""
    header = ("file", "series", "index", "sel", "cor", "source", "reason")
    lines: List[Sequence[str]] = [header]
    for row in result.rows:
        series, index = series_key(row["file"])
        lines.append((row["file"], series or "''", "-" if index is None else str(index),
                      "yes" if row["selected"] else "no", _cor_text(row["cor"]),
                      row.get("cor_source") or "-", row.get("reason") or ""))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    out = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)) + "  " + line[-1] for line in lines]
    out = [line.rstrip() for line in out]
    out.append(f"{len(result.changes)} COR(s) changed")
    out.extend(_report_lines(result))
    return "\n".join(out)


def _report_lines(result: OutlierResult) -> List[str]:
    lines = []
    if result.unfilled_series:
        names = ", ".join(repr(s) for s in result.unfilled_series)
        lines.append(f"series left empty (no COR to fill from): {names}")
    if result.unresolved:
        lines.append(f"outliers left unchanged (no trusted neighbour): {', '.join(result.unresolved)}")
    return lines


def run_fix_outliers(args: argparse.Namespace) -> int:
    """Run ``tomocorioc fix-outliers``; 0 done, 2 bad input, 1 the table cannot be read."""
    try:
        if math.isnan(args.max_delta) or args.max_delta < 0:
            raise _InputError(f"--max-delta must be a number >= 0 px, got {args.max_delta}")
        table = _load_table(args.table)
        result = fix_cor_outliers(table, max_delta=args.max_delta)
    except ValueError as exc:  # _InputError and the core's row validation
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"{PROG}: error: cannot read {args.table}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result.rows, indent=2))
        for line in _report_lines(result):
            print(f"{PROG}: note: {line}", file=sys.stderr)
    else:
        print(format_table(result))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Stand-alone entry point (``python -m tomocorioc.cli.series``)."""
    parser = argparse.ArgumentParser(prog=PROG, description="Fix COR Outliers on a JSON table of rows.")
    add_fix_outliers_arguments(parser)
    return run_fix_outliers(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
