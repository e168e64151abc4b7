"""Phases A-C for one file: try -> infer (choose the COR) -> full.

This is the worker-side unit of work: it owns the numerics' heavy objects
(backend, AI scorer) for as long as it lives, so the model is loaded once and
reused for every file.  Each phase's failure becomes a one-line error in the
file's result; it never stops the other files.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from .core import layout
from .core.cor import CorChoice, agreement, choose
from .core.params import COR_METHODS, ParamError, ReconParams
from .core.params import RUN_PHASES as PHASES
from .cor import classical
from .cor.vo import find_center_vo
from .data.dxfile import DXFile
from .data.errors import DatasetError
from .recon.base import ReconError, write_json
from .recon.preprocess import preprocess

log = logging.getLogger(__name__)

OPTION_PHASES = PHASES + ("tomolog",)  # what RunOptions accepts: tomolog runs in the service's worker, not in Pipeline
# Errors that fail one file and let the others go on.  Anything else is a bug
# and should surface with a traceback.
FILE_ERRORS = (DatasetError, ReconError, ParamError, ValueError, OSError, RuntimeError, MemoryError, KeyError)


@dataclass
class FileResult:
    """What happened to one file (the CLI's ``--json`` line)."""

    file: str
    status: str = "pending"          # ok | failed
    cor: Optional[float] = None
    cor_source: Optional[str] = None  # ai | classical | manual | file
    confidence: Optional[float] = None
    error: Optional[str] = None
    needs_review: bool = False
    estimate: Optional[float] = None  # sinogram (Vo) estimate
    phases: Dict[str, str] = field(default_factory=dict)
    seconds: Dict[str, float] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)

    def to_json(self) -> Dict[str, Any]:
        """The JSON object printed per file."""
        d = asdict(self)
        for k in ("cor", "confidence", "estimate"):
            if d[k] is not None:
                d[k] = round(float(d[k]), 3)
        return d


@dataclass
class RunOptions:
    """How to run the phases (one object for all files of a run)."""

    phases: Sequence[str] = PHASES
    cor_method: str = "auto"
    model: Optional[Path] = None
    metric: str = classical.DEFAULT_METRIC
    manual_cor: Optional[float] = None
    agree_tolerance: float = 2.0

    def __post_init__(self) -> None:
        bad = [p for p in self.phases if p not in OPTION_PHASES]
        if bad or not self.phases:
            raise ParamError(f"phases must be a non-empty subset of {','.join(OPTION_PHASES)}; "
                             f"got {','.join(self.phases)}")
        if self.cor_method not in COR_METHODS:
            raise ParamError(f"cor method must be one of {', '.join(COR_METHODS)}, got {self.cor_method!r}")
        if self.cor_method == "ai" and not self.model:
            raise ParamError("--cor-method ai needs --model PATH (a tomocor checkpoint)")
        if self.manual_cor is not None and not math.isfinite(self.manual_cor):
            raise ParamError("manual COR must be finite")


def sinogram_estimate(scan: DXFile, params: ReconParams) -> Optional[float]:
    """Vo's sinogram estimate of the COR at the try row (None if it cannot be made)."""
    row = scan.row_index(params.nsino)
    block = scan.read_rows(row, row + 1)
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    sino = preprocess(t(block.proj), t(block.flat), t(block.dark), dezinger_width=params.dezinger,
                      dezinger_threshold=params.dezinger_threshold)[0].numpy()
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


class Pipeline:
    """Runs the phases for one file at a time; keeps backend and model between files."""

    def __init__(self, backend: Any, params: ReconParams, options: RunOptions,
                 progress: Optional[Callable[[str, int, int], None]] = None) -> None:
        self.backend = backend
        self.params = params
        self.options = options
        self.progress = progress
        self._scorer = None  # AI scorer, created on first use and reused

    # -- helpers ---------------------------------------------------------------
    def _phase_progress(self, phase: str) -> Optional[Callable[[int, int], None]]:
        if self.progress is None:
            return None
        return lambda done, total: self.progress(phase, done, total)

    def load_model(self) -> None:
        """Load the AI model now (when configured), so a bad checkpoint fails the run up front."""
        if self._use_ai():
            self._ai_scorer()

    def _ai_scorer(self):
        if self._scorer is None:
            from .ai import AIScorer  # local: torch/timm model code only when AI is used
            self._scorer = AIScorer(self.options.model)
        return self._scorer

    def _use_ai(self) -> bool:
        return self.options.cor_method == "ai" or (self.options.cor_method == "auto" and bool(self.options.model))

    # -- phases -----------------------------------------------------------------
    def run_file(self, path: Path) -> FileResult:
        """All enabled phases for one file; never raises for a bad file."""
        path = Path(path)
        res = FileResult(file=str(path))
        try:
            with DXFile(path) as scan:
                if not scan.is_complete():
                    res.notes.append("file is incomplete (theta count or flats/darks missing)")
                res.estimate = sinogram_estimate(scan, self.params)
                ncols = scan.ncols
            if "try" in self.options.phases:
                self.run_try(path, res, ncols)
            if "infer" in self.options.phases:
                self.run_infer(path, res)
            elif self.options.manual_cor is not None:
                res.cor, res.cor_source = float(self.options.manual_cor), "manual"
            elif "full" in self.options.phases:
                self._cor_from_file(path, res)
            if "full" in self.options.phases:
                self.run_full(path, res)
            res.status = "ok"
        except FILE_ERRORS as exc:
            res.status = "failed"
            res.error = _one_line(exc)
            log.error("%s: %s", path, res.error)
        return res

    def run_try(self, path: Path, res: FileResult, ncols: int) -> None:
        """Phase A: the try stack, its grid centred as the sinogram estimate requires."""
        res.phases["try"] = "running"
        axis = self.params.rotation_axis
        if axis is None:
            axis = ncols / 2.0
            if res.estimate is not None and abs(res.estimate - axis) > 0.8 * self.params.search_width:
                # Far off-centre axis: centre the grid on the estimate (half-pixel aligned).
                axis = round(res.estimate * 2) / 2.0
                res.notes.append(f"try grid centred on the sinogram estimate {axis:.1f}")
        out = self.backend.run_try(path, self.params, axis, progress=self._phase_progress("try"))
        res.phases["try"] = "done"
        res.seconds["try"] = round(out.seconds, 3)

    def run_infer(self, path: Path, res: FileResult, extra: Optional[Dict[str, Any]] = None) -> None:
        """Phase B: score the try stack, choose the COR, write center_of_rotation.txt and the scores."""
        res.phases["infer"] = "running"
        t0 = time.perf_counter()
        folder = layout.try_dir(path)
        if not folder.is_dir() or not layout.list_try_slices(folder):
            raise ReconError(f"no try slices in {folder}; run the try phase first")
        cls = classical.score_try_folder(folder, self.options.metric)
        cls_choice = choose(cls.centers, cls.scores, estimate=res.estimate,
                            agree_tolerance=self.options.agree_tolerance)
        record: Dict[str, Any] = {"classical": {"metric": cls.metric, "centers": cls.centers, "scores": cls.scores,
                                                "cor": cls_choice.cor, "confidence": cls_choice.confidence,
                                                "unscored": cls.unscored}}
        if self._use_ai():
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
        layout.write_cor_file(folder, cors)
        record.update({"method": source, "cor": choice.cor, "grid_cor": choice.grid_cor,
                       "confidence": choice.confidence, "estimate": res.estimate,
                       "needs_review": choice.needs_review, "notes": choice.notes})
        record.update(extra or {})
        write_json(folder / layout.SCORES_FILE, record)
        res.cor, res.cor_source, res.confidence = choice.cor, source, choice.confidence
        res.needs_review = choice.needs_review
        res.notes.extend(choice.notes)
        res.phases["infer"] = "done"
        res.seconds["infer"] = round(time.perf_counter() - t0, 3)

    def _cor_from_file(self, path: Path, res: FileResult) -> None:
        folder = layout.try_dir(path)
        try:
            res.cor = layout.read_cor_file(folder)
        except FileNotFoundError:
            raise ReconError(f"no COR for the full phase: {folder / layout.COR_FILE} is missing "
                             "(run infer or pass --cor)") from None
        res.cor_source = "file"

    def run_full(self, path: Path, res: FileResult) -> None:
        """Phase C: the volume at ``res.cor``."""
        if res.cor is None:
            raise ReconError("no COR for the full phase")
        res.phases["full"] = "running"
        out = self.backend.run_full(path, self.params, res.cor, progress=self._phase_progress("full"))
        res.phases["full"] = "done"
        res.seconds["full"] = round(out.seconds, 3)


def _one_line(exc: BaseException) -> str:
    """The first line of an exception's message, prefixed by its type when not self-explanatory."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, (DatasetError, ReconError, ParamError)):
        return text
    return f"{type(exc).__name__}: {text}"
