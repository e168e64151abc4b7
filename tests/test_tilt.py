"""Camera tilt (issue 15): the simulator's tilted axis, CamRot, infer's drift check, the applied rotation.

The simulated scans have 192 rows (the tilt is a drift over rows) and few
columns and angles to keep the CPU time down; the tolerance goals are the
issue's: tilt within 0.05°, the middle-row COR within 0.5 px.
"""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from tomocorioc.core import layout, sidecar
from tomocorioc.core.params import ReconParams
from tomocorioc.core.tilt import angle_for_slope, drift_note, fit_tilt, parse_fractions
from tomocorioc.data.dxfile import DXFile
from tomocorioc.sim import SimConfig, simulate_scan
from tomocorioc.worker.cor.rows import cor_at_row
from tomocorioc.worker.recon.rotate import rotate_rows, source_rows

TILTED = [(1.5, 4.3, 0), (-0.3, -6.1, 1), (-1.2, 0.0, 3)]    # (tilt deg, axis offset px, seed)
SHAPE = dict(ncols=96, nrows=192, nproj=121)
FAST = ["--search-width", "10"]
# Three 192-row scans simulated, then measured with 15 rows each: minutes on a loaded 2-core host.
HEAVY = pytest.mark.timeout(1200)


def run_cli(*args, timeout=600):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("TOMOCUPY", None)
    return subprocess.run([sys.executable, "-m", "tomocorioc", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)


# ---------------------------------------------------------------- pure parts


def test_line_fit_and_the_angle_sign():
    rows = [19, 95, 171]
    fit = fit_tilt(rows, [100 + 0.02 * (r - 95) for r in rows], row_mid=95)
    assert fit.slope_px_per_row == pytest.approx(0.02) and fit.cor == pytest.approx(100) and fit.r2 == 1.0
    # +A in ndimage.rotate(axes=(2, 1)) makes a vertical line's column grow with the row: undo with -atan.
    assert fit.tilt_deg == pytest.approx(-math.degrees(math.atan(0.02)))
    assert angle_for_slope(-0.02) == pytest.approx(-fit.tilt_deg)
    with pytest.raises(ValueError, match="two or more rows"):
        fit_tilt([5], [1.0], 5)
    with pytest.raises(ValueError, match="rows must differ"):
        fit_tilt([5, 5, 5], [1.0, 2.0, 3.0], 5)


def test_row_option_and_drift_note():
    assert parse_fractions("0.9, 0.1,0.5") == (0.1, 0.5, 0.9)
    for bad, why in (("0.1,0.9", "three or more"), ("0.1,x,0.9", "comma-separated"), ("0,0.5,1.5", r"\[0, 1\]")):
        with pytest.raises(ValueError, match=why):
            parse_fractions(bad)
    assert drift_note([19, 171], [50.0, 50.9]) == ""
    note = drift_note([19, 95, 171], [50.0, 51.1, 52.0])
    assert note.startswith(f"axis tilted by about {angle_for_slope(2.0 / 152):.2f}°: run CamRot")
    assert drift_note([19, 95, 171], [50.0, 53.5, 52.0]) == ""      # not on a line: noise, not a tilt
    assert drift_note([19, 95, 171], [50.0, None, 52.0]) == note and drift_note([19, 171], [None, 52.0]) == ""


def test_rotation_is_ndimage_rotate_axes_2_1():
    scipy_ndimage = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(0)
    a = rng.random((3, 40, 30)).astype(np.float32)
    for angle in (5.0, -1.3, 0.4):
        ref = scipy_ndimage.rotate(a, angle, axes=(2, 1), reshape=False, order=1)
        whole = rotate_rows(torch.from_numpy(a), 0, 0, 40, angle, 40).numpy()
        np.testing.assert_allclose(whole, ref, atol=1e-6)
        a0, a1 = source_rows(10, 20, angle, 40, 30)      # a block of rows needs only its margin
        part = rotate_rows(torch.from_numpy(a[:, a0:a1]), a0, 10, 20, angle, 40).numpy()
        np.testing.assert_allclose(part, ref[:, 10:20], atol=1e-6)


def test_simulated_tilt_moves_the_axis_row_by_row(tmp_path):
    """Noiseless: the mean of a row's centroids at 0° and 180° is that row's axis, as the truth says."""
    cfg = SimConfig(ncols=64, nrows=24, nproj=19, offset=2.5, tilt=2.0, noise=0, phantom="shepp3d")
    t = simulate_scan(tmp_path / "t.h5", cfg)
    assert t["tilt_deg"] == 2.0 and len(t["cor_rows"]) == 24
    assert t["cor_rows"][0] > t["cor"] > t["cor_rows"][-1]   # +tilt: the axis moves left going down
    with DXFile(tmp_path / "t.h5") as scan:
        block = scan.read_rows(0, 24)
    li = -np.log((block.proj - block.dark) / (block.flat - block.dark))
    x = np.arange(64) + 0.5
    for r in range(2, 22):
        c0, c180 = ((li[k, r] * x).sum() / li[k, r].sum() for k in (0, -1))
        assert (c0 + c180) / 2 == pytest.approx(t["cor_rows"][r], abs=0.02), r
    with pytest.raises(ValueError, match="tilt must be within"):
        SimConfig(tilt=12.0)


# ---------------------------------------------------------------- on simulated tilted scans


@pytest.fixture(scope="module")
def tilted(tmp_path_factory):
    d = tmp_path_factory.mktemp("tilt") / "data"
    truths = [simulate_scan(d / f"tilt_{i}.h5", SimConfig(offset=off, tilt=tilt, seed=seed, **SHAPE))
              for i, (tilt, off, seed) in enumerate(TILTED)]
    return d, truths


@HEAVY
def test_camrot_measures_the_tilt_and_the_middle_cor(tilted, tmp_path):
    d, truths = tilted
    (tmp_path / "bad.h5").write_text("not hdf5")
    files = [d / t["file"] for t in truths] + [tmp_path / "missing.h5", tmp_path / "bad.h5"]
    p = run_cli("camrot", *files, "--json", *FAST)
    assert p.returncode == 1, p.stderr     # two bad files
    recs = [json.loads(x) for x in p.stdout.splitlines()]
    assert len(recs) == len(files)
    for rec, t in zip(recs, truths):
        assert {"file", "status", "tilt_deg", "cor", "rows", "cors", "slope_px_per_row", "r2"} <= set(rec)
        assert rec["status"] == "ok" and len(rec["rows"]) == 3 == len(rec["cors"])
        assert abs(rec["tilt_deg"] - t["tilt_deg"]) < 0.05, (rec, t["tilt_deg"])
        assert abs(rec["cor"] - t["cor_rows"][rec["row"]]) < 0.5, rec
        assert rec["r2"] > 0.9
    for rec in recs[len(truths):]:
        assert rec["status"] == "error" and rec["error"] and "tilt_deg" not in rec
    bad = run_cli("camrot", files[0], "--rows", "0.2,0.8", "--json")
    assert bad.returncode == 2 and json.loads(bad.stdout)["status"] == "error"


@HEAVY
def test_infer_flags_a_tilted_axis_and_not_a_straight_one(tilted, tmp_path):
    d, truths = tilted
    straight = tmp_path / "straight.h5"
    simulate_scan(straight, SimConfig(ncols=96, nrows=32, nproj=121, offset=-3.0, seed=5))
    p = run_cli("run", d / truths[2]["file"], straight, "--phases", "try,infer", "--json", *FAST)
    assert p.returncode == 0, p.stderr
    tilted_rec, straight_rec = (json.loads(x) for x in p.stdout.splitlines())
    assert tilted_rec["needs_review"] and any("run CamRot" in n for n in tilted_rec["notes"]), tilted_rec
    angle = float(next(n for n in tilted_rec["notes"] if "run CamRot" in n).split("about ")[1].split("°")[0])
    assert angle == pytest.approx(truths[2]["tilt_deg"], abs=0.3)
    assert not any("tilted" in n for n in straight_rec["notes"]), straight_rec
    scores = json.loads((layout.try_dir(d / truths[2]["file"]) / layout.SCORES_FILE).read_text())
    assert abs(scores["drift"]["drift_px"]) > 1.0


@HEAVY
def test_applied_tilt_straightens_the_axis_of_the_full_reconstruction(tilted):
    d, truths = tilted
    t = truths[0]
    f = d / t["file"]
    sidecar.write(f, ReconParams(rotate_proj_angle=t["tilt_deg"]), ReconParams())
    p = run_cli("run", f, "--json", *FAST)
    assert p.returncode == 0, p.stderr
    rec = json.loads(p.stdout)
    assert rec["status"] == "ok" and not any("tilted" in n for n in rec["notes"]), rec
    full = layout.full_dir(f)
    assert len(sorted(full.glob("recon_*.tiff"))) == 192
    line = (full / "rec_line.txt").read_text()
    assert "tomocupy recon_steps" in line and f"--rotate-proj-angle {t['tilt_deg']:g}" in line
    # The COR of the rotated projections (what the full reconstruction used) no longer drifts.
    params = ReconParams(search_width=10)
    with DXFile(f) as scan:
        top, bottom = scan.row_index(0.1), scan.row_index(0.9)
        raw = [cor_at_row(scan, r, params).cor for r in (top, bottom)]
        fixed = [cor_at_row(scan, r, params, rotate_deg=t["tilt_deg"]).cor for r in (top, bottom)]
    assert abs(raw[1] - raw[0]) > 3.0
    assert abs(fixed[1] - fixed[0]) < 0.3, fixed
    assert abs(rec["cor"] - np.mean(fixed)) < 0.3
