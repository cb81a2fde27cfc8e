"""Optimizers against their textbook updates; schedules pinned at chosen epochs and steps."""
from __future__ import annotations

import math

import numpy as np
import pytest

from cnn_cifar import backend, nn
from cnn_cifar.optim import SGD, Adam, AdamW, DropoutSchedule, LRSchedule
from cnn_cifar.optim import kernels as optim_kernels


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


# ------------------------------------------------------------------ onecycle, milestones, plateau
# Reference values from torch 2.13.0: torch.optim.lr_scheduler.OneCycleLR(SGD(..., momentum=0.9), max_lr,
# epochs, steps_per_epoch, pct_start, cycle_momentum=False), param_groups[0]["lr"] before each optimizer step.
TORCH_ONECYCLE_01_3x5 = [
    0.0040000000000000036, 0.022072489510780793, 0.0626810048299031, 0.09524650565931612, 0.09944154354509119,
    0.09504846320134738, 0.08665264698111695, 0.0750001, 0.06112620219362893, 0.046263710266697504,
    0.03173322184988512, 0.0188258346050237, 0.008688426531955128, 0.002221750825254118, 4e-07]
TORCH_ONECYCLE_02_2x4_PCT025 = [0.008000000000000007, 0.2, 0.18660259396828238, 0.1500002, 0.1000004,
                                0.05000060000000003, 0.013398206031717645, 8e-07]


def _per_step(s, epochs, steps):
    """The lr the trainer sets before each step: the schedule at progress epoch + (step + 1) / steps."""
    return [s(e + (k + 1) / steps) for e in range(epochs) for k in range(steps)]


def test_onecycle_matches_torch_step_by_step():
    s = LRSchedule("onecycle", base_lr=0.1, total_epochs=3, steps_per_epoch=5)          # max_lr defaults to lr
    assert _per_step(s, 3, 5) == pytest.approx(TORCH_ONECYCLE_01_3x5, rel=1e-12, abs=1e-18)
    s = LRSchedule("onecycle", base_lr=0.05, total_epochs=2, max_lr=0.2, pct_start=0.25, steps_per_epoch=4)
    assert _per_step(s, 2, 4) == pytest.approx(TORCH_ONECYCLE_02_2x4_PCT025, rel=1e-12, abs=1e-18)


@pytest.mark.parametrize("kw,msg", [({"max_lr": 0.05}, "^max_lr 0.05 is below base_lr 0.1$"),
                                    ({"pct_start": 1.0}, r"^pct_start must be in \(0, 1\), got 1$"),
                                    ({"pct_start": 0.0}, r"^pct_start must be in \(0, 1\), got 0$"),
                                    ({"warmup_epochs": 2.0}, "onecycle warms up by itself")])
def test_onecycle_bad_values(kw, msg):
    with pytest.raises(ValueError, match=msg):
        LRSchedule("onecycle", base_lr=0.1, total_epochs=5, **kw)


def test_step_milestones_as_multistep_lr():
    """Several decay steps are absolute epochs (torch's MultiStepLR milestones), one is an interval."""
    s = LRSchedule("step", base_lr=0.02, total_epochs=200, decay_factor=0.1, decay_steps=(50, 100, 150, 175))
    assert s.milestones == (50.0, 100.0, 150.0, 175.0)
    assert [s(e) for e in (1, 49.9, 50, 99, 100, 150, 174.9, 175, 200)] == pytest.approx(
        [0.02, 0.02, 2e-3, 2e-3, 2e-4, 2e-5, 2e-5, 2e-6, 2e-6])
    warm = LRSchedule("step", base_lr=1.0, total_epochs=10, warmup_epochs=2, decay_factor=0.5, decay_steps=[3, 6])
    assert [warm(e) for e in (1, 2, 2.9, 3, 6, 10)] == pytest.approx([0.5, 1.0, 1.0, 0.5, 0.25, 0.25])  # not shifted
    assert LRSchedule("step", base_lr=1.0, total_epochs=9, decay_steps=[3]).decay_steps == 3.0        # interval
    assert LRSchedule("step", base_lr=1.0, total_epochs=9, decay_steps=[3])(6) == pytest.approx(0.01)
    with pytest.raises(ValueError, match="milestones must be increasing epochs, got 100 50"):
        LRSchedule("step", base_lr=0.1, decay_steps=(100, 50))


# torch 2.13.0: ReduceLROnPlateau(SGD(lr=0.1), factor=0.5, patience=2, min_lr=0.01), lr after each step(loss).
PLATEAU_LOSSES = [1.0, 0.9, 0.89995, 0.95, 0.91, 0.8, 0.85, 0.85, 0.85, 0.85, 0.85, 0.85, 0.85, 0.85, 0.85, 0.85, 0.85]
TORCH_PLATEAU_LRS = [0.1, 0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.05, 0.025, 0.025, 0.025, 0.0125, 0.0125, 0.0125,
                     0.01, 0.01, 0.01]


def test_plateau_matches_torch_and_resumes_from_its_state():
    from cnn_cifar.optim import ReduceLROnPlateau

    def make():
        return ReduceLROnPlateau(LRSchedule("plateau", base_lr=0.1, total_epochs=20, min_lr=0.01), 0.5, 2)
    s, lrs = make(), []
    for i, loss in enumerate(PLATEAU_LOSSES):
        s.step(loss)
        lrs.append(s(i + 1.0))
        if i == 6:                                  # "checkpoint" here, continue in a fresh object
            state = s.state_dict()
            s = make()
            s.load_state_dict(state)
    assert lrs == pytest.approx(TORCH_PLATEAU_LRS, rel=1e-12)
    assert (s.best, s.num_bad_epochs) == (0.8, 2)                       # torch: best 0.8, num_bad_epochs 2
    assert s.to_dict()["state"] == {"lr": 0.01, "best": 0.8, "num_bad_epochs": 2}


def test_plateau_warmup_and_bad_values():
    from cnn_cifar.optim import ReduceLROnPlateau
    s = ReduceLROnPlateau(LRSchedule("plateau", base_lr=0.2, total_epochs=10, warmup_epochs=2), 0.5, 0)
    assert (s(0.5), s(2.0), s(7.0)) == pytest.approx((0.05, 0.2, 0.2))
    s.step(1.0)
    s.step(1.0)                                      # patience 0: the first bad epoch cuts
    assert (s(1.0), s(5.0)) == pytest.approx((0.05, 0.1))           # the warmup ramp scales with the cut
    with pytest.raises(ValueError, match=r"^factor must be in \(0, 1\), got 1$"):
        ReduceLROnPlateau(LRSchedule("plateau"), 1.0, 2)


# ------------------------------------------------------------------ flat parameter buffers
def test_optimizer_keeps_parameters_as_views_of_flat_buffers_and_takes_back_replaced_ones(xp):
    """The update runs on one flat buffer per dtype; a parameter whose array was replaced (load_state_dict,
    as a resume does after building the optimizer) is copied back in, so the model still trains."""
    from cnn_cifar.optim.optimizers import FlatParams
    model = nn.Sequential(nn.Linear(3, 4, rng=np.random.default_rng(0)), nn.ReLU(),
                          nn.Linear(4, 2, rng=np.random.default_rng(1)))
    opt = SGD(model.parameters(), lr=0.5, momentum=0.0)
    assert len(opt.buffers) == 1 and isinstance(opt.buffers[0], FlatParams) and opt.buffers[0].data.size == 26
    fresh = {k: v + 1.0 for k, v in model.state_dict().items()}
    model.load_state_dict(fresh)                                  # new arrays, no longer views
    opt.zero_grad()
    for p in model.parameters():
        p.grad += 2.0
    opt.step()
    for (k, v), p in zip(fresh.items(), model.parameters()):
        np.testing.assert_allclose(backend.to_numpy(p.data), v - 0.5 * 2.0, rtol=1e-6, err_msg=k)
    flat = backend.to_numpy(opt.buffers[0].data)
    np.testing.assert_allclose(flat, np.concatenate([backend.to_numpy(p.data).ravel() for p in model.parameters()]))


def test_parameters_of_two_dtypes_make_two_groups_with_the_same_update():
    a = nn.Parameter(np.array([1.0, 2.0], dtype=np.float32))
    b = nn.Parameter(np.array([[3.0]], dtype=np.float64))
    opt = SGD([a, b], lr=0.1, momentum=0.9, weight_decay=0.01)
    assert len(opt.buffers) == 2
    for _ in range(2):
        opt.zero_grad()
        a.grad += 1.0
        b.grad += 1.0
        opt.step()
    # v1 = g1 = 1 + 0.01 p0; p1 = p0 - 0.1 v1; v2 = 0.9 v1 + 1 + 0.01 p1; p2 = p1 - 0.1 v2
    for p, p0 in ((a, np.array([1.0, 2.0])), (b, np.array([[3.0]]))):
        v1 = 1 + 0.01 * p0
        p1 = p0 - 0.1 * v1
        p2 = p1 - 0.1 * (0.9 * v1 + 1 + 0.01 * p1)
        np.testing.assert_allclose(p.data, p2, rtol=1e-6)
        assert p.data.dtype == p.grad.dtype


# ------------------------------------------------------------------ host updates = the kernels' formula
@pytest.mark.parametrize("momentum,nesterov,wd", [(0.9, False, 0.0), (0.9, True, 5e-4), (0.0, False, 1e-3)])
def test_sgd_host_update_is_the_fused_kernels_formula(momentum, nesterov, wd):
    """Two steps of SGD on the host (in-place NumPy) equal two applications of the formula the GPU kernel is
    written from (optim/kernels.py's reference): one stated update, two implementations."""
    rng = np.random.default_rng(0)
    p = nn.Parameter(rng.standard_normal(50))
    opt = SGD([p], lr=0.1, momentum=momentum, nesterov=nesterov, weight_decay=wd)
    want, v = p.data.copy(), np.zeros(50)
    for _ in range(2):
        g = rng.standard_normal(50)
        p.grad[...] = g
        opt.step()
        want, v = optim_kernels._sgd_reference(g, 0.1, momentum, wd, nesterov, True, want, v)
    np.testing.assert_allclose(p.data, want, rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("cls,wd", [(Adam, 1e-3), (AdamW, 1e-2)])
def test_adam_host_update_is_the_fused_kernels_formula(cls, wd):
    rng = np.random.default_rng(1)
    p = nn.Parameter(rng.standard_normal(50))
    opt = cls([p], lr=0.01, betas=(0.8, 0.9), eps=1e-8, weight_decay=wd)
    want, m, v = p.data.copy(), np.zeros(50), np.zeros(50)
    for t in (1, 2, 3):
        g = rng.standard_normal(50)
        p.grad[...] = g
        opt.step()
        l2, shrink = (wd, 1.0) if cls is Adam else (0.0, 1 - 0.01 * wd)
        want, m, v = optim_kernels._adam_reference(g, 0.01 / (1 - 0.8 ** t), 0.8, 0.9, 1 - 0.9 ** t, 1e-8, l2, shrink,
                                                   True, want, m, v)
    np.testing.assert_allclose(p.data, want, rtol=1e-13, atol=1e-15)


# ------------------------------------------------------------------ parameter groups (PyTorch's param_groups)
def _sgd_reference(w, g, v, lr, mu, wd, nesterov):
    d = g + wd * w
    v = d.copy() if v is None else mu * v + d
    return w - lr * ((d + mu * v) if nesterov else v), v


@pytest.mark.parametrize("cls", [SGD, Adam])
def test_each_parameter_group_trains_with_its_own_lr_and_weight_decay(xp, cls):
    """Two groups with their own lr and weight_decay: each parameter follows the single-group optimizer
    given its group's settings, on both backends (the GPU's fused kernel takes each group's values)."""
    rng = np.random.default_rng(0)
    w = [rng.standard_normal(5).astype(np.float32) for _ in range(3)]
    grads = [[rng.standard_normal(5).astype(np.float32) for _ in range(3)] for _ in range(3)]
    kw = {"momentum": 0.85, "nesterov": True} if cls is SGD else {}
    ps = [nn.Parameter(xp.asarray(v)) for v in w]
    opt = cls([{"params": [ps[0], ps[2]]}, {"params": [ps[1]], "lr": 0.4, "weight_decay": 0.5}],
              lr=0.05, weight_decay=0.01, **kw)
    alone = [nn.Parameter(xp.asarray(v)) for v in w]
    singles = [cls([alone[0]], lr=0.05, weight_decay=0.01, **kw), cls([alone[1]], lr=0.4, weight_decay=0.5, **kw),
               cls([alone[2]], lr=0.05, weight_decay=0.01, **kw)]
    assert [g["lr"] for g in opt.param_groups] == [0.05, 0.4]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.01, 0.5]
    for step in grads:
        opt.zero_grad()
        for p, a, g, single in zip(ps, alone, step, singles):
            p.grad += xp.asarray(g)
            single.zero_grad()
            a.grad += xp.asarray(g)
            single.step()
        opt.step()
    for p, a in zip(ps, alone):
        np.testing.assert_allclose(backend.to_numpy(p.data), backend.to_numpy(a.data), rtol=1e-6, atol=1e-7)
    assert not np.allclose(backend.to_numpy(ps[0].data), backend.to_numpy(ps[1].data))


def test_setting_lr_scales_every_group_as_lambda_lr_does():
    a, b = _param([1.0], [1.0]), _param([1.0], [1.0])
    opt = SGD([{"params": [a]}, {"params": [b], "lr": 6.4}], lr=0.1, momentum=0.0)
    opt.lr = 0.05                                          # the schedule at half its peak
    assert opt.lr == 0.05 and [g["lr"] for g in opt.param_groups] == [0.05, 3.2]
    opt.step()
    np.testing.assert_allclose([a.data[0], b.data[0]], [1 - 0.05, 1 - 3.2])


def test_a_frozen_parameter_and_its_state_stay_as_they_are_until_it_trains_again(xp):
    """requires_grad False: the step leaves the parameter and its momentum alone (PyTorch skips a parameter
    without a gradient); set True again, it resumes from where it was."""
    a, b = nn.Parameter(xp.asarray([1.0, 2.0])), nn.Parameter(xp.asarray([3.0]))
    opt = SGD([a, b], lr=0.1, momentum=0.9, weight_decay=0.1)
    wa, va = np.array([1.0, 2.0]), None
    for frozen in (False, True, True, False):
        b.requires_grad = not frozen
        opt.zero_grad()
        a.grad += 1.0
        b.grad += 1.0
        opt.step()
        wa, va = _sgd_reference(wa, np.ones(2), va, 0.1, 0.9, 0.1, False)
        if frozen:
            np.testing.assert_array_equal(backend.to_numpy(b.data), [3.0 - 0.1 * 1.3])     # after the first step only
    np.testing.assert_allclose(backend.to_numpy(a.data), wa, rtol=1e-12)
    wb, vb = _sgd_reference(np.array([3.0]), np.ones(1), None, 0.1, 0.9, 0.1, False)
    wb, vb = _sgd_reference(wb, np.ones(1), vb, 0.1, 0.9, 0.1, False)            # two steps taken in all
    np.testing.assert_allclose(backend.to_numpy(b.data), wb, rtol=1e-12)


def test_parameter_groups_are_saved_and_restored_with_the_state():
    def make():
        a, b = _param([1.0, 2.0], [0.1, 0.2]), _param([3.0], [0.3])
        return a, b, SGD([{"params": [b], "lr": 1.0, "weight_decay": 0.0}, {"params": [a]}], lr=0.1,
                         momentum=0.9, weight_decay=0.01)
    a1, b1, o1 = make()
    o1.lr = 0.05
    o1.step()
    state = o1.state_dict()
    assert [g["params"] for g in state["param_groups"]] == [[0], [1]]
    assert [g["lr"] for g in state["param_groups"]] == [0.5, 0.05]
    a2, b2, o2 = make()
    a2.data[...], b2.data[...] = a1.data, b1.data
    o2.load_state_dict(state)
    assert [g["lr"] for g in o2.param_groups] == [0.5, 0.05] and o2.lr == 0.05
    o1.step()
    o2.step()
    np.testing.assert_array_equal(a1.data, a2.data)
    np.testing.assert_array_equal(b1.data, b2.data)
    with pytest.raises(ValueError, match="parameter group"):
        SGD([a2, b2], lr=0.1).load_state_dict(state)


@pytest.mark.parametrize("groups,msg", [
    (lambda a, b: [{"params": []}, {"params": [a]}], "parameter group 0 names no parameter"),
    (lambda a, b: [{"params": [a, b]}, {"params": [b]}], "is in parameter groups 0 and 1"),
    (lambda a, b: [{"params": [a]}, {"params": [b], "learning_rate": 1.0}], "unknown keys"),
    (lambda a, b: [{"params": [a]}, b], "not a mix"),
    (lambda a, b: [{"params": [a]}, {"params": [b], "lr": -1.0}], "lr must be > 0, got -1.0 in parameter group 1"),
])
def test_parameter_groups_that_make_no_sense_are_one_clear_error(groups, msg):
    a, b = _param([1.0], [0.0]), _param([2.0], [0.0])
    with pytest.raises(ValueError, match=msg):
        SGD(groups(a, b), lr=0.1)
