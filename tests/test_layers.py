"""The layers are checked, not just intended: import-linter's contracts (pyproject.toml) and ruff."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _tool(module: str) -> None:
    """Fail (on CI) or skip (elsewhere) when a test-extra tool is missing."""
    try:
        __import__(module)
    except ImportError:
        msg = f"{module} is not installed (pip install -e '.[test]')"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)


def test_import_contracts_hold():
    """Process sides: core is pure, the IOC process never imports torch or worker internals, nothing imports cli."""
    _tool("importlinter")
    code = ("import sys; from importlinter.cli import lint_imports; "
            "sys.exit(lint_imports(no_cache=True, no_logo=True))")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "0 broken" in r.stdout


def test_ruff_is_clean():
    """pyflakes, pycodestyle errors, import order, no print in the library (configured in pyproject.toml)."""
    _tool("ruff")
    r = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "tomocorioc", "tests", "benchmarks"],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
