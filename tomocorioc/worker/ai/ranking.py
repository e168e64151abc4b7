"""Choosing the COR from per-candidate logits (pure numpy; no torch).

* Candidates are ranked by the logit difference ``m = l1 - l0`` computed in
  float64.  ``softmax(l)[1] == sigmoid(m)`` is monotonic in ``m``, so this is the
  reference's ranking, except that confident slices no longer tie at a float32
  score of exactly 1.0.
* A true tie (several candidates with the same maximal ``m``) picks the middle
  of the tied run: tied candidates that are adjacent in centre order form
  runs; the longest run wins (equal lengths: the run whose middle is closest
  to the middle of the candidate range) and its middle element is chosen
  (the lower one of the two middles for an even run).
* ``margin_confidence = tanh(gap / 2) = 2 * sigmoid(gap) - 1`` in [0, 1), where
  ``gap`` is the best ``m`` minus the largest ``m`` among candidates more than
  ``neighbourhood`` (default 2) positions away from the best in centre order.
  Since ``m`` is a log-odds, ``sigmoid(gap)`` is the odds-based probability that
  the best beats that runner-up; the neighbours are excluded because slices a
  step or two off the true COR legitimately look almost as good.  With no
  candidate outside the neighbourhood the confidence is 0 (no evidence).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np

NEIGHBOURHOOD = 2


@dataclass(frozen=True)
class Ranking:
    """Outcome of ranking one stack; indices refer to the caller's order."""

    margins: List[Optional[float]]
    scores: List[Optional[float]]
    best_index: int
    tied_indices: List[int]  # candidates tied at the best margin, centre order
    runner_up_index: Optional[int]
    gap: Optional[float]
    margin_confidence: float


def margins_of(logits: Sequence[Optional[Sequence[float]]]) -> List[Optional[float]]:
    """``l1 - l0`` in float64 per candidate (None stays None)."""
    return [None if lg is None else float(np.float64(lg[1]) - np.float64(lg[0])) for lg in logits]


def score_of(margin: float) -> float:
    """Softmax class-1 probability of a 2-class logit pair with difference ``margin``."""
    if margin >= 0:
        return 1.0 / (1.0 + math.exp(-margin))
    e = math.exp(margin)
    return e / (1.0 + e)


def confidence_of(gap: Optional[float]) -> float:
    """Map the best-vs-runner-up margin gap to [0, 1): ``tanh(gap / 2)``."""
    if gap is None or not gap > 0:
        return 0.0
    return float(math.tanh(gap / 2.0))


def rank(centers: Sequence[float], logits: Sequence[Optional[Sequence[float]]],
         neighbourhood: int = NEIGHBOURHOOD) -> Ranking:
    """Rank candidates by float64 ``l1 - l0``; ValueError if nothing was scored."""
    if len(centers) != len(logits):
        raise ValueError(f"{len(centers)} centres but {len(logits)} logit rows")
    margins = margins_of(logits)
    scores = [None if m is None else score_of(m) for m in margins]
    order = sorted(range(len(centers)), key=lambda i: (float(centers[i]), i))
    pos = {idx: p for p, idx in enumerate(order)}
    scored = [i for i in order if margins[i] is not None]
    if not scored:
        raise ValueError("no candidate was scored")
    best_m = max(margins[i] for i in scored)
    tied = [i for i in scored if margins[i] == best_m]

    # Runs of tied candidates adjacent among the scored ones (an unscored
    # candidate between two tied ones does not break the run).
    rank_in_scored = {i: k for k, i in enumerate(scored)}
    runs: List[List[int]] = []
    for i in tied:
        if runs and rank_in_scored[i] == rank_in_scored[runs[-1][-1]] + 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    mid_range = (len(order) - 1) / 2.0

    def run_key(run: List[int]) -> tuple:
        middle = run[(len(run) - 1) // 2]
        return (-len(run), abs(pos[middle] - mid_range), pos[middle])

    best_run = min(runs, key=run_key)
    best = best_run[(len(best_run) - 1) // 2]

    far = [i for i in scored if abs(pos[i] - pos[best]) > neighbourhood]
    runner = max(far, key=lambda i: (margins[i], -abs(pos[i] - pos[best]))) if far else None
    gap = None if runner is None else float(best_m - margins[runner])
    return Ranking(margins=margins, scores=scores, best_index=best, tied_indices=tied,
                   runner_up_index=runner, gap=gap, margin_confidence=confidence_of(gap))
