"""Phases A-C for one file: try -> infer (choose the COR) -> full, each returning a :class:`PhaseResult`.

This is the worker-side unit of work: it owns the numerics' heavy objects
(backend, AI scorer) for as long as it lives, so the model is loaded once and
reused for every file.  The order of the phases, retries and the queue are
the service's business (:mod:`tomocorioc.service`); here each call is one phase.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from tomocorioc.core import geometry as geo
from tomocorioc.core import layout
from tomocorioc.core.cor import PAIR_STRONG, CorChoice, Evidence, agreement, choose, choose_with_evidence
from tomocorioc.core.params import COR_METHODS, DEFAULT_METRIC, ParamError, ReconParams
from tomocorioc.core.result import PhaseResult
from tomocorioc.data.dxfile import DXFile
from tomocorioc.worker.cor import classical, refine
from tomocorioc.worker.cor.drift import drift_check
from tomocorioc.worker.cor.pair import PairEstimate, find_center_pair, is_truncated
from tomocorioc.worker.cor.rows import row_sinogram
from tomocorioc.worker.cor.vo import find_center_vo
from tomocorioc.worker.recon import double_fov
from tomocorioc.worker.recon.base import Backend, ReconError, write_json
from tomocorioc.worker.recon.preprocess import preprocess

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InferOptions:
    """How phase B chooses the COR."""

    cor_method: str = "auto"
    model: Optional[str] = None
    metric: str = DEFAULT_METRIC
    agree_tolerance: float = 2.0

    def __post_init__(self) -> None:
        if self.cor_method not in COR_METHODS:
            raise ParamError(f"cor method must be one of {', '.join(COR_METHODS)}, got {self.cor_method!r}")
        if self.cor_method == "ai" and not self.model:
            raise ParamError("cor method ai needs a model (a tomocor checkpoint)")
        if not math.isfinite(self.agree_tolerance) or self.agree_tolerance < 0:
            raise ParamError("agree_tolerance must be a finite number >= 0")

    @property
    def use_ai(self) -> bool:
        """The AI scorer chooses (ai, or auto with a model)."""
        return self.cor_method == "ai" or (self.cor_method == "auto" and bool(self.model))


def sinogram_estimate(scan: DXFile, params: ReconParams) -> Optional[float]:
    """Vo's sinogram estimate of the COR at the try row (None if it cannot be made)."""
    row = scan.row_index(params.nsino)
    block = scan.read_rows(row, row + 1)
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    sino = preprocess(t(block.proj), t(block.flat), t(block.dark), dezinger_width=params.dezinger,
                      dezinger_threshold=params.dezinger_threshold)[0].numpy()
    if params.rotate_proj_angle:  # an applied camera tilt: estimate on the rotated projections, as try sees them
        sino = row_sinogram(scan, row, params, params.rotate_proj_angle).numpy()
    theta = scan.theta_deg()
    span = float(np.ptp(theta))
    if span < 170 or span > 190:
        log.info("%s: theta spans %.1f deg; sinogram estimate needs ~180 deg, skipped", scan.path, span)
        return None
    try:
        return find_center_vo(sino)
    except ValueError as exc:
        log.warning("%s: no sinogram estimate (%s)", scan.path, exc)
        return None


# Rows around the try row used by the projection-pair estimate: a frame is one HDF5
# chunk, so more rows cost no extra reading, and they average the photon noise.
PAIR_ROWS = 16
TRUNCATED_SMOOTH_PX = 1.5   # Gaussian smoothing of a truncated scan's try curve (measured, issue 16 hard set)


def pair_evidence(scan: DXFile, params: ReconParams, center: Optional[float] = None
                  ) -> Tuple[Optional[PairEstimate], bool]:
    """The 0/180 projection-pair estimate near the try row (None without a 180° view) and truncation."""
    row = scan.row_index(params.nsino)
    r0 = max(0, min(row - PAIR_ROWS // 2, scan.nrows - PAIR_ROWS))
    r1 = min(scan.nrows, r0 + PAIR_ROWS)
    block = scan.read_rows(r0, r1)
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    sino = preprocess(t(block.proj), t(block.flat), t(block.dark), dezinger_width=params.dezinger,
                      dezinger_threshold=params.dezinger_threshold).numpy()
    truncated = is_truncated(sino)
    try:
        est = find_center_pair(sino, scan.theta_deg(), search_radius=params.search_width, center=center)
    except ValueError as exc:
        log.warning("%s: no projection-pair estimate (%s)", scan.path, exc)
        est = None
    return est, truncated


class Pipeline:
    """Runs one phase of one file at a time; keeps the backend and the AI model between files."""

    def __init__(self, backend: Backend, params: ReconParams, options: InferOptions,
                 progress: Optional[Callable[[str, int, int], None]] = None) -> None:
        self.backend = backend
        self.params = params
        self.options = options
        self.progress = progress
        self._scorer: Any = None  # AI scorer, created on first use and reused

    def _phase_progress(self, phase: str) -> Optional[Callable[[int, int], None]]:
        if self.progress is None:
            return None
        return lambda done, total: self.progress(phase, done, total)

    def _ai_scorer(self) -> Any:
        if self._scorer is None:
            from tomocorioc.worker.ai import AIScorer  # local: torch/timm model code only when AI is used
            self._scorer = AIScorer(self.options.model)
        return self._scorer

    # -- phases -----------------------------------------------------------------
    def run_try(self, path: Path, estimate: Optional[float] = None) -> PhaseResult:
        """Phase A: the try stack, its grid centred as the sinogram estimate requires."""
        notes: List[str] = []
        with DXFile(path) as scan:
            geometry, overlap = double_fov.scan_geometry(scan, self.params)
            if overlap is not None:
                # A full turn: the overlap of its two halves, not Vo's 180-degree estimate.
                estimate = overlap.estimate
            elif estimate is None:
                estimate = sinogram_estimate(scan, self.params)
            ncols = scan.ncols
            pair = pair_evidence(scan, self.params)[0] if self.params.rotation_axis is None else None
        axis = self.params.rotation_axis
        kwargs: Dict[str, Any] = {}
        if geometry == geo.OFFSET:
            kwargs["geometry"] = geometry   # only then: other backends keep their plain signature
            if axis is None and estimate is not None:
                axis = round(estimate * 2) / 2.0
                notes.append(f"360-offset scan: try grid centred on the overlap estimate {axis:.1f}")
        if axis is None:
            axis = ncols / 2.0
            far = pair is not None and abs(pair.cor - axis) > 0.6 * self.params.search_width
            if pair is not None and far and pair.strength >= PAIR_STRONG:
                # A clear 0/180 pair far off-centre: centre the grid on it, so the axis is well inside.
                axis = round(pair.cor * 2) / 2.0
                notes.append(f"try grid centred on the 0/180 pair estimate {axis:.1f}")
            elif estimate is not None and abs(estimate - axis) > 0.8 * self.params.search_width:
                # Far off-centre axis: centre the grid on the estimate (half-pixel aligned).
                axis = round(estimate * 2) / 2.0
                notes.append(f"try grid centred on the sinogram estimate {axis:.1f}")
        out = self.backend.run_try(path, self.params, axis, progress=self._phase_progress("try"), **kwargs)
        double_fov.record_geometry(Path(path), geometry, overlap)
        return PhaseResult(True, "; ".join(notes) or "try done", estimate=estimate, seconds=round(out.seconds, 3),
                           notes=tuple(notes), data={"geometry": geometry})

    def run_infer(self, path: Path, estimate: Optional[float] = None,
                  extra: Optional[Dict[str, Any]] = None) -> PhaseResult:
        """Phase B: score the try stack, choose the COR, write center_of_rotation.txt and the scores."""
        t0 = time.perf_counter()
        folder = layout.try_dir(path)
        if not folder.is_dir() or not layout.list_try_slices(folder):
            raise ReconError(f"no try slices in {folder}; run the try phase first")
        centers = [sl.center for sl in layout.list_try_slices(folder)]
        axis = 0.5 * (min(centers) + max(centers))
        with DXFile(path) as scan:
            pair, truncated = pair_evidence(scan, self.params, center=axis)
            width = scan.ncols
        radius = classical.truncated_radius(axis, width, self.params.binning) if truncated else None
        cls = classical.score_try_folder(folder, self.options.metric, radius=radius)
        evidence = [Evidence("vo", float(estimate))] if estimate is not None else []
        if pair is not None:
            evidence.append(Evidence("pair", pair.cor, pair.strength))
        # A truncated scan's curve is a broad hump with jitter: smooth it, and skip the refine
        # pass, which would only resolve the jitter (the pair gives the sub-pixel value there).
        fine = None if truncated else self._refine(path, cls, radius)
        cls_choice = choose_with_evidence(cls.centers, cls.scores, evidence, fine=fine,
                                          smooth_px=TRUNCATED_SMOOTH_PX if truncated else 0.0)
        if truncated:
            cls_choice.notes.insert(0, "sample wider than the field of view: scored inside the field of view")
        record: Dict[str, Any] = {"classical": {"metric": cls.metric, "centers": cls.centers, "scores": cls.scores,
                                                "cor": cls_choice.cor, "confidence": cls_choice.confidence,
                                                "unscored": cls.unscored},
                                  "pair": None if pair is None else {"cor": pair.cor, "strength": pair.strength,
                                                                      "correlation": pair.correlation},
                                  "truncated": truncated}
        if self.options.use_ai:
            ai = self._ai_scorer().score_try_folder(folder)
            ag = agreement(ai.cor, cls_choice.cor, self.options.agree_tolerance)
            choice = CorChoice(cor=float(ai.cor), grid_cor=float(ai.cor), index=int(ai.best_index),
                               peak_confidence=float(ai.margin_confidence),
                               confidence=float(ai.margin_confidence) * ag, estimate=cls_choice.cor,
                               needs_review=ag < 1.0)
            if ag < 1.0:
                choice.notes.append(f"AI COR {ai.cor:.2f} disagrees with the classical {cls_choice.cor:.2f}")
            source = "ai"
            record["ai"] = {"centers": ai.centers, "scores": ai.scores, "margins": ai.margins,
                            "cor": ai.cor, "margin_confidence": ai.margin_confidence,
                            "unscored": ai.unscored, "device": ai.device, "dtype": ai.dtype}
            cors = [c for c in ai.tied_cors if c != ai.cor] + [ai.cor]
        else:
            choice, source = cls_choice, "classical"
            cors = [cls_choice.cor]
        choice, source = double_fov.prefer_overlap(choice, source, folder, estimate)
        if source == "overlap":
            cors = [choice.cor]
        drift = drift_check(path, self.params, estimate)
        record["drift"] = drift
        if drift["note"]:   # a tilted axis: one COR cannot fit every row
            choice.needs_review = True
            choice.notes.append(drift["note"])
        layout.write_cor_file(folder, cors)
        record.update({"method": source, "cor": choice.cor, "grid_cor": choice.grid_cor,
                       "confidence": choice.confidence, "estimate": estimate,
                       "needs_review": choice.needs_review, "notes": choice.notes})
        record.update(extra or {})
        write_json(folder / layout.SCORES_FILE, record)
        return PhaseResult(True, "; ".join(choice.notes) or "infer done", cor=choice.cor, cor_source=source,
                           confidence=choice.confidence, needs_review=choice.needs_review, estimate=estimate,
                           seconds=round(time.perf_counter() - t0, 3), notes=tuple(choice.notes))

    def _refine(self, path: Path, cls: classical.ClassicalScores, radius: Optional[float]
                ) -> Optional[Tuple[List[float], List[float]]]:
        """The refine pass around the curve's peak (torch backend, grids coarser than its step), else None."""
        if getattr(self.backend, "name", "") != "torch" or self.params.search_step <= refine.STEP:
            return None
        peak = choose(cls.centers, cls.scores).cor
        try:
            fine = refine.refine_scores(path, self.params, peak, cls.metric, radius=radius,
                                        device=str(getattr(self.backend, "device", "cpu")),
                                        half_width=max(refine.HALF_WIDTH, self.params.search_step))
        except (ValueError, OSError, RuntimeError) as exc:   # the coarse curve still stands
            log.warning("%s: refine pass skipped (%s)", path, exc)
            return None
        return fine.centers, fine.scores

    def run_full(self, path: Path, cor: Optional[float]) -> PhaseResult:
        """Phase C: the volume at ``cor``."""
        if cor is None:
            raise ReconError("no COR for the full phase (run infer or set a COR)")
        geometry = double_fov.geometry_for_full(Path(path), self.params)
        kwargs: Dict[str, Any] = {"geometry": geometry} if geometry == geo.OFFSET else {}
        out = self.backend.run_full(path, self.params, float(cor), progress=self._phase_progress("full"), **kwargs)
        return PhaseResult(True, "full done", seconds=round(out.seconds, 3), data={"geometry": geometry})


__all__ = ["Pipeline", "InferOptions", "sinogram_estimate", "pair_evidence"]
