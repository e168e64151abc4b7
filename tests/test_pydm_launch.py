"""The PyDM launcher that start_pydm uses opens the MEDM screen without errors (offscreen)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_pydm_launch_opens_the_main_screen(tmp_path):
    pytest.importorskip("pydm")
    runtime = tmp_path / "xdg"
    runtime.mkdir(mode=0o700)
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", XDG_RUNTIME_DIR=str(runtime))
    proc = subprocess.Popen([sys.executable, "-m", "tomocorioc.ioc.pydm_launch", str(REPO / "adl" / "tomoCor.adl"),
                             "P=Nowhere:"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=8)
        pytest.fail(f"pydm exited early ({proc.returncode}):\n{err[-3000:]}")
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(timeout=10)
    assert "Traceback" not in err, err[-3000:]
