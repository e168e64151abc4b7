"""Shared test helpers: where the fixtures are (``TOMOCORIOC_FIXTURES`` or ``../shared/fixtures``), process checks."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def fixtures_root() -> Path:
    """The fixtures directory: $TOMOCORIOC_FIXTURES if set, else <repo>/../shared/fixtures."""
    env = os.environ.get("TOMOCORIOC_FIXTURES")
    return Path(env) if env else REPO.parent / "shared" / "fixtures"


def fixture_dir(name: str) -> Path:
    """``<fixtures>/<name>``; skip the test if absent (fail instead when $CI is set)."""
    path = fixtures_root() / name
    if not path.is_dir():
        msg = (f"fixture {name!r} not found at {path}; set TOMOCORIOC_FIXTURES to the "
               "directory holding it")
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def pid_alive(pid: int) -> bool:
    """True while process ``pid`` exists and is not a zombie (a zombie is dead for our purpose)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/status") as fh:
            return "zombie" not in fh.read()
    except OSError:
        return False


def wait_for(pred, timeout: float = 30.0, period: float = 0.05) -> bool:
    """Poll ``pred`` until it is true (True) or ``timeout`` seconds pass (its last answer)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(period)
    return bool(pred())
