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


# ------------------------------------------------------------------ a small CIFAR-10 in the official format
import pickle
import tarfile
from pathlib import Path

import numpy as np

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _images(n: int, rng: np.random.Generator) -> tuple[np.ndarray, list[int]]:
    """Random images with a class-dependent mean colour, so a model can learn something."""
    labels = rng.integers(0, 10, n)
    base = (labels[:, None] * 23 % 256).astype(np.int16)
    data = np.clip(rng.integers(0, 120, (n, 3072)) + base, 0, 255).astype(np.uint8)
    return data, [int(v) for v in labels]


def write_fake_cifar10(root: Path, n_train: int = 500, n_test: int = 200, seed: int = 0) -> Path:
    """Write root/cifar-10-batches-py with 5 training batches, a test batch and batches.meta
    (protocol-2 pickles of the official keys: data uint8 (N, 3072), labels list, batch_label, filenames)."""
    rng = np.random.default_rng(seed)
    d = Path(root) / "cifar-10-batches-py"
    d.mkdir(parents=True, exist_ok=True)
    per = n_train // 5
    for i in range(5):
        data, labels = _images(per, rng)
        with open(d / f"data_batch_{i + 1}", "wb") as f:
            pickle.dump({"batch_label": f"training batch {i + 1} of 5", "labels": labels, "data": data,
                         "filenames": [f"img_{i}_{j}.png" for j in range(per)]}, f, protocol=2)
    data, labels = _images(n_test, rng)
    with open(d / "test_batch", "wb") as f:
        pickle.dump({"batch_label": "testing batch 1 of 1", "labels": labels, "data": data,
                     "filenames": [f"test_{j}.png" for j in range(n_test)]}, f, protocol=2)
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({"num_cases_per_batch": per, "label_names": CLASSES, "num_vis": 3072}, f, protocol=2)
    return d


def make_tarball(root: Path, out: Path) -> Path:
    with tarfile.open(out, "w:gz") as t:
        t.add(root / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    return out


@pytest.fixture(scope="session")
def cifar_root(tmp_path_factory) -> Path:
    """A folder holding a small CIFAR-10 (500 train / 200 test) in the official layout."""
    root = tmp_path_factory.mktemp("cifar")
    write_fake_cifar10(root)
    return root


@pytest.fixture(scope="session")
def cifar_tarball(tmp_path_factory, cifar_root) -> Path:
    out = tmp_path_factory.mktemp("tarball") / "cifar-10-python.tar.gz"
    return make_tarball(cifar_root, out)
