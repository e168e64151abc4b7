"""Command line: ``tomocorioc run | simulate | serve | demo | ...``.

The CLI is the only place that prints; everything below it logs.  torch is
imported only by the worker processes and the commands that reconstruct in
them: ``serve`` and ``run`` themselves stay free of it.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Iterable, Optional

from tomocorioc.cli.run import add_run_arguments, cmd_run


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser."""
    from tomocorioc.sim.command import add_simulate_arguments
    ap = argparse.ArgumentParser(prog="tomocorioc", description=__doc__.splitlines()[0])
    ap.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = ap.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="try -> infer -> full for files or directories")
    add_run_arguments(run)
    run.set_defaults(func=cmd_run)

    sim = sub.add_parser("simulate", help="write simulated DXfile scans with a known COR")
    add_simulate_arguments(sim)
    sim.set_defaults(func=_cmd_simulate)

    fix = sub.add_parser("fix-outliers", help="Fix COR Outliers over a table of files and CORs")
    from tomocorioc.cli.series import add_fix_outliers_arguments
    add_fix_outliers_arguments(fix)
    fix.set_defaults(func=_cmd_fix_outliers)

    srv = sub.add_parser("serve", help="run the EPICS IOC (Channel Access + PVAccess) over the pipeline")
    from tomocorioc.ioc.serve import add_serve_arguments
    add_serve_arguments(srv)
    srv.set_defaults(func=_cmd_serve)

    gen = sub.add_parser("gen-db", help="write db/tomoCor.template and db/tomoCor_settings.req from the PV table")
    gen.add_argument("--db-dir", type=Path, default=Path("db"), help="output directory (default ./db)")
    gen.add_argument("--check", action="store_true", help="only compare; exit 1 when the files differ")
    gen.set_defaults(func=_cmd_gen_db)

    sts = sub.add_parser("sim-tomoscan", help="simulated tomoScan IOC (caproto) that writes real DXfile scans")
    from tomocorioc.sim.tomoscan_ioc import add_sim_tomoscan_arguments
    add_sim_tomoscan_arguments(sts)
    sts.set_defaults(func=_cmd_sim_tomoscan)

    scr = sub.add_parser("gen-screens", help="write adl/ MEDM (.adl) and Phoebus (.bob) screens from the PV table")
    scr.add_argument("--out-dir", type=Path, default=Path("adl"), help="output directory (default ./adl)")
    scr.add_argument("--check", action="store_true", help="only compare; exit 1 when the files differ")
    scr.set_defaults(func=_cmd_gen_screens)

    aud = sub.add_parser("audit", help="print the IOC's audit trail of puts (who changed what, accepted or not)")
    from tomocorioc.cli.audit import add_audit_arguments, run_audit
    add_audit_arguments(aud)
    aud.set_defaults(func=run_audit)
    cam = sub.add_parser("camrot", help="camera tilt: the COR at 3+ rows and the --rotate-proj-angle that fixes it")
    from tomocorioc.cli.camrot import add_camrot_arguments
    add_camrot_arguments(cam)
    cam.set_defaults(func=_cmd_camrot)

    demo = sub.add_parser("demo", help="live demo: the IOC and a simulated tomoScan on loopback, a short series")
    from tomocorioc.cli.demo import add_demo_arguments
    add_demo_arguments(demo)
    demo.set_defaults(func=_cmd_demo)
    return ap


def _cmd_simulate(args: argparse.Namespace) -> int:
    from tomocorioc.sim.command import run_simulate
    return run_simulate(args)


def _cmd_fix_outliers(args: argparse.Namespace) -> int:
    from tomocorioc.cli.series import run_fix_outliers
    return run_fix_outliers(args)


def _cmd_serve(args: argparse.Namespace) -> int:
    from tomocorioc.ioc.serve import UsageError, run_serve
    try:
        return run_serve(args)
    except UsageError as exc:
        print(f"tomocorioc serve: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:   # e.g. the port or the state directory is unusable
        print(f"tomocorioc serve: {exc}", file=sys.stderr)
        return 1


def _cmd_gen_db(args: argparse.Namespace) -> int:
    from tomocorioc.ioc import dbgen
    if args.check:
        bad = dbgen.check(args.db_dir)
        for name in bad:
            print(f"tomocorioc gen-db: {args.db_dir / name} differs from the PV table; run 'tomocorioc gen-db'",
                  file=sys.stderr)
        return 1 if bad else 0
    for path in dbgen.write(args.db_dir):
        print(path)
    return 0


def _cmd_sim_tomoscan(args: argparse.Namespace) -> int:
    from tomocorioc.sim.tomoscan_ioc import run_sim_tomoscan
    return run_sim_tomoscan(args)


def _cmd_gen_screens(args: argparse.Namespace) -> int:
    from tomocorioc.ioc import screens
    return screens.main(["--out-dir", str(args.out_dir)] + (["--check"] if args.check else []))


def _cmd_camrot(args: argparse.Namespace) -> int:
    from tomocorioc.cli.camrot import run_camrot
    return run_camrot(args)


def _cmd_demo(args: argparse.Namespace) -> int:
    from tomocorioc.cli.demo import run_demo
    return run_demo(args)


def main(argv: Optional[Iterable[str]] = None) -> int:
    """Entry point of the ``tomocorioc`` program."""
    ap = build_parser()
    args = ap.parse_args(list(argv) if argv is not None else None)
    # simulate reports each file it writes; the other commands stay quiet unless asked.
    base = logging.INFO if args.command in ("simulate", "serve", "sim-tomoscan") else logging.WARNING
    level = max(logging.DEBUG, base - 10 * min(args.verbose, 2))
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
