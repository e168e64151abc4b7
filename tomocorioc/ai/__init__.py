"""AI centre-of-rotation scorer: tomocor-compatible DINOv2 (timm) + gated-attention MIL head.

Public API::

    model, arch = load_checkpoint("epoch_10.pt")          # strict, weights_only
    scorer = AIScorer("epoch_10.pt", device=None, dtype="auto")
    result = scorer.score_try_folder(try_dir)              # AIResult, cor_source "ai"

See :mod:`tomocorioc.ai.preprocess` for the preprocessing and small-slice rule
and :mod:`tomocorioc.ai.ranking` for ties and ``margin_confidence``.
"""
from .checkpoint import CheckpointError, load_checkpoint
from .model import ArchInfo, TomocorClassifier
from .preprocess import ScalePlan, UnscorableSlice, plan_for_shape
from .ranking import confidence_of, rank
from .scorer import AIInputError, AIResult, AIScorer, clear_scorer_cache, get_scorer

__all__ = [
    "AIInputError", "AIResult", "AIScorer", "ArchInfo", "CheckpointError", "ScalePlan",
    "TomocorClassifier", "UnscorableSlice", "clear_scorer_cache", "confidence_of", "get_scorer",
    "load_checkpoint", "plan_for_shape", "rank",
]
