"""Shared fixtures: backend parametrisation (CuPy skips with its reason when it cannot run)."""
from __future__ import annotations

import pytest

from cnn_cifar import backend


@pytest.fixture(params=["numpy", "cupy"])
def xp(request):
    """Run the test under each backend; yields the array module."""
    if request.param == "cupy":
        ok, reason = backend.cupy_available()
        if not ok:
            pytest.skip(f"cupy backend unavailable: {reason}")
    backend.set_backend(request.param)
    try:
        yield backend.xp
    finally:
        backend.set_backend("numpy")


@pytest.fixture(autouse=True)
def _numpy_by_default():
    """Every test starts on NumPy unless it asks for the xp fixture."""
    backend.set_backend("numpy")
    yield
    backend.set_backend("numpy")
