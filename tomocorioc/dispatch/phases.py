"""The worker-side runner: executes one phase of one file, judged by its outputs.

``make_runner(config)`` is called once per worker process; the returned
callable keeps the backend and the AI model between jobs.  A phase whose
outputs exist and were made with the same parameters (digest recorded beside
them) is reported ``up_to_date`` instead of being redone.
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from ..core import layout
from ..core.params import ReconParams
from ..recon.base import FULL_META, TRY_META, ReconError, check_full_outputs, check_try_outputs

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


def make_runner(config: Dict[str, Any]) -> Callable[[Dict[str, Any]], Dict[str, Any]]:
    """Build the per-worker runner (backend and model are created once)."""
    from ..cli import make_backend
    from ..pipeline import FileResult, Pipeline, RunOptions

    backend = make_backend(config.get("backend", "auto"), config.get("tomocupy"), config.get("device"))
    pipelines: Dict[tuple, Pipeline] = {}

    def pipeline_for(job: Dict[str, Any], params: ReconParams) -> Pipeline:
        key = (job.get("cor_method", "auto"), job.get("model"), job.get("metric", "entropy"))
        pipe = pipelines.get(key)
        if pipe is None:
            opts = RunOptions(phases=("try", "infer", "full"), cor_method=key[0], model=key[1], metric=key[2])
            pipe = pipelines[key] = Pipeline(backend, params, opts)
        pipe.params = params
        return pipe

    def run(job: Dict[str, Any]) -> Dict[str, Any]:
        path = Path(job["path"])
        phase = job["phase"]
        params = ReconParams.from_dict(job.get("params") or {})
        if phase == "noop":  # dispatcher benchmarks and tests: a trivial job
            if job.get("sleep"):
                time.sleep(float(job["sleep"]))
            return {"success": True, "msg": "noop"}
        pipe = pipeline_for(job, params)
        res = FileResult(file=str(path))
        if phase == "try":
            if not job.get("force") and try_up_to_date(path, params):
                return {"success": True, "up_to_date": True, "msg": "try outputs up to date"}
            from ..data.dxfile import DXFile
            from ..pipeline import sinogram_estimate
            with DXFile(path) as scan:
                res.estimate = sinogram_estimate(scan, params)
                ncols = scan.ncols
            pipe.run_try(path, res, ncols)
            return {"success": True, "msg": "; ".join(res.notes) or "try done", "seconds": res.seconds.get("try", 0),
                    "estimate": res.estimate, "notes": res.notes}
        if phase == "infer":
            inputs = infer_inputs(path, params, pipe.options.cor_method, pipe.options.model and str(pipe.options.model),
                                  pipe.options.metric)
            scores = _read_json(layout.try_dir(path) / layout.SCORES_FILE)
            if not job.get("force") and scores and scores.get("inputs") == inputs and scores.get("cor") is not None:
                return {"success": True, "up_to_date": True, "msg": "infer outputs up to date", "cor": scores["cor"],
                        "cor_source": scores.get("method"), "confidence": scores.get("confidence"),
                        "needs_review": bool(scores.get("needs_review"))}
            from ..data.dxfile import DXFile
            from ..pipeline import sinogram_estimate
            with DXFile(path) as scan:
                res.estimate = sinogram_estimate(scan, params)
            pipe.run_infer(path, res, extra={"inputs": inputs})
            return {"success": True, "msg": "; ".join(res.notes) or "infer done", "cor": res.cor,
                    "cor_source": res.cor_source, "confidence": res.confidence, "needs_review": res.needs_review,
                    "estimate": res.estimate, "notes": res.notes}
        if phase == "full":
            cor = job.get("cor")
            if cor is None:
                raise ReconError("no COR on the row for the full phase (run infer or set a COR)")
            if not job.get("force") and full_up_to_date(path, params, float(cor)):
                return {"success": True, "up_to_date": True, "msg": "full outputs up to date"}
            res.cor = float(cor)
            pipe.run_full(path, res)
            return {"success": True, "msg": "full done"}
        if phase == "tomolog":
            from ..tomolog import run_phase as tomolog_phase
            return tomolog_phase(path, job.get("tomolog") or {}, job.get("cor"))
        raise ValueError(f"unknown phase {phase!r}")

    return run
