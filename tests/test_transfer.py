"""Starting from trained weights: test_cli --resume DIR, train_cli --init-from (also across class counts)."""
from __future__ import annotations

import numpy as np
import pytest

from cnn_cifar.cli import common as C
from cnn_cifar.models import build_model
from cnn_cifar.training import (
    Checkpoint,
    CheckpointError,
    find_checkpoint,
    load_checkpoint,
    save_checkpoint,
    transfer_weights,
)

from conftest import write_fake_cifar100


def _ck(model: str = "cnn", classes: int = 10, seed: int = 1) -> Checkpoint:
    m = build_model(model, num_classes=classes, seed=seed)
    return Checkpoint(model=model, state_dict=m.state_dict(), model_config=m.config, epoch=3)


def test_find_checkpoint_in_a_folder(tmp_path):
    assert find_checkpoint(tmp_path / "x.pkl") == tmp_path / "x.pkl"                  # a file: as given
    with pytest.raises(CheckpointError, match=r"no a \*_best.pkl in .* \(no .pkl files\)"):
        find_checkpoint(tmp_path)
    save_checkpoint(tmp_path / "cnn_last.pkl", _ck())
    with pytest.raises(CheckpointError, match=r"no a \*_best.pkl in .* \(it holds cnn_last.pkl\)"):
        find_checkpoint(tmp_path)
    save_checkpoint(tmp_path / "cnn_best.pkl", _ck())
    assert find_checkpoint(tmp_path) == tmp_path / "cnn_best.pkl"
    save_checkpoint(tmp_path / "resnet8_best.pkl", _ck("resnet8"))
    with pytest.raises(CheckpointError, match=r"several best checkpoints \(cnn_best.pkl, resnet8_best.pkl\): "
                                               r"name the model$") as exc:
        find_checkpoint(tmp_path)
    assert C.message(exc.value).endswith(": name the model (choose one with --model)")    # the CLI's words
    assert find_checkpoint(tmp_path, "resnet8") == tmp_path / "resnet8_best.pkl"
    with pytest.raises(CheckpointError, match=r"no resnet20_best.pkl in"):
        find_checkpoint(tmp_path, "resnet20")


def test_test_cli_takes_a_folder(cifar_root, tmp_path, monkeypatch, capsys):
    from cnn_cifar.cli import test as test_cli
    save_checkpoint(tmp_path / "cnn_best.pkl", _ck())
    monkeypatch.chdir(tmp_path)
    assert test_cli.main(["--resume", ".", "--data", str(cifar_root), "--no-download", "--quiet",
                          "--limit-test", "20"]) == 0
    assert "model cnn (cnn_best.pkl, epoch 3)" in capsys.readouterr().out


def test_transfer_keeps_every_weight_and_reinitialises_only_another_head():
    src = _ck(classes=10, seed=1)
    same = build_model("cnn", seed=2)
    assert transfer_weights(same, src) == []
    assert all(np.array_equal(v, src.state_dict[k]) for k, v in same.state_dict().items())
    fresh_model = build_model("cnn", num_classes=100, seed=2)
    before = fresh_model.state_dict()
    assert transfer_weights(fresh_model, src) == ["fc2.weight", "fc2.bias"]
    after = fresh_model.state_dict()
    for k, v in after.items():
        want = before[k] if k.startswith("fc2.") else src.state_dict[k]
        np.testing.assert_array_equal(v, want, err_msg=k)
    with pytest.raises(CheckpointError, match=r"'conv1.weight' has shape .* needs"):
        transfer_weights(build_model("cnn"), Checkpoint(model="cnn", state_dict=dict(
            src.state_dict, **{"conv1.weight": np.zeros((8, 3, 5, 5), np.float32)})))
    with pytest.raises(CheckpointError, match=r"the checkpoint has tensors the model does not: extra.weight"):
        transfer_weights(build_model("cnn"), Checkpoint(model="cnn", state_dict=dict(
            src.state_dict, **{"extra.weight": np.zeros(3, np.float32)})))


def test_init_from_cifar10_to_cifar100_through_the_cli(cifar_root, tmp_path, monkeypatch, capsys):
    from cnn_cifar.cli import train as train_cli
    monkeypatch.chdir(tmp_path)
    write_fake_cifar100(tmp_path / "c100")
    common = ["--no-download", "--limit-train", "64", "--limit-test", "32", "--batch-size", "32", "--no-prefetch",
              "--quiet", "--epochs", "1", "--log-dir", "log"]
    assert train_cli.main(["--model", "cnn", "--data", str(cifar_root), "--checkpoint-dir", "c10", *common]) == 0
    capsys.readouterr()
    assert train_cli.main(["--init-from", "c10/cnn_best.pkl", "--dataset", "cifar100", "--data", str(tmp_path / "c100"),
                           "--checkpoint-dir", "c100ck", *common]) == 0
    out = capsys.readouterr().out
    assert "initialised from c10/cnn_best.pkl; its 10-class head (fc2.weight, fc2.bias) re-initialised for 100 " \
           "classes" in out
    ck = load_checkpoint("c100ck/cnn_last.pkl", "cnn")
    assert ck.num_classes == 100 and ck.epoch == 1 and ck.dataset == "cifar100"
    with pytest.raises(SystemExit):
        train_cli.main(["--init-from", "c10/cnn_best.pkl", "--resume", "c10/cnn_last.pkl", *common])
