"""The controller in-process, generated from the PV table: a real Service (queue, store, settings) on a fake dispatcher.

Every setting PV round-trips and refuses what it must; every command PV does
nothing on 0 and its action on 1; the per-file PVs, read-only PVs and the
autosave round trip through the real caproto group.  Milliseconds per case:
no processes, no sockets.
"""
from __future__ import annotations

import asyncio
import functools
import json
import math
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import h5py
import numpy as np
import pytest
from _fixtures import fixture_dir

from tomocorioc.core import sidecar
from tomocorioc.core.params import ReconParams
from tomocorioc.core.result import PhaseResult
from tomocorioc.core.settings import ServiceSettings
from tomocorioc.core.spec import get_path, spec_at
from tomocorioc.ioc.ca_server import build_group
from tomocorioc.ioc.controller import Controller, queue_table
from tomocorioc.ioc.convert import Number, NumberText, PutError, Text
from tomocorioc.ioc.pvdefs import PAGE_ROWS, ROW_STATUSES, PVDef, Role, by_name, pv_table
from tomocorioc.service.local import slots_for
from tomocorioc.service.preflight import preflight
from tomocorioc.service.service import Service
from tomocorioc.testing.fakes import FakeDispatcher, FakeTrigger, make_service

TABLE = pv_table()
DEFS = by_name()
SETTINGS = [p for p in TABLE if p.role is Role.SETTING]
NUMERIC = [p for p in SETTINGS if isinstance(p.conv, (Number, NumberText))]
ENUMS = [p for p in SETTINGS if p.kind.is_enum]
TEXTS = [p for p in SETTINGS if isinstance(p.conv, (Text, NumberText))]
COMMANDS = [p for p in TABLE if p.role is Role.COMMAND]
SELECTS = [p for p in TABLE if p.role is Role.SELECT]
READ_ONLY = [p for p in TABLE if not p.kind.writable]

PREFIX = "2bma:TomoScan:"
TRY_ONLY = {"try": True, "infer": False, "full": False, "tomolog": False}
# What another setting must hold before this one takes a value (AutoTrigger On needs a tomoScan prefix).
NEEDS: Dict[str, Dict[str, Any]] = {"AutoTrigger": {"TomoScanPrefix": PREFIX}}
# A value each text setting accepts, where any text will not do ("{model}": an existing file).
GOOD_TEXT = {"TomoScanPrefix": PREFIX, "TriggerPhases": "try,infer", "Gpus": "0,1", "ModelPath": "{model}",
             "TomoLogUrl": "https://docs.google.com/presentation/d/abc123/edit", "TomoLogCloud": "aps",
             "TomoLogBeamline": "2-bm", "TomoLogMin": "-0.25", "TomoLogMax": "12.5"}
# A value each text setting refuses beyond the generic ones (multi-line, not a string), and why.
BAD_TEXT = {"TomoScanPrefix": ("2bma TomoScan", "not a PV prefix"), "TriggerPhases": ("try,bogus", "comma list"),
            "ModelPath": ("/nonexistent/model.pt", "outside the model roots"), "Gpus": ("a,b", "GPU numbers"),
            "TomoLogMin": ("abc", "not a number"), "TomoLogMax": ("nan", "not finite")}


# -- fixtures and helpers -----------------------------------------------------------------
@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One directory for the module (pytest's tmp_path costs more than most cases here)."""
    return tmp_path_factory.mktemp("controller").resolve()


@pytest.fixture(scope="module")
def model(root: Path) -> Path:
    """A real tomocor checkpoint (small, random weights) under the model root."""
    f = root / "model.pt"
    shutil.copyfile(fixture_dir("tomocor-small") / "checkpoint.pt", f)
    return f


@functools.lru_cache(maxsize=None)
def check_model(path: str) -> Optional[str]:
    """The IOC's real checkpoint check (a worker-side process), once per file: it costs seconds."""
    return preflight(model=path)


def controller(svc: Service, roots: List[Path], **kw: Any) -> Controller:
    """A controller as ``serve`` builds one, on a host with two GPUs, models under the module's root."""
    kw.setdefault("model_roots", [roots[0].parent] if roots else [])
    return Controller(svc, roots, model_check=check_model, gpu_count=lambda: 2, **kw)


@pytest.fixture
def data(root: Path) -> Path:
    """A fresh data root for one test."""
    return Path(tempfile.mkdtemp(prefix="data", dir=root))


@pytest.fixture
def svc():
    s = make_service()
    yield s
    s.stop()


@pytest.fixture
def ctl(svc: Service, data: Path) -> Controller:
    return controller(svc, [data], slot_factory=slots_for, trigger=FakeTrigger())


def scan(folder: Path, name: str, nproj: int = 31) -> str:
    """A small scan file: /exchange/data nproj x 1 x 2048 (what auto-skip and the COR range check read)."""
    path = folder / name
    with h5py.File(path, "w") as f:
        f.create_dataset("exchange/data", shape=(nproj, 1, 2048), dtype=np.uint16)   # never written: no bytes
    return str(path)


def queue_scans(svc: Service, folder: Path, n: int, name: str = "s", phases: Optional[Dict[str, bool]] = None
                ) -> List[int]:
    """``n`` scans ``name_0001.h5``... queued (try only, unless ``phases``); their row ids."""
    files = [scan(folder, f"{name}_{i:04d}.h5") for i in range(1, n + 1)]
    return svc.enqueue(files, phases or TRY_ONLY)


def fake(svc: Service) -> FakeDispatcher:
    d = svc.dispatcher
    assert isinstance(d, FakeDispatcher)
    return d


def state_of(ctl: Controller) -> Dict[str, Any]:
    """Everything a put could change: settings (live and stored), queue, selection, dispatcher, trigger."""
    svc, trig = ctl.service, ctl.trigger
    return dict(settings=svc.settings, pvs=ctl.setting_values(), stored=svc.store.settings().get("service"),
                rows=[r.to_dict() for r in svc.queue.rows()], paused=svc.queue.paused,
                messages=list(svc.messages), selected=ctl.selected, offset=ctl.row_offset,
                dispatcher=svc.dispatcher, calls=list(fake(svc).calls), killed=list(fake(svc).killed),
                links=list(trig.links) if trig else None, complete=trig.complete_timeout if trig else None,
                files=sorted(f for r in ctl.data_roots for f in r.rglob("*")))   # sidecars, too


# Refusals whose message does not name the PV (the controller raises them below put's naming).
UNNAMED = ("outside the data roots", "no data root configured", "no file selected", "no longer in the queue")


def refused(ctl: Controller, name: str, value: Any, why: str) -> PutError:
    """Put must fail with a one-line message naming the PV and saying ``why``, and change nothing."""
    before = state_of(ctl)
    with pytest.raises(PutError) as info:
        ctl.put(name, value)
    msg = str(info.value)
    if why not in UNNAMED:
        assert msg.startswith((f"{name}:", f"{name} ", f"{name.split(':')[0]}:")), msg
    assert why in msg, msg
    assert "\n" not in msg
    assert state_of(ctl) == before
    return info.value


def setup(ctl: Controller, p: PVDef) -> None:
    for name, value in NEEDS.get(p.name, {}).items():
        ctl.put(name, value)


def good_value(p: PVDef, model: Path) -> List[Any]:
    """Values (not the default) a client may put to setting PV ``p``, as caproto hands them over."""
    if p.kind.is_enum:
        default = int(p.default)
        other = [i for i in range(len(p.enums)) if i != default]
        return [p.enums[other[0]], other[-1]]                # a label, then an index
    if isinstance(p.conv, Number):
        base = ServiceSettings()
        for v in (round(p.lo + (p.hi - p.lo) / 4, 3), p.lo, p.hi):   # the first the whole record accepts
            if v != p.default:
                try:
                    base.changed({p.setting: v})
                    return [v]
                except ValueError:
                    continue
        raise AssertionError(f"{p.name}: no valid value found")
    return [GOOD_TEXT.get(p.name, "some text").format(model=model)]


def check_bound(ctl: Controller, p: PVDef, value: Any, shown: Any) -> None:
    """The PV value returned, setting_values(), the settings record and the store all agree."""
    svc = ctl.service
    setting = get_path(svc.settings, p.setting)
    assert shown == ctl.setting_values()[p.name] == p.conv.to_pv(p, setting)
    assert setting == p.conv.to_setting(p, value)
    assert svc.store.settings()["service"] == svc.settings.to_dict()    # durable before visible


# -- the table itself -------------------------------------------------------------------------
def test_writable_pvs_are_exactly_settings_commands_and_selects():
    for p in TABLE:
        assert p.kind.writable == (p.role in (Role.SETTING, Role.COMMAND, Role.SELECT)), p.name


def test_a_fresh_service_shows_every_setting_pv_default(ctl: Controller):
    assert ctl.setting_values() == {p.name: p.default for p in SETTINGS}


# -- setting PVs: generated from the table --------------------------------------------------------
ROUND_TRIPS = [(p, i) for p in SETTINGS for i in range(2 if p.kind.is_enum else 1)]


@pytest.mark.parametrize("p,i", ROUND_TRIPS, ids=[f"{p.name}-{('label', 'index')[i] if p.kind.is_enum else 'value'}"
                                                  for p, i in ROUND_TRIPS])
def test_setting_put_round_trips(ctl: Controller, model: Path, p: PVDef, i: int):
    setup(ctl, p)
    value = good_value(p, model)[i]
    shown = ctl.put(p.name, value)
    check_bound(ctl, p, value, shown)
    assert shown != p.default
    if p.kind.is_enum:
        assert shown == (p.enums.index(value) if isinstance(value, str) else value)
    elif isinstance(p.conv, Number):
        assert shown == value


@pytest.mark.parametrize("p", ENUMS, ids=[p.name for p in ENUMS])
def test_enum_setting_takes_every_state_by_label_and_by_index(ctl: Controller, p: PVDef):
    setup(ctl, p)
    for i, label in enumerate(p.enums):
        assert ctl.put(p.name, label) == i and ctl.setting_values()[p.name] == i
        assert ctl.put(p.name, str(i)) == i          # caput of a number to an enum arrives as text
        assert ctl.put(p.name, (i + 1) % len(p.enums)) == (i + 1) % len(p.enums)
        assert ctl.put(p.name, float(i)) == i
        check_bound(ctl, p, i, i)


ENUM_BAD = [("index past the end", lambda p: len(p.enums), "out of range"),
            ("negative index", lambda p: -1, "out of range"),
            ("negative index as text", lambda p: "-1", "out of range"),
            ("unknown label", lambda p: "Bogus", "is not one of"),
            ("fractional index", lambda p: 0.5, "not a state index"),
            ("nan", lambda p: float("nan"), "is not one of")]
ENUM_CASES = [(p, b) for p in ENUMS for b in ENUM_BAD]


@pytest.mark.parametrize("p,bad", ENUM_CASES, ids=[f"{p.name}-{b[0]}" for p, b in ENUM_CASES])
def test_enum_setting_refuses(ctl: Controller, p: PVDef, bad: Tuple[str, Callable[[PVDef], Any], str]):
    setup(ctl, p)
    refused(ctl, p.name, bad[1](p), bad[2])


def _numeric_bad(p: PVDef) -> List[Tuple[str, Any, str]]:
    text = isinstance(p.conv, NumberText)
    out: List[Tuple[str, Any, str]] = []
    if p.lo is not None:
        out.append(("below lo", p.lo - max(1e-6, abs(p.lo) * 1e-3), "out of range"))
    if p.hi is not None:
        out.append(("above hi", p.hi + max(1e-6, abs(p.hi) * 1e-3), "out of range"))
    out += [("nan", "nan" if text else float("nan"), "not finite"),
            ("inf", "inf" if text else float("inf"), "not finite"),
            ("-inf", "-inf" if text else float("-inf"), "not finite"),
            ("nan text", "NaN", "not finite"),
            ("not numeric", "abc", "not a number"),
            ("empty list", [], "not a number" if not text else "expected a string")]
    return out


NUMERIC_CASES = [(p, b) for p in NUMERIC for b in _numeric_bad(p)]


@pytest.mark.parametrize("p,bad", NUMERIC_CASES, ids=[f"{p.name}-{b[0]}" for p, b in NUMERIC_CASES])
def test_numeric_setting_refuses(ctl: Controller, model: Path, p: PVDef, bad: Tuple[str, Any, str]):
    setup(ctl, p)
    ctl.put(p.name, good_value(p, model)[0])       # refused puts leave a non-default value alone too
    refused(ctl, p.name, bad[1], bad[2])


@pytest.mark.parametrize("p", [p for p in NUMERIC if isinstance(p.conv, Number)], ids=lambda p: p.name)
def test_numeric_setting_limits_are_the_settings_spec(p: PVDef):
    """One source of limits: every ao setting is bounded, by its field's spec."""
    spec = spec_at(ServiceSettings(), p.setting)
    assert p.lo is not None and p.hi is not None
    assert (p.lo, p.hi, p.units) == (spec.lo, spec.hi, spec.units)


def _text_bad(p: PVDef) -> List[Tuple[str, Any, str]]:
    out: List[Tuple[str, Any, str]] = [("two lines", "a\nb", "must be one line"),
                                       ("not a string", 5, "expected a string")]
    if p.name in BAD_TEXT:
        out.append(("invalid",) + BAD_TEXT[p.name])
    return out


TEXT_CASES = [(p, b) for p in TEXTS for b in _text_bad(p)]


@pytest.mark.parametrize("p,bad", TEXT_CASES, ids=[f"{p.name}-{b[0]}" for p, b in TEXT_CASES])
def test_text_setting_refuses(ctl: Controller, p: PVDef, bad: Tuple[str, Any, str]):
    refused(ctl, p.name, bad[1], bad[2])


@pytest.mark.parametrize("p", TEXTS, ids=lambda p: p.name)
def test_text_setting_blank_clears_and_char_arrays_arrive_as_bytes(ctl: Controller, model: Path, p: PVDef):
    value = good_value(p, model)[0]
    shown = ctl.put(p.name, value.encode() + b"\x00\x00")    # a char waveform: bytes, NUL padded
    check_bound(ctl, p, value, shown)
    shown = ctl.put(p.name, "  ")
    assert shown == ""
    check_bound(ctl, p, "", shown)
    blank_is_none = isinstance(p.conv, NumberText) or p.conv.blank_is_none
    assert get_path(ctl.service.settings, p.setting) == (None if blank_is_none else "")


# -- settings with side effects ----------------------------------------------------------------
def test_gpus_replaces_the_slots_through_the_slot_factory(ctl: Controller, svc: Service):
    old = fake(svc)
    svc.start()
    assert ctl.put("Gpus", " 0, 1 ") == "0,1"
    assert svc.settings.gpus == "0,1"
    assert svc.wait_slots(10)                               # the swap runs on its own thread
    new = fake(svc)
    assert new is not old and old.stopped and new.started   # set_slots: a new dispatcher, started as the old was
    assert [s.name for s in new.slots] == ["gpu0", "gpu1"]
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in new.slots] == ["0", "1"]
    assert new.timeouts == svc.settings.timeouts
    assert ctl.snapshot()["NumSlots"] == 2 and ctl.snapshot()["Slot2:Name"] == "gpu1"
    assert ctl.put("Gpus", "0,1") == "0,1" and fake(svc) is new   # unchanged: the slots are left alone
    assert ctl.put("Gpus", "") == "" and svc.settings.gpus is None
    assert svc.wait_slots(10)
    assert fake(svc) is not new                                  # blank: the service's own choice again


def test_gpus_is_refused_without_a_slot_factory(svc: Service, data: Path):
    ctl = controller(svc, [data])
    refused(ctl, "Gpus", "0", "cannot change its worker slots")


def test_gpus_is_refused_while_a_job_runs(ctl: Controller, svc: Service, data: Path):
    queue_scans(svc, data, 1)
    assert fake(svc).take() is not None
    refused(ctl, "Gpus", "1", "cannot change the worker slots while jobs run")


def test_a_refused_gpus_list_leaves_the_slots_alone(ctl: Controller, svc: Service):
    refused(ctl, "Gpus", "0,,1", "GPU numbers")


def test_auto_trigger_needs_a_prefix_and_a_trigger(ctl: Controller, svc: Service, data: Path):
    refused(ctl, "AutoTrigger", "On", "set TomoScanPrefix first")
    bare = controller(svc, [data])
    bare.put("TomoScanPrefix", PREFIX)
    refused(bare, "AutoTrigger", 1, "started without the trigger")
    assert bare.put("AutoTrigger", "Off") == 0                # Off is always fine


def test_auto_trigger_links_and_unlinks_tomoscan(ctl: Controller, svc: Service):
    trig = ctl.trigger
    assert isinstance(trig, FakeTrigger)
    assert ctl.put("TomoScanPrefix", PREFIX) == PREFIX and trig.links == []   # Off: no link yet
    assert ctl.put("AutoTrigger", "On") == 1 and svc.settings.auto_trigger
    assert trig.links == [PREFIX]
    assert ctl.put("AutoTrigger", 1) == 1 and trig.links == [PREFIX]          # no change: no relink
    assert ctl.put("TomoScanPrefix", "13bm:TS:") == "13bm:TS:" and trig.links == [PREFIX, "13bm:TS:"]
    refused(ctl, "TomoScanPrefix", "", "cannot be blank while AutoTrigger is On")
    assert ctl.put("AutoTrigger", "Off") == 0 and trig.links[-1] is None
    assert ctl.put("TomoScanPrefix", "") == "" and trig.links == [PREFIX, "13bm:TS:", None]


def test_trigger_timeout_reaches_the_trigger(ctl: Controller, svc: Service, data: Path):
    assert ctl.put("TriggerTimeout", 42.5) == 42.5
    assert svc.settings.trigger_timeout == 42.5 and ctl.trigger.complete_timeout == 42.5
    refused(ctl, "TriggerTimeout", 0.5, "out of range")
    assert controller(svc, [data]).put("TriggerTimeout", 60) == 60.0     # without a trigger: the setting only


def test_phase_timeouts_reach_the_dispatcher(ctl: Controller, svc: Service):
    for name, phase in (("TryTimeout", "try"), ("InferTimeout", "infer"), ("FullTimeout", "full")):
        ctl.put(name, 61.0)
        assert fake(svc).timeouts[phase] == 61.0


def test_cross_field_rules_refuse_a_put_whole(ctl: Controller, svc: Service):
    """search_step may not exceed search_width: the second put fails and neither value moves."""
    ctl.put("CenterSearchWidth", 2.0)
    refused(ctl, "CenterSearchStep", 3.0, "must not exceed search_width")
    assert svc.settings.params.search_width == 2.0 and svc.settings.params.search_step == 0.5


def test_tomolog_cloud_service_is_checked_at_put(ctl: Controller):
    refused(ctl, "TomoLogCloud", "dropbox", "cloud_service")
    refused(ctl, "TomoLogBeamline", "99-id", "beamline must be one of")
    assert ctl.put("TomoLogCloud", " APS ") == "aps" and ctl.put("TomoLogBeamline", "2-BM") == "2-bm"


def test_tomolog_url_is_confined_to_the_allowed_prefixes(ctl: Controller, svc: Service):
    """serve --tomolog-allow: a presentation outside the prefixes is refused and the setting keeps its value."""
    mine = "https://docs.google.com/presentation/d/beamline2bm/edit"
    ctl.tomolog_allow = ("https://docs.google.com/presentation/d/beamline2bm",)
    assert ctl.put("TomoLogUrl", mine) == mine
    refused(ctl, "TomoLogUrl", "https://docs.google.com/presentation/d/attacker/edit", "not under an allowed prefix")
    refused(ctl, "TomoLogUrl", "https://evil.example/presentation/x", "must look like")
    assert svc.settings.tomolog["presentation_url"] == mine
    assert ctl.put("TomoLogUrl", "") == ""


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


# -- Enqueue: files, directories, globs under the data roots ---------------------------------------
@pytest.fixture
def tree(data: Path, root: Path) -> Dict[str, Path]:
    """data/{s_0001..3.h5, notes.txt, sub/x_0001.h5, empty/, links/o.h5 -> outside/o_0001.h5}; out: outside's name."""
    for i in (1, 2, 3):
        scan(data, f"s_{i:04d}.h5")
    (data / "notes.txt").write_text("not a scan")
    (data / "sub").mkdir()
    scan(data / "sub", "x_0001.h5")
    (data / "empty").mkdir()
    outside = Path(tempfile.mkdtemp(prefix="outside", dir=root))     # a sibling of data: not under the root
    scan(outside, "o_0001.h5")
    (data / "links").mkdir()
    (data / "links" / "o.h5").symlink_to(outside / "o_0001.h5")
    return {"data": data, "outside": outside, "out": Path(outside.name)}


ENQUEUE_OK = [
    ("a file", "{data}/s_0002.h5", ["s_0002.h5"]),
    ("a directory: its scans only", "{data}", ["s_0001.h5", "s_0002.h5", "s_0003.h5"]),
    ("a directory with a slash", "{data}/", ["s_0001.h5", "s_0002.h5", "s_0003.h5"]),
    ("a subdirectory", "{data}/sub", ["x_0001.h5"]),
    ("a glob", "{data}/s_000[13].h5", ["s_0001.h5", "s_0003.h5"]),
    ("a glob with a star", "{data}/s_*.h5", ["s_0001.h5", "s_0002.h5", "s_0003.h5"]),
    ("a path with ..", "{data}/sub/../s_0001.h5", ["s_0001.h5"]),
    ("surrounding blanks", "  {data}/s_0001.h5  ", ["s_0001.h5"]),
]


@pytest.mark.parametrize("what,value,names", ENQUEUE_OK, ids=[c[0] for c in ENQUEUE_OK])
def test_enqueue_accepts(ctl: Controller, svc: Service, tree: Dict[str, Path], what: str, value: str,
                         names: List[str]):
    text = value.format(**tree)
    assert ctl.put("Enqueue", text) == text.strip()
    assert sorted(Path(r.path).name for r in svc.queue.rows()) == names
    assert all(Path(r.path).parent.resolve() in (tree["data"], tree["data"] / "sub") for r in svc.queue.rows())
    assert svc.messages[-1].startswith(f"queued {len(names)} of {len(names)} file(s)")


ENQUEUE_BAD = [
    ("outside the roots", "{outside}/o_0001.h5", "outside the data roots"),
    ("a symlink out of the roots", "{data}/links/o.h5", "outside the data roots"),
    ("dot-dot out of the roots", "{data}/../{out}/o_0001.h5", "outside the data roots"),
    ("a glob outside the roots", "{outside}/*.h5", "outside the data roots"),
    ("a glob through a symlink out", "{data}/links/*", "outside the data roots"),
    ("relative", "data/s_0001.h5", "must be absolute"),
    ("a relative glob", "*.h5", "glob must be an absolute path"),
    ("missing", "{data}/missing_0001.h5", "no such file or directory"),
    ("empty", "", "empty path"),
    ("blank", "   ", "empty path"),
    ("a directory without scans", "{data}/empty", "no scan files"),
    ("a glob matching nothing", "{data}/*.tiff", "nothing matches"),
    ("two lines", "{data}/s_0001.h5\n{data}/s_0002.h5", "must be one line"),
]


@pytest.mark.parametrize("what,value,why", ENQUEUE_BAD, ids=[c[0] for c in ENQUEUE_BAD])
def test_enqueue_refuses(ctl: Controller, tree: Dict[str, Path], what: str, value: str, why: str):
    refused(ctl, "Enqueue", value.format(**tree), why)


def test_enqueue_of_a_directory_never_queues_a_file_outside_the_roots(ctl: Controller, svc: Service,
                                                                       tree: Dict[str, Path]):
    try:
        ctl.put("Enqueue", str(tree["data"] / "links"))
    except PutError:
        pass
    assert all(tree["data"] in Path(r.path).parents for r in svc.queue.rows())


def test_enqueue_without_data_roots_is_refused(svc: Service, tree: Dict[str, Path]):
    refused(controller(svc, []), "Enqueue", f"{tree['data']}/s_0001.h5", "no data root configured")


def test_enqueue_again_adds_nothing_and_uses_the_phase_settings(ctl: Controller, svc: Service, tree: Dict[str, Path]):
    ctl.put("PhaseTomoLog", "Enable")
    ctl.put("PhaseFull", "Disable")
    ctl.put("Enqueue", str(tree["data"]))
    assert all(r.phases == {"try": True, "infer": True, "full": False, "tomolog": True} for r in svc.queue.rows())
    ctl.put("Enqueue", str(tree["data"]).encode() + b"\x00")   # a char waveform put
    assert len(svc.queue.rows()) == 3
    assert svc.messages[-1].startswith("queued 0 of 3 file(s)") and "already queued" in svc.messages[-1]


def test_enqueue_auto_skips_an_undersized_scan(ctl: Controller, svc: Service, data: Path):
    for i in (1, 2, 3):
        scan(data, f"a_{i:04d}.h5", nproj=181)
    scan(data, "a_0004.h5", nproj=20)
    ctl.put("Enqueue", str(data))
    assert [r.status for r in svc.queue.rows()] == ["queued", "queued", "queued", "skipped"]
    assert ctl.snapshot()["NumSkipped"] == 1


# -- per-file (SELECT) PVs ---------------------------------------------------------------------
def _select_key(name: str) -> str:
    return re.sub(r"^Row\d\d:", "RowNN:", name)


SELECT_KEYS = {"SelectFile", "Selected:Cor", "Selected:Enable", "RowOffset", "RowNN:Cor", "RowNN:Enable"}


def test_every_select_pv_has_a_case():
    assert {_select_key(p.name) for p in SELECTS} == SELECT_KEYS
    assert sum(p.name.startswith("Row") and p.name != "RowOffset" for p in SELECTS) == 2 * PAGE_ROWS


def test_select_file_by_path_name_or_blank(ctl: Controller, svc: Service, data: Path):
    ids = queue_scans(svc, data, 3)
    path = svc.queue.row(ids[1]).path
    assert ctl.put("SelectFile", path) == path and ctl.selected == ids[1]
    snap = ctl.snapshot()
    assert snap["Selected:Status"] == 1 and snap["Selected:Phase"] == "try" and snap["Selected:Series"] == "s"
    assert ctl.put("SelectFile", "s_0003.h5") == "s_0003.h5" and ctl.selected == ids[2]   # a unique name
    assert ctl.put("SelectFile", path.encode() + b"\x00") == path and ctl.selected == ids[1]
    assert ctl.put("SelectFile", "") == "" and ctl.selected is None
    assert ctl.snapshot()["Selected:Status"] == 0


def test_select_file_refuses_unknown_and_ambiguous_names(ctl: Controller, svc: Service, data: Path):
    queue_scans(svc, data, 1)
    (data / "again").mkdir()
    queue_scans(svc, data / "again", 1)
    refused(ctl, "SelectFile", str(data / "s_0009.h5"), "not in the queue")
    refused(ctl, "SelectFile", "s_0001.h5", "not in the queue")     # two rows of that name: ambiguous
    refused(ctl, "SelectFile", "a\nb", "must be one line")


def test_selected_cor_and_enable(ctl: Controller, svc: Service, data: Path):
    ids = queue_scans(svc, data, 2)
    refused(ctl, "Selected:Cor", 50, "no file selected")
    refused(ctl, "Selected:Enable", 0, "no file selected")
    ctl.put("SelectFile", "s_0002.h5")
    assert ctl.put("Selected:Cor", 47.25) == 47.25
    row = svc.queue.row(ids[1])
    assert row.cor == 47.25 and row.cor_source == "manual" and svc.queue.row(ids[0]).cor is None
    assert svc.store.cor_history(ids[1])[-1]["new"] == 47.25
    snap = ctl.snapshot()
    assert snap["Selected:Cor"] == 47.25 and snap["Selected:CorSource"] == "manual"
    for bad, why in ((float("nan"), "not finite"), (2e6, "out of range"), ("abc", "not a number")):
        refused(ctl, "Selected:Cor", bad, why)
    assert ctl.put("Selected:Enable", "Disable") == 0 and not svc.queue.row(ids[1]).enabled
    assert ctl.snapshot()["Selected:Status"] == ROW_STATUSES.index("disabled")
    assert ctl.put("Selected:Enable", 1) == 1 and svc.queue.row(ids[1]).enabled
    refused(ctl, "Selected:Enable", 2, "out of range")


@pytest.mark.parametrize("n", range(1, PAGE_ROWS + 1), ids=lambda n: f"Row{n:02d}")
def test_row_cor_and_enable_act_on_the_row_at_the_page_offset(ctl: Controller, svc: Service, data: Path, n: int):
    ids = queue_scans(svc, data, PAGE_ROWS + 1)
    assert ctl.put("RowOffset", 1) == 1
    target = ids[n]                                   # Row<n> with offset 1 is the (n+1)-th row
    pre = f"Row{n:02d}"
    assert ctl.snapshot()[f"{pre}:File"] == Path(svc.queue.row(target).path).name
    assert ctl.put(f"{pre}:Cor", 12.5) == 12.5
    assert ctl.put(f"{pre}:Enable", "Disable") == 0
    changed = {r.id: (r.cor, r.cor_source, r.enabled) for r in svc.queue.rows() if r.cor is not None or not r.enabled}
    assert changed == {target: (12.5, "manual", False)}
    snap = ctl.snapshot()
    assert snap[f"{pre}:Cor"] == 12.5 and snap[f"{pre}:Enable"] == 0
    assert snap[f"{pre}:Status"] == ROW_STATUSES.index("disabled")
    assert ctl.put(f"{pre}:Enable", "Enable") == 1 and svc.queue.row(target).enabled
    refused(ctl, f"{pre}:Cor", 2e6, "out of range")


def test_row_past_the_end_of_the_queue_is_refused(ctl: Controller, svc: Service, data: Path):
    queue_scans(svc, data, 2)
    refused(ctl, "Row03:Cor", 50, "no queue row at position 3")
    ctl.put("RowOffset", 1)
    refused(ctl, "Row02:Enable", 0, "no queue row at position 3")
    assert ctl.put("Row01:Cor", 50) == 50


def test_row_offset(ctl: Controller, svc: Service, data: Path):
    queue_scans(svc, data, 3)
    assert ctl.put("RowOffset", "2") == 2 and ctl.snapshot()["Row01:File"] == "s_0003.h5"
    assert ctl.snapshot()["Row02:File"] == ""
    assert ctl.put("RowOffset", 0.0) == 0 and ctl.snapshot()["Row01:File"] == "s_0001.h5"
    for bad, why in ((2.5, "not an integer"), (-1, "out of range"), (100001, "out of range"),
                     ("abc", "not a number"), (float("nan"), "not finite")):
        refused(ctl, "RowOffset", bad, why)


# -- read-only PVs --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shared_ctl(root: Path):
    """One controller for the many read-only cases (each asserts its refused put changed nothing)."""
    svc = make_service()
    empty = Path(tempfile.mkdtemp(prefix="shared", dir=root))
    yield controller(svc, [empty], slot_factory=slots_for, trigger=FakeTrigger())
    svc.stop()


@pytest.mark.parametrize("p", READ_ONLY, ids=lambda p: p.name)
def test_read_only_pv_refuses_puts(shared_ctl: Controller, p: PVDef):
    refused(shared_ctl, p.name, p.default, "is read-only")


def test_unknown_pv_is_refused(ctl: Controller):
    refused(ctl, "NoSuchPV", 1, "read-only")


# -- autosave through the real caproto group ----------------------------------------------------
async def _cancel_the_rest() -> None:
    """End the group's pending refreshes and debounced save before asyncio.run closes the loop."""
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for t in others:
        t.cancel()
    await asyncio.gather(*others, return_exceptions=True)


def _ioc(data: Path, autosave: Path) -> Tuple[Service, Controller, Any]:
    svc = make_service()
    ctl = controller(svc, [data], slot_factory=slots_for, trigger=FakeTrigger())
    return svc, ctl, build_group("AS:", ctl, autosave)


def _restore(svc: Service, group: Any, autosave: Path) -> None:
    """What the IOC's start-up does with an autosave file, then stop the service."""
    async def restore() -> None:
        await group.publish_settings()
        await group.autosave_helper.restore_from_file(autosave)
        await _cancel_the_rest()
    try:
        asyncio.run(restore())
    finally:
        group.close(wait=True)
        svc.stop()


def test_autosave_round_trip_restores_every_setting_and_nothing_else(tmp_path: Path, data: Path, model: Path):
    autosave = tmp_path / "autosave" / "tomoCor_settings.json"
    svc, ctl, group = _ioc(data, autosave)
    queue_scans(svc, data, 2)
    wanted: Dict[str, Any] = {}
    # Order matters only where NEEDS says so: put prerequisites first, as an operator would.
    order = sorted(SETTINGS, key=lambda p: p.name not in {n for need in NEEDS.values() for n in need})

    async def first() -> None:
        await group.publish_settings()
        for p in order:
            value = good_value(p, model)[0]
            await group.pvdb[f"AS:{p.name}"].write(value)     # caproto's write: verify -> putter -> controller
            wanted[p.name] = ctl.setting_values()[p.name]
        for name, value in (("SelectFile", "s_0002.h5"), ("Selected:Cor", 33.0), ("RowOffset", 1),
                            ("Row01:Enable", "Disable"), ("Pause", "Pause")):
            await group.pvdb[f"AS:{name}"].write(value)
        await group.save_now()
        await _cancel_the_rest()
    try:
        asyncio.run(first())
    finally:
        group.close(wait=True)
    assert all(wanted[p.name] != p.default for p in SETTINGS)            # every setting moved
    saved = json.loads(autosave.read_text())
    assert saved.pop("_settings_generation") == svc.settings_generation == svc.store.settings_generation
    for p in TABLE:
        assert (f"AS:{p.name}" in saved) == (p.role is Role.SETTING), p.name   # no command, no SELECT PV
    assert set(saved) == {f"AS:{p.name}" for p in SETTINGS}

    svc2, ctl2, group2 = _ioc(data, autosave)

    async def restart() -> None:
        await group2.publish_settings()
        await group2.autosave_helper.restore_from_file(autosave)      # what the startup hook does
        await _cancel_the_rest()
    try:
        asyncio.run(restart())
    finally:
        group2.close(wait=True)
        svc2.stop()
        svc.stop()
    assert ctl2.setting_values() == wanted
    assert svc2.settings == svc.settings
    for p in SETTINGS:
        shown = group2.pvdb[f"AS:{p.name}"].value
        assert shown == (p.enums[wanted[p.name]] if p.kind.is_enum else wanted[p.name]), p.name
    assert svc2.wait_slots(10)
    assert [s.name for s in fake(svc2).slots] == ["gpu0", "gpu1"]          # Gpus restored through set_slots
    assert ctl2.trigger.links == [PREFIX] and ctl2.trigger.complete_timeout == svc2.settings.trigger_timeout
    assert not svc2.queue.paused and ctl2.selected is None and ctl2.row_offset == 0


def test_autosave_restore_refuses_a_bad_value_alone(tmp_path: Path, data: Path, caplog: pytest.LogCaptureFixture):
    """A value the controller no longer accepts (edited file, deleted model) stays at default; the rest restore."""
    autosave = tmp_path / "autosave.json"
    gone = tmp_path / "gone.pt"
    autosave.write_text(json.dumps({"AS:MaxCorDelta": {"value": 5000.0, "fields": {}},
                                    "AS:ModelPath": {"value": str(gone), "fields": {}},
                                    "AS:NSino": {"value": 0.25, "fields": {}},
                                    "AS:FbpFilter": {"value": "ramp", "fields": {}}}))
    svc, ctl, group = _ioc(data, tmp_path / "other.json")
    _restore(svc, group, autosave)
    assert svc.settings.max_cor_delta == 50.0 and svc.settings.model is None
    assert svc.settings.params.nsino == 0.25 and svc.settings.params.fbp_filter == "ramp"
    assert group.pvdb["AS:MaxCorDelta"].value == 50.0 and group.pvdb["AS:NSino"].value == 0.25
    failed = [r.getMessage() for r in caplog.records if "Autosave restore failed" in r.getMessage()]
    assert len(failed) == 2 and "MaxCorDelta" in failed[0] and "outside the model roots" in failed[1]


def test_autosave_of_a_retired_filter_migrates_to_its_nearest(tmp_path: Path, data: Path):
    """An autosave file from before the filters became tomocupy's own ('butterworth'): parzen, said once."""
    autosave = tmp_path / "autosave.json"
    autosave.write_text(json.dumps({"AS:FbpFilter": {"value": "butterworth", "fields": {}}}))
    svc, ctl, group = _ioc(data, tmp_path / "other.json")
    ctl.put("FbpFilter", "ramp")
    _restore(svc, group, autosave)
    assert svc.settings.params.fbp_filter == "parzen" and group.pvdb["AS:FbpFilter"].value == "parzen"
    assert any("'butterworth' is no longer offered" in m and "'parzen'" in m for m in svc.messages)


def test_autosave_restore_skips_commands_and_unknown_names(tmp_path: Path, data: Path,
                                                          caplog: pytest.LogCaptureFixture):
    """A hand-edited or older file naming a command or a PV that is gone does not act at start-up."""
    autosave = tmp_path / "autosave.json"
    autosave.write_text(json.dumps({"AS:Pause": {"value": "Pause", "fields": {}},
                                    "AS:JobTimeout": {"value": 5.0, "fields": {}},
                                    "AS:NSino": {"value": 0.75, "fields": {}}}))
    svc, ctl, group = _ioc(data, tmp_path / "other.json")
    _restore(svc, group, autosave)
    assert not svc.queue.paused and svc.settings.params.nsino == 0.75
    skipped = [r.getMessage() for r in caplog.records if "not a setting of this IOC" in r.getMessage()]
    assert len(skipped) == 2
