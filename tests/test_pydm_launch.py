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


_RACE = r'''
import sys, time
from qtpy.QtWidgets import QApplication
app = QApplication([])
if sys.argv[1] == "mend":
    from tomocorioc.ioc.pydm_launch import install_shims
    install_shims()
import epics
from pydm.data_plugins.epics_plugins import pyepics_plugin_component as component
from pydm.widgets.channel import PyDMChannel
checks = []
def connects_after_the_check(chid):   # CA's connection callback lands between add_listener's check and send
    checks.append(chid)
    return len(checks) > 1
epics.ca.isConnected = connects_after_the_check
plugin = component.PyEPICSPlugin()
conn = component.Connection(PyDMChannel(address="ca://Nowhere:X"), "Nowhere:X")
deadline = time.monotonic() + 5
while time.monotonic() < deadline and len(checks) < (2 if sys.argv[1] == "mend" else 1):
    app.processEvents(); time.sleep(0.01)
time.sleep(0.2); app.processEvents()
print(conn.connected, len(checks))
'''


@pytest.mark.parametrize("mode, connected", [("plain", "False"), ("mend", "True")])
def test_the_launcher_mends_pydms_connection_race(tmp_path, mode, connected):
    """pydm's pyepics add_listener checks isConnected, then sends that state: a CA connection in between left
    the widget disconnected for good (plain pydm, reproduced here); the launcher's shim sends it again."""
    pytest.importorskip("pydm")
    runtime = tmp_path / "xdg"
    runtime.mkdir(mode=0o700)
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", XDG_RUNTIME_DIR=str(runtime),
               EPICS_CA_ADDR_LIST="127.0.0.1", EPICS_CA_AUTO_ADDR_LIST="NO")
    r = subprocess.run([sys.executable, "-c", _RACE, mode], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split()[:2] == [connected, "2" if mode == "mend" else "1"], r.stdout
