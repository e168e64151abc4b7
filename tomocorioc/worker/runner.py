"""The worker-side runner: executes one phase of one file, judged by its outputs.

``make_runner(config)`` is called once per worker process; the returned
callable keeps the backend and the AI model between jobs.  A phase whose
outputs exist and were made with the same parameters (digest recorded beside
them) is reported ``up_to_date`` instead of being redone.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from tomocorioc.core import layout
from tomocorioc.core.params import ReconParams
from tomocorioc.core.result import Job, PhaseResult
from tomocorioc.worker.recon.base import (
    FULL_META,
    TRY_META,
    ReconError,
    check_full_outputs,
    check_try_outputs,
    write_json,
)

log = logging.getLogger(__name__)


def _read_json(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def try_up_to_date(path: Path, params: ReconParams) -> bool:
    """True when the try folder was made with these parameters and is complete."""
    folder = layout.try_dir(path)
    meta = _read_json(folder / TRY_META)
    if not meta or meta.get("digest") != params.digest(phase="try"):
        return False
    try:
        check_try_outputs(folder, meta.get("centers", []), meta.get("row"))
    except ReconError:
        return False
    return True


def _model_key(model: Optional[str]) -> Optional[str]:
    if not model:
        return None
    try:
        st = os.stat(model)
    except OSError:
        return model
    return f"{model}:{st.st_size}:{int(st.st_mtime)}"


def infer_inputs(path: Path, params: ReconParams, method: str, model: Optional[str], metric: str) -> Dict[str, Any]:
    """What an infer result depends on (recorded in cor_scores.json)."""
    return {"try_digest": params.digest(phase="try"), "method": method, "model": _model_key(model),
            "metric": metric}


def full_up_to_date(path: Path, params: ReconParams, cor: float) -> bool:
    """True when the full reconstruction exists for this COR and these parameters."""
    target = layout.full_dir(path)
    meta_path = target / FULL_META
    if params.full_format == "h5":
        target = target.with_suffix(".h5")
        meta_path = target.with_name(target.stem + "_" + FULL_META)
    meta = _read_json(meta_path)
    if not meta or meta.get("digest") != params.digest(phase="full", cor=cor):
        return False
    start, stop = meta.get("rows", [0, 0])
    try:
        check_full_outputs(target, (stop - start) // (2 ** params.binning))
    except ReconError:
        return False
    return True


def _try_meta_data(path: Path) -> Dict[str, Any]:
    """What an up-to-date try reports besides its estimate (the geometry it was made for)."""
    meta = _read_json(layout.try_dir(path) / TRY_META) or {}
    return {"geometry": meta["geometry"]} if isinstance(meta.get("geometry"), str) else {}


def _try_meta_estimate(path: Path) -> Optional[float]:
    meta = _read_json(layout.try_dir(path) / TRY_META) or {}
    est = meta.get("estimate")
    return float(est) if isinstance(est, (int, float)) else None


def _record_estimate(path: Path, estimate: Optional[float]) -> None:
    """Keep the sinogram estimate beside the try outputs, so an up-to-date re-run still reports it."""
    meta_path = layout.try_dir(path) / TRY_META
    meta = _read_json(meta_path)
    if meta is not None and estimate is not None:
        meta["estimate"] = float(estimate)
        write_json(meta_path, meta)


def _full_disk(exc: OSError, scan: Path) -> Optional[Path]:
    """The output folder when ``exc`` was a full disk (ENOSPC, or a short write where no space is left)."""
    out = layout.rec_root(scan)
    where = out if out.exists() else scan.parent
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return Path(exc.filename).parent if exc.filename else where
    try:
        st = os.statvfs(where)
    except OSError:
        return None
    # numpy/tifffile report a full disk as "N requested and M written", without an errno
    return where if st.f_bavail * st.f_frsize < 1 << 20 else None


def make_runner(config: Dict[str, Any]) -> Callable[[Job], PhaseResult]:
    """Build the per-worker runner (backend and model are created once)."""
    from tomocorioc.worker.backends import make_backend
    from tomocorioc.worker.pipeline import InferOptions, Pipeline

    backend = make_backend(config.get("backend", "auto"), config.get("tomocupy"), config.get("device"))
    pipelines: Dict[tuple, Pipeline] = {}

    def pipeline_for(job: Job, params: ReconParams) -> Pipeline:
        key = (job.cor_method, job.model, job.metric)
        pipe = pipelines.get(key)
        if pipe is None:
            pipe = pipelines[key] = Pipeline(backend, params, InferOptions(*key))
        pipe.params = params
        return pipe

    def run(job: Job) -> PhaseResult:
        try:
            return run_phase(job)
        except OSError as exc:
            full = _full_disk(exc, Path(job.path))
            if full is None:
                raise
            raise ReconError(f"no space left on device: {full}") from None

    def run_phase(job: Job) -> PhaseResult:
        path = Path(job.path)
        params = ReconParams.from_dict(job.params)
        if job.phase == "noop":  # dispatcher benchmarks and tests: a trivial job
            if job.extra.get("sleep"):
                time.sleep(float(job.extra["sleep"]))
            return PhaseResult(True, "noop")
        pipe = pipeline_for(job, params)
        if job.phase == "try":
            if not job.force and try_up_to_date(path, params):
                return PhaseResult(True, "try outputs up to date", up_to_date=True,
                                   estimate=_try_meta_estimate(path), data=_try_meta_data(path))
            result = pipe.run_try(path, job.estimate)
            _record_estimate(path, result.estimate)
            return result
        if job.phase == "infer":
            opts = pipe.options
            inputs = infer_inputs(path, params, opts.cor_method, opts.model, opts.metric)
            scores = _read_json(layout.try_dir(path) / layout.SCORES_FILE)
            if not job.force and scores and scores.get("inputs") == inputs and scores.get("cor") is not None:
                return PhaseResult(True, "infer outputs up to date", up_to_date=True, cor=scores["cor"],
                                   cor_source=scores.get("method"), confidence=scores.get("confidence"),
                                   needs_review=bool(scores.get("needs_review")), estimate=scores.get("estimate"))
            estimate = job.estimate if job.estimate is not None else _try_meta_estimate(path)
            if estimate is None:   # a try made before estimates were recorded: compute it once
                from tomocorioc.data.dxfile import DXFile
                from tomocorioc.worker.pipeline import sinogram_estimate
                with DXFile(path) as scan:
                    estimate = sinogram_estimate(scan, params)
            return pipe.run_infer(path, estimate, extra={"inputs": inputs})
        if job.phase == "full":
            if job.cor is None:
                raise ReconError("no COR on the row for the full phase (run infer or set a COR)")
            if not job.force and full_up_to_date(path, params, float(job.cor)):
                return PhaseResult(True, "full outputs up to date", up_to_date=True)
            return pipe.run_full(path, float(job.cor))
        if job.phase == "tomolog":
            from tomocorioc.worker.tomolog import run_phase as tomolog_phase
            return tomolog_phase(path, job.tomolog or {}, job.cor)
        raise ValueError(f"unknown phase {job.phase!r}")

    return run
