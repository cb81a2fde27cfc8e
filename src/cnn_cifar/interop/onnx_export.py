"""ONNX export: a checkpoint's model in inference mode as an ONNX graph that takes [0, 1] RGB images.

The graph is built one layer at a time: ``CONVERTERS`` maps each layer class to a function that appends that
layer's nodes and initializers to a ``GraphBuilder``, given the name of its input (and the extra inputs its
forward takes: BatchNormAddReLU2d's residual), and returns the name of its output. Containers and blocks
(``Sequential``, the models' ``ChainModel``, ``ResidualSum``, ``BasicBlock``, ``PadShortcut``,
``SqueezeExcitation``) have converters too, which compose their children as their forward does, so a model
exports when every module its forward runs has one. A layer without one is an ``OnnxExportError`` naming it.

Inference mode throughout: batch norm with its running statistics, folded into the per-channel multiply-add
that our eval forward computes (the same float32 scale and shift, so the graph does the same arithmetic),
dropout omitted. The input normalisation the weights expect comes first in the graph, so a deployment feeds
plain pixels. The exported weights are the checkpoint's ``state_dict``, the ones ``test_cli`` evaluates: for
a run with ``--ema`` that is the weights' average (the trainer saves it there; the training weights ride in
the optimizer state and are not exported).

``onnx`` is imported inside the functions that build a graph, never at import time: the library trains
without it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from .. import backend, nn
from ..inference import class_names, normalization
from ..models.base import ChainModel
from ..training.atomic import atomic_write
from ..training.checkpoint import Checkpoint

if TYPE_CHECKING:
    import onnx

OPSET = 17
"""The ONNX operator set of every export (ONNX 1.12, onnxruntime 1.13 and later run it)."""
IR_VERSION = 8
"""The file format version that goes with opset 17, so older runtimes read the file too."""
INPUT, OUTPUT = "images", "logits"
IMAGE_SHAPE = (3, 32, 32)


class OnnxExportError(ValueError):
    """A model cannot be exported: a layer without a converter, a graph that fails ONNX's checks, or no
    ``onnx`` package (the message says which)."""


def _onnx():
    """The ``onnx`` module, or a one-line OnnxExportError saying how to get it."""
    try:
        import onnx
        import onnx.numpy_helper
        import onnx.shape_inference
    except ImportError:
        raise OnnxExportError("ONNX export needs the onnx package (in the dev group: uv sync; or "
                              "pip install onnx)") from None
    return onnx


def _path(m: nn.Module) -> str:
    """The module's dotted position in the model ('model' for the model itself): node and weight names."""
    return m._path or "model"


class GraphBuilder:
    """The nodes and initializers of a graph under construction, each under a name of its own."""

    def __init__(self) -> None:
        self._onnx = _onnx()
        self.nodes: list = []
        self.initializers: list = []
        self._used: set[str] = {INPUT, OUTPUT}

    def _unique(self, name: str) -> str:
        candidate, i = name, 1
        while candidate in self._used:
            i += 1
            candidate = f"{name}_{i}"
        self._used.add(candidate)
        return candidate

    def const(self, name: str, value: object, dtype: type = np.float32) -> str:
        """Add ``value`` (host or device array, or a list) as an initializer of ``dtype``; returns its name."""
        array = np.ascontiguousarray(backend.to_numpy(value), dtype=dtype)
        name = self._unique(name)
        self.initializers.append(self._onnx.numpy_helper.from_array(array, name))
        return name

    def node(self, op: str, inputs: Sequence[str], name: str, **attributes: object) -> str:
        """Append an ``op`` node on ``inputs``; its output (and the node) is named ``name``, made unique."""
        out = self._unique(name)
        self.nodes.append(self._onnx.helper.make_node(op, list(inputs), [out], name=out, **attributes))
        return out

    def convert(self, module: nn.Module, x: str, *extra: str) -> str:
        """Append ``module(x, *extra)`` in inference mode; returns the name of its output."""
        convert = converter_for(module)
        if convert is None:
            where = f"layer '{module._path}'" if module._path else "model"
            raise OnnxExportError(f"cannot export {where} ({type(module).__name__}) to ONNX")
        return convert(self, module, x, *extra)


Converter = Callable[..., str]
"""convert(builder, module, x, *extra) -> output name, appending what ``module(x, *extra)`` computes."""


def converter_for(module: nn.Module) -> Converter | None:
    """The converter of the nearest class in ``module``'s MRO that has one, provided ``module`` runs that
    class's forward: a subclass with a forward of its own computes something else and gets None."""
    for cls in type(module).__mro__:
        convert = CONVERTERS.get(cls)
        if convert is not None:
            return convert if type(module).forward is cls.forward else None
    return None


# -- layers -----------------------------------------------------------------------------------------------
def _conv2d(g: GraphBuilder, m: nn.Conv2d, x: str) -> str:
    name = _path(m)
    inputs = [x, g.const(f"{name}.weight", m.weight.data)]
    if m.bias is not None:
        inputs.append(g.const(f"{name}.bias", m.bias.data))
    ph, pw = m.padding
    return g.node("Conv", inputs, name, kernel_shape=list(m.kernel_size), strides=list(m.stride),
                  pads=[ph, pw, ph, pw], dilations=list(m.dilation), group=m.groups)


def _batch_norm(g: GraphBuilder, m: nn.BatchNorm1d | nn.BatchNorm2d | nn.BatchNormReLU2d | nn.BatchNormAddReLU2d,
                x: str) -> str:
    """x * scale + shift with scale = weight / sqrt(running_var + eps), shift = bias - running_mean * scale,
    computed as the eval forward computes them."""
    name = _path(m)
    xp = backend.get_array_module(m.running_var)
    scale = m.weight.data * (1.0 / xp.sqrt(m.running_var + m.eps))
    shift = m.bias.data - m.running_mean * scale
    shape = (-1,) if isinstance(m, nn.BatchNorm1d) else (-1, 1, 1)
    y = g.node("Mul", [x, g.const(f"{name}.scale", scale.reshape(shape))], f"{name}/scale")
    return g.node("Add", [y, g.const(f"{name}.shift", shift.reshape(shape))], name)


def _batch_norm_relu(g: GraphBuilder, m: nn.BatchNormReLU2d, x: str) -> str:
    """relu(bn(x))."""
    return g.node("Relu", [_batch_norm(g, m, x)], f"{_path(m)}/relu")


def _batch_norm_add_relu(g: GraphBuilder, m: nn.BatchNormAddReLU2d, x: str, residual: str) -> str:
    """relu(bn(x) + residual)."""
    name = _path(m)
    y = g.node("Add", [_batch_norm(g, m, x), residual], f"{name}/add_residual")
    return g.node("Relu", [y], f"{name}/relu")


def _linear(g: GraphBuilder, m: nn.Linear, x: str) -> str:
    name = _path(m)
    inputs = [x, g.const(f"{name}.weight", m.weight.data)]
    if m.bias is not None:
        inputs.append(g.const(f"{name}.bias", m.bias.data))
    return g.node("Gemm", inputs, name, transB=1)


def _relu(g: GraphBuilder, m: nn.ReLU, x: str) -> str:
    return g.node("Relu", [x], _path(m))


def _sigmoid(g: GraphBuilder, m: nn.Sigmoid, x: str) -> str:
    return g.node("Sigmoid", [x], _path(m))


def _gelu(g: GraphBuilder, m: nn.GELU, x: str) -> str:
    """The exact GELU from ONNX's Erf: x * (erf(x / sqrt 2) + 1) / 2 (any opset; Gelu itself needs 20)."""
    name = _path(m)
    e = g.node("Erf", [g.node("Mul", [x, g.const(f"{name}.inv_sqrt2", np.float32(1 / np.sqrt(2)))],
                                f"{name}/scale")], f"{name}/erf")
    e = g.node("Add", [e, g.const(f"{name}.one", np.float32(1.0))], f"{name}/add_one")
    half_x = g.node("Mul", [x, g.const(f"{name}.half", np.float32(0.5))], f"{name}/half")
    return g.node("Mul", [half_x, e], name)


def _mul(g: GraphBuilder, m: nn.Mul, x: str) -> str:
    return g.node("Mul", [x, g.const(f"{_path(m)}.scale", np.float32(m.scale))], _path(m))


def _dropout(g: GraphBuilder, m: nn.Dropout, x: str) -> str:
    return x                                   # the identity in inference


def _max_pool(g: GraphBuilder, m: nn.MaxPool2d, x: str) -> str:
    ph, pw = m.padding
    return g.node("MaxPool", [x], _path(m), kernel_shape=list(m.kernel_size), strides=list(m.stride),
                  pads=[ph, pw, ph, pw])


def _avg_pool(g: GraphBuilder, m: nn.AvgPool2d, x: str) -> str:
    ph, pw = m.padding
    return g.node("AveragePool", [x], _path(m), kernel_shape=list(m.kernel_size), strides=list(m.stride),
                  pads=[ph, pw, ph, pw], count_include_pad=1)          # zero padding counts, as ours


def _global_avg_pool(g: GraphBuilder, m: nn.GlobalAvgPool2d, x: str) -> str:
    name = _path(m)
    return g.node("Flatten", [g.node("GlobalAveragePool", [x], f"{name}/pool")], name, axis=1)   # (N, C)


def _flatten(g: GraphBuilder, m: nn.Flatten, x: str) -> str:
    return g.node("Flatten", [x], _path(m), axis=1)


# -- containers and blocks ------------------------------------------------------------------------------
def _sequential(g: GraphBuilder, m: nn.Sequential, x: str) -> str:
    for child in m:
        x = g.convert(child, x)
    return x


def _chain(g: GraphBuilder, m: ChainModel, x: str) -> str:
    for child in m._order:
        x = g.convert(child, x)
    return x


def _residual_sum(g: GraphBuilder, m: nn.ResidualSum, x: str) -> str:
    y = g.convert(m.main, x)
    return g.node("Add", [y, x if m.shortcut is None else g.convert(m.shortcut, x)], _path(m))


def _basic_block(g: GraphBuilder, m: nn.BasicBlock, x: str) -> str:
    """bn2(conv2(bn1(conv1(x))), shortcut(x)): the residual sum and both ReLUs inside the fused batch norms."""
    out = g.convert(m.bn1, g.convert(m.conv1, x))
    return g.convert(m.bn2, g.convert(m.conv2, out), x if m.shortcut is None else g.convert(m.shortcut, x))


def _pad_shortcut(g: GraphBuilder, m: nn.PadShortcut, x: str) -> str:
    """Every ``stride``-th pixel from (0, 0) (Slice), then the channels zero-padded front and back (Pad)."""
    name, s = _path(m), m.stride
    end = np.iinfo(np.int64).max
    window = [g.const(f"{name}.{what}", values, np.int64)
              for what, values in (("starts", [0, 0]), ("ends", [end, end]), ("axes", [2, 3]), ("steps", [s, s]))]
    sub = g.node("Slice", [x, *window], f"{name}/subsample")
    back = m.planes - m.in_planes - m.front
    pads = g.const(f"{name}.pads", [0, m.front, 0, 0, 0, back, 0, 0], np.int64)
    return g.node("Pad", [sub, pads], name, mode="constant")


def _squeeze_excitation(g: GraphBuilder, m: nn.SqueezeExcitation, x: str) -> str:
    """x scaled per channel by gate(fc2(relu(fc1(pool(x))))), the (N, C) gate unsqueezed to (N, C, 1, 1)."""
    name = _path(m)
    s = x
    for layer in (m.pool, m.fc1, m.relu, m.fc2, m.gate):
        s = g.convert(layer, s)
    s = g.node("Unsqueeze", [s, g.const(f"{name}.axes", [2, 3], np.int64)], f"{name}/unsqueeze")
    return g.node("Mul", [x, s], name)


CONVERTERS: dict[type, Converter] = {
    nn.Conv2d: _conv2d,
    nn.BatchNorm1d: _batch_norm,
    nn.BatchNorm2d: _batch_norm,
    nn.BatchNormReLU2d: _batch_norm_relu,
    nn.BatchNormAddReLU2d: _batch_norm_add_relu,
    nn.Linear: _linear,
    nn.ReLU: _relu,
    nn.Sigmoid: _sigmoid,
    nn.GELU: _gelu,
    nn.Mul: _mul,
    nn.Dropout: _dropout,                      # Dropout2d too (it runs Dropout's forward)
    nn.MaxPool2d: _max_pool,
    nn.AvgPool2d: _avg_pool,
    nn.GlobalAvgPool2d: _global_avg_pool,
    nn.Flatten: _flatten,
    nn.Sequential: _sequential,
    ChainModel: _chain,
    nn.ResidualSum: _residual_sum,
    nn.BasicBlock: _basic_block,
    nn.PadShortcut: _pad_shortcut,
    nn.SqueezeExcitation: _squeeze_excitation,
}
"""Layer class -> converter. A subclass that keeps its base's forward uses its base's converter."""


# -- models and checkpoints ------------------------------------------------------------------------------
def model_to_onnx(model: nn.Module, mean: Sequence[float], std: Sequence[float], classes: Sequence[str],
                  name: str = "model", metadata: dict[str, str] | None = None) -> "onnx.ModelProto":
    """``model`` in inference mode as a checked ONNX model: input ``images`` float32 [N, 3, 32, 32], RGB in
    [0, 1], normalised inside by (images - mean) / std; output ``logits`` float32 [N, len(classes)]; the class
    names (JSON list), mean, std and ``metadata`` in its metadata_props. Raises OnnxExportError naming a
    layer without a converter, or if the graph fails ONNX's checker or shape inference."""
    onnx = _onnx()
    helper = onnx.helper
    g = GraphBuilder()
    per_channel = (1, IMAGE_SHAPE[0], 1, 1)
    x = g.node("Sub", [INPUT, g.const("normalize.mean", np.reshape(mean, per_channel))], "normalize/sub_mean")
    x = g.node("Div", [x, g.const("normalize.std", np.reshape(std, per_channel))], "normalize")
    g.nodes.append(helper.make_node("Identity", [g.convert(model, x)], [OUTPUT], name=OUTPUT))
    doc = (f"{name}: {INPUT} float32 [N, 3, 32, 32], RGB in [0, 1] (normalised inside) -> {OUTPUT} float32 "
           f"[N, {len(classes)}]; class names in metadata_props['classes'] (JSON)")
    graph = helper.make_graph(
        g.nodes, name,
        [helper.make_tensor_value_info(INPUT, onnx.TensorProto.FLOAT, ["N", *IMAGE_SHAPE])],
        [helper.make_tensor_value_info(OUTPUT, onnx.TensorProto.FLOAT, ["N", len(classes)])],
        g.initializers, doc_string=doc)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION,
                              producer_name="cnn-cifar-10", doc_string=doc)
    helper.set_model_props(proto, {"model": name, "classes": json.dumps(list(classes)),
                                   "mean": json.dumps([float(v) for v in mean]),
                                   "std": json.dumps([float(v) for v in std]), **(metadata or {})})
    return _checked(onnx, proto)


def _checked(onnx, proto: "onnx.ModelProto") -> "onnx.ModelProto":
    """``proto`` with its inferred intermediate shapes, once strict shape inference (which also holds the
    inferred output shape to the declared one) and the full checker pass; else an OnnxExportError."""
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
        onnx.checker.check_model(inferred, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise OnnxExportError(f"the exported graph fails ONNX's checks: {first}") from None
    return inferred


def to_onnx(ck: Checkpoint, source: str = "checkpoint") -> "onnx.ModelProto":
    """The checkpoint's model (its ``state_dict``: what ``test_cli`` evaluates, the average for an ``--ema``
    run) as a checked ONNX model, with the normalisation and class names ``predict_cli`` uses (the recorded
    ones, else the dataset's, chosen by class count as ``inference.Classifier`` does). ``source`` names the
    checkpoint in errors."""
    model = ck.rebuild_model(source=source)
    num_classes = model.config["num_classes"]
    mean, std = normalization(ck, num_classes)
    metadata = {"dataset": ck.dataset} if ck.dataset else {}
    return model_to_onnx(model, mean, std, class_names(ck, num_classes), name=ck.model, metadata=metadata)


def save_onnx(path: str | os.PathLike, proto: "onnx.ModelProto") -> Path:
    """Write ``proto`` to ``path`` atomically (a temp file beside it, then renamed over it): an existing file
    is replaced only by a complete one. The folder must exist (a mistyped one is an error, not created)."""
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write {path}: no folder {path.parent}")
    data = proto.SerializeToString()
    return atomic_write(path, lambda f: f.write(data))
