"""The settings autosave file, written after the ack by its own thread, through the real caproto group.

The state store (committed before a put is acknowledged) is the durable copy;
the file carries the store's settings generation, so a file older than the
store (an IOC killed before the file caught up) is not restored over it,
while a hand-edited file of the current generation, or one without any, is.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import pytest

from tomocorioc.ioc.ca_server import GENERATION_KEY, build_group
from tomocorioc.ioc.controller import Controller
from tomocorioc.service.service import Service
from tomocorioc.testing.fakes import make_service


def _start(tmp_path: Path) -> Tuple[Service, Any, Path]:
    """A service on ``tmp_path/state`` (a real SQLite store) and the IOC's group over it."""
    (tmp_path / "data").mkdir(exist_ok=True)
    svc = make_service(tmp_path)
    group = build_group("AS:", Controller(svc, [tmp_path / "data"]), tmp_path / "autosave" / "tomoCor_settings.json")
    return svc, group, Path(group.autosave_helper.filename)


def _run(svc: Service, group: Any, steps: Callable[[], Any]) -> None:
    """What ``serve`` does first (the PVs show the stored settings), then ``steps``; then stop everything."""
    async def main() -> None:
        await group.publish_settings()
        await steps()
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in others:
            t.cancel()
        await asyncio.gather(*others, return_exceptions=True)
    try:
        asyncio.run(main())
    finally:
        group.close(wait=True)
        svc.stop()


def _saved(path: Path, timeout: float = 10.0, **expect: Any) -> Dict[str, Any]:
    """The autosave file once it holds ``expect`` (PV name without prefix -> value): the thread writes it
    a moment after the put."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            data = json.loads(path.read_text())
            if all(data[f"AS:{k}"]["value"] == v for k, v in expect.items()):
                return data
        except (OSError, ValueError, KeyError):
            pass
        assert time.monotonic() < deadline, f"{path} never held {expect}"
        time.sleep(0.01)


def _put(group: Any, name: str, value: Any) -> Callable[[], Any]:
    async def step() -> None:
        await group.pvdb[f"AS:{name}"].write(value)   # caproto's write: verify -> putter -> controller
    return step


def test_the_file_follows_each_put_with_the_store_generation(tmp_path: Path):
    svc, group, path = _start(tmp_path)
    seen: List[Dict[str, Any]] = []

    async def steps() -> None:
        for value in (44.0, 45.0, 46.0):
            await _put(group, "MaxCorDelta", value)()
            stored = svc.store.settings()["service"]["max_cor_delta"]
            assert stored == value           # durable before the put returned
            seen.append(await asyncio.to_thread(_saved, path, MaxCorDelta=value))
    _run(svc, group, steps)
    generations = [d[GENERATION_KEY] for d in seen]
    assert generations == sorted(generations) and generations[-1] == svc.store.settings_generation


def test_a_file_older_than_the_store_is_not_restored(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    """The IOC killed after the ack of MaxCorDelta=55, before the file caught up: 55 (the store) stays."""
    svc, group, path = _start(tmp_path)
    old: List[str] = []

    async def steps() -> None:
        await _put(group, "MaxCorDelta", 44.0)()
        await _put(group, "NSino", 0.25)()
        old.append(json.dumps(await asyncio.to_thread(_saved, path, MaxCorDelta=44.0, NSino=0.25)))
        await _put(group, "MaxCorDelta", 55.0)()
        await asyncio.to_thread(_saved, path, MaxCorDelta=55.0)
    _run(svc, group, steps)
    path.write_text(old[0])                  # what the killed IOC left on disk

    svc2, group2, _ = _start(tmp_path)
    caplog.set_level(logging.WARNING)

    async def restart() -> None:
        await group2.autosave_helper.restore_from_file(path)
    _run(svc2, group2, restart)
    assert svc2.settings.max_cor_delta == 55.0 and svc2.settings.params.nsino == 0.25
    said = [r.getMessage() for r in caplog.records if "the store's settings stay" in r.getMessage()]
    assert len(said) == 1 and "generation" in said[0]


def test_a_hand_edited_file_of_the_current_generation_is_restored(tmp_path: Path):
    svc, group, path = _start(tmp_path)

    async def steps() -> None:
        await _put(group, "MaxCorDelta", 44.0)()
        await asyncio.to_thread(_saved, path, MaxCorDelta=44.0)
    _run(svc, group, steps)
    data = json.loads(path.read_text())
    data["AS:MaxCorDelta"]["value"] = 33.0   # edited while the IOC was stopped: the generation is unchanged
    path.write_text(json.dumps(data))

    svc2, group2, _ = _start(tmp_path)
    _run(svc2, group2, lambda: group2.autosave_helper.restore_from_file(path))
    assert svc2.settings.max_cor_delta == 33.0
    assert _saved(path, MaxCorDelta=33.0)[GENERATION_KEY] == svc2.store.settings_generation


def test_an_unreadable_file_leaves_the_store_settings(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    svc, group, path = _start(tmp_path)
    _run(svc, group, _put(group, "MaxCorDelta", 44.0))
    for text in ("{not json", "[1, 2]"):
        path.write_text(text)
        svc2, group2, _ = _start(tmp_path)
        caplog.clear()
        _run(svc2, group2, lambda: group2.autosave_helper.restore_from_file(path))
        assert svc2.settings.max_cor_delta == 44.0
        assert any("the state store's settings stay" in r.getMessage() for r in caplog.records)


def test_the_periodic_save_keeps_the_old_file_as_a_dated_backup(tmp_path: Path):
    svc, group, path = _start(tmp_path)

    async def steps() -> None:
        await _put(group, "MaxCorDelta", 44.0)()
        await asyncio.to_thread(_saved, path, MaxCorDelta=44.0)
        await group.autosave_helper.save()   # caproto's hourly save
        deadline = time.monotonic() + 10
        while len(list(path.parent.glob("tomoCor_settings_*.json"))) < 1:
            assert time.monotonic() < deadline, sorted(path.parent.iterdir())
            await asyncio.sleep(0.01)
    _run(svc, group, steps)
    backup, = path.parent.glob("tomoCor_settings_*.json")
    assert json.loads(backup.read_text())["AS:MaxCorDelta"]["value"] == 44.0
    assert _saved(path, MaxCorDelta=44.0)[GENERATION_KEY] == svc.store.settings_generation


def test_a_failing_save_is_said_once_and_the_next_one_is_written(tmp_path: Path):
    """Fault injection: one save raises (a bug); Message says so once, the thread lives, later puts are saved."""
    svc, group, path = _start(tmp_path)
    real = group.controller.setting_values

    def broken(settings: Any = None) -> Dict[str, Any]:
        raise KeyError("boom")

    async def steps() -> None:
        group.controller.setting_values = broken
        for value in (44.0, 45.0):
            await _put(group, "MaxCorDelta", value)()
        deadline = time.monotonic() + 10
        while not any("autosave failed: KeyError" in m for m in svc.messages):
            assert time.monotonic() < deadline, svc.messages
            await asyncio.sleep(0.01)
        group.controller.setting_values = real
        await _put(group, "MaxCorDelta", 46.0)()
        await asyncio.to_thread(_saved, path, MaxCorDelta=46.0)
    _run(svc, group, steps)
    assert sum("autosave failed" in m for m in svc.messages) == 1
