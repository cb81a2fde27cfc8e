#!/usr/bin/env python3
"""PyTorch twins of the model zoo (net-basic, net-dilated, cifarnet, senet), for side-by-side accuracy and
throughput. Run with an interpreter that has PyTorch (the benchmark venv); never a project dependency.

    bench-venv/bin/python benchmarks/torch_zoo.py params
    bench-venv/bin/python benchmarks/torch_zoo.py train --model cifarnet --epochs 5 --data data

``train`` runs the model's registered recipe with the schedule compressed to --epochs exactly as
``train_cli.py --model M --epochs N`` does: the batches (order, augmentation), the learning rate of every
step and the plateau logic come from this project's own data pipeline and schedules, so only the network,
its initialisation, the optimizer and the loss are PyTorch's. It prints one line per epoch.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as tnn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def _bn_relu_drop(c: int, p: float, spatial: bool = False) -> list[tnn.Module]:
    return [tnn.BatchNorm2d(c), tnn.ReLU(inplace=True), (tnn.Dropout2d if spatial else tnn.Dropout)(p)]


def net_basic(num_classes: int = 10, dropout: float = 0.5) -> tnn.Module:
    return tnn.Sequential(
        tnn.Conv2d(3, 32, 3, padding=1), tnn.ReLU(inplace=True), tnn.MaxPool2d(2),
        tnn.Conv2d(32, 64, 3, padding=1), tnn.ReLU(inplace=True), tnn.MaxPool2d(2),
        tnn.Conv2d(64, 128, 3, padding=1), tnn.ReLU(inplace=True), tnn.MaxPool2d(2),
        tnn.Flatten(), tnn.Linear(2048, 256), tnn.ReLU(inplace=True), tnn.Dropout(dropout),
        tnn.Linear(256, num_classes))


def net_dilated(num_classes: int = 10, dropout: float = 0.05) -> tnn.Module:
    from cnn_cifar.models.net_dilated import LAYERS
    mods: list[tnn.Module] = []
    for block, layers in LAYERS:
        for cin, cout, k, s, p, d, g, regular in layers:
            mods.append(tnn.Conv2d(cin, cout, k, stride=s, padding=p, dilation=d, groups=g, bias=False))
            if regular:
                mods += _bn_relu_drop(cout, dropout)
        if block == "c3":
            mods.append(tnn.AvgPool2d(2))
        if block == "c4":
            mods.append(tnn.AvgPool2d(5))
    return tnn.Sequential(*mods, tnn.Conv2d(64, num_classes, 1, bias=False), tnn.Flatten())


class Residual(tnn.Module):
    def __init__(self, main: tnn.Module, shortcut: tnn.Module | None = None):
        super().__init__()
        self.main, self.shortcut = main, shortcut or tnn.Identity()

    def forward(self, x):
        return self.main(x) + self.shortcut(x)


def _separable(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> list[tnn.Module]:
    return [tnn.Conv2d(cin, cin, 3, stride, dilation, dilation, groups=cin, bias=False),
            tnn.Conv2d(cin, cout, 1, bias=False), tnn.BatchNorm2d(cout)]


def cifarnet(num_classes: int = 10, dropout: float = 0.05) -> tnn.Module:
    def after():
        return [tnn.ReLU(inplace=True), tnn.Dropout2d(dropout)]

    def projected(cin, cout, dilation):
        return Residual(tnn.Sequential(*_separable(cin, cout, dilation=dilation)),
                        tnn.Sequential(tnn.Conv2d(cin, cout, 1, bias=False), tnn.BatchNorm2d(cout)))
    return tnn.Sequential(
        tnn.Conv2d(3, 40, 3, padding=1, bias=False), tnn.BatchNorm2d(40), *after(),
        projected(40, 128, 1), *after(), projected(128, 240, 4), *after(),
        *_separable(240, 384, stride=2), *after(),
        tnn.AdaptiveAvgPool2d(1), tnn.Flatten(), tnn.Linear(384, num_classes))


class SE(tnn.Module):
    def __init__(self, c: int, squeeze: int):
        super().__init__()
        self.fc1, self.fc2 = tnn.Linear(c, squeeze), tnn.Linear(squeeze, c)

    def forward(self, x):
        s = torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean((2, 3))))))
        return x * s[:, :, None, None]


def senet(num_classes: int = 10, dropout: float = 0.0) -> tnn.Module:
    from cnn_cifar.models.senet import BLOCKS, SE_REDUCTION
    blocks = []
    for cin, cout, s in BLOCKS:
        body = tnn.Sequential(tnn.Conv2d(cin, cin, 3, s, 1, groups=cin, bias=False), tnn.BatchNorm2d(cin),
                              tnn.ReLU(inplace=True), tnn.Conv2d(cin, cout, 1, bias=False), tnn.BatchNorm2d(cout),
                              tnn.ReLU(inplace=True), SE(cout, cout // SE_REDUCTION))
        blocks.append(Residual(body) if cin == cout and s == 1 else body)
    return tnn.Sequential(tnn.Conv2d(3, 32, 3, padding=1, bias=False), tnn.BatchNorm2d(32), tnn.ReLU(inplace=True),
                          *blocks, tnn.AdaptiveAvgPool2d(1), tnn.Flatten(), tnn.Dropout(dropout),
                          tnn.Linear(256, num_classes))


TWINS = {"net-basic": net_basic, "net-dilated": net_dilated, "cifarnet": cifarnet, "senet": senet}


def build_torch(name: str, num_classes: int = 10, dropout: float | None = None) -> tnn.Module:
    from cnn_cifar.models import recipe
    return TWINS[name](num_classes, recipe(name).dropout_rate if dropout is None else dropout)


def _evaluate(model, loader) -> tuple[float, float]:
    model.eval()
    loss, correct, n = 0.0, 0, 0
    with torch.no_grad():
        for x, y in loader:
            out = model(torch.from_numpy(x))
            yt = torch.from_numpy(np.asarray(y, np.int64))
            loss += float(tnn.functional.cross_entropy(out, yt, reduction="sum"))
            correct += int((out.argmax(1) == yt).sum())
            n += len(yt)
    return loss / n, correct / n


def cmd_train(a) -> None:
    from cnn_cifar.data import BatchLoader, load_dataset
    from cnn_cifar.training import resolve
    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads)
    cfg = resolve({"model": a.model, "epochs": a.epochs, "seed": a.seed, "data": a.data})
    ds = load_dataset(cfg.dataset, cfg.data, download=False)
    rng = np.random.default_rng(cfg.seed)
    train = BatchLoader(ds.x_train[:a.limit_train], ds.y_train[:a.limit_train], cfg.batch_size, ds.spec.mean,
                        ds.spec.std, shuffle=True, augment_cfg=cfg.augmentation(), rng=rng, drop_last=True)
    test = BatchLoader(ds.x_test[:a.limit_test], ds.y_test[:a.limit_test], 500, ds.spec.mean, ds.spec.std)
    model = build_torch(a.model)
    if cfg.optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                               weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                              weight_decay=cfg.weight_decay)
    schedule = cfg.make_lr_schedule(steps_per_epoch=len(train))
    crit = tnn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    params = sum(p.numel() for p in model.parameters())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads: {a.model} ({params:,} parameters), "
          f"{cfg.epochs} epochs of its recipe", flush=True)
    steps = len(train)
    for epoch in range(cfg.epochs):
        model.train()
        t0, seen, correct, loss_sum = time.perf_counter(), 0, 0, 0.0
        for step, (x, y) in enumerate(train):
            lr = schedule(epoch + (step + 1) / steps)
            for g in opt.param_groups:
                g["lr"] = lr
            xt, yt = torch.from_numpy(x), torch.from_numpy(np.asarray(y, np.int64))
            opt.zero_grad(set_to_none=True)
            out = model(xt)
            loss = crit(out, yt)
            loss.backward()
            if cfg.clip_grad_norm:
                tnn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad_norm)
            opt.step()
            loss_sum += loss.item() * len(yt)
            correct += int((out.argmax(1) == yt).sum())
            seen += len(yt)
        seconds = time.perf_counter() - t0
        test_loss, test_acc = _evaluate(model, test)
        if hasattr(schedule, "step"):
            schedule.step(test_loss)
        print(f"epoch {epoch + 1:>3}/{cfg.epochs}  train loss {loss_sum / seen:.4f} acc {100 * correct / seen:6.2f}%  "
              f"test loss {test_loss:.4f} acc {100 * test_acc:6.2f}%  lr {lr:.6f}  {seconds:6.1f}s", flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("params", help="parameter counts of the twins")
    t = sub.add_parser("train", help="train a twin with its model's recipe")
    t.add_argument("--model", required=True, choices=list(TWINS))
    t.add_argument("--epochs", type=int, default=5)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--data", default="data")
    t.add_argument("--threads", type=int, default=1)
    t.add_argument("--limit-train", type=int, default=None, help="use only the first N training images")
    t.add_argument("--limit-test", type=int, default=None, help="use only the first N test images")
    a = p.parse_args()
    if a.cmd == "params":
        for name in TWINS:
            print(f"{name:<12} {sum(q.numel() for q in build_torch(name).parameters()):>9,}")
        return 0
    cmd_train(a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
