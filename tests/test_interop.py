"""PyTorch interop without torch: both file formats read from byte-level fixtures written here, the writer
read back, the allow-list, the option-A shortcut, key mapping and conversion, normalisation that travels
with the weights.

The fixtures are written by Python's own pickler with a stand-in ``torch`` module, the way torch.save
writes them (torch/serialization.py): the same globals, persistent ids and record layout. So the reader
is checked against the format, not against our writer.
"""
from __future__ import annotations

import io
import os
import pickle
import pickletools
import struct
import sys
import types
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

from cnn_cifar import backend, nn
from cnn_cifar.cli import common as C
from cnn_cifar.interop import TorchFileError, find_state_dict, from_torch, load, save, to_torch
from cnn_cifar.models import build_model
from cnn_cifar.training import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint

from gradcheck import check_module


# ------------------------------------------------------------------ a stand-in torch for writing fixtures
@pytest.fixture
def fake_torch(monkeypatch):
    """Modules named torch and torch._utils holding the globals torch.save pickles by name."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):
        raise AssertionError("never called while writing")
    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    for name in ("FloatStorage", "HalfStorage", "LongStorage", "BFloat16Storage", "DoubleStorage"):
        setattr(torch, name, type(name, (), {"__module__": "torch", "__qualname__": name}))
    torch._utils = utils
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    return torch


class Storage:
    def __init__(self, kind: str, key: str, data: bytes, numel: int, location: str = "cpu"):
        self.kind, self.key, self.data, self.numel, self.location = kind, key, data, numel, location


class Tensor:
    def __init__(self, storage: Storage, offset: int, size: tuple, stride: tuple):
        self.args = (storage, offset, size, stride, False, OrderedDict())

    def __reduce__(self):
        return (sys.modules["torch._utils"]._rebuild_tensor_v2, self.args)


def _pickle(obj, persistent_id) -> bytes:
    buf = io.BytesIO()
    p = pickle.Pickler(buf, protocol=2)
    p.persistent_id = persistent_id
    p.dump(obj)
    return buf.getvalue()


def write_zip(path: Path, obj, storages: list[Storage], byteorder: str = "little", prefix: str = "archive") -> Path:
    torch = sys.modules["torch"]
    data = _pickle(obj, lambda o: ("storage", getattr(torch, o.kind), o.key, o.location, o.numel)
                   if isinstance(o, Storage) else None)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{prefix}/data.pkl", data)
        z.writestr(f"{prefix}/byteorder", byteorder)
        for s in storages:
            z.writestr(f"{prefix}/data/{s.key}", s.data)
        z.writestr(f"{prefix}/version", "3\n")
    return path


class StorageView:
    """A view into a storage (``storage[offset:offset + numel]``), which legacy files name by their own key
    beside the root storage's (torch/serialization.py, legacy persistent ids' ``view_metadata``)."""

    def __init__(self, root: Storage, key: str, offset: int, numel: int):
        self.kind, self.root, self.key, self.offset, self.numel = root.kind, root, key, offset, numel


def _legacy_id(o):
    torch = sys.modules["torch"]
    if isinstance(o, StorageView):
        r = o.root
        return "storage", getattr(torch, r.kind), r.key, r.location, r.numel, (o.key, o.offset, o.numel)
    return ("storage", getattr(torch, o.kind), o.key, o.location, o.numel, None) if isinstance(o, Storage) else None


def write_legacy(path: Path, obj, storages: list[Storage]) -> Path:
    with open(path, "wb") as f:
        for header in (0x1950A86A20F9469CFC6C, 1001,
                       {"protocol_version": 1001, "little_endian": True,
                        "type_sizes": {"short": 2, "int": 4, "long": 4}}):
            pickle.dump(header, f, protocol=2)
        f.write(_pickle(obj, _legacy_id))
        pickle.dump(sorted(s.key for s in storages), f, protocol=2)
        for s in sorted(storages, key=lambda s: s.key):
            f.write(struct.pack("<q", s.numel) + s.data)
    return path


def _fixture_tensors():
    """A 3x4 float32 matrix, a second tensor viewing the same storage (row 1, shape (2, 2), stride (4, 1)),
    its transpose (non-contiguous), a float16 vector, an int64 scalar, a bfloat16 vector on cuda:0."""
    base = np.arange(12, dtype=np.float32).reshape(3, 4) * 0.5 - 1
    s_f = Storage("FloatStorage", "0", base.tobytes(), 12)
    half = np.array([1.5, -2.25, 65504.0], np.float16)
    s_h = Storage("HalfStorage", "1", half.tobytes(), 3)
    s_l = Storage("LongStorage", "2", np.array([7, 42], np.int64).tobytes(), 2)
    bf_values = np.array([1.0, -3.5, 0.15625], np.float32)        # exactly representable in bfloat16
    s_b = Storage("BFloat16Storage", "3", (bf_values.view(np.uint32) >> 16).astype(np.uint16).tobytes(), 3,
                  "cuda:0")
    obj = OrderedDict([
        ("w", Tensor(s_f, 0, (3, 4), (4, 1))),
        ("view", Tensor(s_f, 4, (2, 2), (4, 1))),
        ("transposed", Tensor(s_f, 0, (4, 3), (1, 4))),
        ("half", Tensor(s_h, 0, (3,), (1,))),
        ("count", Tensor(s_l, 1, (), ())),
        ("bf16", Tensor(s_b, 0, (3,), (1,))),
    ])
    want = {"w": base, "view": base[1:3, :2], "transposed": base.T, "half": half, "count": np.array(42),
            "bf16": bf_values}
    return {"state_dict": obj, "epoch": 3}, [s_f, s_h, s_l, s_b], want


def _check_fixture(loaded, want):
    assert loaded["epoch"] == 3
    sd = loaded["state_dict"]
    assert list(sd) == list(want)
    for k, v in want.items():
        assert sd[k].dtype == v.dtype and sd[k].shape == v.shape, k
        np.testing.assert_array_equal(sd[k], v, err_msg=k)
    sd["view"][0, 0] = 99                                     # each tensor is an independent copy
    assert sd["w"][1, 0] == want["w"][1, 0]


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_both_formats_read_exactly(fake_torch, tmp_path, fmt):
    obj, storages, want = _fixture_tensors()
    path = (write_zip if fmt == "zip" else write_legacy)(tmp_path / f"f.{fmt}", obj, storages)
    _check_fixture(load(path), want)


def test_legacy_storage_views_read_the_elements_they_view(fake_torch, tmp_path):
    """Files from PyTorch before 0.4 could hold storage views: tensors on a view index from the view's start,
    which lies ``offset`` elements into its root storage; two tensors naming one view share it."""
    base = np.arange(10, dtype=np.float32) * 1.5
    root = Storage("FloatStorage", "0", base.tobytes(), 10)
    view = StorageView(root, "7", 4, 5)
    obj = {"whole": Tensor(root, 0, (10,), (1,)), "in_view": Tensor(view, 1, (2, 2), (2, 1)),
           "again": Tensor(view, 0, (5,), (1,))}
    out = load(write_legacy(tmp_path / "views.pt", obj, [root]))
    np.testing.assert_array_equal(out["whole"], base)
    np.testing.assert_array_equal(out["in_view"], base[5:9].reshape(2, 2))
    np.testing.assert_array_equal(out["again"], base[4:9])
    bad = {"past": Tensor(view, 2, (4,), (1,))}                          # inside the root, past the view
    with pytest.raises(TorchFileError, match=r"runs past its storage of 5 elements"):
        load(write_legacy(tmp_path / "past.pt", bad, [root]))


def test_zip_in_big_endian_and_any_archive_name(fake_torch, tmp_path):
    a = np.array([[1.0, -2.0], [3.5, 4.25]], np.float32)
    s = Storage("DoubleStorage", "0", a.astype(">f8").tobytes(), 4)
    path = write_zip(tmp_path / "be.pt", {"x": Tensor(s, 0, (2, 2), (2, 1))}, [s], byteorder="big", prefix="my_model")
    out = load(path)["x"]
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, a)


def test_tensor_past_its_storage_is_refused(fake_torch, tmp_path):
    s = Storage("FloatStorage", "0", np.zeros(4, np.float32).tobytes(), 4)
    path = write_zip(tmp_path / "bad.pt", {"x": Tensor(s, 2, (2, 2), (2, 1))}, [s])
    with pytest.raises(TorchFileError, match=r"runs past its storage of 4 elements"):
        load(path)


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_a_pickle_that_runs_code_is_refused_and_runs_nothing(fake_torch, tmp_path, fmt):
    marker = tmp_path / "pwned"
    obj = {"state_dict": {}, "payload": _RunsCode(marker)}
    path = (write_zip if fmt == "zip" else write_legacy)(tmp_path / f"evil.{fmt}", obj, [])
    with pytest.raises(TorchFileError, match=r"refusing to load global '(posix|os)\.system'"):
        load(path)
    assert not marker.exists()


def test_not_a_torch_file_and_truncation(tmp_path, fake_torch):
    (tmp_path / "junk.pt").write_bytes(b"hello world, not a checkpoint")
    with pytest.raises(TorchFileError, match=r"junk.pt"):
        load(tmp_path / "junk.pt")
    obj, storages, _ = _fixture_tensors()
    raw = write_legacy(tmp_path / "full.pt", obj, storages).read_bytes()
    (tmp_path / "cut.pt").write_bytes(raw[:-5])
    with pytest.raises(TorchFileError, match=r"truncated"):
        load(tmp_path / "cut.pt")
    with pytest.raises(TorchFileError, match=r"file not found"):
        load(tmp_path / "missing.pt")


# ------------------------------------------------------------------ the writer
def test_writer_round_trip_and_layout(tmp_path):
    state = OrderedDict([("a", np.arange(6, dtype=np.float32).reshape(2, 3)),
                         ("b", np.asfortranarray(np.ones((3, 2)))),            # written contiguous
                         ("n", np.array(5, np.int64)), ("h", np.array([0.5], np.float16))])
    path = save(tmp_path / "out.pt", state)
    back = load(path)
    assert list(back) == list(state)
    for k in state:
        assert back[k].dtype == state[k].dtype
        np.testing.assert_array_equal(back[k], state[k])
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        assert {"archive/data.pkl", "archive/byteorder", "archive/version", "archive/data/0"} <= set(names)
        assert z.read("archive/byteorder") == b"little"
        for info in z.infolist():                            # stored, data 64-byte aligned (torch mmaps it)
            assert info.compress_type == zipfile.ZIP_STORED
            start = info.header_offset + 30 + len(info.filename) + len(info.extra)
            assert start % 64 == 0, info.filename
        globals_used = {arg for op, arg, _ in pickletools.genops(z.read("archive/data.pkl")) if op.name == "GLOBAL"}
    assert globals_used == {"torch._utils _rebuild_tensor_v2", "torch FloatStorage", "torch LongStorage",
                            "torch DoubleStorage", "torch HalfStorage", "collections OrderedDict"}


# ------------------------------------------------------------------ option-A shortcut
@pytest.mark.parametrize("depth,params", [(20, 269_722), (32, 464_154), (44, 658_586), (56, 853_018)])
def test_option_a_resnets_have_the_published_parameter_counts(depth, params):
    assert build_model(f"resnet{depth}", shortcut="pad").num_parameters() == params


def test_pad_shortcut_forward_is_subsample_and_centered_zero_channels(xp):
    x = np.random.default_rng(0).standard_normal((2, 4, 6, 5))
    y = backend.to_numpy(nn.PadShortcut(4, 8, 2)(backend.to_device(x)))
    want = np.pad(x[:, :, ::2, ::2], ((0, 0), (2, 2), (0, 0), (0, 0)))      # F.pad(x[..., ::2, ::2], planes//4)
    np.testing.assert_array_equal(y, want)


@pytest.mark.parametrize("cin,cout,stride", [(4, 8, 2), (3, 6, 2), (4, 4, 2), (2, 6, 1)])
def test_pad_shortcut_gradients(xp, cin, cout, stride):
    check_module(nn.PadShortcut(cin, cout, stride),
                 backend.to_device(np.random.default_rng(1).standard_normal((2, cin, 5, 6))))


@pytest.mark.parametrize("training", [True, False])
def test_option_a_block_gradients(xp, training):
    block = nn.BasicBlock(4, 8, 2, rng=np.random.default_rng(2), shortcut="pad").to(np.float64)
    block.train(training)
    assert not list(block.shortcut.parameters())
    check_module(block, backend.to_device(np.random.default_rng(3).standard_normal((3, 4, 6, 6))))


# ------------------------------------------------------------------ conversion
def _torch_style(model_name: str, prefix: str = "module.", head: str = "linear", **options) -> dict:
    """A state dict as a PyTorch CIFAR ResNet would save it (DataParallel prefix, 'linear' head)."""
    sd = build_model(model_name, seed=5, **options).state_dict()
    return {prefix + (head + k[2:] if k.startswith("fc.") else k): v for k, v in sd.items()}


def test_from_torch_maps_prefix_and_head_and_keeps_every_value():
    theirs = _torch_style("resnet20", shortcut="pad")
    ck = from_torch({"state_dict": theirs, "best_prec1": 91.7}["state_dict"], "resnet20",
                    mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), shortcut="pad")
    assert ck.model_config == {"name": "resnet20", "num_classes": 10, "dropout": 0.0, "shortcut": "pad"}
    assert ck.mean == [0.485, 0.456, 0.406] and ck.args["key_style"] == "linear-head"
    for k, v in ck.state_dict.items():
        np.testing.assert_array_equal(v, theirs["module." + ("linear" + k[2:] if k.startswith("fc.") else k)])


def test_from_torch_counts_no_batches_where_the_file_has_no_count():
    """Files from PyTorch before 0.4.1 have no num_batches_tracked: those batch norms start at 0 batches."""
    theirs = {k: v for k, v in _torch_style("resnet20", shortcut="pad").items() if "num_batches" not in k}
    ck = from_torch(theirs, "resnet20", shortcut="pad")
    counts = {k: v for k, v in ck.state_dict.items() if k.endswith("num_batches_tracked")}
    assert len(counts) == 19 and all(v.dtype == np.int64 and v == 0 for v in counts.values())


def test_from_torch_refusals_name_the_tensor():
    theirs = _torch_style("resnet20", shortcut="pad")
    missing = {k: v for k, v in theirs.items() if k != "module.layer2.1.bn1.running_var"}
    with pytest.raises(CheckpointError, match=r"no tensor 'layer2.1.bn1.running_var'"):
        from_torch(missing, "resnet20", shortcut="pad")
    extra = dict(theirs, **{"module.extra.weight": np.zeros(3, np.float32)})
    with pytest.raises(CheckpointError, match=r"tensors resnet20 does not: extra.weight"):
        from_torch(extra, "resnet20", shortcut="pad")
    wrong = dict(theirs, **{"module.conv1.weight": np.zeros((16, 3, 5, 5), np.float32)})
    with pytest.raises(CheckpointError, match=r"'conv1.weight' has shape \(16, 3, 5, 5\).*needs \(16, 3, 3, 3\)"):
        from_torch(wrong, "resnet20", shortcut="pad")
    with pytest.raises(CheckpointError, match=r"option-A shortcuts need shortcut='pad'\)$") as exc:
        from_torch(theirs, "resnet20")                          # option-A weights into projection shortcuts
    assert C.message(exc.value).endswith("need shortcut='pad') (give --shortcut pad)")     # the CLI's words


def test_from_torch_infers_the_class_count_from_the_head():
    ck = from_torch(_torch_style("resnet8", num_classes=100), "resnet8")
    assert ck.model_config["num_classes"] == 100


def test_to_torch_key_styles():
    ck = from_torch(build_model("resnet20").state_dict(), "resnet20")
    ours, twin, lin = (to_torch(ck, s) for s in ("ours", "twin", "linear-head"))
    assert list(ours) == list(ck.state_dict)
    assert "layers.3.conv1.weight" in twin and "layer2.0.conv1.weight" not in twin      # stage 2, block 0
    np.testing.assert_array_equal(twin["layers.8.bn2.running_var"], ours["layer3.2.bn2.running_var"])
    assert "conv.weight" in twin and "bn.bias" in twin and "fc.weight" in twin
    assert "linear.weight" in lin and "fc.weight" not in lin
    assert ours["bn1.num_batches_tracked"].dtype == np.int64
    cnn = to_torch(from_torch(build_model("cnn").state_dict(), "cnn"), "twin")
    assert "conv.weight" in cnn and "bn1.weight" in cnn and "fc2.bias" in cnn


def test_find_state_dict():
    sd = {"a": np.zeros(1)}
    assert find_state_dict({"state_dict": sd, "epoch": 3}) is sd
    assert find_state_dict(sd) is sd
    with pytest.raises(CheckpointError, match="no state dict"):
        find_state_dict({"epoch": 3})


# ------------------------------------------------------------------ CLIs and normalisation
def test_convert_cli_both_ways_and_test_cli_uses_the_recorded_normalisation(fake_torch, tmp_path, cifar_root,
                                                                              monkeypatch, capsys):
    import cnn_cifar.training.evaluation as evaluation
    from cnn_cifar.cli import convert as convert_cli
    from cnn_cifar.cli import test as test_cli
    theirs = _torch_style("resnet8", shortcut="pad")
    storages, obj = [], OrderedDict()
    for i, (k, v) in enumerate(theirs.items()):           # a legacy-format file, as the published weights are
        kind = "LongStorage" if v.dtype == np.int64 else "FloatStorage"
        s = Storage(kind, str(i), np.ascontiguousarray(v).tobytes(), v.size)
        storages.append(s)
        obj[k] = Tensor(s, 0, v.shape, tuple(st // v.itemsize for st in v.strides))
    src = write_legacy(tmp_path / "r8.th", {"state_dict": obj, "best_prec1": 50.0}, storages)
    monkeypatch.chdir(tmp_path)
    for bad in (["--mean", "0.485", "--std", "0.229", "0.224", "0.225"],      # one mean value for 3 channels
                ["--mean", "0.5", "0.5", "0.5"]):                             # --mean without --std
        with pytest.raises(SystemExit) as exc:
            convert_cli.main(["--from-torch", str(src), "--model", "resnet8", *bad, "--out", "x.pkl"])
        assert exc.value.code == 2
    assert not Path("x.pkl").exists()
    assert convert_cli.main(["--from-torch", str(src), "--model", "resnet8", "--shortcut", "pad", "--mean", "0.485",
                             "0.456", "0.406", "--std", "0.229", "0.224", "0.225", "--out", "r8.pkl"]) == 0
    ck = load_checkpoint("r8.pkl", "resnet8")
    assert ck.std == [0.229, 0.224, 0.225]
    seen = []

    class Recording(evaluation.BatchLoader):
        def __init__(self, x, y, batch_size, mean, std, *a, **k):
            seen.append((tuple(mean), tuple(std)))
            super().__init__(x, y, batch_size, mean, std, *a, **k)
    monkeypatch.setattr(evaluation, "BatchLoader", Recording)
    assert test_cli.main(["--resume", "r8.pkl", "--data", str(cifar_root), "--no-download", "--quiet"]) == 0
    assert seen == [((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))]
    assert "model resnet8 (r8.pkl, epoch 0)" in capsys.readouterr().out
    assert convert_cli.main(["--to-torch", "r8.pkl", "--keys", "linear-head", "--out", "back.pt"]) == 0
    back = load("back.pt")
    assert set(back) == {k[len("module."):] for k in theirs}
    for k, v in theirs.items():
        np.testing.assert_array_equal(back[k[len("module."):]], v)


def test_convert_cli_errors_are_one_line(tmp_path, capsys):
    from cnn_cifar.cli import convert as convert_cli
    assert convert_cli.main(["--from-torch", str(tmp_path / "none.pt"), "--model", "cnn", "--out", "x.pkl"]) == 1
    assert "error: file not found" in capsys.readouterr().err
    (tmp_path / "j.pt").write_bytes(b"\x80\x02K\x05.")
    assert convert_cli.main(["--from-torch", str(tmp_path / "j.pt"), "--model", "cnn", "--out", "x.pkl"]) == 1
    assert "not a PyTorch file" in capsys.readouterr().err.strip().splitlines()[-1]
    for what in ("--weights-only", "--to-torch"):                  # --from-torch's options are refused elsewhere
        with pytest.raises(SystemExit) as exc:
            convert_cli.main([what, str(tmp_path / "x.pkl"), "--model", "cnn", "--out", "y.pkl"])
        assert exc.value.code == 2
    assert "apply to --from-torch only" in capsys.readouterr().err


def test_train_cli_shortcut_pad_trains_resumes_and_evaluates(cifar_root, tmp_path, monkeypatch, capsys):
    """--shortcut pad builds option-A ResNets; the checkpoint records it, so --resume and test_cli rebuild the
    same architecture without the flag; a model without shortcuts refuses it in one line."""
    from cnn_cifar.cli import test as test_cli
    from cnn_cifar.cli import train as train_cli
    monkeypatch.chdir(tmp_path)
    common = ["--data", str(cifar_root), "--no-download", "--limit-train", "64", "--limit-test", "32",
              "--batch-size", "32", "--no-prefetch", "--quiet", "--checkpoint-dir", "ck", "--log-dir", "log"]
    assert train_cli.main(["--model", "resnet8", "--shortcut", "pad", "--epochs", "1", *common]) == 0
    ck = load_checkpoint("ck/resnet8_last.pkl", "resnet8")
    assert ck.model_config["shortcut"] == "pad" and not any("shortcut" in k for k in ck.state_dict)
    assert train_cli.main(["--resume", "ck/resnet8_last.pkl", "--epochs", "2", *common]) == 0
    assert load_checkpoint("ck/resnet8_last.pkl").epoch == 2
    assert test_cli.main(["--resume", "ck/resnet8_last.pkl", "--data", str(cifar_root), "--no-download",
                          "--quiet", "--limit-test", "32"]) == 0
    capsys.readouterr()
    assert train_cli.main(["--model", "cnn", "--shortcut", "pad", "--epochs", "1", *common]) == 1
    assert "does not take the options ['shortcut']" in capsys.readouterr().err.strip().splitlines()[-1]


def test_weights_only_export_keeps_what_evaluation_needs(cifar_root, tmp_path, monkeypatch, capsys):
    from cnn_cifar.cli import convert as convert_cli
    from cnn_cifar.cli import train as train_cli
    from cnn_cifar.training import evaluate_checkpoint
    monkeypatch.chdir(tmp_path)
    assert train_cli.main(["--model", "cnn", "--data", str(cifar_root), "--no-download", "--limit-train", "64",
                           "--limit-test", "32", "--batch-size", "32", "--no-prefetch", "--quiet", "--epochs", "1",
                           "--checkpoint-dir", "ck", "--log-dir", "log"]) == 0
    assert convert_cli.main(["--weights-only", "ck/cnn_best.pkl", "--out", "pub.pkl"]) == 0
    raw = pickle.load(open("pub.pkl", "rb"))
    assert raw["optimizer"] is None and raw["history"] == [] and raw["rng"] == {} and raw["partial"] is None
    full, pub = (evaluate_checkpoint(p, cifar_root, limit=32, download=False) for p in ("ck/cnn_best.pkl", "pub.pkl"))
    assert pub["accuracy"] == full["accuracy"] and pub["confusion_matrix"] == full["confusion_matrix"]
    assert Path("pub.pkl").stat().st_size < 0.55 * Path("ck/cnn_best.pkl").stat().st_size      # no momentum buffers


def test_weights_only_keeps_the_normalisation_and_class_names(tmp_path, capsys):
    from cnn_cifar.cli import convert as convert_cli
    from cnn_cifar.inference import Classifier
    model = build_model("cnn", seed=4)
    save_checkpoint(tmp_path / "full.pkl", Checkpoint(model="cnn", state_dict=model.state_dict(),
                                                      model_config=model.config, classes=[f"k{i}" for i in range(10)],
                                                      mean=[0.3, 0.6, 0.1], std=[0.5, 0.1, 0.2],
                                                      optimizer={"name": "sgd"}))
    assert convert_cli.main(["--weights-only", str(tmp_path / "full.pkl"), "--out", str(tmp_path / "pub.pkl")]) == 0
    pixels = np.random.default_rng(0).integers(0, 256, (3, 3, 32, 32), dtype=np.uint8)
    full, pub = Classifier(tmp_path / "full.pkl"), Classifier(tmp_path / "pub.pkl")
    assert pub.classes == full.classes == [f"k{i}" for i in range(10)]
    np.testing.assert_array_equal(pub.probabilities(pixels), full.probabilities(pixels))
