"""Autosave through the real caproto group: every setting round-trips, a bad value is refused alone.

In-process: a real Service on a fake dispatcher; milliseconds per case, no processes, no sockets.
"""
from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, Dict, Tuple

import pytest
from _ctl import NEEDS, PREFIX, SETTINGS, TABLE, controller, fake, good_value, queue_scans

from tomocorioc.ioc.ca_server import build_group
from tomocorioc.ioc.controller import Controller
from tomocorioc.ioc.pvdefs import Role
from tomocorioc.service.local import slots_for
from tomocorioc.service.service import Service
from tomocorioc.testing.fakes import FakeTrigger, make_service


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
    try:
        _restore(svc2, group2, autosave)
    finally:
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
