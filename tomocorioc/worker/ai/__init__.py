"""AI centre-of-rotation scorer: tomocor-compatible DINOv2 (timm) + gated-attention MIL head.

Public API::

    model, arch = load_checkpoint("epoch_10.pt")          # strict, weights_only
    scorer = AIScorer("epoch_10.pt", device=None, dtype="auto")
    result = scorer.score_try_folder(try_dir)              # AIResult, cor_source "ai"

See :mod:`tomocorioc.worker.ai.preprocess` for the preprocessing and small-slice rule
and :mod:`tomocorioc.worker.ai.ranking` for ties and ``margin_confidence``.
"""
from tomocorioc.worker.ai.checkpoint import CheckpointError, load_checkpoint
from tomocorioc.worker.ai.model import ArchInfo, TomocorClassifier
from tomocorioc.worker.ai.preprocess import ScalePlan, UnscorableSlice, plan_for_shape
from tomocorioc.worker.ai.ranking import confidence_of, rank
from tomocorioc.worker.ai.scorer import AIInputError, AIResult, AIScorer, clear_scorer_cache, get_scorer

__all__ = [
    "AIInputError", "AIResult", "AIScorer", "ArchInfo", "CheckpointError", "ScalePlan",
    "TomocorClassifier", "UnscorableSlice", "clear_scorer_cache", "confidence_of", "get_scorer",
    "load_checkpoint", "plan_for_shape", "rank",
]
