"""``tomocorioc run``: the phases over files and directories, through the same service the IOC drives."""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from tomocorioc.core import layout
from tomocorioc.core.jobs import FINISHED_OK, PHASES, PhaseState, Row
from tomocorioc.core.params import (
    COR_METHODS,
    DEFAULT_METRIC,
    FILTERS,
    FULL_FORMATS,
    METRICS,
    RUN_PHASES,
    STRIPE_METHODS,
    ReconParams,
)
from tomocorioc.core.pathmap import check_cluster_options
from tomocorioc.core.settings import ServiceSettings
from tomocorioc.core.spec import SettingError, spec_of

log = logging.getLogger("tomocorioc")

H5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".nxs")
RUN_PHASE_CHOICES = PHASES    # try, infer, full, tomolog


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


def _default(name: str) -> Any:
    return spec_of(ReconParams, name).default


def add_recon_arguments(p: argparse.ArgumentParser) -> None:
    """The reconstruction options (defaults and limits from :class:`ReconParams`)."""
    g = p.add_argument_group("reconstruction")
    g.add_argument("--backend", choices=("auto", "torch", "tomocupy"), default="auto",
                   help="auto: tomocupy when on PATH, else torch (default)")
    g.add_argument("--tomocupy", metavar="PATH", help="tomocupy program to run (default: from PATH)")
    g.add_argument("--device", help="torch device, e.g. cuda, cuda:1, cpu (default: cuda if available)")
    g.add_argument("--search-width", type=float, default=_default("search_width"),
                   help="try grid half width, px (default %(default)s)")
    g.add_argument("--search-step", type=float, default=_default("search_step"),
                   help="try grid step, px (default %(default)s)")
    g.add_argument("--nsino", type=float, default=_default("nsino"),
                   help="try row: 0 top .. 1 bottom (default %(default)s)")
    g.add_argument("--rotation-axis", type=float, help="centre of the try grid (default: width/2, or the "
                   "sinogram estimate when the axis is far off-centre)")
    g.add_argument("--binning", type=int, default=_default("binning"), choices=(0, 1, 2, 3), help="bin by 2**N")
    g.add_argument("--filter", dest="fbp_filter", choices=FILTERS, default=_default("fbp_filter"))
    g.add_argument("--remove-stripe", dest="remove_stripe_method", choices=STRIPE_METHODS,
                   default=_default("remove_stripe_method"))
    g.add_argument("--dezinger", type=int, default=_default("dezinger"), help="dezinger window width (odd; 0 = off)")
    g.add_argument("--dezinger-threshold", type=float, default=_default("dezinger_threshold"),
                   help="counts above the median")
    g.add_argument("--nsino-per-chunk", type=int, default=_default("nsino_per_chunk"),
                   help="rows per chunk in full reconstruction")
    g.add_argument("--full-format", choices=FULL_FORMATS, default=_default("full_format"))


def add_run_arguments(run: argparse.ArgumentParser) -> None:
    """Options of ``tomocorioc run``."""
    settings = ServiceSettings()
    run.add_argument("inputs", nargs="+", metavar="FILE_OR_DIR")
    run.add_argument("--phases", default=",".join(RUN_PHASES),
                     help="comma list of try,infer,full,tomolog (default try,infer,full)")
    run.add_argument("--cor-method", choices=COR_METHODS, default=settings.cor_method,
                     help="auto: ai when --model is given, else classical")
    run.add_argument("--model", type=Path, help="tomocor checkpoint (.pt) for the AI scorer")
    run.add_argument("--metric", choices=METRICS, default=DEFAULT_METRIC, help="classical image metric")
    run.add_argument("--cor", type=float, help="manual COR for the full phase when infer is not run")
    run.add_argument("--json", action="store_true", help="one JSON object per file on stdout")
    run.add_argument("--gpus", help="GPU slots, e.g. 0,1,2,3 (default: all visible GPUs, else one CPU slot)")
    run.add_argument("--timeout", type=float, help="per-phase timeout in seconds (default: try "
                     f"{settings.try_timeout:g}, infer {settings.infer_timeout:g}, full {settings.full_timeout:g})")
    run.add_argument("--retries", type=int, default=settings.max_retries,
                     help="re-runs after a worker dies or times out (default %(default)s)")
    run.add_argument("--cluster", metavar="ADDR",
                     help="run the jobs on the GPU workers of this Dask scheduler (tcp://host:8786), not local slots")
    run.add_argument("--path-map", action="append", default=[], metavar="IOC=WORKER",
                     help="a data prefix here and where the cluster's workers mount it, e.g. /data=/mnt/data (repeat)")
    run.add_argument("--state", type=Path, help="keep the queue in this state directory (default: in memory)")
    run.add_argument("--no-auto-skip", action="store_true",
                     help="run every file, even one that looks like an aborted acquisition")
    tl = run.add_argument_group("TomoLog (phase tomolog)")
    tl.add_argument("--tomolog-url", help="Google Slides presentation URL")
    tl.add_argument("--cloud-service", default="imgur", help="imgur or aps (default imgur)")
    tl.add_argument("--beamline", default="None", help="beamline slide template (default: generic)")
    tl.add_argument("--tomolog-min", type=float, help="display minimum (blank: 5-95 %% auto contrast)")
    tl.add_argument("--tomolog-max", type=float, help="display maximum")
    tl.add_argument("--note", help="text added to the slide")
    add_recon_arguments(run)


def _params(args: argparse.Namespace) -> ReconParams:
    return ReconParams(search_width=args.search_width, search_step=args.search_step, nsino=args.nsino,
                       rotation_axis=args.rotation_axis, binning=args.binning, fbp_filter=args.fbp_filter,
                       remove_stripe_method=args.remove_stripe_method, dezinger=args.dezinger,
                       dezinger_threshold=args.dezinger_threshold, nsino_per_chunk=args.nsino_per_chunk,
                       full_format=args.full_format)


def _tomolog_settings(args: argparse.Namespace) -> dict:
    """TomoLog settings from the command line, validated now (a usage error, not N file errors)."""
    from tomocorioc.core.tomolog_settings import TomoLogSettings
    s = TomoLogSettings(presentation_url=args.tomolog_url or "", cloud_service=args.cloud_service,
                        beamline=args.beamline, vmin=args.tomolog_min, vmax=args.tomolog_max, note=args.note or "")
    return s.to_dict()


def _settings(args: argparse.Namespace, phases: List[str]) -> ServiceSettings:
    """Every option as one validated settings record (SettingError/ValueError: a usage error)."""
    if args.cor_method == "ai" and not args.model:
        raise ValueError("--cor-method ai needs --model PATH (a tomocor checkpoint)")
    if args.cor is not None and not math.isfinite(args.cor):
        raise ValueError("--cor must be finite")
    if args.timeout is not None and not args.timeout > 0:
        raise ValueError("--timeout must be > 0 seconds")
    bad = [p for p in phases if p not in RUN_PHASE_CHOICES]
    if bad or not phases:
        raise ValueError(f"phases must be a non-empty subset of {','.join(RUN_PHASE_CHOICES)}; got {args.phases}")
    changes: Dict[str, Any] = dict(params=_params(args), cor_method=args.cor_method,
                                   model=str(args.model) if args.model else None, metric=args.metric,
                                   max_retries=args.retries,
                                   # A batch run has no operator to accept a COR: the full runs and the
                                   # JSON line carries needs_review instead.
                                   hold_full_on_review=False,
                                   tomolog=_tomolog_settings(args) if "tomolog" in phases else {})
    if args.timeout:
        changes.update({f"{p}_timeout": float(args.timeout) for p in PHASES})
    return ServiceSettings(**changes)


class _Progress:
    """A tqdm bar of files done on a terminal; silent otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._bar: Any = None

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm
        if self._bar is None:
            self._bar = tqdm(total=total, desc="files", unit="file", leave=False, file=sys.stderr)
        self._bar.total = total
        self._bar.n = done
        self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        self._bar = None


def cmd_run(args: argparse.Namespace) -> int:
    """Run the phases over files and directories through the dispatcher; exit 1 if any file failed."""
    from tomocorioc.service.local import slots_for
    from tomocorioc.service.preflight import preflight
    from tomocorioc.service.service import Service
    try:
        phases = [p.strip() for p in args.phases.split(",") if p.strip()]
        settings = _settings(args, phases)
        slots = slots_for(args.gpus)
        check_cluster_options(args.cluster, args.path_map)
        # A missing tomocupy or a bad checkpoint is a usage error, not N file errors (checked in a
        # separate process: this one never imports torch).
        use_model = settings.model if "infer" in phases and settings.cor_method != "classical" else None
        reason = preflight(args.backend, args.tomocupy, use_model)
        if reason:
            raise ValueError(reason)
    except (SettingError, ValueError, OSError) as exc:
        print(f"tomocorioc run: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    files = expand_inputs(args.inputs)
    if not files:
        print("tomocorioc run: no input files", file=sys.stderr)
        return 2
    try:
        service = Service(args.state, slots, {"backend": args.backend, "tomocupy": args.tomocupy,
                                              "device": args.device}, settings, cluster=args.cluster,
                          path_map=args.path_map)
    except OSError as exc:   # StoreError: a --state that cannot be made, or a corrupt database in it
        print(f"tomocorioc run: {exc}", file=sys.stderr)
        return 2
    want = {p: (p in phases) for p in PHASES}
    names, unstorable = layout.split_utf8_names([str(f) for f in files])
    for shown in unstorable:     # never queued: reported as failed (exit 1), the other files run
        _print_report(_failed_report(shown, "the name is not valid UTF-8 (rename it); not queued"), args.json)
    new = set(service.enqueue(names, want, auto_skip=not args.no_auto_skip))
    # Files already in a --state queue keep their rows (and their finished phases).
    ids = [rid for rid in (service.queue.find(str(f.resolve())) for f in files) if rid is not None]
    for rid in ids:
        if rid in new:
            _seed_cor(service, rid, args.cor, phases)
    progress = _Progress(sys.stderr.isatty() and not args.json)
    service.start()
    if not service.dispatcher.wait_connected(30):
        print(f"tomocorioc run: {service.cluster_status().text}", file=sys.stderr)
        service.stop()
        return 2
    printed: set = set()
    ok = True

    def report_finished(final: bool = False) -> None:
        """Print each file's line as soon as it has finished (every file at the end)."""
        nonlocal ok
        rows = {r.id: r for r in service.queue.rows()}
        for rid in ids:
            r = rows.get(rid)
            if rid in printed or r is None or not (final or _finished(r)):
                continue
            printed.add(rid)
            rec = row_report(r)
            ok &= rec["status"] != "failed"
            _print_report(rec, args.json)

    try:
        while not service.wait_idle(1.0):
            rows = service.queue.rows()
            progress(sum(_finished(r) for r in rows), len(rows))
            report_finished()
    except KeyboardInterrupt:
        service.abort()
        print("tomocorioc run: interrupted; running jobs cancelled", file=sys.stderr)
    finally:
        progress.close()
        service.stop()
    report_finished(final=True)
    return 0 if ok and not unstorable else 1


def _finished(row: Row) -> bool:
    """Nothing of the row runs or waits any more (a skipped row never will)."""
    return bool(row.skipped) or row.current_phase is None


def _seed_cor(service: Any, rid: int, cor: Optional[float], phases: List[str]) -> None:
    """A COR for rows whose full phase runs without infer: --cor, else the existing COR file."""
    if "infer" in phases or "full" not in phases:
        return
    if cor is not None:
        service.queue.set_cor(rid, cor, "manual", "--cor")
        return
    row = service.queue.row(rid)
    try:
        service.queue.set_cor(rid, layout.read_cor_file(layout.try_dir(row.path)), "file", layout.COR_FILE)
    except (OSError, ValueError):
        pass  # the full phase reports the missing COR on the row


def _rounded(v: Optional[float]) -> Optional[float]:
    return None if v is None else round(float(v), 3)


def row_report(row: Row) -> Dict[str, Any]:
    """A queue row as the CLI's per-file JSON object (built from the phases' results)."""
    asked = {p: s for p, s in row.state.items() if s is not PhaseState.OFF}
    ok = bool(asked) and all(s in FINISHED_OK for s in asked.values())
    error = row.error
    status = "ok" if ok else "failed"
    if row.skipped:
        ok, status, error = False, "skipped", f"skipped: {row.skipped}"
    if not ok and not error:
        error = "; ".join(f"{p} {s.value}" for p, s in asked.items() if s not in FINISHED_OK)
    return {"file": row.path, "status": status, "cor": _rounded(row.cor),
            "cor_source": row.cor_source, "confidence": _rounded(row.confidence), "error": None if ok else error,
            "needs_review": row.needs_review, "estimate": _rounded(row.estimate),
            "geometry": row.geometry or None,
            "phases": {p: s.value for p, s in asked.items()},
            "seconds": dict(row.timings),
            "notes": list(row.notes)}


def _failed_report(file: str, error: str) -> Dict[str, Any]:
    """The JSON object of a file that never became a queue row."""
    return {"file": file, "status": "failed", "cor": None, "cor_source": None, "confidence": None, "error": error,
            "needs_review": False, "estimate": None, "geometry": None, "phases": {}, "seconds": {}, "notes": []}


def _print_report(rec: Dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(rec), flush=True)
        return
    if rec["status"] == "ok":
        cor = f"{rec['cor']:.2f}" if rec["cor"] is not None else "-"
        conf = f"{rec['confidence']:.2f}" if rec["confidence"] is not None else "-"
        flag = "  NEEDS REVIEW" if rec["needs_review"] else ""
        print(f"OK      {rec['file']}  cor={cor} ({rec['cor_source'] or '-'}, confidence {conf}){flag}", flush=True)
    else:
        print(f"{rec['status'].upper():8s}{rec['file']}  {rec['error']}", flush=True)


__all__ = ["add_run_arguments", "cmd_run", "row_report", "expand_inputs"]
