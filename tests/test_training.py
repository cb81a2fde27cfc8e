"""Trainer, checkpoints and metrics: exact resume (also mid-epoch), NaN handling, safe loading."""
from __future__ import annotations

import os
import pickle
import stat
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from cnn_cifar import nn, runtime
from cnn_cifar.data import AugmentConfig, BatchLoader, load_dataset
from cnn_cifar.data.datasets import CIFAR10
from cnn_cifar.models import build_model
from cnn_cifar.nn import im2col
from cnn_cifar.optim import SGD, DropoutSchedule, GradScaler, LRSchedule, ReduceLROnPlateau
from cnn_cifar.training import (
    Checkpoint,
    CheckpointError,
    Hook,
    Learner,
    Loaders,
    LoopOptions,
    NonFiniteLoss,
    RunOutput,
    Schedules,
    StopFlag,
    Trainer,
    TrainingInterrupted,
    classification_report,
    confusion_matrix,
    load_checkpoint,
    save_checkpoint,
    topk_correct,
)
from cnn_cifar.training.ema import ModelEMA
from cnn_cifar.training.lookahead import Lookahead

from conftest import digests


def make_trainer(ds, ckdir, epochs=3, lr=0.02, stop=None, seed=0, hooks=lambda model: ()):
    model = build_model("cnn", seed=seed)
    opt = SGD(model.parameters(), lr, momentum=0.9, weight_decay=5e-4)
    nn.random.manual_seed(seed + 1)
    train = BatchLoader(ds.x_train, ds.y_train, 64, CIFAR10.mean, CIFAR10.std, shuffle=True,
                        augment_cfg=AugmentConfig(4, True, 4), rng=np.random.default_rng(seed), drop_last=True)
    test = BatchLoader(ds.x_test, ds.y_test, 100, CIFAR10.mean, CIFAR10.std)
    return Trainer(Learner("cnn", model, opt, nn.SoftmaxCrossEntropy(0.1)), Loaders(train, test, 10),
                   Schedules(LRSchedule("cosine", lr, epochs, warmup_epochs=1),
                             DropoutSchedule("linear_decay", 0.6, 0.2, total_epochs=epochs)),
                   RunOutput(ckdir), LoopOptions(quiet=True, stop=stop), hooks(model))


class StopAfter(StopFlag):
    """Asks to stop once ``n`` checks have been made (stands in for Ctrl-C at a chosen step)."""

    def __init__(self, n: int):
        super().__init__()
        self.n = n

    @property
    def requested(self) -> bool:
        self.n -= 1
        return self.n < 0

    @requested.setter
    def requested(self, value):
        pass


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_resume_at_epoch_boundary_is_bitwise_exact(cifar_root, tmp_path):
    ds = load_dataset("cifar10", cifar_root, download=False)
    straight = make_trainer(ds, tmp_path / "a")
    straight.fit(3)
    first = make_trainer(ds, tmp_path / "b")
    first.fit(2)
    resumed = make_trainer(ds, tmp_path / "b", seed=5)        # other seed: everything must come from the file
    resumed.restore(load_checkpoint(tmp_path / "b" / "cnn_last.pkl", "cnn"))
    resumed.fit(3)
    assert _same_weights(straight.model.state_dict(), resumed.model.state_dict())
    assert [r["test_acc"] for r in straight.history] == [r["test_acc"] for r in resumed.history]


def test_ctrl_c_mid_epoch_saves_and_resumes_exactly(cifar_root, tmp_path):
    ds = load_dataset("cifar10", cifar_root, download=False)
    straight = make_trainer(ds, tmp_path / "a")
    straight.fit(2)
    interrupted = make_trainer(ds, tmp_path / "b", stop=StopAfter(12))   # 7 step + 2 eval + 1 end checks in epoch 1
    with pytest.raises(TrainingInterrupted, match=r"interrupted at epoch 2, step 3"):
        interrupted.fit(2)
    ck = load_checkpoint(tmp_path / "b" / "cnn_last.pkl", "cnn")
    assert (ck.epoch, ck.step) == (1, 3)
    resumed = make_trainer(ds, tmp_path / "b", seed=9)
    resumed.restore(ck)
    resumed.fit(2)
    assert _same_weights(straight.model.state_dict(), resumed.model.state_dict())
    assert straight.history[-1]["train_loss"] == pytest.approx(resumed.history[-1]["train_loss"], rel=1e-12)


def test_nan_loss_stops_and_keeps_the_best_checkpoint(cifar_root, tmp_path):
    ds = load_dataset("cifar10", cifar_root, download=False)
    good = make_trainer(ds, tmp_path)
    good.fit(1)
    names = ("cnn_best.pkl", "cnn_last.pkl", "cnn_history.csv", "cnn_history.jsonl")
    before = digests(tmp_path, names)
    bad = make_trainer(ds, tmp_path, epochs=2, lr=1e30)      # the schedule's base lr: every step of epoch 2 uses ~1e30
    bad.restore(load_checkpoint(tmp_path / "cnn_last.pkl"))
    with pytest.raises(NonFiniteLoss, match=r"loss became (nan|inf) at epoch 2, step \d+"):
        bad.fit(2)
    assert bad.optimizer.lr > 1e29                            # the huge lr really came from the schedule
    assert sorted(os.listdir(tmp_path)) == sorted(names)      # nothing new, no temp file
    assert digests(tmp_path, names) == before, "a file changed after the NaN stop"


class Recorder(Hook):
    """A hook with state of its own (its count of ``after_step`` calls) that records when ``final_step`` ran."""

    name = "recorder"

    def __init__(self):
        self.after, self.final_at, self.loaded = 0, [], "never"

    def after_step(self, trainer):
        self.after += 1

    def final_step(self, trainer):
        self.final_at.append((trainer.epoch, trainer.step))

    def state_dict(self):
        return {"after": self.after}

    def load_state_dict(self, state):
        self.loaded = state
        self.after = state["after"] if state else 0


def test_hooks_change_the_run_after_each_step_and_once_at_its_end_and_keep_their_state(cifar_root, tmp_path):
    """``after_step`` follows every optimizer step, ``final_step`` the run's last one (the last epoch's 7th, before
    its evaluation), and a hook's state rides in the checkpoint under its name. Stopped right after the last step
    (17 checks: 10 in epoch 1, then step 7), the saved run has had its final step: the resumed one does not
    repeat it, and ends as a straight run does. A checkpoint without the hook's state hands it None."""
    ds = load_dataset("cifar10", cifar_root, download=False)
    straight, hook = make_trainer(ds, tmp_path / "a", epochs=2), Recorder()
    straight.hooks.append(hook)
    straight.fit(2)
    assert (hook.after, hook.final_at) == (14, [(1, 7)])
    assert load_checkpoint(tmp_path / "a" / "cnn_last.pkl").hooks == {"recorder": {"after": 14}}
    stopped, hook = make_trainer(ds, tmp_path / "b", epochs=2, stop=StopAfter(16)), Recorder()
    stopped.hooks.append(hook)
    with pytest.raises(TrainingInterrupted, match=r"interrupted at epoch 2, step 7"):
        stopped.fit(2)
    assert hook.final_at == [(1, 7)]
    resumed, hook = make_trainer(ds, tmp_path / "b", epochs=2, seed=9), Recorder()
    resumed.hooks.append(hook)
    resumed.restore(load_checkpoint(tmp_path / "b" / "cnn_last.pkl"))
    assert hook.loaded == {"after": 14}
    resumed.fit(2)
    assert (hook.after, hook.final_at) == (14, [])
    assert _same_weights(straight.model.state_dict(), resumed.model.state_dict())
    other, hook = make_trainer(ds, tmp_path / "c", epochs=2), Recorder()     # a checkpoint without its state
    other.hooks.append(hook)
    other.restore(load_checkpoint(tmp_path / "a" / "cnn_best.pkl").weights_only())
    assert hook.loaded is None


def test_eval_accuracy_uses_eval_mode_and_matches_a_fresh_evaluation(cifar_root, tmp_path):
    from cnn_cifar.training import evaluate
    ds = load_dataset("cifar10", cifar_root, download=False)
    tr = make_trainer(ds, tmp_path)
    tr.fit(1)
    model = build_model("cnn", seed=3)
    model.load_state_dict(load_checkpoint(tmp_path / "cnn_best.pkl").state_dict)
    ev = evaluate(model, BatchLoader(ds.x_test, ds.y_test, 37, CIFAR10.mean, CIFAR10.std),
                  nn.SoftmaxCrossEntropy(0.1), 10)
    assert ev["accuracy"] == tr.history[0]["test_acc"]
    assert ev["loss"] == pytest.approx(tr.history[0]["test_loss"], rel=1e-5)
    assert tr.model.training is True


# ------------------------------------------------------------------ checkpoints
def test_checkpoint_round_trip_and_atomic_write(tmp_path):
    sd = build_model("cnn").state_dict()
    path = save_checkpoint(tmp_path / "c.pkl", {"model": "cnn", "state_dict": sd, "epoch": 3,
                                                 "rng": np.random.default_rng(0).bit_generator.state})
    assert sorted(os.listdir(tmp_path)) == ["c.pkl"]            # no temp file left behind
    ck = load_checkpoint(path, "cnn")
    assert pickle.load(open(path, "rb"))["format"] == "cnn-cifar-10/checkpoint" and ck.epoch == 3
    assert _same_weights(ck.state_dict, sd)


def test_failed_save_keeps_the_old_checkpoint(tmp_path):
    path = save_checkpoint(tmp_path / "c.pkl", {"model": "cnn", "state_dict": {}, "epoch": 1})
    before = path.read_bytes()
    with pytest.raises((pickle.PicklingError, AttributeError), match=r"(?i)can't pickle"):
        save_checkpoint(path, {"model": "cnn", "state_dict": {}, "epoch": 2, "history": [lambda: 0]})
    assert path.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["c.pkl"]


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_checkpoint_refusals(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pkl")
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"format": "cnn-cifar-10/checkpoint", "x": _RunsCode()}))
    with pytest.raises(CheckpointError, match=r"refusing to load .*evil.pkl.*(posix|os)\.system"):
        load_checkpoint(evil)
    other = tmp_path / "other.pkl"
    other.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    with pytest.raises(CheckpointError, match="is not a cnn-cifar-10 checkpoint"):
        load_checkpoint(other)
    junk = tmp_path / "junk.pkl"
    junk.write_bytes(b"not a pickle at all")
    with pytest.raises(CheckpointError, match="is not a readable checkpoint"):
        load_checkpoint(junk)
    good = save_checkpoint(tmp_path / "r.pkl", {"model": "resnet20", "state_dict": {}, "epoch": 0})
    with pytest.raises(CheckpointError, match=r"holds a 'resnet20' model, not 'cnn'$"):
        load_checkpoint(good, "cnn")
    truncated = tmp_path / "t.pkl"
    truncated.write_bytes(good.read_bytes()[:40])
    with pytest.raises(CheckpointError, match="is not a readable checkpoint"):
        load_checkpoint(truncated)


def test_checkpoint_of_another_format_version_is_refused(tmp_path):
    raw = Checkpoint(model="cnn", state_dict={}).to_dict()
    (tmp_path / "v2.pkl").write_bytes(pickle.dumps({**raw, "version": 2}))
    with pytest.raises(CheckpointError, match=r"v2.pkl has checkpoint version 2, this tool reads 1"):
        load_checkpoint(tmp_path / "v2.pkl")


def test_saved_checkpoint_gets_the_usual_file_permissions(tmp_path):
    """Not the private 0600 of the temporary file it is written to: what the umask gives any new file."""
    old = os.umask(0o022)
    try:
        path = save_checkpoint(tmp_path / "c.pkl", Checkpoint(model="cnn", state_dict={}))
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_the_epoch_line_marks_a_new_best():
    from cnn_cifar.training.hooks import format_row
    row = {"epoch": 3, "train_loss": 1.23456, "train_acc": 0.5, "test_loss": 0.98765, "test_acc": 0.61234,
           "lr": 0.0125, "dropout": 0.25, "seconds": 12.34, "best": True}
    assert format_row(row, 10) == ("epoch   3/10  train loss 1.2346 acc  50.00%  test loss 0.9877 acc  61.23%  "
                                   "lr 0.012500  dropout 0.250    12.3s  *best*")
    assert format_row(dict(row, best=False), 10).endswith("   12.3s")


# ------------------------------------------------------------------ checkpoints from before the hooks kept their state
FIXTURES = Path(__file__).parent / "fixtures"


def _tiny_trainer(ds, ckdir, seed):
    """The run the fixtures checkpoint_499d642_*.pkl come from: a 170-parameter network (convolution, batch
    norm, dropout, linear), 128 training images in 4 steps an epoch, SGD with momentum, the plateau schedule,
    dropout decaying, the weights' average with its batch-norm statistics measured on 2 batches, and mixed
    precision's loss scaler."""
    rng = np.random.default_rng(seed)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1, rng=rng), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.Dropout(0.3), nn.GlobalAvgPool2d(), nn.Linear(4, 10, rng=rng))
    nn.random.manual_seed(seed + 1)
    train = BatchLoader(ds.x_train[:128], ds.y_train[:128], 32, CIFAR10.mean, CIFAR10.std, shuffle=True,
                        augment_cfg=AugmentConfig(4, True, 0), rng=np.random.default_rng(seed), drop_last=True)
    test = BatchLoader(ds.x_test[:64], ds.y_test[:64], 64, CIFAR10.mean, CIFAR10.std)

    def bn_batches():
        return BatchLoader(ds.x_train[:64], ds.y_train[:64], 32, CIFAR10.mean, CIFAR10.std,
                           augment_cfg=AugmentConfig(4, True, 0), rng=np.random.default_rng(5))
    lr = ReduceLROnPlateau(LRSchedule("plateau", 0.05, 3, warmup_epochs=0.5), 0.5, 0, threshold=0.1)
    return Trainer(Learner("tiny", model, SGD(model.parameters(), 0.05, momentum=0.9), nn.SoftmaxCrossEntropy(0.1)),
                   Loaders(train, test, 10), Schedules(lr, DropoutSchedule("linear_decay", 0.3, 0.1, total_epochs=3)),
                   RunOutput(ckdir), LoopOptions(quiet=True, scaler=GradScaler(2.0 ** 8, growth_interval=3)),
                   [ModelEMA(model, 0.8, bn_batches)])


def test_a_checkpoint_from_before_the_hooks_kept_their_state_resumes_as_it_did(cifar_root, tmp_path, monkeypatch):
    """checkpoint_499d642_stopped.pkl was written by 499d642's code, which kept EMA's state with the training
    weights in ``optimizer["ema"]`` and the loss scaler's in ``optimizer["grad_scaler"]``: ``_tiny_trainer``'s run,
    stopped (Ctrl-C) at epoch 2, step 2 of 3. The reader moves them to their own keys; resumed now, the run ends
    where that code's resumed run ended (checkpoint_499d642_resumed.pkl, its last checkpoint, which equalled
    a straight run's): bit for bit with that code on the machine that wrote them, to float32 rounding
    elsewhere (batch norm's since, which scales the centred input by weight * invstd in one multiply, moves
    weights by ~2e-7 over three epochs). That code built each conv's columns in one tile and multiplied them
    whole, as here with small tiles and ``matmul_released``'s pieces off (other tiles or pieces sum the weight
    gradient in another order, and three epochs grow that to ~5e-6)."""
    monkeypatch.setattr(im2col, "MIN_TILE_BYTES", 1 << 40)
    monkeypatch.setattr(runtime, "NUMPY_GIL_MIN_OUTPUT", 0)
    ds = load_dataset("cifar10", cifar_root, download=False)
    old = load_checkpoint(FIXTURES / "checkpoint_499d642_stopped.pkl", "tiny")
    assert (old.epoch, old.step, old.hooks) == (1, 2, {"ema": {"decay": 0.8, "updates": 6}})
    assert not {"ema", "grad_scaler"} & set(old.optimizer) and old.grad_scaler["scale"] == 2.0 ** 10
    assert old.training_weights.keys() == old.state_dict.keys()
    assert not np.array_equal(old.training_weights["0.weight"], old.state_dict["0.weight"])
    tr = _tiny_trainer(ds, tmp_path, seed=4)               # another seed: everything must come from the file
    tr.restore(old)
    tr.fit(3)
    got, want = tr.checkpoint(), load_checkpoint(FIXTURES / "checkpoint_499d642_resumed.pkl")
    assert got.hooks == want.hooks == {"ema": {"decay": 0.8, "updates": 12}}
    assert got.grad_scaler == want.grad_scaler and got.grad_scaler["scale"] == 2.0 ** 12
    assert got.schedule["lr"]["state"]["lr"] == want.schedule["lr"]["state"]["lr"] == 0.0125
    for weights in ("state_dict", "training_weights"):
        a, b = getattr(got, weights), getattr(want, weights)
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-6, err_msg=f"{weights}: {key}")
    assert [r["test_acc"] for r in got.history] == [r["test_acc"] for r in want.history]
    assert [r["train_loss"] for r in got.history] == pytest.approx([r["train_loss"] for r in want.history], rel=1e-5)
    assert [r["lr"] for r in got.history] == [r["lr"] for r in want.history] == [0.05, 0.05, 0.025]


# ------------------------------------------------------------------ metrics
def test_confusion_matrix_and_report_by_hand():
    y = np.array([0, 0, 1, 1, 1, 2])
    p = np.array([0, 1, 1, 1, 2, 2])
    cm = confusion_matrix(y, p, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 1], [0, 0, 1]]
    rep = classification_report(cm, ["a", "b", "c"])
    b = rep["per_class"][1]
    assert b["precision"] == pytest.approx(2 / 3) and b["recall"] == pytest.approx(2 / 3)
    assert rep["per_class"][2]["precision"] == pytest.approx(0.5) and rep["per_class"][2]["f1"] == pytest.approx(2 / 3)
    assert rep["accuracy"] == pytest.approx(4 / 6)
    assert rep["macro"]["recall"] == pytest.approx((0.5 + 2 / 3 + 1) / 3)


def test_topk_counts():
    logits = np.array([[0.1, 0.5, 0.4], [0.9, 0.04, 0.06], [0.2, 0.3, 0.5]])
    y = np.array([2, 1, 0])
    assert topk_correct(logits, y, (1, 2, 3)) == {1: 0, 2: 1, 3: 3}


# ------------------------------------------------------------------ lookahead
def test_lookahead_pulls_the_weights_to_its_slow_copy_every_period():
    """At global step k (a multiple of the period) of K: slow += (1 - d) (fast - slow) with d = base^period
    (k/K)^3, then fast = slow, buffers included (the batch count is not a weight); final_step: fast = slow."""
    model = nn.Sequential(nn.Linear(3, 2, rng=np.random.default_rng(0)), nn.BatchNorm1d(2))
    look = Lookahead(model, period=5, base=0.9)
    view = SimpleNamespace(model=model, train_loader=[None] * 4, epoch=0, step=0, target_epochs=5, total_steps=20)
    look.fit_start(view)
    slow = {k: v.copy() for k, v in model.state_dict().items()}
    for step in range(1, 5):                                       # steps 1..4 of 20: nothing happens
        model[0].weight.data += 1.0
        view.step = step
        look.after_step(view)
    np.testing.assert_array_equal(model[0].weight.data, slow["0.weight"] + 4)
    model[1].running_mean += 2.0
    view.epoch, view.step = 1, 1                                   # global step 5 of 20
    look.after_step(view)
    rate = 1 - 0.9 ** 5 * (5 / 20) ** 3
    np.testing.assert_allclose(model[0].weight.data, slow["0.weight"] + rate * 4, rtol=1e-15)
    np.testing.assert_allclose(model[1].running_mean, slow["1.running_mean"] + rate * 2, rtol=1e-15)
    assert model[1].num_batches_tracked == slow["1.num_batches_tracked"]
    model[0].weight.data += 3.0
    look.final_step(view)                                          # the network is the slow weights
    np.testing.assert_allclose(model[0].weight.data, slow["0.weight"] + rate * 4, rtol=1e-15)
    with pytest.raises(ValueError, match="Lookahead period must be a positive number of steps, got 0"):
        Lookahead(model, period=0)


def test_lookahead_resumes_exactly_from_a_step_between_its_pulls(cifar_root, tmp_path):
    """Stopped at global step 11 (7 steps per epoch: epoch 2, step 4; not a multiple of the period 5), resumed
    in a fresh process's trainer: the same final weights as a straight run, and not those of a run without it."""
    ds = load_dataset("cifar10", cifar_root, download=False)
    def with_lookahead(model):
        return [Lookahead(model)]
    straight = make_trainer(ds, tmp_path / "a", epochs=2, hooks=with_lookahead)
    straight.fit(2)
    interrupted = make_trainer(ds, tmp_path / "b", epochs=2, stop=StopAfter(13), hooks=with_lookahead)
    with pytest.raises(TrainingInterrupted):
        interrupted.fit(2)
    ck = load_checkpoint(tmp_path / "b" / "cnn_last.pkl", "cnn")
    assert (ck.epoch, ck.step) == (1, 4) and ck.hooks["lookahead"]["slow"] is not None
    resumed = make_trainer(ds, tmp_path / "b", epochs=2, seed=9, hooks=with_lookahead)
    resumed.restore(ck)
    resumed.fit(2)
    assert _same_weights(straight.model.state_dict(), resumed.model.state_dict())
    plain = make_trainer(ds, tmp_path / "c", epochs=2)
    plain.fit(2)
    assert not _same_weights(straight.model.state_dict(), plain.model.state_dict())


def test_the_loop_tells_the_loader_each_epoch(cifar_root, tmp_path):
    """What alternates by epoch in the loader (alternating flips) follows the loop's epoch, resumed runs too."""
    ds = load_dataset("cifar10", cifar_root, download=False)
    trainer = make_trainer(ds, tmp_path, epochs=2)
    seen = []
    real = trainer.train_loader.set_epoch
    trainer.train_loader.set_epoch = lambda e: (seen.append(e), real(e))
    trainer.fit(2)
    assert seen == [0, 1]
