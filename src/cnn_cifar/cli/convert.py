"""convert_cli: PyTorch checkpoint files to our checkpoints and back, without torch installed; our checkpoints
to ONNX."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..interop import KEY_STYLES, OPSET, find_state_dict, from_torch, load, save, save_onnx, to_onnx, to_torch
from ..models import list_models
from ..nn.residual import SHORTCUTS
from ..training import load_checkpoint, save_checkpoint
from . import common as C


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="convert_cli.py", description="Convert PyTorch checkpoint files (.pt/.pth/.th, zip or legacy "
        "format) to cnn-cifar-10 checkpoints, and back (no torch needed); export checkpoints to ONNX.")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--from-torch", metavar="FILE", help="a PyTorch state dict file to convert")
    what.add_argument("--to-torch", metavar="CKPT", help="one of our checkpoints to write as a PyTorch file")
    what.add_argument("--to-onnx", metavar="CKPT",
                      help=f"one of our checkpoints to write as an ONNX model (opset {OPSET}) for inference: input "
                           "'images' float32 [N, 3, 32, 32] in [0, 1] (normalised inside), output 'logits'")
    what.add_argument("--weights-only", metavar="CKPT", help="one of our checkpoints without its optimizer state, "
                      "random streams and history (for publishing; it no longer resumes a run)")
    p.add_argument("--out", required=True, help="the file to write (.pkl for ours, .pt for PyTorch, .onnx for ONNX)")
    p.add_argument("--model", choices=list_models(), help="--from-torch: the architecture the weights are for")
    p.add_argument("--shortcut", choices=SHORTCUTS, default=None,
                   help="--from-torch, ResNets: 'pad' (option A: published CIFAR ResNets) or 'projection'")
    p.add_argument("--mean", type=float, nargs=3, metavar=("R", "G", "B"), default=None,
                   help="--from-torch: per-channel mean the weights were trained with, on [0, 1] pixels "
                        "[the dataset's]")
    p.add_argument("--std", type=float, nargs=3, metavar=("R", "G", "B"), default=None,
                   help="--from-torch: per-channel std the weights were trained with [the dataset's]")
    p.add_argument("--keys", choices=KEY_STYLES, default="ours",
                   help="--to-torch: key names to write: ours (PyTorch's usual names), linear-head (the CIFAR "
                        "ResNets' 'linear' head) or twin (shared/reference's PyTorch twin) [ours]")
    return p


def _main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.from_torch:
        if not args.model:
            parser.error("--from-torch needs --model")
        if (args.mean is None) != (args.std is None):
            parser.error("give both --mean and --std, or neither")
        if args.std is not None and min(args.std) <= 0:
            parser.error("--std values must be positive")
        options = {"shortcut": args.shortcut} if args.shortcut else {}
        ck = from_torch(find_state_dict(load(args.from_torch)), args.model, args.mean, args.std, **options)
        save_checkpoint(args.out, ck)
        n = sum(v.size for k, v in ck.state_dict.items() if "running" not in k and "num_batches" not in k)
        print(f"wrote {args.out}: {ck.model} ({ck.model_config.get('num_classes')} classes, {n:,} parameters, "
              f"keys as '{ck.args['key_style']}')"
              + (f", normalisation mean {tuple(args.mean)} std {tuple(args.std)}" if args.mean else ""))
    elif args.mean or args.std or args.model or args.shortcut:
        parser.error("--model, --shortcut, --mean and --std apply to --from-torch only")
    elif args.weights_only:
        ck = load_checkpoint(args.weights_only).weights_only()
        save_checkpoint(args.out, ck)
        print(f"wrote {args.out}: {ck.model} weights, buffers, model config and normalisation "
              f"({Path(args.out).stat().st_size / 2 ** 20:.2f} MiB)")
    elif args.to_onnx:
        ck = load_checkpoint(args.to_onnx)
        proto = to_onnx(ck, source=args.to_onnx)
        save_onnx(args.out, proto)
        classes = proto.graph.output[0].type.tensor_type.shape.dim[1].dim_value
        print(f"wrote {args.out}: {ck.model} as ONNX (opset {OPSET}, checked): input 'images' float32 "
              f"[N, 3, 32, 32] in [0, 1], output 'logits' [N, {classes}]; normalisation and class names inside "
              f"({Path(args.out).stat().st_size / 2 ** 20:.2f} MiB)")
    else:
        ck = load_checkpoint(args.to_torch)
        save(args.out, to_torch(ck, args.keys))
        print(f"wrote {args.out}: {ck.model} as a PyTorch state dict (keys: {args.keys}); load it with "
              f"torch.load(path, weights_only=True)")
    return 0


def main(argv: list[str] | None = None) -> int:
    return C.run(lambda: _main(argv))


if __name__ == "__main__":
    sys.exit(main())
