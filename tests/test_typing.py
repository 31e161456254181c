"""The public API keeps users' types: ``tests/typecheck/`` is checked with mypy --strict. Each
``# type: ignore[code]`` there marks a call that must be rejected: mypy's ``warn_unused_ignores``
(part of --strict) fails the check if it is accepted."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(importlib.util.find_spec("mypy") is None, reason="mypy is not installed here")
@pytest.mark.skipif(importlib.util.find_spec("django.tasks") is None, reason="django.tasks stubs: Django 6")
@pytest.mark.timeout(300)
def test_decorated_tasks_keep_their_types() -> None:
    checked = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "tests/typecheck/typed_tasks.py"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
