"""Optimizers against their textbook updates; schedules pinned at chosen epochs and steps."""
from __future__ import annotations

import math

import numpy as np
import pytest

from cnn_cifar import nn
from cnn_cifar.optim import SGD, Adam, DropoutSchedule, LRSchedule


def _param(values, grads):
    p = nn.Parameter(np.array(values, dtype=np.float64))
    p.grad[...] = grads
    return p


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_momentum_weight_decay_matches_reference(nesterov):
    w0, g = np.array([1.0, -2.0, 0.5]), np.array([0.3, 0.1, -0.2])
    p = _param(w0, g)
    opt = SGD([p], lr=0.1, momentum=0.9, nesterov=nesterov, weight_decay=0.01)
    w, v = w0.copy(), None
    for _ in range(3):
        p.grad[...] = g
        opt.step()
        d = g + 0.01 * w
        v = d.copy() if v is None else 0.9 * v + d
        w = w - 0.1 * ((d + 0.9 * v) if nesterov else v)
    np.testing.assert_allclose(p.data, w, rtol=1e-12)


def test_plain_sgd_without_momentum():
    p = _param([1.0, 2.0], [0.5, -0.5])
    SGD([p], lr=0.2, momentum=0.0).step()
    np.testing.assert_allclose(p.data, [0.9, 2.1])


def test_adam_matches_reference():
    w0, g = np.array([0.5, -1.5]), np.array([0.2, -0.4])
    p = _param(w0, g)
    opt = Adam([p], lr=0.01, betas=(0.8, 0.9), eps=1e-8, weight_decay=0.1)
    w, m, v = w0.copy(), np.zeros(2), np.zeros(2)
    for t in range(1, 4):
        p.grad[...] = g
        opt.step()
        d = g + 0.1 * w
        m = 0.8 * m + 0.2 * d
        v = 0.9 * v + 0.1 * d * d
        w = w - 0.01 * (m / (1 - 0.8 ** t)) / (np.sqrt(v / (1 - 0.9 ** t)) + 1e-8)
    np.testing.assert_allclose(p.data, w, rtol=1e-12)


@pytest.mark.parametrize("cls,kw", [(SGD, {"momentum": 0.9}), (Adam, {})])
def test_optimizer_state_dict_round_trip(cls, kw):
    p1, p2 = _param([1.0, 2.0], [0.1, 0.2]), _param([1.0, 2.0], [0.1, 0.2])
    a = cls([p1], lr=0.1, **kw)
    a.step()
    b = cls([p2], lr=0.5, **kw)
    p2.data[...] = p1.data
    b.load_state_dict(a.state_dict())
    a.step()
    b.step()
    np.testing.assert_array_equal(p1.data, p2.data)
    with pytest.raises(ValueError, match="optimizer state is for"):
        (Adam if cls is SGD else SGD)([p2], lr=0.1).load_state_dict(a.state_dict())


def test_optimizer_bad_arguments():
    p = _param([1.0], [0.0])
    with pytest.raises(ValueError, match="lr must be > 0"):
        SGD([p], lr=0)
    with pytest.raises(ValueError, match="Nesterov momentum needs momentum > 0"):
        SGD([p], lr=0.1, momentum=0, nesterov=True)
    with pytest.raises(ValueError, match="betas"):
        Adam([p], betas=(1.0, 0.9))


# ------------------------------------------------------------------ learning-rate schedules
def test_warmup_is_linear_from_zero_then_cosine():
    s = LRSchedule("cosine", base_lr=0.02, total_epochs=200, warmup_epochs=10)
    assert s(0.0) == 0.0
    assert s(5.0) == pytest.approx(0.01)
    assert s(10.0) == pytest.approx(0.02)
    assert s(105.0) == pytest.approx(0.01)           # half-way through the cosine
    assert s(200.0) == pytest.approx(0.0, abs=1e-15)
    # per-step evaluation: the first step of epoch 0 (of 100 steps) already has a small positive lr
    assert s(0 + 1 / 100) == pytest.approx(0.02 * 0.01 / 10)


def test_cosine_min_lr_and_linear():
    c = LRSchedule("cosine", base_lr=0.1, total_epochs=10, min_lr=0.001)
    assert c(10) == pytest.approx(0.001) and c(5) == pytest.approx(0.001 + 0.099 / 2)
    lin = LRSchedule("linear", base_lr=0.1, total_epochs=10, warmup_epochs=2, min_lr=0.02)
    assert lin(2) == pytest.approx(0.1) and lin(6) == pytest.approx(0.06) and lin(10) == pytest.approx(0.02)


def test_step_schedule_explicit_and_auto():
    s = LRSchedule("step", base_lr=0.1, total_epochs=90, decay_factor=0.1, decay_steps=30)
    assert [s(e) for e in (0, 29.9, 30, 59, 60, 89)] == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    auto = LRSchedule("step", base_lr=1.0, total_epochs=35, warmup_epochs=5, decay_factor=0.5)
    assert auto.step_size == 10
    assert [auto(e) for e in (5, 14, 15, 25, 34, 35)] == pytest.approx([1.0, 1.0, 0.5, 0.25, 0.25, 0.125])
    floored = LRSchedule("step", base_lr=1.0, total_epochs=100, decay_steps=10, min_lr=0.05)
    assert floored(99) == pytest.approx(0.05)


def test_constant_schedule_and_bad_values():
    assert LRSchedule("none", base_lr=0.3, total_epochs=5)(4.5) == 0.3
    with pytest.raises(ValueError, match="unknown lr schedule"):
        LRSchedule("exp", base_lr=0.1)
    with pytest.raises(ValueError, match="min_lr"):
        LRSchedule("cosine", base_lr=0.1, min_lr=0.5)


# ------------------------------------------------------------------ dropout schedules
def test_linear_and_cosine_dropout_decay():
    lin = DropoutSchedule("linear_decay", rate=0.6, min_rate=0.2, total_epochs=5)
    assert [lin.at_epoch(e) for e in range(5)] == pytest.approx([0.6, 0.5, 0.4, 0.3, 0.2])
    cos = DropoutSchedule("cosine_decay", rate=0.6, min_rate=0.2, total_epochs=3)
    assert [cos.at_epoch(e) for e in range(3)] == pytest.approx([0.6, 0.4, 0.2])
    assert DropoutSchedule("none", rate=0.3).at_epoch(7) == 0.3


def test_adaptive_dropout_follows_the_gap_within_bounds():
    s = DropoutSchedule("adaptive", rate=0.3, min_rate=0.1, max_rate=0.4, adaptive_step=0.05)
    assert s.next_rate(0, 0.3) == 0.3
    assert s.next_rate(1, 0.3, train_acc=0.90, test_acc=0.70) == pytest.approx(0.35)   # overfitting: raise
    assert s.next_rate(1, 0.4, train_acc=0.90, test_acc=0.70) == pytest.approx(0.4)    # capped at max
    assert s.next_rate(1, 0.3, train_acc=0.71, test_acc=0.70) == pytest.approx(0.25)   # small gap: lower
    assert s.next_rate(1, 0.1, train_acc=0.60, test_acc=0.70) == pytest.approx(0.1)    # floored at min
    assert s.next_rate(1, 0.3, train_acc=0.73, test_acc=0.70) == pytest.approx(0.3)    # in the band: keep


def test_dropout_schedule_bad_values():
    with pytest.raises(ValueError, match="min dropout 0.5 is above max dropout 0.4"):
        DropoutSchedule("adaptive", rate=0.3, min_rate=0.5, max_rate=0.4)
    with pytest.raises(ValueError, match="unknown dropout schedule"):
        DropoutSchedule("random")
    assert math.isclose(DropoutSchedule("linear_decay", rate=0.5, min_rate=0.1, total_epochs=1).at_epoch(0), 0.5)
