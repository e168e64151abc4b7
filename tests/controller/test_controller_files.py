"""Enqueue (files, directories, globs under the data roots), the per-file PVs and the read-only PVs.

In-process: a real Service on a fake dispatcher; milliseconds per case, no processes, no sockets.
"""
from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Dict, List

import pytest
from _ctl import READ_ONLY, SELECTS, controller, queue_scans, refused, scan

from tomocorioc.ioc.controller import Controller
from tomocorioc.ioc.convert import PutError
from tomocorioc.ioc.pvdefs import PAGE_ROWS, ROW_STATUSES, PVDef
from tomocorioc.service.local import slots_for
from tomocorioc.service.service import Service
from tomocorioc.testing.fakes import FakeTrigger, make_service


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
