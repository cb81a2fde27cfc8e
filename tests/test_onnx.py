"""ONNX export (interop/onnx_export.py, convert_cli --to-onnx), checked by running the exported graph in ONNX
Runtime against our own eval-mode logits, computed as inference.Classifier computes them."""
from __future__ import annotations

import json
import os
import pickle
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from cnn_cifar import backend, nn
from cnn_cifar.cli import convert as convert_cli
from cnn_cifar.data import load_dataset
from cnn_cifar.data.augment import normalize
from cnn_cifar.inference import Classifier
from cnn_cifar.interop import OPSET, OnnxExportError, model_to_onnx
from cnn_cifar.models import build_model, list_models
from cnn_cifar.models.base import ChainModel
from cnn_cifar.models.registry import Recipe, register, unregister
from cnn_cifar.nn.residual import SHORTCUTS
from cnn_cifar.training import Checkpoint, evaluate_checkpoint, save_checkpoint

from conftest import ROOT, run_python

RESNETS = [("resnet8", {"shortcut": "projection"}), ("resnet8", {"shortcut": "pad"}), ("resnet20", {"shortcut": "pad"})]
CASES = [(name, {}) for name in list_models() if not name.startswith("resnet")] + RESNETS
CLASSES = [f"kind {i}" for i in range(10)]
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNormReLU2d, nn.BatchNormAddReLU2d)


def _case_id(case) -> str:
    name, options = case
    return "-".join([name, *options.values()])


def _randomised_checkpoint(name: str, options: dict, path: Path, seed: int = 0) -> Checkpoint:
    """A checkpoint of ``name`` with random batch-norm affine parameters and running statistics, a random recorded
    mean/std and class names of its own (fresh defaults would hide a swapped or dropped term). The statistics are
    those of a batch of random images, each then moved by a random amount: statistics unrelated to the
    activations would leave the logits of some models (net-dilated, senet) almost independent of the image."""
    rng = np.random.default_rng(seed)
    model = build_model(name, seed=seed, **options)
    norms = [m for m in model.modules() if isinstance(m, BATCH_NORMS)]
    for m in norms:
        m.weight.data[...] = rng.uniform(0.5, 1.5, m.num_features)
        m.bias.data[...] = rng.normal(0.0, 0.3, m.num_features)
        m.momentum = 1.0                                   # the running statistics become the batch's
    model.train()
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.eval()
    with nn.no_grad():
        model(normalize(rng.integers(0, 256, (16, 3, 32, 32), dtype=np.uint8), (0.5,) * 3, (0.25,) * 3))
    for m in norms:
        m.running_mean[...] += rng.normal(0.0, 0.1, m.num_features) * np.sqrt(m.running_var)
        m.running_var[...] *= rng.uniform(0.8, 1.25, m.num_features)
    ck = Checkpoint(model=name, state_dict=model.state_dict(), model_config=model.config, classes=CLASSES,
                    mean=rng.uniform(0.3, 0.6, 3).tolist(), std=rng.uniform(0.15, 0.35, 3).tolist())
    save_checkpoint(path, ck)
    return ck


def our_logits(ckpt: Path, pixels: np.ndarray) -> np.ndarray:
    """uint8 (N, 3, 32, 32) -> the checkpoint's logits as inference.Classifier computes them: normalised with the
    checkpoint's statistics, then the eval-mode model under no_grad (checked against its probabilities)."""
    clf = Classifier(ckpt)
    with nn.no_grad():
        logits = backend.to_numpy(clf.model(backend.to_device(normalize(pixels, clf.mean, clf.std))))
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose((z / z.sum(axis=1, keepdims=True))[:8], clf.probabilities(pixels[:8]), rtol=1e-5,
                               atol=1e-7)
    return logits


def onnx_logits(path: Path, pixels: np.ndarray) -> np.ndarray:
    """uint8 (N, 3, 32, 32) -> the exported graph's logits on the [0, 1] images, in ONNX Runtime."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits, = session.run(["logits"], {"images": (pixels / np.float32(255)).astype(np.float32)})
    return logits


def export(ckpt: Path, out: Path, capsys) -> None:
    assert convert_cli.main(["--to-onnx", str(ckpt), "--out", str(out)]) == 0, capsys.readouterr().err
    assert f"wrote {out}" in capsys.readouterr().out


def test_every_registered_model_and_shortcut_is_covered():
    """CASES leaves out only ResNets of other depths: the same blocks, more of them."""
    from cnn_cifar.models.resnet import ResNet
    assert all(isinstance(build_model(name), ResNet) for name in list_models() if name.startswith("resnet"))
    assert {options["shortcut"] for _, options in RESNETS} == set(SHORTCUTS)


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_export_matches_our_eval_logits(case, tmp_path, capsys):
    """One exported file (dynamic batch) gives our eval-mode logits at batch 1 and 7, passes the full checker,
    and carries the checkpoint's class names and normalisation."""
    name, options = case
    ck = _randomised_checkpoint(name, options, tmp_path / "model.pkl")
    export(tmp_path / "model.pkl", tmp_path / "model.onnx", capsys)
    proto = onnx.load(tmp_path / "model.onnx")
    onnx.checker.check_model(proto, full_check=True)
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [OPSET]
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["classes"]) == CLASSES and meta["model"] == name
    assert json.loads(meta["mean"]) == pytest.approx(ck.mean) and json.loads(meta["std"]) == pytest.approx(ck.std)
    assert [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim] == ["N", 3, 32, 32]
    rng = np.random.default_rng(1)
    for batch in (1, 7):
        pixels = rng.integers(0, 256, (batch, 3, 32, 32), dtype=np.uint8)
        ours, theirs = our_logits(tmp_path / "model.pkl", pixels), onnx_logits(tmp_path / "model.onnx", pixels)
        assert theirs.shape == ours.shape == (batch, 10) and theirs.dtype == np.float32
        assert np.abs(theirs - ours).max() <= 1e-4 * np.abs(ours).max(), (name, batch)
    assert np.ptp(ours, axis=0).max() >= 0.01 * np.abs(ours).max()        # the logits depend on the image


@pytest.mark.parametrize("shipped", sorted((ROOT / "pretrained").glob("*.pkl")), ids=lambda p: p.name)
def test_shipped_weights_exported_give_test_clis_predictions(shipped, cifar_root, tmp_path, capsys):
    export(shipped, tmp_path / "model.onnx", capsys)
    ds = load_dataset("cifar10", cifar_root, download=False)
    ours, theirs = our_logits(shipped, ds.x_test), onnx_logits(tmp_path / "model.onnx", ds.x_test)
    top2 = np.sort(ours, axis=1)[:, -2:]
    near_tie = top2[:, 1] - top2[:, 0] <= 1e-4
    differ = ours.argmax(axis=1) != theirs.argmax(axis=1)
    assert not (differ & ~near_tie).any(), np.flatnonzero(differ & ~near_tie)
    accuracy = float(np.mean(theirs.argmax(axis=1) == ds.y_test))
    report = evaluate_checkpoint(shipped, cifar_root, download=False)           # what test_cli prints
    assert abs(accuracy - report["accuracy"]) <= near_tie.sum() / len(ds.y_test)
    meta = {p.key: p.value for p in onnx.load(tmp_path / "model.onnx").metadata_props}
    assert json.loads(meta["classes"]) == Classifier(shipped).classes


def test_an_ema_checkpoint_exports_the_average_test_cli_evaluates(tmp_path, capsys):
    """A run with --ema saves the average as the checkpoint's weights (the training weights ride in the optimizer
    state): the export is the average."""
    average, training = build_model("cnn", seed=1), build_model("cnn", seed=2)
    ck = Checkpoint(model="cnn", state_dict=average.state_dict(), model_config=average.config,
                    optimizer={"ema": {"updates": 10, "training_weights": training.state_dict()}})
    save_checkpoint(tmp_path / "ema.pkl", ck)
    export(tmp_path / "ema.pkl", tmp_path / "ema.onnx", capsys)
    pixels = np.random.default_rng(0).integers(0, 256, (3, 3, 32, 32), dtype=np.uint8)
    theirs = onnx_logits(tmp_path / "ema.onnx", pixels)
    with nn.no_grad():
        expected = average.eval()(normalize(pixels, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)))
    assert np.abs(theirs - expected).max() <= 1e-4 * np.abs(expected).max()
    assert json.loads({p.key: p.value for p in onnx.load(tmp_path / "ema.onnx").metadata_props}["classes"])[0] \
        == "airplane"                                         # no names recorded: CIFAR-10's, as predict_cli


# ------------------------------------------------------------------ what cannot be exported
class Twice(nn.Module):
    def forward(self, x):
        return 2 * x


class LeakyReLU(nn.ReLU):
    """A known layer's subclass with a forward of its own: not exported as its base."""

    def forward(self, x):
        return np.where(x > 0, x, 0.01 * x)


class _Odd(ChainModel):
    def __init__(self, num_classes=10, dropout=0.0, seed=0, dtype=np.float32):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.blocks = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, rng=rng, dtype=dtype), Twice())
        self.pool = nn.GlobalAvgPool2d()
        self.fc = nn.Linear(4, num_classes, rng=rng, dtype=dtype)
        self._order = [self.blocks, self.pool, self.fc]


@pytest.fixture
def odd_model():
    register("onnx-odd", _Odd, Recipe())
    try:
        yield "onnx-odd"
    finally:
        unregister("onnx-odd")


def test_an_unsupported_layer_is_a_one_line_error_naming_it(odd_model, tmp_path, capsys):
    model = build_model(odd_model)
    with pytest.raises(OnnxExportError, match=r"^cannot export layer 'blocks\.1' \(Twice\) to ONNX$"):
        model_to_onnx(model, (0.5,) * 3, (0.25,) * 3, CLASSES)
    model.blocks = nn.Sequential(nn.Conv2d(3, 4, 3), LeakyReLU())
    model._order[0] = model.blocks
    with pytest.raises(OnnxExportError, match=r"^cannot export layer 'blocks\.1' \(LeakyReLU\) to ONNX$"):
        model_to_onnx(model, (0.5,) * 3, (0.25,) * 3, CLASSES)

    save_checkpoint(tmp_path / "odd.pkl", Checkpoint(model=odd_model, state_dict=build_model(odd_model).state_dict(),
                                                     model_config=build_model(odd_model).config))
    (tmp_path / "out.onnx").write_bytes(b"an earlier export")
    assert convert_cli.main(["--to-onnx", str(tmp_path / "odd.pkl"), "--out", str(tmp_path / "out.onnx")]) == 1
    err = capsys.readouterr().err
    assert err == "error: cannot export layer 'blocks.1' (Twice) to ONNX\n"
    assert (tmp_path / "out.onnx").read_bytes() == b"an earlier export"           # a failed export replaces nothing
    assert sorted(os.listdir(tmp_path)) == ["odd.pkl", "out.onnx"]


def test_convert_cli_to_onnx_bad_input_is_one_line_and_leaves_no_file(tmp_path, capsys):
    good = tmp_path / "good.pkl"
    _randomised_checkpoint("cnn", {}, good)
    (tmp_path / "foreign.pkl").write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    (tmp_path / "truncated.pkl").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    cases = [("foreign.pkl", "out.onnx", "is not a cnn-cifar-10 checkpoint"),
             ("truncated.pkl", "out.onnx", "is not a readable checkpoint"),
             ("missing.pkl", "out.onnx", "checkpoint not found"),
             ("good.pkl", "no/such/folder/out.onnx", "no folder")]
    for ckpt, out, message in cases:
        before = sorted(os.listdir(tmp_path))
        assert convert_cli.main(["--to-onnx", str(tmp_path / ckpt), "--out", str(tmp_path / out)]) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
        assert sorted(os.listdir(tmp_path)) == before, (ckpt, out)

    (tmp_path / "out.onnx").write_bytes(b"an earlier export")
    assert convert_cli.main(["--to-onnx", str(tmp_path / "truncated.pkl"), "--out", str(tmp_path / "out.onnx")]) == 1
    assert (tmp_path / "out.onnx").read_bytes() == b"an earlier export"
    export(good, tmp_path / "out.onnx", capsys)                                    # a good export replaces it
    onnx.checker.check_model(onnx.load(tmp_path / "out.onnx"), full_check=True)
    assert sorted(os.listdir(tmp_path)) == ["foreign.pkl", "good.pkl", "out.onnx", "truncated.pkl"]
    with pytest.raises(SystemExit) as exc:
        convert_cli.main(["--to-onnx", str(good), "--model", "cnn", "--out", str(tmp_path / "x.onnx")])
    assert exc.value.code == 2 and "apply to --from-torch only" in capsys.readouterr().err


def test_without_the_onnx_package_the_export_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    _randomised_checkpoint("cnn", {}, tmp_path / "cnn.pkl")
    monkeypatch.setitem(sys.modules, "onnx", None)                 # as if not installed: importing it fails
    assert convert_cli.main(["--to-onnx", str(tmp_path / "cnn.pkl"), "--out", str(tmp_path / "cnn.onnx")]) == 1
    assert capsys.readouterr().err.startswith("error: ONNX export needs the onnx package")
    assert not (tmp_path / "cnn.onnx").exists()


IMPORT_PROBE = '''
import importlib, pkgutil, sys
import cnn_cifar
for mod in pkgutil.walk_packages(cnn_cifar.__path__, "cnn_cifar."):
    importlib.import_module(mod.name)
print("onnx imported:", sorted(m for m in sys.modules if m.split(".")[0] in ("onnx", "onnxruntime")))
'''


def test_the_library_imports_without_onnx(tmp_path):
    """onnx is imported only when a graph is built: training never needs it."""
    p = run_python("-c", IMPORT_PROBE, cwd=tmp_path, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "onnx imported: []" in p.stdout.splitlines()
