#!/usr/bin/env python3
"""PyTorch interop, checked against PyTorch itself on the CIFAR-10 test set.

1. Each published option-A ResNet in ../shared/weights/akamaster is converted with convert_cli (no torch),
   evaluated here, and evaluated by PyTorch from the original file; predictions are compared image by
   image and logits element by element.
2. A model trained here (SimpleCNN, a short run) and a converted ResNet are written back with
   convert_cli --to-torch, loaded by PyTorch with torch.load(weights_only=True) and load_state_dict(strict=True)
   (SimpleCNN into shared/reference's twin), and their logits compared with ours.

    uv run python benchmarks/torch_interop.py [--data data] [--limit N]

PyTorch runs in bench-venv (see benchmarks/README.md); our side in this project's environment.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
CIFAR = ([0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616])


def torch_python() -> str:
    for cand in (ROOT / "bench-venv" / "bin" / "python",):
        if cand.is_file():
            return str(cand)
    raise SystemExit("error: no bench-venv with torch (see benchmarks/README.md)")


def test_images(data: Path, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    sys.path.insert(0, str(ROOT / "src"))
    from cnn_cifar.data import load_dataset
    ds = load_dataset("cifar10", data, download=False, progress=False)
    return ds.x_test[:limit], ds.y_test[:limit]


def ours_logits(ckpt: Path, x: np.ndarray) -> np.ndarray:
    """Our model's eval-mode logits, normalised as the checkpoint says (our loader's arithmetic)."""
    from cnn_cifar import nn
    from cnn_cifar.data import BatchLoader
    from cnn_cifar.data.datasets import CIFAR10
    from cnn_cifar.training import load_checkpoint
    ck = load_checkpoint(ckpt)
    model = ck.rebuild_model(source=str(ckpt))
    model.eval()
    mean, std = ck.normalization(CIFAR10.mean, CIFAR10.std)
    out = []
    with nn.no_grad():
        for xb, _ in BatchLoader(x, np.zeros(len(x), np.int64), 500, mean, std):
            out.append(np.array(model(xb)))
    return np.concatenate(out)


TORCH_SIDE = r'''
import json, sys
import numpy as np, torch, torch.nn as nn, torch.nn.functional as F
torch.set_num_threads(2)
args = json.loads(sys.argv[1])
sys.path.insert(0, args["twin_dir"])

class LambdaLayer(nn.Module):
    def __init__(self, fn):
        super().__init__(); self.fn = fn
    def forward(self, x):
        return self.fn(x)

class Block(nn.Module):            # akamaster/pytorch_resnet_cifar10's BasicBlock, option A
    def __init__(self, cin, planes, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False); self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False); self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != planes:
            self.shortcut = LambdaLayer(lambda x: F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4)))
    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))

class ResNetA(nn.Module):
    def __init__(self, n, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False); self.bn1 = nn.BatchNorm2d(16)
        cin, stages = 16, []
        for i, planes in enumerate((16, 32, 64)):
            blocks = []
            for b in range(n):
                blocks.append(Block(cin, planes, 2 if (i > 0 and b == 0) else 1)); cin = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(64, classes)
    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(F.adaptive_avg_pool2d(x, 1).flatten(1))

x = np.load(args["images"])
if args["arch"] == "simplecnn":
    import torch_twin
    model = torch_twin.SimpleCNN(num_classes=10)
else:
    model = ResNetA((int(args["arch"][len("resnet"):]) - 2) // 6)
obj = torch.load(args["file"], map_location="cpu", weights_only=args["weights_only"])
sd = obj["state_dict"] if "state_dict" in obj else obj
sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
model.load_state_dict(sd, strict=True)
model.eval()
mean = np.array(args["mean"], np.float32).reshape(1, 3, 1, 1)
std = np.array(args["std"], np.float32).reshape(1, 3, 1, 1)
out = []
with torch.no_grad():
    for i in range(0, len(x), 500):
        xb = (x[i:i + 500].astype(np.float32) / 255.0 - mean) / std
        out.append(model(torch.from_numpy(np.ascontiguousarray(xb))).numpy())
np.save(args["out"], np.concatenate(out))
print(torch.__version__)
'''


def torch_logits(arch: str, file: Path, images: Path, mean, std, tmp: Path,
                 weights_only: bool) -> tuple[np.ndarray, str]:
    out = tmp / f"torch-{arch}-{file.stem}.npy"
    spec = {"arch": arch, "file": str(file), "images": str(images), "mean": mean, "std": std, "out": str(out),
            "twin_dir": str(SHARED / "reference"), "weights_only": weights_only}
    p = subprocess.run([torch_python(), "-c", TORCH_SIDE, json.dumps(spec)], capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"PyTorch side failed for {file}:\n{p.stderr[-3000:]}")
    return np.load(out), p.stdout.strip()


def convert(*args: str) -> None:
    subprocess.run([sys.executable, str(ROOT / "src" / "convert_cli.py"), *args], check=True, stdout=subprocess.DEVNULL)


def compare(name: str, ours: np.ndarray, theirs: np.ndarray, y: np.ndarray) -> dict:
    row = {"case": name, "images": len(y), "ours_acc": float((ours.argmax(1) == y).mean()),
           "torch_acc": float((theirs.argmax(1) == y).mean()),
           "same_predictions": int((ours.argmax(1) == theirs.argmax(1)).sum()),
           "max_logit_diff": float(np.abs(ours - theirs).max())}
    print(f"{name:44s} ours {100 * row['ours_acc']:6.2f}%  torch {100 * row['torch_acc']:6.2f}%  same "
          f"prediction {row['same_predictions']}/{len(y)}  max |logit diff| {row['max_logit_diff']:.2e}", flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT / "data"))
    ap.add_argument("--limit", type=int, default=None, help="first N test images only")
    args = ap.parse_args()
    x, y = test_images(Path(args.data), args.limit)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        images = tmp / "x.npy"
        np.save(images, x)
        for arch, file in (("resnet20", "resnet20-12fca82f.th"), ("resnet32", "resnet32-d509ac18.th")):
            src = SHARED / "weights" / "akamaster" / file
            ck = tmp / f"{arch}.pkl"
            convert("--from-torch", str(src), "--model", arch, "--shortcut", "pad", "--mean", *map(str, IMAGENET[0]),
                    "--std", *map(str, IMAGENET[1]), "--out", str(ck))
            theirs, version = torch_logits(arch, src, images, *IMAGENET, tmp, weights_only=False)
            rows.append(compare(f"{file} -> ours (torch {version})", ours_logits(ck, x), theirs, y))
            back = tmp / f"{arch}-back.pt"                     # and back: our writer, torch's strict loader
            convert("--to-torch", str(ck), "--keys", "linear-head", "--out", str(back))
            theirs, _ = torch_logits(arch, back, images, *IMAGENET, tmp, weights_only=True)
            rows.append(compare(f"{arch} ours -> .pt -> torch (weights_only)", ours_logits(ck, x), theirs, y))
        # A model trained here, into the PyTorch twin.
        subprocess.run([sys.executable, str(ROOT / "src" / "train_cli.py"), "--model", "cnn", "--epochs", "1",
                        "--data", args.data, "--no-download", "--limit-train", "5000", "--checkpoint-dir",
                        str(tmp / "ck"), "--log-dir", str(tmp / "log"), "--quiet"],
                       check=True, stdout=subprocess.DEVNULL)
        pt = tmp / "cnn.pt"
        convert("--to-torch", str(tmp / "ck" / "cnn_last.pkl"), "--keys", "twin", "--out", str(pt))
        theirs, _ = torch_logits("simplecnn", pt, images, *CIFAR, tmp, weights_only=True)
        rows.append(compare("SimpleCNN trained here -> .pt -> torch twin", ours_logits(tmp / "ck" / "cnn_last.pkl", x),
                            theirs, y))
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
