"""`tomocorioc run --cor-method ai --model ...` end to end on simulated scans.

With the fixture's random weights the chosen COR is meaningless: this tests
the plumbing and the files written, not the accuracy.
"""
import json

import pytest
from _fixtures import fixture_dir
from test_pipeline_cli import FAST, SMALL, run_cli

from tomocorioc.core import layout
from tomocorioc.sim import SimConfig, simulate_series


@pytest.fixture(scope="module")
def checkpoint():
    return fixture_dir("tomocor-small") / "checkpoint.pt"


def test_ai_run_writes_cor_and_scores(tmp_path, checkpoint):
    d = tmp_path / "data"
    d.mkdir()
    truth = simulate_series(d, SimConfig(offset=2.0, seed=8, **SMALL), 2, name="ai")
    p = run_cli("run", d, "--json", "--backend", "torch", "--phases", "try,infer", "--cor-method", "ai",
                "--model", checkpoint, *FAST, check=True)
    recs = [json.loads(x) for x in p.stdout.splitlines()]
    assert [r["status"] for r in recs] == ["ok", "ok"]
    for rec, t in zip(recs, truth):
        assert rec["cor_source"] == "ai" and 0.0 <= rec["confidence"] <= 1.0
        tdir = layout.try_dir(d / t["file"])
        centers = [s.center for s in layout.list_try_slices(tdir)]
        assert rec["cor"] in centers  # an AI choice is one of the candidates
        assert layout.read_cor_file(tdir) == pytest.approx(rec["cor"])
        scores = json.loads((tdir / layout.SCORES_FILE).read_text())
        assert scores["method"] == "ai" and len(scores["ai"]["scores"]) == len(centers)
        assert "classical" in scores  # the cross-check is recorded beside it
    # auto picks the AI path when a model is given
    p = run_cli("run", d / truth[0]["file"], "--json", "--backend", "torch", "--phases", "infer",
                "--model", checkpoint, check=True)
    assert json.loads(p.stdout)["cor_source"] == "ai"


def test_bad_checkpoint_is_a_usage_error(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_text("nope")
    d = tmp_path / "d"
    d.mkdir()
    simulate_series(d, SimConfig(**SMALL), 1)
    p = run_cli("run", d, "--cor-method", "ai", "--model", bad)
    assert p.returncode == 2 and "bad.pt" in p.stderr
