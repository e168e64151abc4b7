"""COR choice from logits: float64 margins, ties, confidence."""
from __future__ import annotations

import math

import numpy as np
import pytest

from tomocorioc.worker.ai.ranking import confidence_of, margins_of, rank


def test_rank_by_float64_margin_not_saturated_float32_score():
    # softmax class 1 is exactly 1.0 in float32 for all three; the margin is not.
    logits = [[-10.0, 10.0], [-15.0, 15.0], [-12.0, 12.0]]
    s32 = [float(np.float32(1) / (1 + np.exp(np.float32(l0 - l1)))) for l0, l1 in logits]
    assert s32 == [1.0, 1.0, 1.0]
    r = rank([10.0, 11.0, 12.0], logits)
    assert r.best_index == 1 and r.tied_indices == [1]


def test_margin_is_computed_in_float64():
    # l1 - l0 differs only below float32 resolution of the operands' sum
    logits = [[np.float32(0.1), np.float32(0.3)], [np.float32(0.1) + np.float32(1e-8), np.float32(0.3)]]
    m = margins_of(logits)
    assert m[0] == float(np.float64(np.float32(0.3)) - np.float64(np.float32(0.1)))


def test_true_tie_picks_middle_of_run():
    logits = [[0, 1], [0, 5], [0, 5], [0, 5], [0, 2]]
    r = rank([1, 2, 3, 4, 5], logits)
    assert r.best_index == 2 and r.tied_indices == [1, 2, 3]
    even = rank([1, 2, 3, 4, 5], [[0, 1], [0, 5], [0, 5], [0, 5], [0, 5]])
    assert even.best_index == 2  # lower of the two middles of run 1..4


def test_longest_tied_run_wins_and_order_is_by_centre():
    # input order shuffled: centres 5,1,2,3,4; tied: 1 (alone) and 3,4,5 (run)
    centers = [5.0, 1.0, 2.0, 3.0, 4.0]
    logits = [[0, 9], [0, 9], [0, 1], [0, 9], [0, 9]]
    r = rank(centers, logits)
    assert centers[r.best_index] == 4.0


def test_unscored_candidates_are_skipped():
    r = rank([1, 2, 3], [None, [0, 2], None])
    assert r.best_index == 1 and r.scores[0] is None and r.margins[2] is None
    with pytest.raises(ValueError):
        rank([1, 2], [None, None])


def test_confidence_uses_runner_up_outside_neighbourhood():
    centers = list(range(10))
    margins = [0, 1, 2, 7.5, 8, 7.9, 3, 4, 0, 0]
    r = rank(centers, [[0, m] for m in margins])
    assert r.best_index == 4
    assert r.runner_up_index == 7 and r.gap == pytest.approx(4.0)
    assert r.margin_confidence == pytest.approx(math.tanh(2.0))
    assert 0.0 <= r.margin_confidence < 1.0
    few = rank([1, 2, 3], [[0, 1], [0, 2], [0, 1]])
    assert few.runner_up_index is None and few.margin_confidence == 0.0
    assert confidence_of(0.0) == 0.0 and confidence_of(None) == 0.0


def test_scores_are_softmax_class_one():
    r = rank([1.0], [[0.25, -1.5]])
    e = np.exp([0.25, -1.5])
    assert r.scores[0] == pytest.approx(e[1] / e.sum(), abs=1e-15)
