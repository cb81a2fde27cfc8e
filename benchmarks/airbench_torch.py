#!/usr/bin/env python3
"""The PyTorch twin of ``--model airbench94``: the same network and recipe written from the same description
(docs/airbench.md), fed by the same data copy, timed the same way. Run it with an interpreter that has
PyTorch (the benchmark venv); it imports nothing from this project.

    bench-venv/bin/python benchmarks/airbench_torch.py --data data                 # the full recipe, 2 threads
    bench-venv/bin/python benchmarks/airbench_torch.py --data data --epochs 1 --json out.json

Everything is torch on the CPU's threads (``--threads``, default 2) or on ``--device cuda``: loading the
official-format batches, normalising, the whitening init, the per-epoch translation and alternating flip of
the whole set, training, evaluation. Time to result is counted as the paper counts it: the whitening init,
the training epochs (their data work included) and the final six-view evaluation; the per-epoch evaluations
are timed and reported beside it. ``--amp`` trains and evaluates under float16 autocast (GPU only).
"""
from __future__ import annotations

import argparse
import json
import math
import pickle
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as tnn
import torch.nn.functional as F

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
WIDTHS = (64, 256, 256)
BATCH, MOMENTUM, EPOCHS = 1024, 0.85, 9.9
# lr 11.5 and weight decay 0.0153 per 1024 examples, the momentum's gain divided out (see the recipe).
S = 1024 * (1 + 1 / (1 - MOMENTUM))
LR, WD = 11.5 / S, 0.0153 * BATCH / S
BN_LR_SCALE, LABEL_SMOOTHING, LOOKAHEAD_PERIOD, WHITEN_BIAS_EPOCHS = 64.0, 0.2, 5, 3
LR_POINTS = ((0.0, 0.2), (0.23, 1.0), (1.0, 0.07))


# ----------------------------------------------------------------------------------- data
def load_cifar10(root: Path, device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """uint8 images (N, 3, 32, 32) and int64 labels of the official python batches under root."""
    folder = root / "cifar-10-batches-py"

    def read(names):
        xs, ys = [], []
        for name in names:
            with open(folder / name, "rb") as f:
                d = pickle.load(f, encoding="bytes")
            xs.append(np.asarray(d[b"data"], np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(d[b"labels"], np.int64))
        return torch.from_numpy(np.concatenate(xs)).to(device), torch.from_numpy(np.concatenate(ys)).to(device)

    x_train, y_train = read([f"data_batch_{i}" for i in range(1, 6)])
    x_test, y_test = read(["test_batch"])
    return x_train, y_train, x_test, y_test


def normalise(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=x.device).view(1, 3, 1, 1)
    return (x.float() / 255 - mean) / std


def reflect_pad(x: torch.Tensor, pad: int) -> torch.Tensor:
    """(N, C, H, W) padded by ``pad`` on each side, mirrored without repeating the edge (PyTorch's 'reflect'),
    by gathering rows and columns: works on uint8, which F.pad's reflect mode does not take."""
    def index(size: int) -> torch.Tensor:
        i = torch.arange(-pad, size + pad, device=x.device).abs()
        return torch.where(i >= size, 2 * (size - 1) - i, i)
    return x.index_select(2, index(x.shape[2])).index_select(3, index(x.shape[3]))


def translate(x: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
    """Each image shifted by up to ``pad`` pixels each way (a random crop of its reflect-padded copy), the whole
    set at once: one slice per shift, not one per image."""
    n, _, h, w = x.shape
    padded = reflect_pad(x, pad)
    shifts = torch.randint(0, 2 * pad + 1, (2, n), generator=gen, device="cpu").to(x.device)
    out = torch.empty_like(x)
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            sel = ((shifts[0] == dy) & (shifts[1] == dx)).nonzero().squeeze(1)
            out[sel] = padded[sel, :, dy:dy + h, dx:dx + w]
    return out


def epoch_images(x: torch.Tensor, epoch: int, flip_first: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """The epoch's augmented training set (uint8, as stored): translated by up to 2 pixels, and mirrored where
    ``flip_first`` on even epochs, elsewhere on odd ones (the alternating flip)."""
    x = translate(x, 2, gen)
    mask = flip_first if epoch % 2 == 0 else ~flip_first
    return torch.where(mask.view(-1, 1, 1, 1), x.flip(3), x)


# ----------------------------------------------------------------------------------- network
class BatchNorm(tnn.BatchNorm2d):
    """eps 1e-12, momentum 0.4, the weight fixed at 1 (only the bias trains)."""

    def __init__(self, c: int):
        super().__init__(c, eps=1e-12, momentum=0.4)
        self.weight.requires_grad = False


def conv(cin: int, cout: int) -> tnn.Conv2d:
    c = tnn.Conv2d(cin, cout, 3, padding=1, bias=False)
    with torch.no_grad():
        tnn.init.dirac_(c.weight[:cin])
    return c


class ConvGroup(tnn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__(conv(cin, cout), tnn.MaxPool2d(2), BatchNorm(cout), tnn.GELU(),
                         conv(cout, cout), BatchNorm(cout), tnn.GELU())


class Airbench94(tnn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.whiten = tnn.Conv2d(3, 24, 2, padding=0, bias=True)
        self.whiten.weight.requires_grad = False
        self.body = tnn.Sequential(tnn.GELU(), ConvGroup(24, WIDTHS[0]), ConvGroup(WIDTHS[0], WIDTHS[1]),
                                   ConvGroup(WIDTHS[1], WIDTHS[2]), tnn.MaxPool2d(3), tnn.Flatten())
        self.fc = tnn.Linear(WIDTHS[2], num_classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(self.whiten(x))) / 9

    @torch.no_grad()
    def init_whitening(self, images: torch.Tensor, eps: float = 5e-4) -> None:
        """Eigenvectors of the 2x2 patches' uncentred covariance over sqrt(eigenvalue + eps), largest first,
        stacked with their negatives."""
        patches = images.double().unfold(2, 2, 1).unfold(3, 2, 1)             # N, C, H-1, W-1, 2, 2
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, 12)
        cov = patches.T @ patches / len(patches)
        values, vectors = torch.linalg.eigh(cov)
        filters = (vectors.flip(1) / torch.sqrt(values.flip(0) + eps)).T.reshape(-1, 3, 2, 2)
        self.whiten.weight.copy_(torch.cat([filters, -filters]).float())


def tta_logits(model: tnn.Module, x: torch.Tensor) -> torch.Tensor:
    """Six views: half the mirror-averaged logits, half the mean of the mirror-averaged logits of the image
    translated one pixel up-left and down-right (reflect-padded)."""
    def mirrored(v):
        return 0.5 * (model(v) + model(v.flip(3)))
    h, w = x.shape[2:]
    padded = F.pad(x, (1,) * 4, mode="reflect")
    shifted = mirrored(padded[:, :, 0:h, 0:w]) + mirrored(padded[:, :, 2:h + 2, 2:w + 2])
    return 0.5 * mirrored(x) + 0.25 * shifted


@torch.no_grad()
def evaluate(model: tnn.Module, x: torch.Tensor, y: torch.Tensor, tta: bool, amp: bool, batch: int = 1000) -> float:
    """Accuracy on uint8 images ``x`` (normalised a batch at a time)."""
    model.eval()
    correct = 0
    with torch.autocast(x.device.type, dtype=torch.float16, enabled=amp):
        for i in range(0, len(x), batch):
            xb = normalise(x[i:i + batch])
            logits = tta_logits(model, xb) if tta else model(xb)
            correct += int((logits.argmax(1) == y[i:i + batch]).sum())
    model.train()
    return correct / len(x)


def lr_factor(progress: float) -> float:
    return float(np.interp(progress, [p for p, _ in LR_POINTS], [f for _, f in LR_POINTS]))


# ----------------------------------------------------------------------------------- the run
def run(args: argparse.Namespace) -> dict:
    device = args.device
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    t_start = time.perf_counter()
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    # The images stay uint8 (as loaded) and are normalised a batch at a time, as this project's loader does:
    # holding the set as float32 costs 600 MB, and the step slows by a fifth beside it on the CPU.
    x_train, y_train, x_test, y_test = load_cifar10(Path(args.data), device)
    x_train, y_train = x_train[:args.limit_train], y_train[:args.limit_train]
    x_test, y_test = x_test[:args.limit_test], y_test[:args.limit_test]
    model = Airbench94().to(device)
    sync()
    t0 = time.perf_counter()
    model.init_whitening(normalise(x_train[:5000]))
    sync()
    init_s = time.perf_counter() - t0

    norm_biases = [m.bias for m in model.modules() if isinstance(m, BatchNorm)]
    ids = {id(p) for p in norm_biases}
    others = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    opt = torch.optim.SGD([{"params": norm_biases, "lr": LR * BN_LR_SCALE, "weight_decay": WD / (LR * BN_LR_SCALE)},
                           {"params": others, "lr": LR, "weight_decay": WD / LR}], momentum=MOMENTUM, nesterov=True)
    batch = args.batch_size
    steps_per_epoch = len(x_train) // batch
    total = math.ceil(args.epochs * steps_per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: lr_factor(k / total))
    crit = tnn.CrossEntropyLoss(label_smoothing=LABEL_SMOOTHING, reduction="sum")
    scaler = torch.amp.GradScaler(device, enabled=args.amp)
    slow = {k: v.clone() for k, v in model.state_dict().items() if v.dtype.is_floating_point}

    def pull(decay: float) -> None:
        with torch.no_grad():
            for k, v in model.state_dict().items():
                if v.dtype.is_floating_point:
                    slow[k].lerp_(v, 1 - decay)
                    v.copy_(slow[k])

    flip_first = torch.rand(len(x_train), generator=gen).to(device) < 0.5
    step, train_s, eval_s, history = 0, 0.0, 0.0, []
    for epoch in range(math.ceil(total / steps_per_epoch)):
        sync()
        t0 = time.perf_counter()
        model.whiten.bias.requires_grad = epoch < WHITEN_BIAS_EPOCHS
        images = epoch_images(x_train, epoch, flip_first, gen)
        order = torch.randperm(len(x_train), generator=gen).to(device)
        loss_sum = 0.0
        for i in range(steps_per_epoch):
            if step >= total:
                break
            idx = order[i * batch:(i + 1) * batch]
            with torch.autocast(device, dtype=torch.float16, enabled=args.amp):
                loss = crit(model(normalise(images[idx])), y_train[idx])
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            step += 1
            if step % LOOKAHEAD_PERIOD == 0:
                pull(0.95 ** LOOKAHEAD_PERIOD * (step / total) ** 3)
            if step == total:
                pull(1.0)                                    # the network is the slow weights
            loss_sum += float(loss.detach()) if i % 16 == 0 else 0.0
        sync()
        train_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        acc = evaluate(model, x_test, y_test, tta=False, amp=args.amp)
        eval_s += time.perf_counter() - t0
        history.append({"epoch": epoch + 1, "test_acc": acc, "train_seconds": train_s})
        print(f"epoch {epoch + 1:>2}  test acc {100 * acc:6.2f}%  training {train_s:7.1f}s", flush=True)
    t0 = time.perf_counter()
    tta_acc = evaluate(model, x_test, y_test, tta=True, amp=args.amp)
    tta_s = time.perf_counter() - t0
    result = {"framework": f"torch {torch.__version__}", "device": device, "threads": torch.get_num_threads(),
              "amp": args.amp, "epochs": args.epochs, "steps": step, "test_acc": history[-1]["test_acc"],
              "tta_acc": tta_acc, "init_seconds": init_s, "train_seconds": train_s, "tta_seconds": tta_s,
              "time_to_result": init_s + train_s + tta_s, "eval_seconds": eval_s,
              "wall_seconds": time.perf_counter() - t_start, "history": history}
    print(f"test accuracy {100 * result['test_acc']:.2f}%, with flip-translate TTA {100 * tta_acc:.2f}%; time to "
          f"result {result['time_to_result']:.1f}s (initialisation {init_s:.1f}s, training {train_s:.1f}s, final "
          f"TTA evaluation {tta_s:.1f}s); per-epoch evaluations {eval_s:.1f}s besides; wall clock "
          f"{result['wall_seconds']:.1f}s", flush=True)
    return result


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="data", help="folder holding cifar-10-batches-py")
    ap.add_argument("--epochs", type=float, default=EPOCHS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--amp", action="store_true", help="float16 autocast (GPU)")
    ap.add_argument("--limit-train", type=int, default=None, help="the first N training images only (checks)")
    ap.add_argument("--limit-test", type=int, default=None, help="the first N test images only (checks)")
    ap.add_argument("--batch-size", type=int, default=BATCH,
                    help="batch size; lr and weight decay stay the recipe's (as train_cli's --batch-size)")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    result = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
