"""tomocupy backend: the exact command lines, config isolation, and judging by outputs.

tomocupy needs a GPU and is not installable here, so a stand-in program on
PATH records its argv and writes (or, in 'silent' mode, fails to write) the
files tomocupy would.  What is tested is what we control: the argument list,
and how results are read back.
"""
import json
import os
import stat
import sys
import textwrap

import h5py
import numpy as np
import pytest

from tomocorioc.core import layout
from tomocorioc.core.params import ReconParams
from tomocorioc.worker.recon.base import ReconError
from tomocorioc.worker.recon.tomocupy_backend import TomocupyBackend, full_command, try_command

STANDIN = textwrap.dedent('''\
    #!{python}
    import json, os, sys
    from pathlib import Path
    import numpy as np, h5py, tifffile
    argv = sys.argv[1:]
    log = Path(os.environ["STANDIN_LOG"]); log.write_text(json.dumps(argv))
    a = dict(zip(argv[1::2], argv[2::2])) if argv[0] in ("recon", "recon_steps") else {{}}
    conf = a.get("--config")
    assert conf and os.path.getsize(conf) == 0, "config must be an empty file"
    if os.environ.get("STANDIN_MODE") == "silent":
        sys.exit(0)   # like tomocupy with a missing input file: exit 0, no output
    f = Path(a["--file-name"]); name = f.stem
    nrows, ncols = h5py.File(f, "r")["/exchange/data"].shape[1:]
    rec = f.parent.with_name(f.parent.name + "_rec")
    if a["--reconstruction-type"] == "try":
        row = int(float(a["--nsino"]) * (nrows - 1))
        out = rec / "try_center" / name; out.mkdir(parents=True, exist_ok=True)
        c0, w, s = float(a["--rotation-axis"]), float(a["--center-search-width"]), float(a["--center-search-step"])
        for sh in np.arange(-w, w, s):
            tifffile.imwrite(out / f"recon_slice{{row:04d}}_center{{round(c0 - sh, 2):05.2f}}.tiff",
                             np.zeros((ncols, ncols), np.float32))
    else:
        out = rec / f"{{name}}_rec"; out.mkdir(parents=True, exist_ok=True)
        for i in range(nrows if os.environ.get("STANDIN_MODE") != "short" else 1):
            tifffile.imwrite(out / f"recon_{{i:05d}}.tiff", np.zeros((ncols, ncols), np.float32))
''')


@pytest.fixture
def standin(tmp_path, monkeypatch):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    prog = bindir / "tomocupy"
    prog.write_text(STANDIN.format(python=sys.executable))
    prog.chmod(prog.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("STANDIN_LOG", str(tmp_path / "argv.json"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # a user config there must not matter
    return tmp_path / "argv.json"


@pytest.fixture
def scan(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    p = d / "s_0001.h5"
    with h5py.File(p, "w") as h5:
        h5["/exchange/data"] = np.full((10, 5, 32), 1000, np.uint16)
        h5["/exchange/data_white"] = np.full((2, 5, 32), 2000, np.uint16)
        h5["/exchange/data_dark"] = np.zeros((2, 5, 32), np.uint16)
        h5["/exchange/theta"] = np.linspace(0, 180, 10)
    return p


def test_try_command_is_exact():
    p = ReconParams(search_width=50, search_step=0.5, nsino=0.5)
    cmd = try_command("/d/s.h5", p, 1024.0, config="/tmp/c.conf")
    assert cmd[:16] == ["tomocupy", "recon", "--file-name", "/d/s.h5", "--reconstruction-type", "try",
                        "--rotation-axis-auto", "manual", "--rotation-axis", "1024", "--center-search-width", "50",
                        "--center-search-step", "0.5", "--nsino", "0.5"]
    d = dict(zip(cmd[2::2], cmd[3::2]))
    assert d["--fbp-filter"] == "parzen" and d["--binning"] == "0" and d["--remove-stripe-method"] == "none"
    assert d["--dtype"] == "float32" and d["--reconstruction-algorithm"] == "fourierrec"
    assert d["--config"] == "/tmp/c.conf" and d["--file-type"] == "standard"
    assert "--dezinger-threshold" not in cmd  # only with dezinger on (older tomocupy lacks the flag)
    assert all(isinstance(x, str) for x in cmd)


def test_full_command_is_exact():
    p = ReconParams(binning=1, fbp_filter="shepp", dezinger=3, full_format="h5", remove_stripe_method="fw")
    cmd = full_command("/d/s.h5", p, 1021.25)
    d = dict(zip(cmd[2::2], cmd[3::2]))
    assert d["--reconstruction-type"] == "full" and d["--rotation-axis"] == "1021.25"
    assert d["--rotation-axis-auto"] == "manual" and d["--save-format"] == "h5"
    assert d["--binning"] == "1" and d["--fbp-filter"] == "shepp" and d["--dezinger"] == "3"
    assert d["--dezinger-threshold"] == "5000" and d["--remove-stripe-method"] == "fw"
    with pytest.raises(ReconError, match="no ring removal 'sort'"):
        full_command("/d/s.h5", ReconParams(remove_stripe_method="sort"), 1.0)


def test_try_runs_and_is_judged_by_outputs(standin, scan):
    be = TomocupyBackend()
    out = be.run_try(scan, ReconParams(search_width=2, search_step=0.5), 16.0)
    argv = json.loads(standin.read_text())
    assert argv[0] == "recon" and "--config" in argv
    assert out.row == 2 and len(out.centers) == 8
    assert [s.center for s in layout.list_try_slices(out.folder)] == sorted(out.centers)
    assert json.loads((out.folder / "tomocorioc_try.json").read_text())["command"][1:] == argv


def test_exit_zero_without_outputs_is_a_failure(standin, scan, monkeypatch):
    monkeypatch.setenv("STANDIN_MODE", "silent")
    be = TomocupyBackend()
    with pytest.raises(ReconError, match="try produced no folder|wrote 0/"):
        be.run_try(scan, ReconParams(search_width=2), 16.0)
    with pytest.raises(ReconError, match="full reconstruction produced no folder"):
        be.run_full(scan, ReconParams(), 16.0)


def test_full_short_output_is_a_failure(standin, scan, monkeypatch):
    be = TomocupyBackend()
    out = be.run_full(scan, ReconParams(), 16.0)
    assert out.nslices == 5
    monkeypatch.setenv("STANDIN_MODE", "short")
    layout_dir = layout.full_dir(scan)
    for p in layout_dir.glob("*.tiff"):
        p.unlink()
    with pytest.raises(ReconError, match="wrote 1/5"):
        be.run_full(scan, ReconParams(), 16.0)


def test_missing_program(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("TOMOCUPY", raising=False)
    with pytest.raises(ReconError, match="tomocupy program not found"):
        TomocupyBackend()
