"""TomoLog phase: settings, exact command line, output verdicts, the upload lock and the summary PNG.

TomoLog itself cannot run here (it uploads to imgur and Google Slides), so a
stand-in ``tomolog`` script is written onto PATH: it records its argv and
prints what the real program prints (same timestamps and ANSI colours as
tomolog_cli/log.py), or one of its failure outputs - often with exit code 0,
as the real one does.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
from PIL import Image

from tomocorioc.core import layout
from tomocorioc.worker.summary import contrast_of, make_summary, open_volume, resolve_indices
from tomocorioc.worker.tomolog import (
    TomoLogSettings,
    auto_contrast,
    judge_output,
    run_phase,
    run_tomolog,
    tomolog_command,
    upload_lock,
    write_summary,
)

URL = "https://docs.google.com/presentation/d/1AbC_dEf-123/edit"

FAKE = r'''
import json, os, sys, time
GREEN, YELLOW, RED, END = "\033[92m", "\033[33m", "\033[91m", "\033[0m"
def say(msg, color=GREEN):
    sys.stderr.write("2024-05-01 10:00:00,123 - " + color + msg + END + "\n")
    sys.stderr.flush()
argv = sys.argv[1:]
conf = next((argv[i + 1] for i, a in enumerate(argv) if a == "--config"), None)
with open(os.environ["FAKE_TOMOLOG_RECORD"], "a") as fh:
    fh.write(json.dumps({"argv": argv, "cwd": os.getcwd(),
                         "config_existed": bool(conf and os.path.exists(conf))}) + "\n")
fname = next((a for i, a in enumerate(argv) if i and argv[i - 1] == "--file-name"), "?")
mode = os.environ.get("FAKE_TOMOLOG_MODE", "ok")
say("Started tomolog")
say("Publication start", YELLOW)
say("Slide formatting for beamline: None", YELLOW)
say("publishing a single file: %s" % fname)
say("Establishing connection to google")
if mode == "hang":
    time.sleep(60)
if mode == "no-token":
    say("Google token file not found at /home/user/tokens/google_token.json", RED)
    sys.exit(0)          # tomolog calls exit(): status 0
say("Reading CT projection")
say("Plot microCT projection")
say("Uploading image to https://uploadimgur.com/api/upload")
if mode == "upload-fails":
    say("*** An error occurred creating the image url. Error 500", RED)
    sys.exit(0)
say("*** Image url created https://i.imgur.com/proj01.jpg")
say("Publish projection")
say("Read reconstruction")
if mode == "no-recon":
    say("Reconstructions for /x_rec/y_rec are missing. Please run the recontruction.", RED)
    say("Skipping reconstruction", YELLOW)
    say("publication end", YELLOW)
    sys.exit(0)
if mode == "crash":
    sys.stderr.write('Traceback (most recent call last):\n  File "tomolog.py", line 3, in <module>\n'
                     '    slides.create_image()\n'
                     'googleapiclient.errors.HttpError: <HttpError 403 "The caller does not have permission">\n')
    sys.exit(1)
if mode == "plain-error":
    print("Error: something went wrong uploading")
    sys.exit(0)
if mode == "silent":
    sys.exit(0)
say("Plot reconstruction")
say("Uploading image to https://uploadimgur.com/api/upload")
say("*** Image url created https://i.imgur.com/rec02.jpg")
say("Publish reconstruction")
say("Publish reconstruction command line")
say("Skipping the command line for reconstruction", YELLOW)
if conf:
    with open(conf, "w") as fh:   # like config.write(args.config, ...): leftovers of this run
        fh.write("[parameters]\nmin = 1\n")
say("publication end", YELLOW)
'''


@pytest.fixture
def fake_tomolog(tmp_path, monkeypatch):
    """A stand-in ``tomolog`` on PATH; returns a reader of the recorded calls."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    prog = bindir / "tomolog"
    prog.write_text(f"#!{sys.executable}\n" + FAKE)
    prog.chmod(0o755)
    record = tmp_path / "calls.jsonl"
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("FAKE_TOMOLOG_RECORD", str(record))

    def calls():
        return [json.loads(ln) for ln in record.read_text().splitlines()] if record.exists() else []
    return calls


def _volume(nz=12, ny=10, nx=10):
    """A volume whose middle slice holds 0..99 plus non-finite pixels; other slices are extreme."""
    vol = np.full((nz, ny, nx), 1e6, dtype=np.float32)
    mid = np.arange(ny * nx, dtype=np.float32).reshape(ny, nx)
    vol[nz // 2] = mid
    return vol


def _middle_with_nonfinite(vol):
    vol = vol.copy()
    mid = vol[vol.shape[0] // 2]
    mid[0, 0], mid[0, 1], mid[0, 2] = np.nan, np.inf, -np.inf
    return vol


def _dataset(tmp_path, vol, fmt="tiff", name="scan_001", scores=True):
    """``<tmp>/data/<name>.h5`` with its full reconstruction and (optionally) cor_scores.json."""
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    proj = data / f"{name}.h5"
    proj.write_bytes(b"")
    full = layout.full_dir(proj)
    if fmt == "tiff":
        full.mkdir(parents=True)
        for i, img in enumerate(vol):
            tifffile.imwrite(full / layout.full_slice_name(i), img)
    else:
        full.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(full.with_suffix(".h5"), "w") as h5:
            h5.create_dataset("/exchange/data", data=vol, chunks=(1,) + vol.shape[1:])
    if scores:
        c = np.arange(40.0, 60.0, 0.5)
        folder = layout.try_dir(proj)
        folder.mkdir(parents=True)
        (folder / layout.SCORES_FILE).write_text(json.dumps({
            "cor": 50.25, "method": "ai",
            "classical": {"metric": "entropy", "centers": c.tolist(), "scores": (-(c - 50) ** 2).tolist(),
                          "cor": 50.0},
            "ai": {"centers": c.tolist(), "scores": np.exp(-(c - 50.25) ** 2).tolist(), "cor": 50.25}}))
    return proj


# -- settings ------------------------------------------------------------------------
def test_settings_defaults_and_normalisation():
    s = TomoLogSettings(URL, beamline="2-BM", idx="", idy=-1, idz="7", vmin="", vmax=None, note=None)
    assert (s.cloud_service, s.beamline, s.idx, s.idy, s.idz) == ("imgur", "2-bm", None, None, 7)
    assert s.manual_range is None and s.note == "" and s.program == "tomolog"
    assert TomoLogSettings(URL, vmin=0, vmax=0).manual_range is None     # TomoLog's own "auto"
    assert TomoLogSettings(URL, vmin="-1e-3", vmax=0.002).manual_range == (-0.001, 0.002)
    assert TomoLogSettings(URL, beamline=None).beamline == "None"


@pytest.mark.parametrize("kwargs, words", [
    ({"presentation_url": ""}, "presentation_url is required"),
    ({"presentation_url": "https://docs.google.com/presentation/d/abc"}, "presentation/d/<id>/edit"),
    ({"cloud_service": "dropbox"}, "cloud_service must be one of imgur, aps"),
    ({"beamline": "1-id"}, "beamline must be one of"),
    ({"idx": -3}, "idx must be >= 0"),
    ({"idz": 2.5}, "idz must be a whole number"),
    ({"vmin": 1.0}, "set both vmin and vmax"),
    ({"vmin": 2.0, "vmax": 1.0}, "vmin must be below vmax"),
    ({"vmin": "abc", "vmax": 1}, "vmin must be a number"),
    ({"timeout": 0}, "timeout must be > 0"),
    ({"program": " "}, "program must name"),
])
def test_settings_errors_are_clear(kwargs, words):
    args = {"presentation_url": URL, **kwargs}
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        TomoLogSettings(**args)


def test_settings_from_dict_accepts_tomolog_names():
    s = TomoLogSettings.from_dict({"presentation-url": URL, "cloud-service": "APS", "min": 1, "max": 2,
                                   "bogus": 3})
    assert (s.presentation_url, s.cloud_service, s.vmin, s.vmax) == (URL, "aps", 1.0, 2.0)
    assert TomoLogSettings.from_dict(s.to_dict()) == s
    with pytest.raises(ValueError, match="presentation_url is required"):
        TomoLogSettings.from_dict({})


# -- command line and verdicts ---------------------------------------------------------
def test_exact_command_line(tmp_path):
    s = TomoLogSettings(URL, cloud_service="aps", beamline="32-id", note="-5 deg tilt", public=True)
    cmd = tomolog_command(Path("/d/scan_001.h5"), s, (-0.00123456789, 0.5), (64, 65, 30),
                          config=tmp_path / "t.conf")
    assert cmd == ["tomolog", "run", "--config", str(tmp_path / "t.conf"),
                   "--file-name", "/d/scan_001.h5", "--cloud-service", "aps", "--presentation-url", URL,
                   "--beamline", "32-id", "--idx", "64", "--idy", "65", "--idz", "30",
                   "--min=-0.00123457", "--max=0.5", "--note=-5 deg tilt", "--public"]
    plain = tomolog_command(Path("/d/a.h5"), TomoLogSettings(URL), (1.0000000001, 1.0000000002), (0, 0, 0))
    assert "--note" not in " ".join(plain) and "--public" not in plain
    lo, hi = (float(a.split("=", 1)[1]) for a in plain if a.startswith(("--min=", "--max=")))
    assert lo < hi        # never rounded to equal values (TomoLog would auto-scale instead)


def _log(*msgs, red=()):
    return "".join(f"2024-05-01 10:00:00,1 - {chr(27)}[{91 if m in red else 92}m{m}{chr(27)}[0m\n" for m in msgs)


def test_verdict_rules():
    ok = _log("Publication start", "*** Image url created https://i.imgur.com/errorXY.jpg",
              "Publish reconstruction", "Publish reconstruction command line", "publication end")
    v = judge_output(ok)
    assert v.success and v.image_urls == ["https://i.imgur.com/errorXY.jpg"]
    assert not judge_output(_log("Publish reconstruction")).success                  # no end marker
    v = judge_output(_log("Publication start", "publication end"))
    assert not v.success and "'Publish reconstruction'" in v.reason
    v = judge_output(ok + _log("❌ Failed to verify Google Slides connection.", red=["❌ Failed to verify Google "
                                                                                     "Slides connection."]))
    assert not v.success and v.reason == "❌ Failed to verify Google Slides connection."
    v = judge_output(ok + "Error: quota exceeded\n")
    assert not v.success and v.reason == "Error: quota exceeded"
    # A file or folder name with "error" in it is not an error.
    named = _log("publishing a single file: /data/error/scan.h5") + ok
    assert not judge_output(named).success
    assert judge_output(named, ignore=["/data/error/scan.h5"]).success


# -- running the stand-in ------------------------------------------------------------
def test_run_phase_success_exact_argv(tmp_path, fake_tomolog, monkeypatch):
    proj = _dataset(tmp_path, _volume())
    monkeypatch.setenv("FAKE_TOMOLOG_MODE", "ok")
    res = run_phase(proj, {"presentation_url": URL, "beamline": "2-bm", "note": "first scan"}, 50.25,
                    lock_path=tmp_path / "lock")
    assert res.success, res.msg
    assert "https://i.imgur.com/rec02.jpg" in res.msg and "_summary.png" in res.msg
    (call,) = fake_tomolog()
    argv = call["argv"]
    assert argv[:2] == ["run", "--config"] and not call["config_existed"]
    conf = Path(argv[2])
    assert conf.parent == Path(call["cwd"]) and not conf.parent.exists()       # private, removed after
    assert argv[3:] == ["--file-name", str(proj), "--cloud-service", "imgur", "--presentation-url", URL,
                        "--beamline", "2-bm", "--idx", "5", "--idy", "5", "--idz", "6",
                        "--min=4.95", "--max=94.05", "--note=first scan"]
    logged = (layout.rec_root(proj) / "scan_001.tomolog.log").read_text()
    assert "publication end" in logged and "--file-name" in logged
    assert (layout.rec_root(proj) / "scan_001_summary.png").is_file()


def test_run_phase_manual_range_and_indices(tmp_path, fake_tomolog, monkeypatch):
    proj = _dataset(tmp_path, _volume())
    res = run_phase(proj, TomoLogSettings(URL, idx=1, idy=2, idz=3, vmin=-1, vmax=2.5), None,
                    lock_path=tmp_path / "lock")
    assert res.success, res.msg
    argv = fake_tomolog()[0]["argv"]
    assert argv[argv.index("--idx"):] == ["--idx", "1", "--idy", "2", "--idz", "3", "--min=-1", "--max=2.5"]


@pytest.mark.parametrize("mode, reason", [
    ("no-token", "Google token file not found at /home/user/tokens/google_token.json"),
    ("upload-fails", "*** An error occurred creating the image url. Error 500"),
    ("no-recon", "Reconstructions for /x_rec/y_rec are missing. Please run the recontruction."),
    ("crash", 'TomoLog crashed: googleapiclient.errors.HttpError: <HttpError 403 "The caller does not have '
              'permission">'),
    ("plain-error", "Error: something went wrong uploading"),
    ("silent", "no 'Publish reconstruction' and 'publication end' in TomoLog's output"),
])
def test_run_phase_failures_despite_exit_zero(tmp_path, fake_tomolog, monkeypatch, mode, reason):
    proj = _dataset(tmp_path, _volume())
    monkeypatch.setenv("FAKE_TOMOLOG_MODE", mode)
    res = run_phase(proj, {"presentation_url": URL}, 50.25, lock_path=tmp_path / "lock")
    assert not res.success
    assert res.msg.startswith(f"TomoLog: {reason}") and "\n" not in res.msg
    assert (layout.rec_root(proj) / "scan_001_summary.png").is_file()     # written regardless


def test_run_tomolog_timeout(tmp_path, fake_tomolog, monkeypatch):
    proj = _dataset(tmp_path, _volume())
    monkeypatch.setenv("FAKE_TOMOLOG_MODE", "hang")
    t0 = time.monotonic()
    res = run_tomolog(proj, TomoLogSettings(URL, timeout=1), (0.0, 1.0), (1, 1, 1))
    assert not res.success and res.reason == "TomoLog timed out after 1 s"
    assert time.monotonic() - t0 < 20


def test_run_phase_without_tomolog_or_settings_still_writes_summary(tmp_path, monkeypatch):
    proj = _dataset(tmp_path, _volume(), scores=False)
    png = layout.rec_root(proj) / "scan_001_summary.png"
    res = run_phase(proj, {"presentation_url": URL, "program": "tomolog-not-installed-here"}, None,
                    lock_path=tmp_path / "lock")
    assert not res.success and "'tomolog-not-installed-here' not found" in res.msg and png.is_file()
    png.unlink()
    res = run_phase(proj, {}, None, lock_path=tmp_path / "lock")
    assert not res.success and "presentation_url is required" in res.msg and png.is_file()
    png.unlink()
    res = run_phase(proj, {"presentation_url": URL, "idx": 99}, None, lock_path=tmp_path / "lock")
    assert not res.success and "idx=99 is outside the volume (0..9)" in res.msg and png.is_file()
    res = run_phase(tmp_path / "data" / "missing.h5", {"presentation_url": URL}, None)
    assert not res.success and res.msg.startswith("no summary: no full reconstruction")


# -- the upload lock ---------------------------------------------------------------------
def test_upload_lock_serialises_threads_and_processes(tmp_path):
    lock = tmp_path / "tomolog.lock"
    got = []

    def contender():
        try:
            with upload_lock(lock, timeout=0.3):
                got.append("acquired")
        except TimeoutError as exc:
            got.append(str(exc))

    with upload_lock(lock, timeout=1):
        th = threading.Thread(target=contender)
        th.start()
        th.join()
    assert "still holds" in got[0]
    code = textwrap.dedent(f"""
        import time
        from tomocorioc.worker.tomolog import upload_lock
        with upload_lock({str(lock)!r}):
            print("held", flush=True)
            time.sleep(3)
        """)
    with subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) as holder:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(TimeoutError):
            with upload_lock(lock, timeout=0.3):
                pass
        holder.wait(timeout=10)
    with upload_lock(lock, timeout=1):
        got.append("after")
    assert got[-1] == "after"


# -- auto contrast and the summary image ------------------------------------------------
@pytest.mark.parametrize("fmt", ["tiff", "h5"])
def test_auto_contrast_middle_slice_only(tmp_path, fmt):
    proj = _dataset(tmp_path, _middle_with_nonfinite(_volume()), fmt=fmt)
    vol_path = layout.full_dir(proj) if fmt == "tiff" else layout.full_dir(proj).with_suffix(".h5")
    if fmt == "tiff":
        for f in sorted(vol_path.glob("recon_*.tiff")):
            if f.name != layout.full_slice_name(6):
                f.write_bytes(b"not a tiff")   # never read: only the middle slice is
    finite = np.arange(3, 100, dtype=np.float64)   # 0..2 were made non-finite
    lo, hi = auto_contrast(vol_path)
    assert (lo, hi) == pytest.approx((np.percentile(finite, 5), np.percentile(finite, 95)))


def test_contrast_of_degenerate_slices():
    lo, hi = contrast_of(np.full((8, 8), 3.0, dtype=np.float32))
    assert lo < 3.0 < hi
    lo, hi = contrast_of(np.zeros((8, 8)))
    assert lo < 0.0 < hi
    assert contrast_of(np.full((4, 4), np.nan)) == (0.0, 1.0)
    mostly_zero = np.zeros((10, 10))
    mostly_zero[0, :3] = [1.0, 2.0, 3.0]
    assert contrast_of(mostly_zero) == (0.0, 3.0)   # 5-95 % both 0: falls back to the full range


def test_resolve_indices():
    assert resolve_indices((12, 10, 20)) == (10, 5, 6)
    assert resolve_indices((12, 10, 20), 0, 9, 11) == (0, 9, 11)
    with pytest.raises(ValueError, match="idz=12 is outside the volume"):
        resolve_indices((12, 10, 20), idz=12)


def _phantom(nz=40, ny=96, nx=120):
    z, y, x = np.mgrid[:nz, :ny, :nx]
    vol = np.where((x - nx / 2) ** 2 + (y - ny / 2) ** 2 < (0.4 * ny) ** 2, 1.0, 0.0)
    vol += 0.5 * (((x - 40) ** 2 + (y - 40) ** 2 + (z - nz / 2) ** 2) < 10 ** 2)
    return (vol + 0.05 * np.random.default_rng(0).standard_normal(vol.shape)).astype(np.float32)


@pytest.mark.parametrize("fmt", ["tiff", "h5"])
def test_summary_png(tmp_path, fmt):
    proj = _dataset(tmp_path, _phantom(), fmt=fmt)
    out = write_summary(proj)
    assert out == tmp_path / "data_rec" / "scan_001_summary.png"
    with Image.open(out) as im:
        assert im.format == "PNG" and im.mode == "RGB"
        assert 1000 <= im.width <= 1600 and 600 <= im.height <= 1200
        px = np.asarray(im.convert("L"), dtype=np.float64)
    assert px.std() > 10                       # not a blank canvas
    assert 20_000 < out.stat().st_size < 2_000_000
    info = make_summary(proj)
    assert (info.cor, info.cor_source, info.auto_range) == (50.25, "ai", True)
    assert info.shape == (40, 96, 120) and info.indices == (60, 48, 20)


def test_summary_cor_sources(tmp_path):
    proj = _dataset(tmp_path, _phantom(nz=6), scores=False)
    info = make_summary(proj)
    assert (info.cor, info.cor_source) == (None, "unknown")
    assert make_summary(proj, cor=61.5).cor_source == "manual"
    layout.try_dir(proj).mkdir(parents=True)
    layout.write_cor_file(layout.try_dir(proj), [61.5])
    assert (make_summary(proj).cor, make_summary(proj).cor_source) == (61.5, "file")
    assert make_summary(proj, cor=61.5).cor_source == "file"
    (layout.try_dir(proj) / layout.SCORES_FILE).write_text("{broken")
    assert make_summary(proj, cor=60.0, cor_source="classical").cor_source == "classical"


def test_large_tiff_stack_reads_strided_planes(tmp_path, monkeypatch):
    import tomocorioc.worker.summary as summary
    monkeypatch.setattr(summary, "MAX_Z_SAMPLES", 8)
    proj = _dataset(tmp_path, _phantom(nz=30, ny=16, nx=16), scores=False)
    vol = open_volume(layout.full_dir(proj))
    xz, yz = vol.read_planes(3, 4, step=4)
    assert xz.shape == (8, 16) and yz.shape == (8, 16)
    assert make_summary(proj).path.is_file()
