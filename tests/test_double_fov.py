"""360° scans with the axis near a detector edge (double field of view), end to end on simulated scans.

The scans come from the real ``tomocorioc simulate --axis-offset`` and go
through the real ``tomocorioc run`` (torch backend); tomocupy itself cannot
run here, so for it the exact command line is checked.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tifffile
import torch

from tomocorioc.core import geometry as geo
from tomocorioc.core import layout
from tomocorioc.core.params import ReconParams
from tomocorioc.sim import SimConfig, build_phantom, evaluate, project, read_truth
from tomocorioc.worker.recon import double_fov as dfv
from tomocorioc.worker.recon.tomocupy_backend import full_command, try_command

NARROW = ["--search-width", "4", "--search-step", "0.5"]


def run_cli(*args, check=True, timeout=600, env_extra=None):
    env = dict(os.environ, PYTHONUNBUFFERED="1", **(env_extra or {}))
    env.pop("TOMOCUPY", None)
    p = subprocess.run([sys.executable, "-m", "tomocorioc", *map(str, args)], capture_output=True, text=True,
                       timeout=timeout, env=env)
    if check:
        assert p.returncode == 0, p.stderr[-3000:]
    return p


def simulate(folder, series, width, *extra):
    run_cli("simulate", folder, "--series", series, "--width", width, "--rows", 4, "--nproj", 360,
            "--noise", 10000, *extra)
    return folder / f"{series}_0001.h5", read_truth(folder)[f"{series}_0001.h5"]


def exact_sinogram(cfg, row=1):
    phantom = build_phantom(cfg)
    theta = np.deg2rad(cfg.theta_deg())
    return project(phantom, theta, cfg.ncols, cfg.nrows, cfg.cor)[:, row, :].astype(np.float64), theta, phantom


# ---------------------------------------------------------------- pure parts


def test_geometry_names_and_spans():
    assert geo.span_deg(np.linspace(0, 360, 100)) == pytest.approx(360)
    assert geo.span_deg(np.linspace(0, 2 * np.pi, 100, endpoint=False)) == pytest.approx(356.4)
    assert geo.is_full_turn(np.linspace(0, 2 * np.pi, 100)) and not geo.is_full_turn(np.linspace(0, 180, 91))
    assert geo.stitched_axis(200.5, 256) == 200.5 and geo.stitched_axis(30.0, 256) == 286.0
    assert geo.offset_search_width(50, geo.OFFSET) == geo.OFFSET_SEARCH_WIDTH
    assert geo.offset_search_width(50, geo.HALF) == 50
    assert ReconParams(geometry="360-offset").digest(phase="try") != ReconParams().digest(phase="try")
    with pytest.raises(ValueError, match="geometry must be one of auto, 180, 360, 360-offset"):
        ReconParams(geometry="double")


@pytest.mark.parametrize("width,offset,noise", [(128, -40.3, None), (200, 71.6, 5000), (256, -100.25, 5000),
                                                (256, 90.7, None), (256, -12.0, 2000)])
def test_overlap_estimate_and_detection(width, offset, noise):
    cfg = SimConfig(ncols=width, nrows=3, nproj=360, offset=offset, theta_range=360.0, half_acquisition=True,
                    seed=2)
    sino, theta, _ = exact_sinogram(cfg)
    if noise:
        counts = np.random.default_rng(1).poisson(noise * np.exp(-sino))
        sino = -np.log(np.maximum(counts, 1) / noise)
    check = dfv.detect_offset(sino, theta)
    assert check.offset and abs(check.estimate - cfg.cor) < 0.1, (check, cfg.cor)


@pytest.mark.parametrize("offset", [3.3, -20.0])
def test_centred_full_turn_is_not_offset(offset):
    cfg = SimConfig(ncols=256, nrows=3, nproj=360, offset=offset, theta_range=360.0, seed=2)
    sino, theta, _ = exact_sinogram(cfg)
    check = dfv.detect_offset(sino, theta)
    assert not check.offset and abs(check.estimate - cfg.cor) < 0.1, (check, cfg.cor)


@pytest.mark.parametrize("offset", [-41.3, 52.8])
def test_stitched_reconstruction_is_the_whole_sample(offset):
    cfg = SimConfig(ncols=128, nrows=3, nproj=360, offset=offset, theta_range=360.0, half_acquisition=True,
                    seed=5)
    sino, theta, phantom = exact_sinogram(cfg)
    st = dfv.Stitcher(theta, cfg.ncols)
    img = st.reconstruct(torch.from_numpy(sino[None].astype(np.float32)), st.fbp_geometry(), "parzen",
                         cfg.cor)[0].numpy()
    assert img.shape == (256, 256) and phantom.radius > cfg.ncols / 2 + 20   # wider than the detector
    c = np.arange(256) + 0.5 - 128
    y, x = np.meshgrid(c, c, indexing="ij")
    truth = evaluate(phantom, x, y, np.full_like(x, 1.5))
    assert np.corrcoef(img.ravel(), truth.ravel())[0, 1] > 0.85
    assert img[truth > 0].mean() == pytest.approx(truth[truth > 0].mean(), rel=0.15)   # not half, not mirrored
    assert np.abs(img[truth == 0]).mean() < 0.15 * np.abs(img[truth > 0]).mean()


def test_angles_pair_across_the_turn_with_or_without_end_point():
    for theta in (np.linspace(0, 2 * np.pi, 361), np.linspace(0, 2 * np.pi, 360, endpoint=False),
                  np.linspace(0.3, 0.3 + 2 * np.pi, 200, endpoint=False)):
        first, lo, hi, frac = dfv.pair_angles(theta)
        target = np.mod(theta[first] + np.pi - theta.min(), 2 * np.pi)
        got = np.mod(theta[lo] - theta.min(), 2 * np.pi) * (1 - frac) + np.mod(theta[hi] - theta.min(),
                                                                              2 * np.pi) * frac
        wrap = np.mod(theta[hi] - theta[lo], 2 * np.pi) > np.pi   # interpolation across 2pi -> 0
        assert np.allclose(got[~wrap], target[~wrap], atol=1e-9)
        assert np.all(theta[first] - theta.min() < np.pi)


# ---------------------------------------------------------------- simulator


def test_simulator_half_acquisition_truth_and_errors(tmp_path):
    path, truth = simulate(tmp_path, "edge", 96, "--axis-offset", -30.5)
    assert truth["geometry"] == "360-offset" and truth["cor"] == 17.5 and truth["theta_range"] == 360.0
    assert truth["radius"] > 48   # the sample is wider than the detector
    p = run_cli("simulate", tmp_path, "--width", 96, "--axis-offset", -30, "--offset", 2, check=False)
    assert p.returncode == 2 and "not both" in p.stderr
    p = run_cli("simulate", tmp_path, "--width", 96, "--axis-offset", -30, "--theta-range", 180, check=False)
    assert p.returncode == 2 and "--theta-range 360" in p.stderr
    p = run_cli("simulate", tmp_path, "--width", 96, "--axis-offset", -46, check=False)
    assert p.returncode == 2 and "overlap by less than" in p.stderr
    _, t360 = simulate(tmp_path, "turn", 96, "--theta-range", 360)
    assert t360["geometry"] == "360" and t360["theta_range"] == 360.0


# ---------------------------------------------------------------- the real CLI


@pytest.mark.parametrize("width,offset", [(128, -41.3), (192, 63.6)])
def test_run_finds_the_offset_axis(tmp_path, width, offset):
    path, truth = simulate(tmp_path, "s", width, "--axis-offset", offset)
    p = run_cli("run", path, "--phases", "try,infer", "--json", "--backend", "torch", *NARROW)
    rec = json.loads(p.stdout)
    assert rec["status"] == "ok" and rec["geometry"] == "360-offset", rec
    assert abs(rec["cor"] - truth["cor"]) < 0.5 and not rec["needs_review"], (rec, truth["cor"])
    assert abs(rec["estimate"] - truth["cor"]) < 0.5
    slices = layout.list_try_slices(layout.try_dir(path))
    assert len(slices) == 16 and tifffile.imread(slices[0].path).shape == (2 * width, 2 * width)
    assert json.loads((layout.try_dir(path) / "tomocorioc_try.json").read_text())["geometry"] == "360-offset"


def test_run_default_grid_and_full_reconstruction_twice_as_wide(tmp_path):
    path, truth = simulate(tmp_path, "wide", 160, "--axis-offset", -57.25)
    p = run_cli("run", path, "--phases", "try,infer,full", "--json", "--backend", "torch")
    rec = json.loads(p.stdout)
    assert rec["status"] == "ok" and rec["geometry"] == "360-offset", rec
    assert abs(rec["cor"] - truth["cor"]) < 0.5, (rec, truth["cor"])
    assert len(layout.list_try_slices(layout.try_dir(path))) == 2 * 2 * int(geo.OFFSET_SEARCH_WIDTH)
    full = sorted(layout.full_dir(path).glob("recon_*.tiff"))
    assert len(full) == 4
    img = tifffile.imread(full[1])
    assert img.shape == (320, 320)
    # The whole sample is there: inside its disc the slice holds the mass, outside it is empty.
    c = np.arange(320) + 0.5 - 160
    r = np.hypot(*np.meshgrid(c, c, indexing="ij"))
    inside, outside = img[r < truth["radius"] - 3], img[r > truth["radius"] + 3]
    assert truth["radius"] > 80 + 10 and inside.mean() > 10 * np.abs(outside).mean()
    assert (r[img > 0.3 * img.max()] < truth["radius"] + 3).all()
    assert "--file-type double_fov" in (layout.full_dir(path) / "rec_line.txt").read_text()
    # up to date on a second run: the geometry is still reported
    rec2 = json.loads(run_cli("run", path, "--phases", "try,infer", "--json", "--backend", "torch").stdout)
    assert rec2["phases"]["try"] == "up-to-date" and rec2["geometry"] == "360-offset"


def test_centred_full_turn_stays_correct(tmp_path):
    path, truth = simulate(tmp_path, "c", 128, "--theta-range", 360, "--offset", 2.7)
    rec = json.loads(run_cli("run", path, "--phases", "try,infer", "--json", "--backend", "torch",
                             *NARROW).stdout)
    assert rec["geometry"] == "360" and abs(rec["cor"] - truth["cor"]) < 0.5, (rec, truth["cor"])
    assert tifffile.imread(layout.list_try_slices(layout.try_dir(path))[0].path).shape == (128, 128)
    again = json.loads(run_cli("run", path, "--phases", "try", "--json", "--backend", "torch", *NARROW).stdout)
    assert again["phases"]["try"] == "up-to-date" and again["geometry"] == "360"


def test_sidecar_overrides_the_geometry(tmp_path):
    path, truth = simulate(tmp_path, "o", 96, "--axis-offset", 30.0)
    (tmp_path / "o_0001.tomocor.json").write_text(json.dumps({"params": {"geometry": "360"}}))
    rec = json.loads(run_cli("run", path, "--phases", "try", "--json", "--backend", "torch", *NARROW).stdout)
    assert rec["geometry"] == "360"
    assert tifffile.imread(layout.list_try_slices(layout.try_dir(path))[0].path).shape == (96, 96)
    (tmp_path / "o_0001.tomocor.json").write_text(json.dumps({"params": {"geometry": "nonsense"}}))
    rec = json.loads(run_cli("run", path, "--phases", "try", "--json", "--backend", "torch", *NARROW).stdout)
    assert rec["geometry"] == "360-offset"   # a bad sidecar is reported and ignored


# ---------------------------------------------------------------- tomocupy


def test_tomocupy_double_fov_command_lines():
    p = ReconParams(search_width=50, search_step=0.5)
    cmd = try_command("/d/s.h5", p, 93.5, config="/tmp/c.conf", geometry="360-offset")
    d = dict(zip(cmd[2::2], cmd[3::2]))
    assert d["--file-type"] == "double_fov" and cmd.count("--file-type") == 1
    assert d["--rotation-axis"] == "93.5"   # original detector columns, as tomocupy takes them
    assert d["--center-search-width"] == f"{geo.OFFSET_SEARCH_WIDTH:g}"
    full = full_command("/d/s.h5", p, 418.25, geometry="360-offset")
    f = dict(zip(full[2::2], full[3::2]))
    assert f["--file-type"] == "double_fov" and f["--rotation-axis"] == "418.25"
    for geometry in ("180", "360"):
        assert dict(zip(full_command("/d/s.h5", p, 1.0, geometry=geometry)[2::2],
                        full_command("/d/s.h5", p, 1.0, geometry=geometry)[3::2]))["--file-type"] == "standard"
    assert full_command("/d/s.h5", p, 1.0) == full_command("/d/s.h5", p, 1.0, geometry="180")


def test_tomocupy_backend_runs_double_fov(tmp_path, monkeypatch):
    from test_tomocupy_backend import STANDIN
    bindir = tmp_path / "bin"
    bindir.mkdir()
    prog = bindir / "tomocupy"
    prog.write_text(STANDIN.format(python=sys.executable))
    prog.chmod(0o755)
    argv_log = tmp_path / "argv.json"
    data = tmp_path / "data"
    data.mkdir()
    path, truth = simulate(data, "t", 96, "--axis-offset", -31.0)
    env = {"PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}", "STANDIN_LOG": str(argv_log),
           "HOME": str(tmp_path / "home")}
    rec = json.loads(run_cli("run", path, "--phases", "try", "--json", "--backend", "tomocupy",
                             env_extra=env).stdout)
    argv = json.loads(argv_log.read_text())
    a = dict(zip(argv[1::2], argv[2::2]))
    assert rec["status"] == "ok" and rec["geometry"] == "360-offset", rec
    assert a["--file-type"] == "double_fov" and abs(float(a["--rotation-axis"]) - truth["cor"]) <= 0.5
    assert a["--center-search-width"] == f"{geo.OFFSET_SEARCH_WIDTH:g}"


def test_theta_in_radians_is_detected(tmp_path):
    import h5py
    assert np.allclose(geo.theta_in_degrees(np.linspace(0, np.pi, 10)), np.linspace(0, 180, 10))
    assert np.allclose(geo.theta_in_degrees(np.linspace(0, 180, 10)), np.linspace(0, 180, 10))
    path, truth = simulate(tmp_path, "rad", 128, "--axis-offset", 45.4)
    with h5py.File(path, "a") as h5:
        deg = h5["/exchange/theta"][...]
        del h5["/exchange/theta"]
        h5["/exchange/theta"] = np.deg2rad(deg)
    rec = json.loads(run_cli("run", path, "--phases", "try,infer", "--json", "--backend", "torch",
                             *NARROW).stdout)
    assert rec["geometry"] == "360-offset" and abs(rec["cor"] - truth["cor"]) < 0.5, (rec, truth["cor"])


def test_overlap_estimate_wins_over_a_flat_score(tmp_path):
    from tomocorioc.core.cor import CorChoice
    from tomocorioc.worker.recon.base import TRY_META
    choice = CorChoice(cor=209.88, grid_cor=210.0, index=3, peak_confidence=0.05, confidence=0.04,
                       estimate=213.59, needs_review=True, notes=["sinogram estimate 213.59 disagrees by 3.71 px"])
    (tmp_path / TRY_META).write_text(json.dumps({"geometry": "360-offset", "overlap_mismatch": 0.02}))
    got, source = dfv.prefer_overlap(choice, "classical", tmp_path, 213.59)
    assert source == "overlap" and got.cor == 213.59 and not got.needs_review and got.confidence > 0.8
    assert "the overlap estimate is used" in got.notes[-1] and len(got.notes) == 1
    close = CorChoice(cor=213.4, grid_cor=213.5, index=3, peak_confidence=0.9, confidence=0.9)
    assert dfv.prefer_overlap(close, "classical", tmp_path, 213.59) == (close, "classical")
    (tmp_path / TRY_META).write_text(json.dumps({"geometry": "360-offset", "overlap_mismatch": 0.6}))
    got, _ = dfv.prefer_overlap(choice, "classical", tmp_path, 213.59)
    assert got.needs_review and "do not match well" in got.notes[-1]
    (tmp_path / TRY_META).write_text(json.dumps({"geometry": "180"}))
    assert dfv.prefer_overlap(choice, "classical", tmp_path, 213.59) == (choice, "classical")
