"""Shared helpers of the controller tests: the PV table split by role, a controller as serve builds one,
scan files, and ``refused`` (a put must fail in one line naming the PV and change nothing)."""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Dict, List, Optional

import h5py
import numpy as np
import pytest

from tomocorioc.core.settings import ServiceSettings
from tomocorioc.core.spec import get_path
from tomocorioc.ioc.controller import Controller
from tomocorioc.ioc.convert import Number, NumberText, PutError, Text
from tomocorioc.ioc.pvdefs import PVDef, Role, pv_table
from tomocorioc.service.preflight import preflight
from tomocorioc.service.service import Service
from tomocorioc.testing.fakes import FakeDispatcher

TABLE = pv_table()
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


@functools.lru_cache(maxsize=None)
def check_model(path: str) -> Optional[str]:
    """The IOC's real checkpoint check (a worker-side process), once per file: it costs seconds."""
    return preflight(model=path)


def controller(svc: Service, roots: List[Path], **kw: Any) -> Controller:
    """A controller as ``serve`` builds one, on a host with two GPUs, models under the module's root."""
    kw.setdefault("model_roots", [roots[0].parent] if roots else [])
    return Controller(svc, roots, model_check=check_model, gpu_count=lambda: 2, **kw)


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
