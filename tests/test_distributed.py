"""Data-parallel training, in-process: ranks as threads of the test (tests/threadcomm.py) behind the same
Communicator interface MPI and NCCL implement. The mpirun runs are in test_distributed_mpi.py."""
from __future__ import annotations

import signal

import numpy as np
import pytest

from cnn_cifar import backend, nn
from cnn_cifar.cli import common as C
from cnn_cifar.data import AugmentConfig, BatchLoader
from cnn_cifar.distributed import DataParallel, SingleProcess
from cnn_cifar.optim import SGD
from cnn_cifar.training import NonFiniteLoss, evaluate, train_step
from cnn_cifar.training.interrupt import TrainingInterrupted

from threadcomm import run_ranks


def test_single_process_leaves_arrays_alone():
    comm = SingleProcess()
    a = np.arange(4.0)
    assert comm.allreduce_sum(a) is a and comm.allreduce_mean(a) is a and comm.broadcast(a) is a
    assert list(a) == [0, 1, 2, 3] and comm.is_main and comm.size == 1 and comm.broadcast_object(5) == 5


KINDS = {"plain": nn.BatchNorm2d, "relu": nn.BatchNormReLU2d, "relu-residual": nn.BatchNormAddReLU2d}


def _bn_case(xp, kind, shape=(8, 3, 4, 5)):
    rng = np.random.default_rng(0)
    x = rng.normal(1.5, 2.0, shape)
    dy = rng.normal(0.0, 1.0, shape)
    bn = KINDS[kind](shape[1]).to(np.float64)
    bn.weight.data[...] = xp.asarray(rng.uniform(0.5, 1.5, shape[1]))
    bn.bias.data[...] = xp.asarray(rng.normal(0, 1, shape[1]))
    return x, dy, bn


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("world", [2, 4])
def test_synchronised_batch_norm_equals_one_process(xp, world, kind):
    """Each rank normalises its shard with the global batch's statistics: outputs, input gradients (times
    the rank count: each rank's loss is its shard's mean), averaged weight gradients and running statistics
    all equal one process's on the whole batch; also for the fused BatchNormReLU2d and BatchNormAddReLU2d (with
    a residual: the gradients of the input and of the residual, the gated dy)."""
    x, dy, ref = _bn_case(xp, kind)
    added = kind == "relu-residual"
    r = np.random.default_rng(1).normal(0.0, 1.0, x.shape) if added else None
    y_ref = ref(xp.asarray(x), *([xp.asarray(r)] if added else []))
    grads_ref = ref.backward(xp.asarray(dy))
    grads_ref = [backend.to_numpy(g) for g in (grads_ref if added else (grads_ref,))]
    k = len(x) // world
    states = [_bn_case(xp, kind)[2] for _ in range(world)]

    def rank(comm):
        bn = nn.convert_sync_batchnorm(states[comm.rank], comm)
        sl = slice(comm.rank * k, (comm.rank + 1) * k)
        y = bn(xp.asarray(x[sl]), *([xp.asarray(r[sl])] if added else []))
        grads = bn.backward(xp.asarray(dy[sl] * world))
        grads = [backend.to_numpy(g) for g in (grads if added else (grads,))]
        g = comm.allreduce_mean(xp.concatenate([bn.weight.grad, bn.bias.grad]))
        return backend.to_numpy(y), grads, backend.to_numpy(g), bn
    results = run_ranks(world, rank)
    np.testing.assert_allclose(np.concatenate([r[0] for r in results]), backend.to_numpy(y_ref), atol=1e-12)
    for i, want in enumerate(grads_ref):                         # dx, and d residual for the added layer
        np.testing.assert_allclose(np.concatenate([r[1][i] for r in results]), world * want, atol=1e-11)
    for _, _, g, bn in results:
        np.testing.assert_allclose(g, np.concatenate([backend.to_numpy(ref.weight.grad),
                                                      backend.to_numpy(ref.bias.grad)]), atol=1e-11)
        for name in ("running_mean", "running_var"):
            np.testing.assert_allclose(backend.to_numpy(getattr(bn, name)), backend.to_numpy(getattr(ref, name)),
                                       atol=1e-13)


def _small_net(bn: bool, seed: int) -> nn.Module:
    nn.init.manual_seed(seed) if hasattr(nn.init, "manual_seed") else None
    layers = [nn.Conv2d(3, 4, 3, padding=1)] + ([nn.BatchNorm2d(4)] if bn else []) + [
        nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 4 * 4, 5)]
    return nn.Sequential(*layers).to(np.float64)


@pytest.mark.parametrize("flat", [False, True], ids=["packed", "optimizer-buffers"])
@pytest.mark.parametrize("bn", [False, True], ids=["no-bn", "sync-bn"])
def test_data_parallel_steps_equal_one_process_steps(bn, flat):
    """Two ranks, each with half of every global batch (and different initial weights, made equal by the
    start-up broadcast), take the same SGD-momentum steps as one process on the whole batches."""
    rng = np.random.default_rng(1)
    batches = [(rng.normal(size=(8, 3, 8, 8)), rng.integers(0, 5, 8)) for _ in range(4)]
    ref = _small_net(bn, 0)
    models = [_small_net(bn, 0), _small_net(bn, 0)]
    for m in models:                 # rank 1 starts elsewhere: the broadcast must fix that
        for p in m.parameters():
            p.data = p.data + 0.0
    for p in models[1].parameters():
        p.data += 0.5
    models[0].load_state_dict(ref.state_dict())
    crit = nn.SoftmaxCrossEntropy()
    opt = SGD(list(ref.parameters()), lr=0.1, momentum=0.9, weight_decay=1e-3)
    ref_losses = [train_step(ref, crit, opt, x, y)[0] for x, y in batches]

    def rank(comm):
        model = models[comm.rank]
        if bn:
            nn.convert_sync_batchnorm(model, comm)
        o = SGD(list(model.parameters()), lr=0.1, momentum=0.9, weight_decay=1e-3)
        par = DataParallel(model, comm, bucket_bytes=200, optimizer=o if flat else None)     # several buckets
        assert (len(par.flat_slices) > 1) is flat and (len(par.buckets) > 1) is not flat
        par.broadcast_state()
        losses = [train_step(model, nn.SoftmaxCrossEntropy(), o, x[comm.rank * 4:(comm.rank + 1) * 4],
                             y[comm.rank * 4:(comm.rank + 1) * 4], parallel=par)[0] for x, y in batches]
        return losses, model.state_dict(), par.seen
    results = run_ranks(2, rank)
    for losses, state, seen in results:
        np.testing.assert_allclose(losses, ref_losses, rtol=1e-12)
        assert seen == 8
        for k, v in ref.state_dict().items():
            np.testing.assert_allclose(state[k], v, rtol=1e-10, atol=1e-12, err_msg=k)


def test_agreement_stops_every_rank_together_and_names_sigterm():
    """A stop asked on one rank only (SIGTERM there) is seen by both ranks at the same step; a NaN loss on
    one rank makes both raise before any update."""
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(4, 3, 8, 8)), rng.integers(0, 5, 4)
    models = [_small_net(False, 0), _small_net(False, 0)]

    def rank(comm):
        model = models[comm.rank]
        par = DataParallel(model, comm)
        opt = SGD(list(model.parameters()), lr=0.1)
        xs = x[comm.rank * 2:(comm.rank + 1) * 2].copy()
        train_step(model, nn.SoftmaxCrossEntropy(), opt, xs, y[:2],
                   parallel=par, stop_signum=signal.SIGTERM if comm.rank == 1 else None)
        stopped = par.stop_signum
        before = model.state_dict()
        if comm.rank == 0:
            xs[0, 0, 0, 0] = np.nan
        with pytest.raises(NonFiniteLoss):
            train_step(model, nn.SoftmaxCrossEntropy(), opt, xs, y[:2], parallel=par)
        after = model.state_dict()
        return stopped, all(np.array_equal(before[k], after[k]) for k in before)
    assert run_ranks(2, rank) == [(signal.SIGTERM, True), (signal.SIGTERM, True)]


def test_loader_shards_are_the_global_batch_split_in_rank_order():
    """Every rank walks the same augmented (and mixed) global batches and keeps its contiguous part."""
    rng = np.random.default_rng(3)
    x = rng.integers(0, 255, (40, 3, 32, 32), dtype=np.uint8)
    y = rng.integers(0, 10, 40)
    cfg = AugmentConfig(cutout=8, mixup=0.4)

    def loader(shard=None):
        return BatchLoader(x, y, 8, (0.5,) * 3, (0.25,) * 3, shuffle=True, augment_cfg=cfg,
                           rng=np.random.default_rng(7), drop_last=True, prefetch=False, shard=shard)
    whole = list(loader())
    parts = [list(loader((r, 4))) for r in range(4)]
    assert all(len(p) == len(whole) == 5 for p in parts)
    for i, (xb, yb) in enumerate(whole):
        np.testing.assert_array_equal(np.concatenate([p[i][0] for p in parts]), xb)
        np.testing.assert_array_equal(np.concatenate([p[i][1].y_b for p in parts]), yb.y_b)
        assert {p[i][1].lam for p in parts} == {yb.lam}
    with pytest.raises(ValueError, match="divide evenly over 3 ranks"):
        loader((0, 3))


def test_evaluation_split_over_ranks_sums_to_the_whole_set():
    rng = np.random.default_rng(4)
    x = rng.integers(0, 255, (23, 3, 32, 32), dtype=np.uint8)
    y = rng.integers(0, 5, 23)
    model = nn.Sequential(nn.Conv2d(3, 2, 3, stride=4), nn.Flatten(), nn.Linear(2 * 8 * 8, 5))
    crit = nn.SoftmaxCrossEntropy()
    whole = evaluate(model, BatchLoader(x, y, 5, (0.5,) * 3, (0.25,) * 3, prefetch=False), crit, 5)
    from cnn_cifar.cli.parallel import test_part

    def rank(comm):
        part = test_part(len(x), comm)
        return evaluate(model, BatchLoader(x[part], y[part], 5, (0.5,) * 3, (0.25,) * 3, prefetch=False), crit, 5,
                        comm=comm)
    for ev in run_ranks(3, rank):
        assert ev["n"] == 23 and ev["accuracy"] == whole["accuracy"] and ev["topk"] == whole["topk"]
        np.testing.assert_array_equal(ev["confusion_matrix"], whole["confusion_matrix"])
        assert ev["loss"] == pytest.approx(whole["loss"], rel=1e-6)


def test_each_rank_draws_its_own_dropout_masks_and_saves_rank_0s_stream(xp):
    draws = {}
    for rank in (0, 1, 0):
        nn.random.manual_seed(11)
        nn.random.set_rank(rank)
        a = backend.to_numpy(nn.random.uniform(xp, (6,)))
        draws.setdefault(rank, []).append((a, nn.random.get_state()))
    nn.random.set_rank(0)
    (a0, s0), (a0b, s0b) = draws[0]
    a1, s1 = draws[1][0]
    np.testing.assert_array_equal(a0, a0b)
    assert not np.array_equal(a0, a1)
    # what a checkpoint keeps is rank 0's stream, whichever rank saves (6 float32 draws: no half-used one)
    assert s1["numpy"]["state"] == s0["numpy"]["state"] and not s1["numpy"]["has_uint32"]
    assert (s1["key"], s1["draws"]) == (s0["key"], s0["draws"])


class _FakeComm(SingleProcess):
    size, rank = 2, 1

    def __init__(self):
        self.aborted = None

    def abort(self, code=1):
        self.aborted = code
        return None


def test_a_failure_of_one_rank_aborts_all_ranks_with_its_line(monkeypatch, capsys):
    comm = _FakeComm()
    monkeypatch.setattr(C, "active_comm", comm)

    def boom():
        raise RuntimeError("out of memory on this node")
    C.run(boom)
    assert comm.aborted == 1
    assert capsys.readouterr().err.strip() == "[rank 1] error: RuntimeError: out of memory on this node"

    def agreed():                        # met by every rank alike: rank 0 reports it, the others end quietly
        raise TrainingInterrupted("ck.pkl", 0, 3)
    assert C.run(agreed) == 130 and comm.aborted == 1
    assert capsys.readouterr().err == ""


def test_sync_bn_without_distributed_is_refused(cli_tmp, capsys):
    from cnn_cifar.cli import train
    with pytest.raises(SystemExit) as exc:
        train.main(["--sync-bn", "--epochs", "1"])
    assert exc.value.code == 2 and "--sync-bn needs --distributed" in capsys.readouterr().err
