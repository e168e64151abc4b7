"""Tests for tomocorioc.sim: geometry, exactness, DXfile layout and truth file."""
from __future__ import annotations

import argparse
import json
import logging
import math

import h5py
import numpy as np
import pytest

from tomocorioc.sim import (
    PHANTOMS,
    Cylinder,
    Ellipsoid,
    Phantom,
    SimConfig,
    add_simulate_arguments,
    build_phantom,
    evaluate,
    line_integrals,
    make_phantom,
    merge_truth,
    project,
    read_truth,
    run_simulate,
    simulate_scan,
    simulate_series,
)

SMALL = dict(ncols=64, nrows=4, nproj=31, nflat=3, ndark=2)


def _turned(seed: int) -> tuple:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    return tuple(tuple(float(v) for v in row) for row in q)


def _minus_log(path) -> np.ndarray:
    """Flat/dark corrected line integrals of a written scan."""
    with h5py.File(path, "r") as f:
        data = f["/exchange/data"][...].astype(np.float64)
        flat = f["/exchange/data_white"][...].astype(np.float64).mean(axis=0)
        dark = f["/exchange/data_dark"][...].astype(np.float64).mean(axis=0)
    return -np.log((data - dark) / (flat - dark))


def _all_items(f: h5py.File) -> list:
    items = []
    f.visititems(lambda name, obj: items.append((name, obj)))
    return items


# ---------------------------------------------------------------- projector


def test_ray_integral_matches_brute_force_sampling():
    ell = Ellipsoid((7.3, -4.1, 5.2), (9.0, 4.0, 3.0), 0.8, _turned(1))
    cyl = Cylinder((-3.0, 2.0), (12.0, 7.0), 0.3, angle=0.4, z_range=(2.5, 8.0))
    ph = Phantom("test", (ell, cyl), 20.0)
    cor, theta = 31.25, 0.7
    rng = np.random.default_rng(5)
    t = cor + rng.uniform(-15, 15, size=40)
    z = rng.uniform(1.0, 9.0, size=40)
    exact = line_integrals(ph, theta, t, z, cor)
    # Brute force: density sampled densely along each ray (midpoint rule).
    h = 0.002
    s = np.arange(-25.0, 25.0, h) + h / 2
    u = t - cor
    x = u[:, None] * math.cos(theta) - s[None, :] * math.sin(theta)
    y = u[:, None] * math.sin(theta) + s[None, :] * math.cos(theta)
    numeric = evaluate(ph, x, y, np.broadcast_to(z[:, None], x.shape)).sum(axis=1) * h
    assert np.count_nonzero(exact) >= 15
    np.testing.assert_allclose(exact, numeric, atol=4 * h * 1.1)


def test_pixel_values_are_subpixel_averages():
    ell = Ellipsoid((4.6, -2.3, 3.3), (6.0, 2.5, 2.2), 1.0, _turned(2))
    ph = Phantom("test", (ell,), 10.0)
    ncols, nrows, cor = 32, 7, 15.6
    thetas = np.array([0.0, 0.9, 2.2])
    exact = project(ph, thetas, ncols, nrows, cor, oversample=(0, 64)).astype(np.float64)
    # Dense average of exact single-ray integrals over each pixel area.
    k = 64
    sub = (np.arange(k) + 0.5) / k
    t = (np.arange(ncols)[:, None] + sub).ravel()
    z = (np.arange(nrows)[:, None] + sub).ravel()
    for i, th in enumerate(thetas):
        rays = line_integrals(ph, th, t[None, :], z[:, None], cor)
        ref = rays.reshape(nrows, k, ncols, k).mean(axis=(1, 3))
        np.testing.assert_allclose(exact[i], ref, atol=2e-3 * ref.max())
        # The centre ray alone differs at edges: the averaging really happens.
        centre = line_integrals(ph, th, (np.arange(ncols) + 0.5)[None, :], (np.arange(nrows) + 0.5)[:, None], cor)
        assert np.abs(centre - ref).max() > 10 * np.abs(exact[i] - ref).max()
    # Sampled columns converge to the exact column integral; default rows stay close.
    sampled = project(ph, thetas, ncols, nrows, cor, oversample=(16, 64))
    np.testing.assert_allclose(sampled, exact, atol=5e-3 * exact.max())
    # Two midpoint heights per row (the default) are within a few % at the shape's top and bottom.
    default = project(ph, thetas, ncols, nrows, cor)
    np.testing.assert_allclose(default.sum(axis=(1, 2)), exact.sum(axis=(1, 2)), rtol=1e-2)
    np.testing.assert_allclose(default, exact, atol=0.06 * exact.max())


@pytest.mark.parametrize("ncols,cor", [(64, 32.0), (65, 32.5), (64, 30.37), (101, 55.81)])
def test_sphere_centroid_follows_geometry(ncols, cor):
    x0, y0, r = 9.3, -6.1, 5.5
    ph = Phantom("sphere", (Ellipsoid((x0, y0, 3.0), (r, r, r), 1.0),), 20.0)
    thetas = np.linspace(0, math.pi, 13)
    p = project(ph, thetas, ncols, 6, cor).sum(axis=1).astype(np.float64)
    centroid = (p * (np.arange(ncols) + 0.5)).sum(axis=1) / p.sum(axis=1)
    expected = cor + x0 * np.cos(thetas) + y0 * np.sin(thetas)
    np.testing.assert_allclose(centroid, expected, atol=0.01)
    # Volume is conserved: every detector row and column integrates the sphere.
    total = project(ph, thetas[:2], ncols, 6, cor, oversample=(0, 32)).sum(axis=(1, 2))
    inside = 2 * math.pi * (r ** 2 * 3.0 - 3.0 ** 3 / 3)  # rows 0..6 cut the sphere at z = 0 and 6
    np.testing.assert_allclose(total, inside, rtol=2e-3)


def test_centred_axis_is_mirror_symmetric():
    # A sphere at the axis projects symmetric about t = cor = ncols / 2.
    for ncols in (64, 65):
        ph = Phantom("sphere", (Ellipsoid((0.0, 0.0, 2.0), (7.0, 7.0, 7.0), 1.0),), 8.0)
        p = project(ph, [0.3], ncols, 4, ncols / 2.0)[0]
        np.testing.assert_allclose(p, p[:, ::-1], atol=1e-5)


# ---------------------------------------------------------------- phantoms


@pytest.mark.parametrize("kind", sorted(PHANTOMS))
def test_phantoms_fit_fov_and_scale(kind):
    cfg = SimConfig(ncols=96, nrows=6, nproj=24, offset=-7.4, phantom=kind, seed=3)
    ph = build_phantom(cfg)
    assert ph.max_radius() <= cfg.fov_radius + 1e-9
    assert len(ph.shapes) >= 3 or kind == "shepp3d"
    p = project(ph, np.deg2rad(cfg.theta_deg()), cfg.ncols, cfg.nrows, cfg.cor)
    assert 1.0 <= p.max() <= 2.0  # transmission stays above ~13 %
    assert np.all(p[:, :, :2] == 0) and np.all(p[:, :, -2:] == 0)  # nothing leaves the field of view
    # Reproducible for one seed, different for another.
    assert build_phantom(cfg) == ph
    assert build_phantom(SimConfig(**{**cfg.__dict__, "seed": 4})) != ph


def test_make_phantom_rejects_unknown_kind():
    with pytest.raises(ValueError, match="unknown phantom"):
        make_phantom("banana", 30.0, 4)


# ---------------------------------------------------------------- scans


def test_scan_layout_truth_and_no_cor_in_file(tmp_path):
    cfg = SimConfig(**SMALL, offset=3.37, seed=11)
    path = tmp_path / "scan.h5"
    truth = simulate_scan(path, cfg)
    assert truth["cor"] == pytest.approx(35.37)
    assert truth["offset"] == pytest.approx(3.37)
    stored = read_truth(tmp_path)
    assert stored == {"scan.h5": json.loads(json.dumps(truth))}
    for key in ("cor", "offset", "ncols", "nrows", "nproj", "phantom", "seed", "aborted", "outlier", "noise", "rings"):
        assert key in stored["scan.h5"]
    with h5py.File(path, "r") as f:
        data, white, dark, theta = (f[f"/exchange/{n}"] for n in ("data", "data_white", "data_dark", "theta"))
        assert data.shape == (31, 4, 64) and data.dtype == np.uint16 and data.chunks == (1, 4, 64)
        assert white.shape == (3, 4, 64) and white.dtype == np.uint16
        assert dark.shape == (2, 4, 64) and dark.dtype == np.uint16
        assert theta.shape == (31,) and theta.dtype.kind == "f"
        np.testing.assert_allclose(theta[...], np.linspace(0, 180, 31))
        assert f["/process/acquisition/rotation/num_angles"][0] == 31
        # The truth never enters the file: no name and no value carries the COR.
        for name, obj in _all_items(f):
            low = name.lower()
            assert "cor" not in low.split("/")[-1] and "center" not in low and "axis" not in low
            small = [obj[()]] if isinstance(obj, h5py.Dataset) and obj.size < 8 else []
            for value in list(obj.attrs.values()) + small:
                arr = np.atleast_1d(np.asarray(value))
                if arr.dtype.kind in "fiu":
                    assert not np.any(np.isclose(arr.astype(float), [35.37, 3.37])), name
        # Dark around 100 counts, flats around the photon count.
        assert abs(dark[...].mean() - 100) < 2
        assert abs(white[...].mean() - 10000) < 500


def test_beer_lambert_and_contiguous_option(tmp_path):
    cfg = SimConfig(**SMALL, offset=-2.5, noise=0, chunked=False, phantom="shepp3d")
    path = tmp_path / "clean.h5"
    simulate_scan(path, cfg)
    with h5py.File(path, "r") as f:
        assert f["/exchange/data"].chunks is None
        theta = np.deg2rad(f["/exchange/theta"][...])
    ref = project(build_phantom(cfg), theta, cfg.ncols, cfg.nrows, cfg.cor)
    # Noiseless counts are rounded to integers of ~30000: |error| < 1e-4.
    np.testing.assert_allclose(_minus_log(path), ref, atol=2e-4)


def test_mirror_projection_matches_truth_odd_and_even(tmp_path):
    for ncols in (63, 64):
        cfg = SimConfig(ncols=ncols, nrows=3, nproj=19, noise=0, nflat=1, ndark=1, phantom="rock", seed=2)
        path = tmp_path / f"w{ncols}.h5"
        truth = simulate_scan(path, cfg)
        assert truth["cor"] == ncols / 2.0
        p = _minus_log(path)
        # With cor = ncols/2 column j at 180 deg mirrors column ncols-1-j at 0 deg.
        np.testing.assert_allclose(p[-1], p[0][:, ::-1], atol=3e-4)
        assert np.abs(p[-1] - p[0]).max() > 0.01  # the sample is not symmetric itself


def test_theta_without_endpoint(tmp_path):
    simulate_scan(tmp_path / "a.h5", SimConfig(**{**SMALL, "nproj": 36}, endpoint=False))
    with h5py.File(tmp_path / "a.h5", "r") as f:
        theta = f["/exchange/theta"][...]
    np.testing.assert_allclose(theta, np.arange(36) * 5.0)
    assert theta[-1] < 180.0


def test_aborted_scan_has_fewer_frames_and_no_theta(tmp_path):
    truth = simulate_scan(tmp_path / "ab.h5", SimConfig(**{**SMALL, "nproj": 50}, aborted=True))
    assert truth["aborted"] and truth["nproj_written"] == 20 and truth["nproj"] == 50
    with h5py.File(tmp_path / "ab.h5", "r") as f:
        assert f["/exchange/data"].shape == (20, 4, 64)
        assert "theta" not in f["/exchange"]
        assert "data_white" in f["/exchange"] and "data_dark" in f["/exchange"]


def test_series_with_outlier_and_aborted_scan(tmp_path):
    simulate_scan(tmp_path / "other.h5", SimConfig(**SMALL))  # an earlier entry must survive the merge
    cfg = SimConfig(**{**SMALL, "ncols": 128}, offset=1.5, seed=7)
    truths = simulate_series(tmp_path, cfg, 5, name="s", outlier_index=3, outlier_jump=30.0,
                             aborted_index=1, offset_jitter=0.3)
    names = [f"s_{i:04d}.h5" for i in range(1, 6)]
    assert [t["file"] for t in truths] == names
    stored = read_truth(tmp_path)
    assert set(stored) == set(names) | {"other.h5"}
    for i, name in enumerate(names):
        t = stored[name]
        assert t["outlier"] == (i == 3) and t["aborted"] == (i == 1) and t["index"] == i
        jump = 30.0 if i == 3 else 0.0
        assert abs(t["offset"] - 1.5 - jump) <= 0.3
        assert t["cor"] == pytest.approx(64 + t["offset"])
        with h5py.File(tmp_path / name, "r") as f:
            assert ("theta" in f["/exchange"]) == (i != 1)
    cors = [stored[n]["cor"] for n in names]
    assert len(set(cors)) == 5  # jittered
    # Same sample for the whole series, fitting the narrowest field of view.
    assert len({stored[n]["radius"] for n in names}) == 1
    assert stored[names[3]]["radius"] <= 128 - stored[names[3]]["cor"] - 2


def test_truth_merge_is_safe_for_concurrent_writers(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    def write(i):
        merge_truth(tmp_path, {f"f{i:03d}.h5": {"cor": float(i)}})

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(write, range(40)))
    truth = read_truth(tmp_path)
    assert len(truth) == 40 and truth["f007.h5"]["cor"] == 7.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["truth.json"]  # no temp or lock files left
    (tmp_path / "truth.json").write_text("{broken")
    merge_truth(tmp_path, {"x.h5": {"cor": 1.0}})
    assert read_truth(tmp_path) == {"x.h5": {"cor": 1.0}}


def test_series_rejects_outlier_off_the_detector(tmp_path):
    with pytest.raises(ValueError, match="rotation axis"):
        simulate_series(tmp_path, SimConfig(**SMALL), 3, outlier_index=0, outlier_jump=40.0)
    assert not list(tmp_path.glob("*.h5"))
    with pytest.raises(ValueError, match="outlier_index"):
        simulate_series(tmp_path, SimConfig(**SMALL), 3, outlier_index=3)


def test_reproducible_with_same_seed(tmp_path):
    cfg = SimConfig(**SMALL, rings=0.02, zingers=1e-3, seed=5)
    simulate_scan(tmp_path / "a" / "x.h5", cfg)
    simulate_scan(tmp_path / "b" / "x.h5", cfg)
    simulate_scan(tmp_path / "c" / "x.h5", SimConfig(**SMALL, rings=0.02, zingers=1e-3, seed=6))
    with h5py.File(tmp_path / "a" / "x.h5", "r") as fa, h5py.File(tmp_path / "b" / "x.h5", "r") as fb, \
            h5py.File(tmp_path / "c" / "x.h5", "r") as fc:
        for key in ("data", "data_white", "data_dark", "theta"):
            np.testing.assert_array_equal(fa["exchange"][key][...], fb["exchange"][key][...])
        assert not np.array_equal(fa["exchange/data"][...], fc["exchange/data"][...])


def test_series_shares_sample_but_not_noise(tmp_path):
    truths = simulate_series(tmp_path, SimConfig(**SMALL), 2, offset_jitter=0.0)
    assert truths[0]["noise_seed"] != truths[1]["noise_seed"]
    with h5py.File(tmp_path / "sample_0001.h5", "r") as f1, h5py.File(tmp_path / "sample_0002.h5", "r") as f2:
        d1, d2 = f1["exchange/data"][...].astype(float), f2["exchange/data"][...].astype(float)
    assert not np.array_equal(d1, d2)
    assert np.abs(d1.mean(axis=0) - d2.mean(axis=0)).mean() < 0.05 * d1.mean()
    clean = simulate_series(tmp_path / "clean", SimConfig(**SMALL, noise=0), 2, offset_jitter=0.0)
    assert clean[0]["cor"] == clean[1]["cor"]
    with h5py.File(tmp_path / "clean/sample_0001.h5", "r") as f1, \
            h5py.File(tmp_path / "clean/sample_0002.h5", "r") as f2:
        np.testing.assert_array_equal(f1["exchange/data"][...], f2["exchange/data"][...])


def test_rings_zingers_and_noise_levels(tmp_path):
    cfg = SimConfig(ncols=128, nrows=8, nproj=20, nflat=20, ndark=4, rings=0.03, zingers=0.002, seed=1)
    simulate_scan(tmp_path / "r.h5", cfg)
    with h5py.File(tmp_path / "r.h5", "r") as f:
        data = f["exchange/data"][...]
        white = f["exchange/data_white"][...].astype(float)
    # Photon noise of the flat: std ~ sqrt(10000).
    assert 80 < (white[0] - white[1]).std() / math.sqrt(2) < 120
    bright = (data > 1.5 * white.mean()).mean()
    assert 0.001 < bright < 0.004
    # Gain errors are in the projections only: -log differs from a clean scan by -log(gain) per column.
    clean = dict(ncols=128, nrows=8, nproj=20, nflat=2, ndark=2, noise=0, seed=1)
    simulate_scan(tmp_path / "c0.h5", SimConfig(**clean))
    simulate_scan(tmp_path / "c1.h5", SimConfig(**clean, rings=0.03))
    diff = _minus_log(tmp_path / "c1.h5") - _minus_log(tmp_path / "c0.h5")
    per_column = diff.mean(axis=(0, 1))
    assert np.abs(diff - per_column).max() < 1e-3  # the same for every angle and row: rings
    assert 0.015 < per_column.std() < 0.05


@pytest.mark.parametrize("kwargs,match", [
    (dict(ncols=8), "ncols"),
    (dict(nrows=0), "nrows"),
    (dict(nproj=1), "nproj"),
    (dict(ncols=64.0), "integer"),
    (dict(phantom="nope"), "unknown phantom"),
    (dict(offset=200.0), "outside the detector"),
    (dict(offset=-125.0), "too close"),
    (dict(noise=-5), "noise"),
    (dict(noise=1e6), "noise"),
    (dict(rings=-0.1), "rings"),
    (dict(zingers=2.0), "zingers"),
    (dict(abort_fraction=1.0), "abort_fraction"),
    (dict(seed=-1), "seed"),
    (dict(radius=500.0), "radius"),
    (dict(nflat=0), "nflat"),
])
def test_bad_config_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SimConfig(**kwargs)


def test_cli_series_and_bad_arguments(tmp_path, caplog):
    parser = argparse.ArgumentParser(prog="tomocorioc simulate")
    add_simulate_arguments(parser)
    args = parser.parse_args([str(tmp_path), "--n", "3", "--width", "65", "--rows", "3", "--nproj", "21",
                              "--offset", "-1.25", "--noise", "0", "--phantom", "foam", "--series", "run",
                              "--no-endpoint", "--aborted-index", "2", "--outlier-index", "0",
                              "--outlier-jump", "12", "--seed", "4", "--flats", "2", "--darks", "2"])
    with caplog.at_level(logging.INFO):
        assert run_simulate(args) == 0
    truth = read_truth(tmp_path)
    assert sorted(truth) == ["run_0001.h5", "run_0002.h5", "run_0003.h5"]
    assert truth["run_0001.h5"]["outlier"] and truth["run_0003.h5"]["aborted"]
    assert truth["run_0002.h5"]["endpoint"] is False and truth["run_0002.h5"]["phantom"] == "foam"
    bad = parser.parse_args([str(tmp_path / "bad"), "--width", "4"])
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert run_simulate(bad) == 2
    assert any("ncols" in r.getMessage() for r in caplog.records)
    assert not (tmp_path / "bad").exists() or not list((tmp_path / "bad").glob("*.h5"))


def test_fov_ratio_makes_a_sample_wider_than_the_detector(tmp_path):
    """--fov-ratio R: the sample's diameter is R detector widths, so both detector edges see it at every angle."""
    parser = argparse.ArgumentParser(prog="tomocorioc simulate")
    add_simulate_arguments(parser)
    args = parser.parse_args([str(tmp_path), "--n", "2", "--width", "64", "--rows", "2", "--nproj", "19",
                              "--noise", "0", "--fov-ratio", "1.5", "--offset", "3"])
    assert run_simulate(args) == 0
    truth = read_truth(tmp_path)
    for name, t in truth.items():
        assert t["fov_ratio"] == 1.5 and t["radius"] == pytest.approx(48.0)
        with h5py.File(tmp_path / name) as f:
            data, flat = f["exchange/data"][:].astype(float), f["exchange/data_white"][:].astype(float).mean(0)
        trans = data / flat[None]
        assert trans[:, :, 0].max() < 0.97 and trans[:, :, -1].max() < 0.97   # truncated at both edges
    with pytest.raises(ValueError, match="fov_ratio"):
        SimConfig(fov_ratio=0.0)
