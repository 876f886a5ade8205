"""Unit-test fixtures: run a module's rule tests on both matching cores."""

from __future__ import annotations

import os

import pytest

from engine.native import native_available
from tests.unit import helpers


@pytest.fixture(params=["python", "native"])
def each_core(request, monkeypatch):
    """Harness builds engines on this core (python: engine/matching.py, native: engine/_native.c)."""
    if request.param == "native" and not native_available():
        if os.environ.get("OBC_REQUIRE_NATIVE") == "1":
            pytest.fail("OBC_REQUIRE_NATIVE=1 but the C core (engine._native) is not built")
        pytest.skip("the C core is not built")
    monkeypatch.setattr(helpers, "harness_core", request.param)
    return request.param
