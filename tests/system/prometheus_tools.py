"""Debian's `prometheus` package (prometheus and promtool), for the tests that need it: their paths, and the skip
that becomes a failure under CVAE_REQUIRE_PROMETHEUS=1 (as .ci/run sets it, having installed the package)."""

from __future__ import annotations

import os
import shutil

import pytest


def binary(name: str) -> str:
    """The path of `prometheus` or `promtool`; skips the test without it, or fails it under
    CVAE_REQUIRE_PROMETHEUS=1."""
    found = shutil.which(name)
    if found is None:
        if os.environ.get("CVAE_REQUIRE_PROMETHEUS") == "1":
            pytest.fail(f"CVAE_REQUIRE_PROMETHEUS=1 but {name} is not installed (apt-get install prometheus)")
        pytest.skip(
            f"{name} is not installed (apt-get install prometheus); CVAE_REQUIRE_PROMETHEUS=1 makes this a failure"
        )
    return found
