"""The README's main command: ``tomocorioc demo`` runs the IOC and a simulated tomoScan live and reports the CORs."""
import json
import subprocess
import sys


def test_live_demo_end_to_end(tmp_path):
    out = subprocess.run([sys.executable, "-m", "tomocorioc", "demo", "--outdir", str(tmp_path / "demo")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert any("sample_0003.h5" in ln and "aborted: not queued" in ln for ln in lines)
    assert any("sample_0004.h5" in ln and "outlier-fixed" in ln for ln in lines)
    result = json.loads((tmp_path / "demo" / "demo_result.json").read_text())
    assert result["worst_error_px"] <= 1.0 and result["problems"] == 0
    # both servers were stopped cleanly: nothing left listening on the demo's ports
    assert "Traceback" not in (tmp_path / "demo" / "ioc.log").read_text(errors="replace")
