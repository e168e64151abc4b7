"""Persistent, batched AI COR scorer (the model is loaded once per scorer object).

A worker process creates one :class:`AIScorer` and calls :meth:`score_try_folder`
for every file; every window of every candidate of a stack goes through the
backbone in batches, identical windows are computed once, and the small MIL
head runs in float32 on the gathered features.

Precision: ``dtype='auto'`` runs the backbone under ``torch.autocast`` in
bfloat16 where the hardware has native bf16 (CUDA with bf16, CPUs with
AVX512-BF16/AMX; float16 on older GPUs), else in float32.  bf16 moves the
margins ``l1 - l0`` by ~1e-2 (measured: <= 0.005 on the fixture, ~0.01 on a
random ViT-B), so with ``refine=True`` every candidate whose low-precision
margin is within ``refine_tol + 2 % of |best margin|`` of the best is
re-scored in float32 (none when the best is alone within that tolerance).
The choice is then the float32 choice whenever the bf16 error is below half
the tolerance.  A sharp stack (expected of a trained model) re-scores few or
no slices; a flat one (random weights) re-scores most of them.  ``refine_max``
caps the number of re-scored slices for speed at the price of that guarantee
on flat stacks (the truncation is logged and shown in ``AIResult.dtype``).
"""
from __future__ import annotations

import logging
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from contextlib import nullcontext as _nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import tifffile
import torch

from tomocorioc.core.layout import list_try_slices
from tomocorioc.worker.ai import preprocess as pp
from tomocorioc.worker.ai.checkpoint import load_checkpoint
from tomocorioc.worker.ai.model import ArchInfo, TomocorClassifier
from tomocorioc.worker.ai.ranking import NEIGHBOURHOOD, rank

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
# Windows per call on CPU.  On idle cores the batch hardly matters (<= ~20 %);
# on cores shared with other processes every op's thread barrier can stall, and
# 8-12 windows per call were 1.5-2.5x faster than 1-2 (RESULTS_ai.md).
CPU_BATCH = 8
MAX_GPU_BATCH = 256
REFINE_TOL = 0.1  # logits; ~10x the bf16 margin error measured on the fixture and ViT-B
REFINE_REL = 0.02  # plus 2 % of |best margin|: bf16 error grows with the logit scale
REFINE_MAX: Optional[int] = None  # no cap: the float32 choice is kept (see module doc)


class AIInputError(ValueError):
    """The stack cannot be scored at all (empty, mismatched, nothing scorable)."""


@dataclass
class AIResult:
    """Scores of one try stack; lists are in the caller's candidate order."""

    centers: List[float]
    logits: List[Optional[List[float]]]  # [l0, l1] per candidate, None if unscored
    scores: List[Optional[float]]  # softmax class 1 (float64 from the margin)
    margins: List[Optional[float]]  # l1 - l0 in float64 (the ranking key)
    best_index: int
    cor: float
    margin_confidence: float  # tanh(gap / 2), see tomocorioc.worker.ai.ranking
    unscored: List[Tuple[float, str]]
    tied_cors: List[float]  # centres tied at the best margin, chosen one last
    device: str
    dtype: str
    seconds: float
    margin_gap: Optional[float] = None  # best margin - runner-up outside the neighbourhood
    runner_up_index: Optional[int] = None
    refined: List[float] = field(default_factory=list)  # centres re-scored in float32
    plans: List[str] = field(default_factory=list)
    cor_source: str = "ai"

    def to_dict(self) -> dict:
        """JSON-safe dict (tuples become lists; no NaN anywhere)."""
        d = asdict(self)
        d["unscored"] = [[c, r] for c, r in self.unscored]
        return d


def resolve_device(device: Optional[str]) -> torch.device:
    """``None`` -> the first CUDA device if there is one, else CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return dev


def cpu_has_native_bf16() -> bool:
    """True on CPUs with AVX512-BF16 or AMX, where bf16 matmuls beat float32."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """Map 'auto'/'float32'/'bfloat16'/'float16' to the backbone compute dtype."""
    if dtype != "auto":
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be 'auto' or one of {sorted(_DTYPES)}, got {dtype!r}")
        return _DTYPES[dtype]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return torch.float32


def batch_for_memory(arch: ArchInfo, free_bytes: int, dtype: torch.dtype) -> int:
    """Windows per backbone call that fit in half of ``free_bytes`` (at most MAX_GPU_BATCH)."""
    tokens = 1 + arch.grid * arch.grid
    elt = torch.finfo(dtype).bits // 8
    # Peak live activations of one block per window (x, qkv, MLP hidden and its
    # GELU, ~12*D per token) plus a dense attention matrix in case SDPA falls
    # back to the math kernel; float32 input window on top.
    per_window = tokens * (12 * arch.embed_dim + arch.num_heads * tokens) * elt + 3 * arch.img_size ** 2 * 4
    return int(max(1, min(MAX_GPU_BATCH, (free_bytes // 2) // per_window)))


def auto_batch_size(arch: ArchInfo, device: torch.device, dtype: torch.dtype) -> int:
    """Windows per backbone call: fixed small on CPU, sized to free memory on CUDA."""
    if device.type != "cuda":
        return CPU_BATCH
    free, _ = torch.cuda.mem_get_info(device)
    return batch_for_memory(arch, free, dtype)


@contextmanager
def ieee_fp32(device: torch.device) -> Iterator[None]:
    """Disable TF32 on CUDA inside the block: cuDNN convolutions default to TF32,
    which would make the float32 pass (and the refinement) less exact than on CPU."""
    if device.type != "cuda":
        yield
        return
    new_api = hasattr(torch.backends.cudnn, "conv") and hasattr(torch.backends.cudnn.conv, "fp32_precision")
    if new_api:
        targets = [torch.backends.cudnn.conv, torch.backends.cuda.matmul]
        saved = [t.fp32_precision for t in targets]
        for t in targets:
            t.fp32_precision = "ieee"
    else:  # torch < 2.9
        saved = [torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32]
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        if new_api:
            for t, v in zip(targets, saved):
                t.fp32_precision = v
        else:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


class AIScorer:
    """Loads a tomocor checkpoint once and scores any number of try stacks with it."""

    def __init__(self, checkpoint_path: Union[str, Path], device: Optional[str] = None,
                 dtype: str = "auto", batch_size: Optional[int] = None, *, refine: bool = True,
                 refine_tol: float = REFINE_TOL, refine_max: Optional[int] = REFINE_MAX,
                 n_windows: int = pp.N_WINDOWS, seed: int = pp.SEED, max_nonfinite: float = 0.5,
                 neighbourhood: int = NEIGHBOURHOOD, quantize: bool = True) -> None:
        """Load the checkpoint strictly (CheckpointError) onto ``device``."""
        self.device = resolve_device(device)
        self.model: TomocorClassifier
        self.model, self.arch = load_checkpoint(checkpoint_path, self.device)
        self.dtype = resolve_dtype(dtype, self.device)
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size or auto_batch_size(self.arch, self.device, self.dtype)
        self.refine = refine
        self.refine_tol = float(refine_tol)
        self.refine_max = None if refine_max is None else int(refine_max)
        self.n_windows, self.seed = int(n_windows), int(seed)
        self.max_nonfinite, self.neighbourhood, self.quantize = max_nonfinite, neighbourhood, quantize
        self.checkpoint_path = Path(checkpoint_path)
        log.info("AI scorer: %s on %s, %s, batch %d", self.arch.name, self.device,
                 str(self.dtype).replace("torch.", ""), self.batch_size)

    # -- backbone ---------------------------------------------------------------------
    def _features(self, images: Dict[int, torch.Tensor], items: List[Tuple[int, Tuple[int, int]]],
                  low_precision: bool) -> torch.Tensor:
        """(M, D) float32 CLS features of the windows ``items`` = [(slice index, corner)]."""
        s = self.arch.img_size
        out = []
        strict = ieee_fp32(self.device) if not low_precision else _nullcontext()
        with strict, torch.inference_mode(), torch.autocast(self.device.type, dtype=self.dtype,
                                                            enabled=low_precision):
            for start in range(0, len(items), self.batch_size):
                chunk = items[start:start + self.batch_size]
                crops = pp.crop_windows([images[i] for i, _ in chunk], [c for _, c in chunk], s)
                # The reference repeats the grey window to 3 channels (no mean/std).
                x = crops.unsqueeze(1).expand(-1, 3, -1, -1)
                out.append(self.model.features(x).float())
        return torch.cat(out)

    def _logits(self, indices: List[int], images: Dict[int, torch.Tensor],
                plans: Dict[int, pp.ScalePlan], low_precision: bool) -> Dict[int, np.ndarray]:
        """Float32 logits per slice index; each distinct window is computed once."""
        items: List[Tuple[int, Tuple[int, int]]] = []
        first: Dict[int, int] = {}
        for i in indices:
            first[i] = len(items)
            items.extend((i, c) for c in plans[i].unique_corners)
        feats = self._features(images, items, low_precision)
        gather = torch.tensor([[first[i] + k for k in plans[i].window_index] for i in indices],
                              device=feats.device)
        with torch.inference_mode():
            logits = self.model.head_logits(feats[gather])  # (N, K, D) -> (N, C), float32
        rows = logits.double().cpu().numpy()
        return {i: rows[n] for n, i in enumerate(indices)}

    # -- public API -------------------------------------------------------------------
    def score_stack(self, images: Sequence[np.ndarray], centers: Sequence[float]) -> AIResult:
        """Score one try stack (slice i reconstructed with centre ``centers[i]``)."""
        return self._score(images, centers, {})

    def _score(self, images: Sequence[Optional[np.ndarray]], centers: Sequence[float],
               preset: Dict[int, str]) -> AIResult:
        """score_stack with some slices already known to be unscorable (``preset``)."""
        t0 = time.perf_counter()
        if len(images) == 0:
            raise AIInputError("empty stack: no slices to score")
        if len(images) != len(centers):
            raise AIInputError(f"{len(images)} slices but {len(centers)} centres")
        centers = [float(c) for c in centers]
        if not all(np.isfinite(centers)):
            raise AIInputError(f"non-finite centre in {centers}")

        unscored: Dict[int, str] = dict(preset)
        shapes: Dict[int, Tuple[int, int]] = {}
        for i, img in enumerate(images):
            if i in unscored:
                continue
            try:
                shapes[i] = tuple(pp.as_2d(img).shape)  # type: ignore[assignment]
            except pp.UnscorableSlice as exc:
                unscored[i] = str(exc)
        shape_plans = pp.stack_plan(list(shapes.values()), self.arch.img_size, self.n_windows, self.seed)
        plans: Dict[int, pp.ScalePlan] = {}
        prepared: Dict[int, torch.Tensor] = {}
        for i, shape in shapes.items():
            plan = shape_plans[shape]
            if isinstance(plan, pp.UnscorableSlice):
                unscored[i] = str(plan)
                continue
            try:
                prepared[i] = pp.prepare(images[i], plan, self.device, self.quantize, self.max_nonfinite)
                plans[i] = plan
            except pp.UnscorableSlice as exc:
                unscored[i] = str(exc)
        for i in sorted(unscored):
            log.warning("centre %.2f not scored: %s", centers[i], unscored[i])
        if not prepared:
            reasons = "; ".join(f"{centers[i]:.2f}: {r}" for i, r in sorted(unscored.items())[:3])
            raise AIInputError(f"none of the {len(images)} slices can be scored ({reasons})")

        indices = sorted(prepared)
        low = self.dtype != torch.float32
        logits = self._logits(indices, prepared, plans, low_precision=low)
        refined: List[int] = []
        n_near, capped = 0, False
        if low and self.refine:
            refined, n_near = self._contenders(logits)
            capped = self.refine_max is not None and n_near > self.refine_max
            if capped:
                log.info("%d candidates within the bf16 tolerance; re-scoring the best %d in float32",
                         n_near, self.refine_max)
            if refined:
                logits.update(self._logits(refined, prepared, plans, low_precision=False))
        for i in [i for i in indices if not np.all(np.isfinite(logits[i]))]:
            unscored[i] = "model produced non-finite logits"
            del logits[i]
        if not logits:
            raise AIInputError("the model produced non-finite logits for every slice")

        rows = [None if i not in logits else [float(v) for v in logits[i][:2]] for i in range(len(images))]
        r = rank(centers, rows, self.neighbourhood)
        best = r.best_index
        tied = [centers[i] for i in r.tied_indices if i != best] + [centers[best]]
        dtype_name = str(self.dtype).replace("torch.", "")
        if refined:
            dtype_name += f"+float32-refine({len(refined)}{f' of {n_near}' if capped else ''})"
        result = AIResult(
            centers=centers, logits=rows, scores=r.scores, margins=r.margins, best_index=best,
            cor=centers[best], margin_confidence=r.margin_confidence,
            unscored=[(centers[i], unscored[i]) for i in sorted(unscored)], tied_cors=tied,
            device=str(self.device), dtype=dtype_name, seconds=time.perf_counter() - t0,
            margin_gap=r.gap, runner_up_index=r.runner_up_index,
            refined=[centers[i] for i in refined], plans=pp.describe(list(dict.fromkeys(plans.values()))))
        log.info("AI COR %.2f (confidence %.3f, %d candidates, %d unscored) in %.2f s",
                 result.cor, result.margin_confidence, len(centers), len(unscored), result.seconds)
        return result

    def _contenders(self, logits: Dict[int, np.ndarray]) -> Tuple[List[int], int]:
        """(slices to re-score in float32, number of contenders before the cap)."""
        margins = {i: float(v[1] - v[0]) for i, v in logits.items()}
        bad = [i for i, m in margins.items() if not np.isfinite(m)]
        finite = {i: m for i, m in margins.items() if np.isfinite(m)}
        if not finite:
            return sorted(bad), len(bad)
        top = max(finite.values())
        tol = self.refine_tol + REFINE_REL * abs(top)
        near = sorted((i for i, m in finite.items() if m >= top - tol), key=lambda i: -finite[i])
        if len(near) == 1 and not bad:
            return [], 1  # a clear winner: float32 cannot pick another candidate
        # Non-finite low-precision logits (fp16 overflow) are always recomputed.
        keep = near if self.refine_max is None else near[:self.refine_max]
        return sorted(keep + bad), len(near)

    def score_try_folder(self, folder: Union[str, Path]) -> AIResult:
        """Score the ``recon_slice*_center*.tiff`` stack of one try folder."""
        slices = list_try_slices(Path(folder))
        if not slices:
            raise AIInputError(f"no try slices (recon_slice*_center*.tiff) in {folder}")
        # Reading in threads overlaps file-system latency; tifffile releases the GIL.
        with ThreadPoolExecutor(max_workers=min(4, len(slices))) as pool:
            loaded = list(pool.map(_read_tiff, [s.path for s in slices]))
        bad = {k: f"unreadable: {err}" for k, (_, err) in enumerate(loaded) if err is not None}
        for k, err in bad.items():
            log.warning("%s %s", slices[k].path, err)
        return self._score([img for img, _ in loaded], [s.center for s in slices], bad)


def _read_tiff(path: Path) -> Tuple[Optional[np.ndarray], Optional[str]]:
    try:
        return tifffile.imread(path), None
    except (OSError, ValueError, tifffile.TiffFileError) as exc:
        return None, f"{type(exc).__name__}: {exc}"


# Optional process-wide reuse: at most _CACHE_SIZE scorers, keyed by the
# checkpoint's resolved path, mtime and size (so a replaced file is reloaded)
# plus the scorer settings.  Workers that keep their own AIScorer never need it.
_CACHE_SIZE = 2
_CACHE: "OrderedDict[tuple, AIScorer]" = OrderedDict()


def get_scorer(checkpoint_path: Union[str, Path], device: Optional[str] = None, dtype: str = "auto",
               batch_size: Optional[int] = None) -> AIScorer:
    """A cached :class:`AIScorer` for this checkpoint file version, device and settings."""
    path = Path(checkpoint_path).resolve()
    st = path.stat() if path.is_file() else None
    key = (str(path), st and st.st_mtime_ns, st and st.st_size, str(resolve_device(device)),
           dtype, batch_size)
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    scorer = AIScorer(path, device=device, dtype=dtype, batch_size=batch_size)
    _CACHE[key] = scorer
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return scorer


def clear_scorer_cache() -> None:
    """Drop every cached scorer (frees the models)."""
    _CACHE.clear()
