"""End to end on simulated scans: the CLI contract, per-file phase flow, outputs, bad files."""
import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
import tifffile

from tomocorioc.core import layout
from tomocorioc.sim import SimConfig, simulate_scan, simulate_series

SMALL = dict(ncols=96, nrows=6, nproj=91, noise=20000, phantom="beads")
FAST = ["--search-width", "8", "--search-step", "0.5"]


def run_cli(*args, check=False, timeout=240):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("TOMOCUPY", None)
    p = subprocess.run([sys.executable, "-m", "tomocorioc", *map(str, args)], capture_output=True, text=True,
                       timeout=timeout, env=env)
    if check:
        assert p.returncode == 0, p.stderr
    return p


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli") / "data"
    d.mkdir()
    truth = simulate_series(d, SimConfig(offset=3.3, seed=4, **SMALL), 2, name="sample")
    return d, truth


def test_run_json_contract_and_outputs(series):
    d, truth = series
    p = run_cli("run", d, "--json", "--backend", "torch", *FAST, check=True)
    lines = [json.loads(x) for x in p.stdout.splitlines()]
    assert len(lines) == 2
    for rec, t in zip(lines, truth):
        assert {"file", "status", "cor", "cor_source", "confidence", "error"} <= set(rec)
        assert rec["status"] == "ok" and rec["error"] is None and rec["cor_source"] == "classical"
        assert abs(rec["cor"] - t["cor"]) < 0.5, (rec, t)
        f = d / t["file"]
        tdir = layout.try_dir(f)
        assert layout.read_cor_file(tdir) == pytest.approx(rec["cor"], abs=0.01)
        scores = json.loads((tdir / layout.SCORES_FILE).read_text())
        assert scores["method"] == "classical" and len(scores["classical"]["scores"]) == 32
        slices = layout.list_try_slices(tdir)
        assert len(slices) == 32 and slices[0].row == 2
        assert tifffile.imread(slices[0].path).shape == (96, 96)
        full = sorted(layout.full_dir(f).glob("recon_*.tiff"))
        assert len(full) == 6 and tifffile.imread(full[0]).dtype == np.float32
        assert "tomocupy recon" in (layout.full_dir(f) / "rec_line.txt").read_text()


def test_bad_file_fails_alone(series, tmp_path):
    d, truth = series
    bad = tmp_path / "broken.h5"
    bad.write_text("not hdf5")
    missing = tmp_path / "missing.h5"
    dark_flat = tmp_path / "dark_flat.h5"      # a flat taken with the shutter closed: no COR to find
    simulate_scan(dark_flat, SimConfig(**SMALL))
    with h5py.File(dark_flat, "r+") as h5:
        h5["/exchange/data_white"][...] = 0
    p = run_cli("run", d / truth[0]["file"], bad, missing, dark_flat, "--json", "--backend", "torch",
                "--phases", "try,infer", *FAST)
    assert p.returncode == 1
    done = [json.loads(x) for x in p.stdout.splitlines()]    # in the order the files finished
    order = [str(d / truth[0]["file"]), str(bad), str(missing), str(dark_flat)]
    assert sorted(r["file"] for r in done) == sorted(order)
    recs = sorted(done, key=lambda r: order.index(r["file"]))
    assert [r["status"] for r in recs] == ["ok", "failed", "failed", "failed"]
    assert "not an HDF5 file" in recs[1]["error"] and "no such file" in recs[2]["error"]
    assert "data_white is not brighter than data_dark" in recs[3]["error"] and recs[3]["cor"] is None
    assert not (layout.try_dir(dark_flat) / layout.COR_FILE).exists()
    assert all("\n" not in (r["error"] or "") for r in recs)


def test_phases_flow_without_infer_and_manual_cor(series):
    d, truth = series
    f = d / truth[1]["file"]
    run_cli("run", f, "--phases", "try,infer", "--backend", "torch", *FAST, check=True)
    # full alone reads the COR from center_of_rotation.txt
    p = run_cli("run", f, "--phases", "full", "--json", "--backend", "torch", check=True)
    rec = json.loads(p.stdout)
    assert rec["cor_source"] == "file" and rec["cor"] == pytest.approx(layout.read_cor_file(layout.try_dir(f)))
    p = run_cli("run", f, "--phases", "full", "--cor", "50.5", "--json", "--backend", "torch",
                "--full-format", "h5", check=True)
    rec = json.loads(p.stdout)
    assert rec["cor"] == 50.5 and rec["cor_source"] == "manual"
    with h5py.File(layout.full_dir(f).with_suffix(".h5")) as h5:
        assert h5["/exchange/data"].shape == (6, 96, 96)


def test_infer_without_try_slices_is_a_clear_error(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    simulate_scan(d / "x_0001.h5", SimConfig(**SMALL))
    p = run_cli("run", d / "x_0001.h5", "--phases", "infer", "--json", "--backend", "torch")
    rec = json.loads(p.stdout)
    assert p.returncode == 1 and "no try slices" in rec["error"] and "run the try phase" in rec["error"]


def test_an_unreadable_try_slice_is_a_clear_error(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    simulate_scan(d / "x_0001.h5", SimConfig(**SMALL))
    run_cli("run", d / "x_0001.h5", "--phases", "try", "--backend", "torch", *FAST, check=True)
    broken = layout.list_try_slices(layout.try_dir(d / "x_0001.h5"))[3].path
    broken.write_bytes(b"\x00" * 64)        # a slice cut short (a full disk, a copy interrupted)
    p = run_cli("run", d / "x_0001.h5", "--phases", "infer", "--json", "--backend", "torch")
    rec = json.loads(p.stdout)
    assert p.returncode == 1 and rec["error"].startswith(f"infer: cannot read try slice {broken.name} (")
    assert rec["error"].endswith("); run the try phase again") and "Error:" not in rec["error"]


def test_bad_arguments_exit_2(series):
    d, _ = series
    assert run_cli("run", d, "--phases", "try,bogus").returncode == 2
    assert run_cli("run", d, "--search-step", "0").returncode == 2
    p = run_cli("run", d, "--cor-method", "ai")
    assert p.returncode == 2 and "--model" in p.stderr
    assert run_cli("run", d / "nothing_here").returncode == 1


def test_far_offcentre_axis_grid_follows_sinogram_estimate(tmp_path):
    d = tmp_path / "far"
    d.mkdir()
    t = simulate_scan(d / "far_0001.h5", SimConfig(offset=-14.6, seed=2, **SMALL))
    p = run_cli("run", d, "--phases", "try,infer", "--json", "--backend", "torch", *FAST, check=True)
    rec = json.loads(p.stdout)
    assert abs(rec["cor"] - t["cor"]) < 0.5
    assert any("centred on the sinogram estimate" in n for n in rec["notes"])
    assert abs(rec["estimate"] - t["cor"]) < 1.0


def test_second_run_skips_phases_with_same_parameters(series):
    d, truth = series
    f = d / truth[0]["file"]
    run_cli("run", f, "--backend", "torch", *FAST, check=True)
    p = run_cli("run", f, "--json", "--backend", "torch", *FAST, check=True)
    rec = json.loads(p.stdout)
    assert rec["phases"] == {"try": "up-to-date", "infer": "up-to-date", "full": "up-to-date"}
    # a changed parameter redoes try (and what depends on it)
    p = run_cli("run", f, "--json", "--backend", "torch", "--search-width", "6", check=True)
    assert json.loads(p.stdout)["phases"]["try"] == "done"
