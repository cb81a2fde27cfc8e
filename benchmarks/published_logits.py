#!/usr/bin/env python3
"""Golden logits of the published CIFAR ResNets, computed by PyTorch, for tests/test_published_weights.py.

akamaster/pytorch_resnet_cifar10's option-A ResNet-20 and ResNet-32 (the files in
../shared/weights/akamaster) are defined here in PyTorch, loaded from the original files with
``load_state_dict(strict=True)``, and run in eval mode on a few fixed, non-trivial inputs. The inputs
(already normalised, float32) and the logits go into tests/fixtures/published_resnet_logits.npz; the test
converts the same files with the library (no torch) and must reproduce these logits. A conversion that
scrambled same-shaped tensors, or a forward pass that differs from PyTorch's, changes them.

    bench-venv/bin/python benchmarks/published_logits.py

Run it with bench-venv (see benchmarks/README.md); it imports nothing from cnn_cifar, so the golden values
do not depend on the code they check. Rerun it only if the inputs (or the published files) change: the
fixture is written byte for byte reproducibly, so an unchanged rerun leaves git with nothing to commit.

Inputs: four uint8 images from ``np.random.default_rng(1234)`` and two smooth structured ones (a colour
ramp with ripples and a blurred blob-and-stripes pattern), scaled to [0, 1] and normalised with the
statistics akamaster's trainer used (mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225); cnn_cifar
records them only when ``convert_cli --from-torch`` is given ``--mean``/``--std``, as
benchmarks/torch_interop.py does). Either side receives the same stored float32 tensor, so the
normalisation does not enter the comparison; it only keeps the inputs in the range the networks saw.

Logits are computed in float64 (the float32 weights and inputs, widened exactly), so the fixture holds the
network's value on these inputs without float32 rounding; the printout also gives PyTorch's own float32
logits' distance from them, the scale of rounding a float32 implementation shows.
"""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT.parent / "shared" / "weights" / "akamaster"
FIXTURE = ROOT / "tests" / "fixtures" / "published_resnet_logits.npz"
FILES = {"resnet20": "resnet20-12fca82f.th", "resnet32": "resnet32-d509ac18.th"}
MEAN = np.array([0.485, 0.456, 0.406], np.float32)          # akamaster's trainer.py normalisation
STD = np.array([0.229, 0.224, 0.225], np.float32)


# ------------------------------------------------------------------ akamaster's option-A CIFAR ResNet
class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus the shortcut, then ReLU. Option A: where the shape changes the
    shortcut is x[:, :, ::2, ::2] with planes // 4 zero channels on each side (no parameters)."""

    def __init__(self, cin: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.pad = planes // 4 if (stride != 1 or cin != planes) else 0

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if not self.pad:
            return x
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNetA(nn.Module):
    """ResNet-(6n+2): 16-channel stem, stages of n blocks at 16/32/64 channels (stride 2 entering stages 2
    and 3), global average pool, linear 64 -> classes. Key names match akamaster's files (``linear`` head)."""

    def __init__(self, depth: int, classes: int = 10):
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        cin, stages = 16, []
        for i, planes in enumerate((16, 32, 64)):
            blocks = []
            for b in range(n):
                blocks.append(BasicBlock(cin, planes, 2 if (i > 0 and b == 0) else 1))
                cin = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(64, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(F.adaptive_avg_pool2d(x, 1).flatten(1))


def load_published(name: str) -> ResNetA:
    """The published file in eval mode, loaded strictly (every tensor used, none missing but
    num_batches_tracked, which these pre-1.0 files lack and BatchNorm fills in)."""
    obj = torch.load(WEIGHTS / FILES[name], map_location="cpu", weights_only=True)
    state = {k.removeprefix("module."): v for k, v in obj["state_dict"].items()}
    model = ResNetA(int(name[len("resnet"):]))
    model.load_state_dict(state, strict=True)
    return model.eval()


# ------------------------------------------------------------------ inputs
def make_inputs() -> np.ndarray:
    """Six normalised float32 images (6, 3, 32, 32): four uniform uint8 noise, two smooth structured."""
    rng = np.random.default_rng(1234)
    noise = rng.integers(0, 256, (4, 3, 32, 32), dtype=np.uint8).astype(np.float32)
    yy, xx = np.mgrid[0:32, 0:32].astype(np.float32) / 31.0
    ramp = np.stack([255 * xx, 255 * yy, 127.5 * (1 + np.sin(2 * np.pi * (2 * xx + 3 * yy)))])
    blob = np.exp(-((xx - 0.35) ** 2 + (yy - 0.6) ** 2) / 0.05)
    stripes = 0.5 * (1 + np.cos(2 * np.pi * 4 * (xx - 0.5 * yy)))
    pattern = np.stack([255 * blob, 255 * (0.6 * stripes + 0.4 * (1 - blob)), 255 * (1 - stripes) * (1 - blob)])
    pixels = np.concatenate([noise, np.round(np.stack([ramp, pattern]))])          # integer pixel values
    x = (pixels / 255.0 - MEAN.reshape(1, 3, 1, 1)) / STD.reshape(1, 3, 1, 1)
    return np.ascontiguousarray(x, dtype=np.float32)


# ------------------------------------------------------------------ fixture
def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez_compressed, but with fixed zip timestamps so equal arrays give equal bytes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for key, value in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, member.getvalue())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())


def main() -> None:
    torch.set_num_threads(2)
    x = make_inputs()
    arrays: dict[str, np.ndarray] = {"inputs": x}
    print(f"torch {torch.__version__}, numpy {np.__version__}; inputs {x.shape} {x.dtype}, "
          f"range [{x.min():.3f}, {x.max():.3f}]")
    for name, file in FILES.items():
        model = load_published(name)
        with torch.no_grad():
            f32 = model(torch.from_numpy(x)).numpy()
            f64 = model.double()(torch.from_numpy(x).double()).numpy()
        arrays[name] = f64
        arrays[f"{name}_file"] = np.array(file)
        top2 = np.sort(f64, axis=1)[:, -2:]
        print(f"{name} ({file}): argmax {f64.argmax(1).tolist()}, max |logit| {np.abs(f64).max():.3f}, "
              f"smallest top-1 margin {(top2[:, 1] - top2[:, 0]).min():.3f}, "
              f"torch float32 vs float64 max |diff| {np.abs(f32 - f64).max():.2e}")
    save_npz(FIXTURE, arrays)
    print(f"wrote {FIXTURE.relative_to(ROOT)} ({FIXTURE.stat().st_size} bytes): "
          + ", ".join(f"{k} {v.shape} {v.dtype}" for k, v in arrays.items()))


if __name__ == "__main__":
    main()
