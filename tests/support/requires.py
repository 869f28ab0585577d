"""What a test needs from the machine beyond the Python packages (external programs, a
PostgreSQL server). When it is missing the test skips, and ``pytest -ra`` prints why; under
``CI=true`` (``.ci/run``), where everything must run, it fails instead, saying what to install.
"""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing(reason: str, *, required_in_ci: bool = True) -> NoReturn:
    """Skip the test for ``reason``; under CI=true fail it instead (unless not ``required_in_ci``)."""
    if IN_CI and required_in_ci:
        pytest.fail(f"{reason}, and CI=true requires it", pytrace=False)
    pytest.skip(f"{reason}" + (" (CI=true makes this a failure)" if required_in_ci else ""))


def require_program(name: str, install: str, *, path: str | None = None, required_in_ci: bool = True) -> str:
    """The path of the program ``name`` (found on PATH, or exactly ``path`` when given), or skip
    the test (fail it under CI=true) saying how to ``install`` it."""
    found = shutil.which(name) if path is None else (path if os.access(path, os.X_OK) else None)
    if found is None:
        where = "on PATH" if path is None else f"at {path}"
        missing(f"needs {name}, not found {where} ({install})", required_in_ci=required_in_ci)
    return found
