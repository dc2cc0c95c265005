"""The skip policy: a test may skip locally for a missing tool or root, never in CI."""

import os
import shutil

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def skip_or_fail(reason: str) -> None:
    """Skip the test, or fail it when CI=true (CI must run every test)."""
    if in_ci():
        pytest.fail(f"CI=true but the test cannot run: {reason}", pytrace=False)
    pytest.skip(reason)


def require_tool(name: str) -> str:
    """Return the path of program `name`; skip (locally) or fail (CI) if it is missing."""
    path = shutil.which(name)
    if path is None:
        skip_or_fail(f"{name} is not installed")
    return path


def require_root() -> None:
    """Skip (locally) or fail (CI) unless we are root."""
    if os.geteuid() != 0:
        skip_or_fail("needs root")
