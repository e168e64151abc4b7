"""Setting PVs, generated from the PV table: each round-trips, refuses what it must, and changes nothing when refused.

In-process: a real Service on a fake dispatcher; milliseconds per case, no processes, no sockets.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, List, Tuple

import pytest
from _ctl import (
    BAD_TEXT,
    ENUMS,
    NUMERIC,
    PREFIX,
    SETTINGS,
    TABLE,
    TEXTS,
    check_bound,
    controller,
    fake,
    good_value,
    queue_scans,
    refused,
    setup,
)

from tomocorioc.core.settings import ServiceSettings
from tomocorioc.core.spec import get_path, spec_at
from tomocorioc.ioc.controller import Controller
from tomocorioc.ioc.convert import Number, NumberText
from tomocorioc.ioc.pvdefs import PVDef, Role
from tomocorioc.service.service import Service
from tomocorioc.testing.fakes import FakeTrigger


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
