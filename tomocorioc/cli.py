"""Command line: ``tomocorioc run | simulate | demo``.

The CLI is the only place that prints; everything below it logs.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, List, Optional, Sequence

from .core.params import COR_METHODS, FILTERS, STRIPE_METHODS, ParamError, ReconParams
from .core.params import RUN_PHASES as PHASES
from .cor.classical import DEFAULT_METRIC, METRICS

if TYPE_CHECKING:
    from .pipeline import FileResult, RunOptions

# torch (via .pipeline and the backends) is imported only by the commands that reconstruct:
# the IOC process (serve) must stay free of it; its workers do the GPU work.

log = logging.getLogger("tomocorioc")

H5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".nxs")


def expand_inputs(items: Sequence[str]) -> List[Path]:
    """Files as given, directories expanded to their HDF5 files (sorted), duplicates dropped."""
    out: List[Path] = []
    seen = set()
    for item in items:
        p = Path(item)
        found = sorted(q for q in p.iterdir() if q.suffix.lower() in H5_SUFFIXES and q.is_file()) \
            if p.is_dir() else [p]
        if p.is_dir() and not found:
            log.warning("%s: directory holds no HDF5 files", p)
        for q in found:
            key = str(q.resolve()) if q.exists() else str(q)
            if key not in seen:
                seen.add(key)
                out.append(q)
    return out


def _add_recon_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("reconstruction")
    g.add_argument("--backend", choices=("auto", "torch", "tomocupy"), default="auto",
                   help="auto: tomocupy when on PATH, else torch (default)")
    g.add_argument("--tomocupy", metavar="PATH", help="tomocupy program to run (default: from PATH)")
    g.add_argument("--device", help="torch device, e.g. cuda, cuda:1, cpu (default: cuda if available)")
    g.add_argument("--search-width", type=float, default=50.0, help="try grid half width, px (default 50)")
    g.add_argument("--search-step", type=float, default=0.5, help="try grid step, px (default 0.5)")
    g.add_argument("--nsino", type=float, default=0.5, help="try row: 0 top .. 1 bottom (default 0.5)")
    g.add_argument("--rotation-axis", type=float, help="centre of the try grid (default: width/2, or the "
                   "sinogram estimate when the axis is far off-centre)")
    g.add_argument("--binning", type=int, default=0, choices=(0, 1, 2, 3), help="bin by 2**N")
    g.add_argument("--filter", dest="fbp_filter", choices=FILTERS, default="parzen")
    g.add_argument("--remove-stripe", dest="remove_stripe_method", choices=STRIPE_METHODS, default="none")
    g.add_argument("--dezinger", type=int, default=0, help="dezinger window width (odd; 0 = off)")
    g.add_argument("--dezinger-threshold", type=float, default=5000.0, help="counts above the median")
    g.add_argument("--nsino-per-chunk", type=int, default=8, help="rows per chunk in full reconstruction")
    g.add_argument("--full-format", choices=("tiff", "h5"), default="tiff")


def _params(args: argparse.Namespace) -> ReconParams:
    return ReconParams(search_width=args.search_width, search_step=args.search_step, nsino=args.nsino,
                       rotation_axis=args.rotation_axis, binning=args.binning, fbp_filter=args.fbp_filter,
                       remove_stripe_method=args.remove_stripe_method, dezinger=args.dezinger,
                       dezinger_threshold=args.dezinger_threshold, nsino_per_chunk=args.nsino_per_chunk,
                       full_format=args.full_format)


def make_backend(name: str, tomocupy: Optional[str] = None, device: Optional[str] = None):
    """The reconstruction backend by name ('auto' prefers tomocupy when installed)."""
    from .recon.tomocupy_backend import TomocupyBackend, find_tomocupy
    if name == "tomocupy" or (name == "auto" and find_tomocupy(tomocupy)):
        return TomocupyBackend(tomocupy)
    from .recon.torch_backend import TorchBackend
    return TorchBackend(device)


class _Progress:
    """A tqdm bar per phase on a terminal; silent otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._bar = None
        self._key = None

    def __call__(self, phase: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm
        if self._key != phase or self._bar is None:
            self.close()
            self._bar, self._key = tqdm(total=total, desc=phase, unit="sl", leave=False, file=sys.stderr), phase
        self._bar.n = done
        self._bar.refresh()
        if done >= total:
            self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        self._bar, self._key = None, None


def cmd_run(args: argparse.Namespace) -> int:
    """Run the phases over files and directories through the dispatcher; exit 1 if any file failed."""
    from .dispatch.dispatcher import slots_for
    from .pipeline import RunOptions
    from .service import Service, ServiceSettings
    try:
        params = _params(args)
        phases = [p.strip() for p in args.phases.split(",") if p.strip()]
        options = RunOptions(phases=phases, cor_method=args.cor_method, model=args.model,
                             metric=args.metric, manual_cor=args.cor)
        slots = slots_for(args.gpus) if args.gpus is not None else slots_for(None)
        if args.timeout is not None and not args.timeout > 0:
            raise ValueError("--timeout must be > 0 seconds")
        if args.backend == "tomocupy":
            make_backend("tomocupy", args.tomocupy)  # fail now, not once per file
        tomolog = _tomolog_settings(args) if "tomolog" in phases else {}
        if args.path_map and not args.cluster:
            raise ValueError("--path-map needs --cluster")
        if args.cluster:
            try:
                from .dispatch.dask_worker import PathMap
            except ImportError:
                raise ValueError("--cluster needs the cluster extra: pip install 'tomocorioc[cluster]'") from None
            PathMap(args.path_map)   # ValueError on a bad map
        if options.model and "infer" in phases and options.cor_method != "classical":
            from .ai import load_checkpoint
            load_checkpoint(options.model)  # a bad checkpoint is a usage error, not N file errors
    except (ParamError, ValueError, RuntimeError, OSError) as exc:
        print(f"tomocorioc run: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    files = expand_inputs(args.inputs)
    if not files:
        print("tomocorioc run: no input files", file=sys.stderr)
        return 2
    settings = ServiceSettings(params=params, cor_method=args.cor_method,
                               model=str(args.model) if args.model else None, metric=args.metric,
                               max_retries=args.retries, tomolog=tomolog)
    if args.timeout:
        settings.timeouts = {p: float(args.timeout) for p in settings.timeouts}
    service = Service(args.state, slots, {"backend": args.backend, "tomocupy": args.tomocupy,
                                          "device": args.device}, settings, cluster=args.cluster,
                      path_map=args.path_map)
    want = {p: (p in phases) for p in ("try", "infer", "full", "tomolog")}
    new = set(service.enqueue([str(f) for f in files], want))
    # Files already in a --state queue keep their rows (and their finished phases).
    ids = [rid for rid in (service.queue.find(str(f.resolve())) for f in files) if rid is not None]
    for rid in ids:
        if rid in new:
            _seed_cor(service, rid, options, phases)
    progress = _Progress(sys.stderr.isatty() and not args.json)
    service.start()
    if args.cluster and not service.dispatcher.wait_connected(30):
        print(f"tomocorioc run: {service.cluster_status()['status']}", file=sys.stderr)
        service.stop()
        return 2
    try:
        while not service.wait_idle(1.0):
            rows = service.queue.rows()
            progress("files", sum(r.current_phase is None for r in rows), len(rows))
    except KeyboardInterrupt:
        service.abort()
        print("tomocorioc run: interrupted; running jobs cancelled", file=sys.stderr)
    finally:
        progress.close()
        service.stop()
    rows = {r.id: r for r in service.queue.rows()}
    ok = True
    for rid in ids:
        res = _row_result(rows[rid])
        ok &= res.status == "ok"
        _report(res, args.json)
    return 0 if ok else 1


def _tomolog_settings(args: argparse.Namespace) -> dict:
    """TomoLog settings from the command line, validated now (a usage error, not N file errors)."""
    from .tomolog import TomoLogSettings
    s = TomoLogSettings(presentation_url=args.tomolog_url or "", cloud_service=args.cloud_service,
                        beamline=args.beamline, vmin=args.tomolog_min, vmax=args.tomolog_max, note=args.note or "")
    return s.to_dict()


def _seed_cor(service, rid: int, options: RunOptions, phases: List[str]) -> None:
    """A COR for rows whose full phase runs without infer: --cor, else the existing COR file."""
    if "infer" in phases or "full" not in phases:
        return
    if options.manual_cor is not None:
        service.queue.set_cor(rid, options.manual_cor, "manual", "--cor")
        return
    from .core import layout
    row = service.queue.row(rid)
    try:
        service.queue.set_cor(rid, layout.read_cor_file(layout.try_dir(row.path)), "file", layout.COR_FILE)
    except (OSError, ValueError):
        pass  # the full phase reports the missing COR on the row


def _row_result(row) -> FileResult:
    """A queue row as the CLI's per-file result."""
    from .core.jobs import FINISHED_OK, PhaseState
    from .pipeline import FileResult
    asked = {p: s for p, s in row.state.items() if s is not PhaseState.OFF}
    ok = bool(asked) and all(s in FINISHED_OK for s in asked.values())
    error = row.error
    if row.skipped:
        ok, error = False, f"skipped: {row.skipped}"
    if not ok and not error:
        error = "; ".join(f"{p} {s.value}" for p, s in asked.items() if s not in FINISHED_OK)
    return FileResult(file=row.path, status="ok" if ok else "failed", cor=row.cor, cor_source=row.cor_source,
                      confidence=row.confidence, error=None if ok else error, needs_review=row.needs_review,
                      estimate=row.estimate, phases={p: s.value for p, s in asked.items()},
                      seconds=dict(row.timings), notes=list(row.notes))


def _report(res: FileResult, as_json: bool) -> None:
    if as_json:
        print(json.dumps(res.to_json()), flush=True)
        return
    if res.status == "ok":
        cor = f"{res.cor:.2f}" if res.cor is not None else "-"
        conf = f"{res.confidence:.2f}" if res.confidence is not None else "-"
        flag = "  NEEDS REVIEW" if res.needs_review else ""
        print(f"OK      {res.file}  cor={cor} ({res.cor_source or '-'}, confidence {conf}){flag}", flush=True)
    else:
        print(f"FAILED  {res.file}  {res.error}", flush=True)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser."""
    from .sim.command import add_simulate_arguments
    ap = argparse.ArgumentParser(prog="tomocorioc", description=__doc__.splitlines()[0])
    ap.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = ap.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="try -> infer -> full for files or directories")
    run.add_argument("inputs", nargs="+", metavar="FILE_OR_DIR")
    run.add_argument("--phases", default=",".join(PHASES),
                     help="comma list of try,infer,full,tomolog (default try,infer,full)")
    run.add_argument("--cor-method", choices=COR_METHODS, default="auto",
                     help="auto: ai when --model is given, else classical")
    run.add_argument("--model", type=Path, help="tomocor checkpoint (.pt) for the AI scorer")
    run.add_argument("--metric", choices=METRICS, default=DEFAULT_METRIC, help="classical image metric")
    run.add_argument("--cor", type=float, help="manual COR for the full phase when infer is not run")
    run.add_argument("--json", action="store_true", help="one JSON object per file on stdout")
    run.add_argument("--gpus", help="GPU slots, e.g. 0,1,2,3 (default: all visible GPUs, else one CPU slot)")
    run.add_argument("--timeout", type=float, help="per-phase timeout in seconds (default: try 1800, infer 900, "
                     "full 7200)")
    run.add_argument("--retries", type=int, default=1, help="re-runs after a worker dies or times out (default 1)")
    run.add_argument("--cluster", metavar="ADDR",
                     help="run the jobs on the GPU workers of this Dask scheduler (tcp://host:8786), not local slots")
    run.add_argument("--path-map", action="append", default=[], metavar="IOC=WORKER",
                     help="a data prefix here and where the cluster's workers mount it, e.g. /data=/mnt/data (repeat)")
    run.add_argument("--state", type=Path, help="keep the queue in this state directory (default: in memory)")
    tl = run.add_argument_group("TomoLog (phase tomolog)")
    tl.add_argument("--tomolog-url", help="Google Slides presentation URL")
    tl.add_argument("--cloud-service", default="imgur", help="imgur or aps (default imgur)")
    tl.add_argument("--beamline", default="None", help="beamline slide template (default: generic)")
    tl.add_argument("--tomolog-min", type=float, help="display minimum (blank: 5-95 %% auto contrast)")
    tl.add_argument("--tomolog-max", type=float, help="display maximum")
    tl.add_argument("--note", help="text added to the slide")
    _add_recon_args(run)
    run.set_defaults(func=cmd_run)

    sim = sub.add_parser("simulate", help="write simulated DXfile scans with a known COR")
    add_simulate_arguments(sim)
    sim.set_defaults(func=_cmd_simulate)

    fix = sub.add_parser("fix-outliers", help="Fix COR Outliers over a table of files and CORs")
    from .series_command import add_fix_outliers_arguments
    add_fix_outliers_arguments(fix)
    fix.set_defaults(func=_cmd_fix_outliers)

    srv = sub.add_parser("serve", help="run the EPICS IOC (Channel Access + PVAccess) over the pipeline")
    from .ioc.serve import add_serve_arguments
    add_serve_arguments(srv)
    srv.set_defaults(func=_cmd_serve)

    gen = sub.add_parser("gen-db", help="write db/tomoCor.template and db/tomoCor_settings.req from the PV table")
    gen.add_argument("--db-dir", type=Path, default=Path("db"), help="output directory (default ./db)")
    gen.add_argument("--check", action="store_true", help="only compare; exit 1 when the files differ")
    gen.set_defaults(func=_cmd_gen_db)

    sts = sub.add_parser("sim-tomoscan", help="simulated tomoScan IOC (caproto) that writes real DXfile scans")
    from .sim.tomoscan_ioc import add_sim_tomoscan_arguments
    add_sim_tomoscan_arguments(sts)
    sts.set_defaults(func=_cmd_sim_tomoscan)

    scr = sub.add_parser("gen-screens", help="write adl/ MEDM (.adl) and Phoebus (.bob) screens from the PV table")
    scr.add_argument("--out-dir", type=Path, default=Path("adl"), help="output directory (default ./adl)")
    scr.add_argument("--check", action="store_true", help="only compare; exit 1 when the files differ")
    scr.set_defaults(func=_cmd_gen_screens)

    demo = sub.add_parser("demo", help="live demo: the IOC and a simulated tomoScan on loopback, a short series")
    from .cli_demo import add_demo_arguments
    add_demo_arguments(demo)
    demo.set_defaults(func=_cmd_demo)
    return ap


def _cmd_simulate(args: argparse.Namespace) -> int:
    from .sim.command import run_simulate
    return run_simulate(args)


def _cmd_fix_outliers(args: argparse.Namespace) -> int:
    from .series_command import run_fix_outliers
    return run_fix_outliers(args)


def _cmd_serve(args: argparse.Namespace) -> int:
    from .ioc.serve import UsageError, run_serve
    try:
        return run_serve(args)
    except UsageError as exc:
        print(f"tomocorioc serve: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:   # e.g. the port or the state directory is unusable
        print(f"tomocorioc serve: {exc}", file=sys.stderr)
        return 1


def _cmd_gen_db(args: argparse.Namespace) -> int:
    from .ioc import dbgen
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
    from .sim.tomoscan_ioc import run_sim_tomoscan
    return run_sim_tomoscan(args)


def _cmd_gen_screens(args: argparse.Namespace) -> int:
    from .ioc import screens
    return screens.main(["--out-dir", str(args.out_dir)] + (["--check"] if args.check else []))


def _cmd_demo(args: argparse.Namespace) -> int:
    from .cli_demo import run_demo
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
