"""Fixtures of the controller tests: a real Service (queue, store, settings) on a fake dispatcher."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from _ctl import controller
from _fixtures import fixture_dir

from tomocorioc.ioc.controller import Controller
from tomocorioc.service.local import slots_for
from tomocorioc.service.service import Service
from tomocorioc.testing.fakes import FakeTrigger, make_service


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


@pytest.fixture
def data(root: Path) -> Path:
    """A fresh data root for one test."""
    return Path(tempfile.mkdtemp(prefix="data", dir=root))


@pytest.fixture
def svc():
    """A real Service (in-memory state) on a FakeDispatcher; stopped after the test."""
    s = make_service()
    yield s
    s.stop()


@pytest.fixture
def ctl(svc: Service, data: Path) -> Controller:
    return controller(svc, [data], slot_factory=slots_for, trigger=FakeTrigger())
