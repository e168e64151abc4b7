"""Command PVs: each does nothing on 0 and its action on 1 (one case per command, from the PV table).

In-process: a real Service on a fake dispatcher; milliseconds per case, no processes, no sockets.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

import pytest
from _ctl import COMMANDS, TRY_ONLY, fake, queue_scans, refused, scan, state_of

from tomocorioc.core import sidecar
from tomocorioc.core.params import ReconParams
from tomocorioc.core.result import PhaseResult
from tomocorioc.ioc.controller import Controller, queue_table
from tomocorioc.ioc.convert import PutError
from tomocorioc.ioc.pvdefs import ROW_STATUSES, PVDef
from tomocorioc.service.service import Service


# -- command PVs --------------------------------------------------------------------------
def populated(ctl: Controller, data: Path) -> List[int]:
    """Four try-only rows of series 's': done (COR 50), failed, running, queued; the done one selected."""
    svc = ctl.service
    ids = queue_scans(svc, data, 4)
    d = fake(svc)
    d.finish(*d.take(), PhaseResult(True, cor=50.0, cor_source="classical"))
    d.finish(*d.take(), PhaseResult.failure("boom"))
    assert d.take() == (ids[2], "try")
    ctl.put("SelectFile", svc.queue.row(ids[0]).path)
    assert [svc.queue.row(i).status for i in ids] == ["done", "failed", "running", "queued"]
    return ids


def _status(svc: Service, ids: List[int]) -> List[str]:
    return [svc.queue.row(i).status for i in ids]


def case_start(ctl: Controller, svc: Service, data: Path, ids: List[int]) -> None:
    ctl.put("Pause", 1)
    assert ctl.put("Start", 1) == 0
    assert _status(svc, ids) == ["done", "queued", "running", "queued"] and not svc.queue.paused
    assert svc.messages[-1] == "started; 1 row(s) queued again"


def case_abort(ctl: Controller, svc: Service, data: Path, ids: List[int]) -> None:
    assert ctl.put("Abort", "Abort") == 0
    assert _status(svc, ids) == ["done", "failed", "cancelled", "cancelled"]
    assert fake(svc).killed == [(ids[2], "try")] and fake(svc).running == {}
    assert svc.messages[-1] == "aborted; 1 running job(s) cancelled"
    assert ctl.snapshot()["NumRunning"] == 0


def case_pause(ctl: Controller, svc: Service, data: Path, ids: List[int]) -> None:
    assert ctl.put("Pause", 1) == 0 and svc.queue.paused and ctl.snapshot()["Paused"] == 1
    assert fake(svc).take() is None                     # nothing new starts
    assert ctl.put("Pause", 1) == 0 and svc.queue.paused
    assert svc.messages[-1] == "paused: no new jobs start"


def case_resume(ctl: Controller, svc: Service, data: Path, ids: List[int]) -> None:
    svc.queue.pause()
    assert ctl.put("Resume", 1) == 0 and not svc.queue.paused and ctl.snapshot()["Paused"] == 0
    assert svc.messages[-1] == "resumed"


def case_fix_outliers(ctl: Controller, svc: Service, data: Path, ids: List[int]) -> None:
    for rid, cor in zip(ids[1:], (51.0, 500.0, 52.0)):
        svc.queue.set_cor(rid, cor, "classical")
    assert ctl.put("FixOutliers", 1) == 0
    row = svc.queue.row(ids[2])
    assert row.cor == pytest.approx(51.5) and row.cor_source == "outlier-fixed"
    assert svc.messages[-1] == "Fix COR Outliers: 1 COR(s) changed"


def case_retry_failed(ctl: Controller, svc: Service, data: Path, ids: List[int]) -> None:
    assert ctl.put("RetryFailed", 1) == 0
    assert _status(svc, ids) == ["done", "queued", "running", "queued"] and svc.queue.row(ids[1]).error is None
    assert svc.messages[-1] == "1 row(s) queued again"


def case_clear_done(ctl: Controller, svc: Service, data: Path, ids: List[int]) -> None:
    assert ctl.put("ClearDone", 1) == 0
    assert [r.id for r in svc.queue.rows()] == ids[1:]
    assert svc.messages[-1] == "1 finished row(s) removed"
    with pytest.raises(PutError, match="no longer in the queue"):    # the selected row was the done one
        ctl.put("Selected:Cor", 12.0)
    assert ctl.selected is None


def case_apply_params(ctl: Controller, svc: Service, data: Path, ids: List[int]) -> None:
    src = svc.queue.row(ids[0]).path
    sidecar.write(src, ReconParams(fbp_filter="shepp"), svc.settings.params)
    svc.queue.set_enabled([ids[3]], False)
    assert ctl.put("ApplyParams", 1) == 0
    assert [svc.params_for(svc.queue.row(i).path).fbp_filter for i in ids] == ["shepp", "shepp", "shepp", "parzen"]
    assert svc.messages[-1] == "parameters of s_0001.h5 copied to 2 row(s)"
    ctl.put("SelectFile", "")
    refused(ctl, "ApplyParams", 1, "no file selected")


def case_remove_selected(ctl: Controller, svc: Service, data: Path, ids: List[int]) -> None:
    assert ctl.put("RemoveSelected", 1) == 0
    assert [r.id for r in svc.queue.rows()] == ids[1:] and ctl.selected is None
    assert svc.messages[-1] == "removed s_0001.h5"
    refused(ctl, "RemoveSelected", 1, "no file selected")
    ctl.put("SelectFile", "s_0003.h5")
    refused(ctl, "RemoveSelected", 1, "cannot remove a running row")


def case_reload_acf(ctl: Controller, svc: Service, data: Path, ids: List[int]) -> None:
    refused(ctl, "ReloadAcf", 1, "access security is off")   # no serve --acf: nothing to reload
    ctl.reload_acf = lambda: "access security reloaded from x.acf"
    assert ctl.put("ReloadAcf", 1) == 0 and svc.messages[-1] == "access security reloaded from x.acf"


def case_accept_cor(ctl: Controller, svc: Service, data: Path, ids: List[int]) -> None:
    """HoldFullOnReview (default Yes) holds a flagged row's full until AcceptCor on the selected file."""
    d = fake(svc)
    d.finish(ids[2], "try")
    d.run_until_idle()
    rid = queue_scans(svc, data, 1, name="r", phases={"try": True, "infer": True, "full": True, "tomolog": False})[0]
    d.finish(*d.take())
    assert d.take() == (rid, "infer")
    d.finish(rid, "infer", PhaseResult(True, cor=50.5, cor_source="classical", confidence=0.1, needs_review=True))
    assert d.take() is None and svc.queue.row(rid).needs_review
    ctl.put("SelectFile", svc.queue.row(rid).path)
    # a held row says so: status "review" (not "queued") and what the operator must do
    snap, held = ctl.snapshot(), queue_table(svc.queue.rows(), {r.id for r in svc.queue.rows() if svc.queue.held(r)})
    assert ROW_STATUSES[snap["Selected:Status"]] == "review" and "AcceptCor" in snap["Selected:Error"]
    assert held["status"][-1] == "review" and "AcceptCor" in held["error"][-1]
    assert ctl.put("ClearDone", 1) == 0 and svc.queue.find(svc.queue.row(rid).path) == rid   # full still to run
    ctl.put("HoldFullOnReview", "No")   # released: the full is an ordinary queued job again
    assert ROW_STATUSES[ctl.snapshot()["Selected:Status"]] == "queued" and not ctl.snapshot()["Selected:Error"]
    ctl.put("HoldFullOnReview", "Yes")
    assert ctl.put("AcceptCor", 1) == 0
    row = svc.queue.row(rid)
    assert not row.needs_review and row.cor == 50.5 and row.cor_source == "classical"
    assert svc.messages[-1] == "COR 50.50 of r_0001.h5 accepted"
    assert d.take() == (rid, "full")
    ctl.put("SelectFile", "")
    refused(ctl, "AcceptCor", 1, "no file selected")


def test_hold_full_on_review_no_lets_a_flagged_full_run(ctl: Controller, svc: Service, data: Path):
    ctl.put("HoldFullOnReview", "No")
    d = fake(svc)
    rid = queue_scans(svc, data, 1, name="r", phases={"try": True, "infer": True, "full": True, "tomolog": False})[0]
    d.finish(*d.take())
    d.finish(*d.take(), PhaseResult(True, cor=50.5, cor_source="classical", confidence=0.1, needs_review=True))
    assert d.take() == (rid, "full")


def case_enqueue(ctl: Controller, svc: Service, data: Path, ids: List[int]) -> None:
    path = scan(data, "t_0001.h5")
    assert ctl.put("Enqueue", path) == path
    assert svc.queue.find(path) is not None and svc.messages[-1] == f"queued 1 of 1 file(s) from {path}"


def _camrot_finished(ctl: Controller, path: str, timeout: float = 300.0) -> Any:
    """Wait for the CamRot worker process of ``path`` (a real one) to report."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        res = ctl.camrot.result(path)
        if res is not None and res.state != "measuring":
            return res
        time.sleep(0.2)
    raise AssertionError(f"CamRot of {path} did not finish in {timeout:g} s")


def case_camrot(ctl: Controller, svc: Service, data: Path, ids: List[int]) -> None:
    """On a file that is no scan (the populated rows): the worker's error arrives, Tilt stays NaN (INVALID)."""
    path = svc.queue.row(ids[0]).path
    snap = ctl.snapshot()
    assert math.isnan(snap["Selected:Tilt"]) and math.isnan(snap["Selected:TiltR2"])
    assert snap["Selected:TiltStatus"] == ""
    assert ctl.put("CamRot", 1) == 0 and svc.messages[-1] == "CamRot: measuring s_0001.h5"
    assert ctl.snapshot()["Selected:TiltStatus"] == "measuring"
    res = _camrot_finished(ctl, path)
    assert res.state == "error" and res.error
    snap = ctl.snapshot()
    assert math.isnan(snap["Selected:Tilt"]) and snap["Selected:TiltStatus"] == res.error
    assert svc.messages[-1] == f"CamRot s_0001.h5: {res.error}"
    refused(ctl, "ApplyTilt", 1, "no CamRot result for the selected file")


def case_apply_tilt(ctl: Controller, svc: Service, data: Path, ids: List[int]) -> None:
    """A real tilted scan: CamRot measures it in a worker process, ApplyTilt stores the angle in its sidecar."""
    from tomocorioc.sim import SimConfig, simulate_scan
    refused(ctl, "ApplyTilt", 1, "no CamRot result for the selected file")
    path = str(data / "tilted_0001.h5")
    simulate_scan(path, SimConfig(ncols=64, nrows=32, nproj=61, tilt=1.0, seed=2))
    svc.enqueue([path], TRY_ONLY)
    ctl.put("SelectFile", path)
    ctl.put("CenterSearchWidth", 8.0)
    assert ctl.put("CamRot", 1) == 0
    refused(ctl, "CamRot", 1, "already measuring tilted_0001.h5")
    res = _camrot_finished(ctl, path)
    assert res.state == "ok", res
    assert res.tilt_deg == pytest.approx(1.0, abs=0.5)      # 32 rows: a rough angle, but the right one
    snap = ctl.snapshot()
    assert snap["Selected:Tilt"] == res.tilt_deg and snap["Selected:TiltR2"] == res.r2
    assert ctl.put("ApplyTilt", 1) == 0
    assert svc.params_for(path).rotate_proj_angle == pytest.approx(round(res.tilt_deg, 4))
    assert svc.params_for(path).search_width == 8.0
    assert svc.params_for(svc.queue.row(ids[0]).path).rotate_proj_angle == 0
    stored = f"rotate_proj_angle {round(res.tilt_deg, 4):g}° stored for tilted_0001.h5"
    assert svc.messages[-1].startswith(stored)


# One case per command PV: the put that does the action (each starts from populated()).
COMMAND_CASES: Dict[str, Callable[[Controller, Service, Path, List[int]], None]] = {
    "Enqueue": case_enqueue, "Start": case_start, "Abort": case_abort, "Pause": case_pause, "Resume": case_resume,
    "FixOutliers": case_fix_outliers, "RetryFailed": case_retry_failed, "ClearDone": case_clear_done,
    "ApplyParams": case_apply_params, "RemoveSelected": case_remove_selected, "ReloadAcf": case_reload_acf,
    "CamRot": case_camrot, "ApplyTilt": case_apply_tilt, "AcceptCor": case_accept_cor,
}


def test_every_command_pv_has_a_case(ctl: Controller):
    names = {p.name for p in COMMANDS}
    assert not names - set(COMMAND_CASES), f"command PVs without a test case: {sorted(names - set(COMMAND_CASES))}"
    assert not set(COMMAND_CASES) - names, f"cases for PVs no longer in the table: {set(COMMAND_CASES) - names}"
    assert set(ctl.handlers) >= names     # and the controller handles each


@pytest.mark.parametrize("p", COMMANDS, ids=lambda p: p.name)
def test_command_does_its_action(ctl: Controller, svc: Service, data: Path, p: PVDef):
    case = COMMAND_CASES.get(p.name)
    if case is None:
        pytest.fail(f"command PV {p.name} has no case in COMMAND_CASES")
    case(ctl, svc, data, populated(ctl, data))


BUSY_COMMANDS = [p for p in COMMANDS if p.kind.is_enum]


@pytest.mark.parametrize("p", BUSY_COMMANDS, ids=lambda p: p.name)
def test_command_put_of_zero_does_nothing(ctl: Controller, svc: Service, data: Path, p: PVDef):
    populated(ctl, data)
    svc.queue.pause()   # so Resume would have something to do
    before = state_of(ctl)
    for zero in (0, "0", p.enums[0], 0.0):
        assert ctl.put(p.name, zero) == 0
    assert state_of(ctl) == before


@pytest.mark.parametrize("p", BUSY_COMMANDS, ids=lambda p: p.name)
def test_command_refuses_a_bad_state(ctl: Controller, p: PVDef):
    refused(ctl, p.name, 2, "out of range")
    refused(ctl, p.name, "Go", "is not one of")


def test_pause_and_resume_toggle_the_queue(ctl: Controller, svc: Service):
    for _ in range(2):
        ctl.put("Pause", 1)
        assert svc.queue.paused and ctl.snapshot()["ReconStatus"].startswith("Paused")
        ctl.put("Resume", "Resume")
        assert not svc.queue.paused
