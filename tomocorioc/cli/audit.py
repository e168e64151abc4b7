"""``tomocorioc audit``: print the IOC's audit trail of puts (``<state>/audit.jsonl`` and its rotated files)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tomocorioc.ioc.audit import audit_files, parse_since, read_entries, summary


def add_audit_arguments(ap: argparse.ArgumentParser) -> None:
    """Options of ``tomocorioc audit``."""
    ap.add_argument("--state", type=Path, required=True, help="the IOC's state directory (serve --state)")
    ap.add_argument("--since", help="only entries from this time: ISO (UTC unless given, e.g. 2026-12-02T01:00) "
                    "or an age like 30m, 2h, 1d")
    ap.add_argument("--pv", help="only puts to this PV (with or without the prefix)")
    ap.add_argument("--json", action="store_true", help="print the JSON lines as stored")


def run_audit(args: argparse.Namespace) -> int:
    """Print the matching entries, oldest first; 2 with one line for a bad option or no audit trail."""
    try:
        since = parse_since(args.since) if args.since else None
    except ValueError as exc:
        print(f"tomocorioc audit: {exc}", file=sys.stderr)
        return 2
    if not audit_files(args.state):
        print(f"tomocorioc audit: no audit trail in {args.state} (audit.jsonl)", file=sys.stderr)
        return 2
    for entry in read_entries(args.state, since, args.pv):
        print(json.dumps(entry) if args.json else summary(entry))
    return 0


__all__ = ["add_audit_arguments", "run_audit"]
