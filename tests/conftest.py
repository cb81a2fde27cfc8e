"""Shared fixtures and helpers: backend parametrisation, small CIFAR datasets in the official format, and
the one way tests launch a subprocess.

The CuPy half of every backend-parametrised test runs on real CuPy where it imports and sees a GPU, and
otherwise on the CuPy stand-in in tests/standin (NumPy underneath, CuPy's strictness on top), so the CuPy
code paths execute in every run. CNN_CIFAR_TEST_CUPY=standin forces the stand-in even beside a GPU.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

STANDIN = Path(__file__).resolve().parent / "standin"


def _real_cupy_runs() -> bool:
    if os.environ.get("CNN_CIFAR_TEST_CUPY") == "standin":
        return False
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


if not _real_cupy_runs():
    for name in [m for m in sys.modules if m == "cupy" or m.startswith("cupy.")]:
        del sys.modules[name]
    sys.path.insert(0, str(STANDIN))

from cnn_cifar import backend  # noqa: E402


def pytest_collection_modifyitems(config, items):
    """Column tiles and CPU threads do not exist on the GPU path (one tile, no worker threads), so the CuPy
    half of a test runs under the default tiling and serial mode only, not once per CPU variant."""
    keep, drop = [], []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        cpu_variant = params.get("tiling", "one-tile") != "one-tile" or params.get("threads", "serial") != "serial"
        (drop if params.get("xp") == "cupy" and cpu_variant else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _no_skips_in_ci(report) -> None:
    """In CI every test must run: a skip (a missing g++, tensorboardX, MPI or ../shared) becomes a failure
    that names its reason, so the suite cannot turn green by leaving something out."""
    if _in_ci() and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where every test must run: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _no_skips_in_ci(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _no_skips_in_ci(outcome.get_result())


@pytest.fixture(params=["numpy", "cupy"])
def xp(request):
    """Run the test under each backend (CuPy: real, or the stand-in); yields the array module."""
    if request.param == "cupy":
        ok, reason = backend.cupy_available()
        if not ok:
            pytest.skip(f"cupy backend unavailable: {reason}")
    backend.set_backend(request.param)
    try:
        yield backend.xp
    finally:
        backend.set_backend("numpy")


# Column tiles: the default (one tile at test sizes), one output pixel per tile (rows split into column
# ranges), and a few rows per tile with a ragged last tile, so tile boundaries (and col2im overlaps across
# them) are exercised.
TILES = {"one-tile": None, "pixel-tiles": 1, "ragged-tiles": 2500}


@pytest.fixture(params=list(TILES))
def tiling(request, monkeypatch):
    """Run the test under each column-tile size."""
    from cnn_cifar.nn import im2col
    if TILES[request.param] is not None:
        monkeypatch.setattr(im2col, "TILE_BYTES", TILES[request.param])
    return request.param


@pytest.fixture(params=["serial", "threaded"])
def threads(request, monkeypatch):
    """Run the test with the CPU's parallel paths off (test sizes are below their thresholds) and forced on:
    every channel-parallel pass splits over 3 threads whatever its size, and conv tile runs go to the pool
    whenever there are at least 6 tiles (combine with ``tiling`` to get them)."""
    from cnn_cifar import runtime
    if request.param == "threaded":
        monkeypatch.setattr(runtime, "PARALLEL_MIN_BYTES", 0)
        monkeypatch.setattr(runtime, "THREADS", 3)
    return request.param


@pytest.fixture(scope="session", autouse=True)
def _one_blas_thread_per_session():
    """The whole suite runs NumPy's BLAS on one thread: test sizes are tiny, and on a busy 2-core machine a
    2-thread BLAS spin-waits for a core (a 2 s gradient check then takes 17 s). The library's own threading
    (channel-parallel passes, conv tile runs with single-threaded BLAS) is still exercised by the threads
    fixture; BLAS's own threads are measured by benchmarks/, not tested."""
    from threadpoolctl import threadpool_limits
    with threadpool_limits(1, user_api="blas"):
        yield


@pytest.fixture
def cli_tmp(tmp_path, monkeypatch):
    """For in-process CLI runs: the working directory is tmp_path (checkpoints, logs, viz/ land there) and the
    backend defaults to NumPy."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CNN_CIFAR_BACKEND", "numpy")
    return tmp_path


@pytest.fixture(autouse=True)
def _numpy_by_default():
    """Every test starts on NumPy unless it asks for the xp fixture."""
    backend.set_backend("numpy")
    yield
    backend.set_backend("numpy")


# ------------------------------------------------------------------ subprocesses
ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
DEFAULT_TIMEOUT = 300.0


def subprocess_env(**overrides: str) -> dict:
    """The environment every test subprocess gets: NumPy backend forced, unbuffered output, src importable.
    ``overrides`` replace or add variables (a value of None removes one)."""
    env = dict(os.environ, CNN_CIFAR_BACKEND="numpy", PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])))
    for k, v in overrides.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return env


def run_python(*args: str, cwd: Path | None = None, timeout: float = DEFAULT_TIMEOUT,
               env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``python *args`` with the test environment and a timeout; output captured as text."""
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env if env is not None else subprocess_env(),
                          capture_output=True, text=True, timeout=timeout)


def run_cli(name: str, *args: str, cwd: Path, timeout: float = DEFAULT_TIMEOUT,
            env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``src/<name>_cli.py *args`` as a user would (train, test or visualize)."""
    return run_python(str(SRC / f"{name}_cli.py"), *args, cwd=cwd, timeout=timeout, env=env)


def popen_cli(name: str, *args: str, cwd: Path, env: dict | None = None) -> subprocess.Popen:
    """Start ``src/<name>_cli.py`` without waiting (for signal tests); stdout/stderr are pipes of text."""
    return subprocess.Popen([sys.executable, str(SRC / f"{name}_cli.py"), *args], cwd=cwd,
                            env=env if env is not None else subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def digests(folder: Path, names=None) -> dict[str, str]:
    """The sha256 of each named file in ``folder`` (default: every file there). Compare these, not the bytes:
    pytest's diff of two differing pickles runs for minutes before the test can fail."""
    names = sorted(p.name for p in Path(folder).iterdir()) if names is None else names
    return {n: hashlib.sha256((Path(folder) / n).read_bytes()).hexdigest() for n in names}


# ------------------------------------------------------------------ a small CIFAR-10 in the official format

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


def write_fake_cifar100(root: Path, n_train: int = 300, n_test: int = 100) -> Path:
    """root/cifar-100-python with train, test and meta in the official keys (fine and coarse labels)."""
    rng = np.random.default_rng(1)
    d = Path(root) / "cifar-100-python"
    d.mkdir(parents=True)
    for name, n in (("train", n_train), ("test", n_test)):
        fine = rng.integers(0, 100, n)
        with open(d / name, "wb") as f:
            pickle.dump({"filenames": [f"{name}_{i}.png" for i in range(n)], "batch_label": f"{name} batch",
                         "fine_labels": [int(v) for v in fine], "coarse_labels": [int(v) // 5 for v in fine],
                         "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8)}, f, protocol=2)
    with open(d / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"fine{i}" for i in range(100)],
                     "coarse_label_names": [f"coarse{i}" for i in range(20)]}, f, protocol=2)
    return d


def one_line_error(p: subprocess.CompletedProcess, code: int, pattern: str) -> None:
    assert p.returncode == code, (p.returncode, p.stdout[-2000:], p.stderr[-2000:])
    assert "Traceback" not in p.stderr, p.stderr
    last = p.stderr.strip().splitlines()[-1]
    assert re.search(pattern, last), last


@pytest.fixture
def inproc(tmp_path, monkeypatch, capsys):
    """Run a CLI's main() in tmp_path on NumPy; returns a CompletedProcess-like result (argparse's
    SystemExit becomes the return code, as it would for the script)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CNN_CIFAR_BACKEND", "numpy")

    def call(main, *argv: str) -> subprocess.CompletedProcess:
        capsys.readouterr()
        try:
            rc = main(list(argv))
        except SystemExit as exc:
            rc = exc.code
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(list(argv), rc, out, err)
    return call


def train_args(cifar_root: Path, *extra: str) -> list[str]:
    return ["--model", "cnn", "--data", str(cifar_root), "--no-download", "--checkpoint-dir", "ck", "--log-dir", "log",
            "--quiet", "--limit-train", "128", "--limit-test", "64", "--batch-size", "32", "--no-prefetch", *extra]
