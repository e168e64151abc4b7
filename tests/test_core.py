"""Pure core: layout names, candidate grid, COR file, parameters, score-curve maths."""
import math

import numpy as np
import pytest

from tomocorioc.core import layout
from tomocorioc.core.cor import (
    Evidence,
    agreement,
    choose,
    choose_with_evidence,
    confidence_from_error,
    middle_of_ties,
    parabola_refine,
    peak_confidence,
)
from tomocorioc.core.params import ParamError, ReconParams


def test_try_names_match_tomocupy():
    assert layout.try_slice_name(520, 519.0) == "recon_slice0520_center519.00.tiff"
    assert layout.try_slice_name(7, 1024.25) == "recon_slice0007_center1024.25.tiff"
    assert layout.full_slice_name(3) == "recon_00003.tiff"
    assert layout.parse_try_name("recon_slice0520_center519.00.tiff") == (520, 519.0)
    with pytest.raises(ValueError):
        layout.parse_try_name("center_of_rotation.txt")


def test_paths(tmp_path):
    f = tmp_path / "data" / "sample_0001.h5"
    assert layout.try_dir(f) == tmp_path / "data_rec" / "try_center" / "sample_0001"
    assert layout.full_dir(f) == tmp_path / "data_rec" / "sample_0001_rec"


def test_candidate_grid_is_tomocupy_convention():
    c = layout.candidate_centers(1024.0, 50, 0.5)
    assert len(c) == 200
    # rotation_axis - shift, shift in arange(-W, W, step): from axis+W down to axis-W+step
    assert c[0] == 1074.0 and c[-1] == 974.5
    with pytest.raises(ValueError):
        layout.candidate_centers(1024, 50, 0)


def test_list_try_slices_sorts_and_keeps_one_row(tmp_path):
    for c in (3.0, 1.0, 2.0):
        (tmp_path / layout.try_slice_name(5, c)).write_bytes(b"x")
    (tmp_path / layout.try_slice_name(9, 7.0)).write_bytes(b"x")  # stray row
    (tmp_path / "notes.txt").write_text("x")
    s = layout.list_try_slices(tmp_path)
    assert [x.center for x in s] == [1.0, 2.0, 3.0] and {x.row for x in s} == {5}


def test_cor_file_last_line(tmp_path):
    layout.write_cor_file(tmp_path, [10.0, 12.5])
    assert (tmp_path / layout.COR_FILE).read_text() == "10.00\n12.50\n"
    assert layout.read_cor_file(tmp_path) == 12.5


def test_params_validation_and_roundtrip():
    p = ReconParams(search_width=20, binning=1)
    assert ReconParams.from_dict(p.to_dict()) == p
    for bad in (dict(search_width=-1), dict(search_step=0), dict(nsino=1.5), dict(fbp_filter="x"),
                dict(binning=5), dict(dezinger=2), dict(search_width=float("nan")), dict(remove_stripe_method="y")):
        with pytest.raises(ParamError):
            ReconParams(**bad)
    with pytest.raises(ParamError, match="unknown parameter"):
        ReconParams.from_dict({"bogus": 1})


def test_digest_tracks_relevant_fields():
    p = ReconParams()
    assert p.digest(phase="try") == ReconParams().digest(phase="try")
    assert p.digest(phase="try") != p.replace(search_step=0.25).digest(phase="try")
    # the chunk size does not change outputs, so it must not force re-work
    assert p.digest(phase="full", cor=10) == p.replace(nsino_per_chunk=32).digest(phase="full", cor=10)
    assert p.digest(phase="full", cor=10) != p.digest(phase="full", cor=10.5)


def test_ties_pick_middle_of_run():
    assert middle_of_ties([0, 1, 1, 1, 0]) == 2
    assert middle_of_ties([0, 1, 1, 0]) == 1
    assert middle_of_ties([5, 0, 5, 5, 5]) == 3  # longest tied run wins
    with pytest.raises(ValueError):
        middle_of_ties([math.nan, math.nan])


def test_parabola_recovers_subgrid_peak():
    c = np.arange(90, 110, 0.5)
    s = -(c - 100.2) ** 2
    i = int(np.argmax(s))
    assert abs(parabola_refine(c, s, i) - 100.2) < 1e-9
    assert parabola_refine(c, s, 0) == c[0]  # edge: no refinement


def test_choose_and_confidence():
    c = np.arange(90, 110, 0.5)
    s = -np.abs(c - 101.0) + np.random.default_rng(0).normal(0, 0.01, c.size)
    ch = choose(c, s, estimate=101.3)
    assert abs(ch.cor - 101.0) < 0.3 and ch.confidence > 0.8 and not ch.needs_review
    far = choose(c, s, estimate=110.0)
    assert far.needs_review and far.confidence < ch.confidence and far.notes
    flat = choose(c, np.zeros_like(c))
    assert flat.confidence == 0.0 and flat.needs_review
    edge = choose(c, -np.abs(c - 89))
    assert edge.needs_review and "edge" in edge.notes[0]
    assert agreement(10, None, 2) == 1.0 and agreement(10, 20, 2) == 0.0
    assert peak_confidence([1, 1, 1], 1) == 0.0


def test_choose_prefers_an_interior_peak_to_a_higher_grid_edge():
    """Entropy can rise again towards the grid's edge (sample filling the field of view): not the axis."""
    c = np.arange(28.5, 36.5, 0.5)
    s = np.array([-7.4975, -7.4759, -7.3486, -7.2481, -7.2022, -7.2477, -7.3532, -7.4607, -7.502, -7.537,
                  -7.5095, -7.4589, -7.4109, -7.3268, -7.2471, -7.1974])   # measured on a 64 px scan, truth 30.5
    ch = choose(c, s, estimate=30.43)
    assert abs(ch.cor - 30.5) < 0.25 and ch.needs_review and "interior peak" in ch.notes[0]
    mono = choose(c, np.linspace(0, 1, c.size))          # no interior peak: the edge it is, flagged
    assert mono.grid_cor == c[-1] and mono.needs_review


def test_choose_with_evidence():
    """Issue 16: the curve and independent estimates; needs_review exactly when expected error > 1 px."""
    c = np.arange(80, 120.01, 0.5)
    peak = -np.abs(c - 101.0) + np.random.default_rng(0).normal(0, 0.01, c.size)
    agree = choose_with_evidence(c, peak, [Evidence("vo", 99.0), Evidence("pair", 101.2, 0.4)])
    assert abs(agree.cor - 101.1) < 0.1 and not agree.needs_review and agree.confidence > 0.9
    loose = choose_with_evidence(c, peak, [Evidence("pair", 101.8, 0.4)])   # 0.8 apart: the pair
    assert loose.cor == 101.8 and not loose.needs_review
    # A far, higher peak (truncation/streaks) and a lower one where the pair says: the lower one.
    two = peak + 20.0 * np.exp(-((c - 115.0) / 1.0) ** 2)
    near = choose_with_evidence(c, two, [Evidence("pair", 101.3, 0.4)])
    assert near.cor == 101.3 and "confirms the 0/180 pair" in near.notes[-1] and not near.needs_review
    # Pair and Vo agree, the curve has nothing there: the pair, not flagged.
    flat_there = -np.abs(c - 115.0)
    both = choose_with_evidence(c, flat_there, [Evidence("vo", 96.5), Evidence("pair", 96.0, 0.4)])
    assert both.cor == 96.0 and not both.needs_review
    # Nobody agrees: flagged, with a low confidence.
    alone = choose_with_evidence(c, peak, [Evidence("vo", 90.0), Evidence("pair", 110.0, 0.05)])
    assert alone.needs_review and alone.confidence < 0.5
    # No evidence at all: the curve alone, as before (trusted when its peak is clear).
    only = choose_with_evidence(c, peak)
    assert abs(only.cor - 101.0) < 0.3 and not only.needs_review
    # No interior peak: Vo's estimate rather than the grid edge, flagged.
    mono = choose_with_evidence(c, np.linspace(0, 1, c.size), [Evidence("vo", 95.0)])
    assert mono.cor == 95.0 and mono.needs_review
    assert confidence_from_error(1.0) == 0.5 and confidence_from_error(0.2) > 0.99


def test_refine_pass_moves_the_curve_peak_only_with_an_interior_fine_peak():
    c = np.arange(90, 110, 0.5)
    s = -np.abs(c - 100.0)
    fc = np.arange(99.0, 101.01, 0.1)
    fine = choose_with_evidence(c, s, fine=(fc, -(fc - 100.33) ** 2))
    assert abs(fine.cor - 100.33) < 0.02 and "refine pass" in fine.notes[0]
    rising = choose_with_evidence(c, s, fine=(fc, fc))          # still rising at its edge: coarse value kept
    assert rising.cor == pytest.approx(100.0)


def test_smoothing_finds_the_middle_of_a_jittery_hump():
    """A truncated scan's curve: a broad hump (truth 100.3) with pixel-scale jitter whose top is off-centre."""
    c = np.arange(80, 120.01, 0.5)
    jitter = 0.05 * np.cos(2 * np.pi * (c - 101.5) / 3.0)
    s = -0.002 * (c - 100.3) ** 2 + jitter
    raw = choose_with_evidence(c, s)
    smooth = choose_with_evidence(c, s, smooth_px=1.5)
    assert abs(smooth.cor - 100.3) < 0.2 < abs(raw.cor - 100.3) and "smoothed" in smooth.notes[0]
