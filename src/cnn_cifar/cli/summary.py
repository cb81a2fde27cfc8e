"""--summary: a torchsummary-style table of a model (layer, output shape, parameters, multiply-adds).

The shapes come from one eval-mode forward of a 1-image batch, recording what each leaf module (one with
no children) returns; multiply-adds are counted for convolutions and linear layers only (per image:
output elements times the weights each one reads), as most tools do.
"""
from __future__ import annotations

import numpy as np

from .. import backend, nn
from ..nn import fold


def layer_rows(model: nn.Module, input_shape: tuple[int, ...] = (1, 3, 32, 32)) -> list[dict]:
    """One row per leaf-module call, in call order: name, type, output shape, parameters, multiply-adds."""
    rows: list[dict] = []
    leaves = [(name, m) for name, m in model.named_modules() if not m._modules]

    def recording(name: str, m: nn.Module):
        forward = m.forward

        def run(x, *args, **kwargs):
            y = forward(x, *args, **kwargs)
            params = sum(p.size for p in m._parameters.values())
            w = m._parameters.get("weight")
            macs = int(y.size // y.shape[0] * (w.size // w.shape[0])) if isinstance(m, (nn.Conv2d, nn.Linear)) else 0
            rows.append({"name": name, "type": type(m).__name__, "output": tuple(int(d) for d in y.shape),
                         "params": int(params), "macs": macs})
            return y
        return run

    was_training = model.training
    for name, m in leaves:
        object.__setattr__(m, "forward", recording(name, m))
    try:
        model.eval()
        with nn.no_grad(), fold.layer_by_layer():          # every layer's own call, none folded into another
            model(backend.to_device(np.zeros(input_shape, np.float32)))
    finally:
        for _, m in leaves:
            m.__dict__.pop("forward", None)
        model.train(was_training)
    return rows


def format_summary(model: nn.Module, input_shape: tuple[int, ...] = (1, 3, 32, 32)) -> str:
    rows = layer_rows(model, input_shape)
    width = max(len("Layer (type)"), *(len(f"{r['name']} ({r['type']})") for r in rows))
    rule = "-" * (width + 56)
    lines = [rule, f"{'Layer (type)':<{width}}  {'Output Shape':>20}  {'Param #':>14}  {'Mult-Adds':>14}",
             "=" * len(rule)]
    for r in rows:
        shape = "[" + ", ".join(["-1", *map(str, r["output"][1:])]) + "]"
        lines.append(f"{r['name'] + ' (' + r['type'] + ')':<{width}}  {shape:>20}  {r['params']:>14,}"
                     f"  {r['macs']:>14,}")
    total = model.num_parameters()
    buffers = sum(int(np.size(b)) for _, b in model.named_buffers())
    activations = sum(int(np.prod(r["output"])) for r in rows) * 4 / 2 ** 20
    lines += ["=" * len(rule),
              f"Total params: {total:,}", f"Trainable params: {total:,}",
              f"Non-trainable params: 0 (buffers: {buffers:,} values, batch-norm statistics)",
              f"Mult-adds per image: {sum(r['macs'] for r in rows):,} ({sum(r['macs'] for r in rows) / 1e6:.2f} M)",
              rule,
              f"Input size (MB): {np.prod(input_shape) * 4 / 2 ** 20:.2f}",
              f"Forward activations (MB): {activations:.2f}",
              f"Params size (MB): {total * 4 / 2 ** 20:.2f}", rule]
    return "\n".join(lines)
