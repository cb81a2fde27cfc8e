"""Data-parallel training under ``mpirun -n 2`` (the ``distributed`` dependency group: mpi4py and MPICH's
wheel, which the dev group includes). Tolerances: float32 training runs agree to 1e-4 relative (seen:
about 2e-6 after 16 steps); the float64 script to 1e-10."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cnn_cifar.training import load_checkpoint

from conftest import SRC, STANDIN, run_cli, subprocess_env

pytestmark = pytest.mark.slow

MPIRUN = Path(sys.executable).parent / "mpirun"
SCRIPTS = Path(__file__).resolve().parent / "mpi_scripts"


def _mpi_missing() -> str | None:
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return "mpi4py is not installed (uv sync --group distributed)"
    if not MPIRUN.exists():
        return f"no mpirun beside {sys.executable} (the mpich wheel of the distributed group)"
    return None


if _mpi_missing():
    pytest.skip(_mpi_missing(), allow_module_level=True)

ENV = subprocess_env(CNN_CIFAR_THREADS="1", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")


def mpirun(n: int, *args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(MPIRUN), "-n", str(n), sys.executable, *args], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def train_args(cifar_root: Path, ckdir: str, epochs: int) -> list[str]:
    """A small SimpleCNN run without dropout (dropout masks are drawn per rank)."""
    return ["--model", "cnn", "--data", str(cifar_root), "--no-download", "--limit-train", "256", "--limit-test",
            "100", "--batch-size", "32", "--epochs", str(epochs), "--dropout-rate", "0", "--dropout-schedule",
            "none", "--checkpoint-dir", ckdir, "--log-dir", ckdir, "--quiet"]


def assert_same_run(a: Path, b: Path, rtol: float = 1e-4) -> None:
    x, y = load_checkpoint(a), load_checkpoint(b)
    assert (x.epoch, x.step) == (y.epoch, y.step)
    for k, v in x.state_dict.items():
        scale = max(float(np.abs(v).max()), 1e-3)
        assert float(np.abs(v - y.state_dict[k]).max()) <= rtol * scale, k
    assert len(x.history) == len(y.history) == x.epoch
    for rx, ry in zip(x.history, y.history):
        assert rx["train_loss"] == pytest.approx(ry["train_loss"], rel=rtol)
        assert rx["test_acc"] == pytest.approx(ry["test_acc"], abs=0.011)


def test_a_model_without_batch_norm_takes_the_same_steps_on_two_ranks(tmp_path):
    r = mpirun(2, str(SCRIPTS / "no_bn_steps.py"), cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ranks 2: max relative weight difference" in r.stdout


def test_two_ranks_with_sync_bn_equal_one_rank_and_resume_with_one(cifar_root, tmp_path):
    """Same global batch: 2 ranks with --sync-bn end where 1 rank ends; a 2-rank run stopped after an
    epoch and resumed by 1 rank ends there too."""
    one = run_cli("train", *train_args(cifar_root, "one", 2), cwd=tmp_path, env=ENV)
    assert one.returncode == 0, one.stderr
    two = mpirun(2, str(SRC / "train_cli.py"), *train_args(cifar_root, "two", 2), "--distributed", "--sync-bn",
                 cwd=tmp_path)
    assert two.returncode == 0, two.stderr
    assert "distributed: 2 ranks over MPI; global batch 32 = 2 x 16; batch-norm statistics synchronised" in two.stdout
    assert two.stdout.count("epoch   2/2") == 1                 # only rank 0 prints
    assert_same_run(tmp_path / "one" / "cnn_last.pkl", tmp_path / "two" / "cnn_last.pkl")

    half = mpirun(2, str(SRC / "train_cli.py"), *train_args(cifar_root, "mixed", 1), "--distributed", "--sync-bn",
                  cwd=tmp_path)
    assert half.returncode == 0, half.stderr
    rest = run_cli("train", *train_args(cifar_root, "mixed", 2), "--resume", "mixed/cnn_last.pkl", cwd=tmp_path,
                   env=ENV)
    assert rest.returncode == 0, rest.stderr
    assert_same_run(tmp_path / "one" / "cnn_last.pkl", tmp_path / "mixed" / "cnn_last.pkl")


def test_a_failing_rank_ends_the_whole_job_quickly(cifar_root, tmp_path):
    t0 = time.monotonic()
    r = mpirun(2, str(SCRIPTS / "fail_rank.py"), *train_args(cifar_root, "ck", 3), "--distributed", cwd=tmp_path,
               timeout=60)
    assert r.returncode != 0 and time.monotonic() - t0 < 30
    assert "[rank 1] error: RuntimeError: injected failure" in r.stderr
    assert "Traceback" not in r.stderr
    assert not list((tmp_path / "ck").glob("*.tmp*")) if (tmp_path / "ck").exists() else True


def test_a_batch_that_does_not_split_over_the_ranks_is_one_error(cifar_root, tmp_path):
    r = mpirun(3, str(SRC / "train_cli.py"), *train_args(cifar_root, "ck", 1), "--distributed", cwd=tmp_path)
    assert r.returncode != 0
    assert r.stderr.count("--batch-size 32 does not divide evenly over 3 ranks") == 1, r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "ck").exists()


def test_sigterm_to_mpirun_saves_once_and_one_rank_resumes(cifar_root, tmp_path):
    """What a batch scheduler does: SIGTERM to the launcher, which passes it to every rank; the ranks
    agree on the step, rank 0 saves, every rank exits 143; one process continues the run."""
    args = train_args(cifar_root, "ck", 200)
    p = subprocess.Popen([str(MPIRUN), "-n", "2", sys.executable, str(SRC / "train_cli.py"), *args, "--distributed"],
                         cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (tmp_path / "ck" / "cnn_last.pkl").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 143, out + err
    assert err.count("SIGTERM: stopping after this step") == 1 and err.count("stopped: interrupted") == 1
    ck = load_checkpoint(tmp_path / "ck" / "cnn_last.pkl")
    r = run_cli("train", *train_args(cifar_root, "ck", ck.epoch + 1), "--resume", "ck/cnn_last.pkl", cwd=tmp_path,
                env=ENV)
    assert r.returncode == 0, r.stderr
    assert load_checkpoint(tmp_path / "ck" / "cnn_last.pkl").epoch == ck.epoch + 1


def _gpu_env() -> dict:
    """The CuPy backend: real CuPy where it runs (NCCL between two GPUs), else the stand-in, whose
    cupy.cuda.nccl carries NCCL's calls out over MPI so the NCCL communicator's code runs here too."""
    import cupy  # (conftest put the stand-in first where real CuPy cannot run)
    if not getattr(cupy, "IS_STANDIN", False):
        if cupy.cuda.runtime.getDeviceCount() < 2:
            pytest.skip("NCCL needs a GPU per rank: 2 ranks need 2 GPUs")
        return dict(ENV, CNN_CIFAR_BACKEND="cupy")
    return dict(ENV, CNN_CIFAR_BACKEND="cupy", PYTHONPATH=f"{STANDIN}:{ENV['PYTHONPATH']}")


def test_on_the_cupy_backend_ranks_reduce_over_nccl_and_match_one_rank(cifar_root, tmp_path):
    env = _gpu_env()
    args = train_args(cifar_root, "one", 2) + ["--backend", "cupy"]
    one = run_cli("train", *args, cwd=tmp_path, env=env)
    assert one.returncode == 0, one.stderr
    args = train_args(cifar_root, "two", 2) + ["--backend", "cupy", "--distributed", "--sync-bn"]
    two = subprocess.run([str(MPIRUN), "-n", "2", sys.executable, str(SRC / "train_cli.py"), *args], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=120)
    assert two.returncode == 0, two.stderr
    assert "distributed: 2 ranks over NCCL" in two.stdout
    assert_same_run(tmp_path / "one" / "cnn_last.pkl", tmp_path / "two" / "cnn_last.pkl")


def test_mixed_precision_on_two_ranks_matches_one_rank(cifar_root, tmp_path):
    """--amp with --distributed --sync-bn on the CuPy backend: the ranks unscale the all-reduced gradients and
    take the same skip-or-step decisions, so two ranks train what one rank trains (to float16's rounding of
    differently ordered sums) and keep the same loss scale."""
    env = _gpu_env()
    args = train_args(cifar_root, "one", 1) + ["--backend", "cupy", "--amp"]
    one = run_cli("train", *args, cwd=tmp_path, env=env)
    assert one.returncode == 0, one.stderr
    args = train_args(cifar_root, "two", 1) + ["--backend", "cupy", "--amp", "--distributed", "--sync-bn"]
    two = subprocess.run([str(MPIRUN), "-n", "2", sys.executable, str(SRC / "train_cli.py"), *args], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=180)
    assert two.returncode == 0, two.stderr
    assert_same_run(tmp_path / "one" / "cnn_last.pkl", tmp_path / "two" / "cnn_last.pkl", rtol=2e-2)
    a, b = (load_checkpoint(tmp_path / d / "cnn_last.pkl").grad_scaler for d in ("one", "two"))
    assert a == b
