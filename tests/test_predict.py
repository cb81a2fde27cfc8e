"""predict_cli and cnn_cifar.inference: image files (RGB, grayscale, RGBA, other sizes, broken) classified
with a checkpoint's own normalisation, the same way test_cli evaluates."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from cnn_cifar import nn
from cnn_cifar.data import BatchLoader, load_dataset
from cnn_cifar.inference import Classifier, ImageError, load_image
from cnn_cifar.models import build_model
from cnn_cifar.training import Checkpoint, save_checkpoint

CLASSES = [f"thing{i}" for i in range(10)]
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


@pytest.fixture
def ckpt(tmp_path):
    model = build_model("cnn", seed=3)
    return save_checkpoint(tmp_path / "m.pkl", Checkpoint(model="cnn", state_dict=model.state_dict(),
                                                          model_config=model.config, classes=CLASSES,
                                                          mean=list(MEAN), std=list(STD)))


def _png(path, array, mode=None):
    Image.fromarray(array, mode).save(path)
    return path


def test_rgb_images_get_the_probabilities_test_cli_would_compute(ckpt, cifar_root, tmp_path):
    ds = load_dataset("cifar10", cifar_root, download=False)
    paths = [_png(tmp_path / f"{i}.png", ds.x_test[i].transpose(1, 2, 0)) for i in range(5)]
    clf = Classifier(ckpt)
    images = [load_image(p) for p in paths]
    assert all(im.note == "" for im in images)
    probs = clf.probabilities(np.stack([im.pixels for im in images]))
    model = build_model("cnn")
    model.load_state_dict(clf.model.state_dict())
    model.eval()
    x, _ = next(iter(BatchLoader(ds.x_test[:5], ds.y_test[:5], 5, MEAN, STD)))    # the evaluation pipeline
    with nn.no_grad():
        logits = model(x).astype(np.float64)
    want = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(probs, want / want.sum(1, keepdims=True), rtol=1e-12)
    top = clf.top(probs, 3)
    assert [t[0][0] for t in top] == [CLASSES[j] for j in want.argmax(1)]
    assert all(t[0][1] >= t[1][1] >= t[2][1] for t in top)


def test_grayscale_rgba_and_other_sizes_are_converted_and_say_so(tmp_path):
    gray = load_image(_png(tmp_path / "g.png", np.full((64, 48), 77, np.uint8), "L"))
    assert gray.pixels.shape == (3, 32, 32) and (gray.pixels == 77).all()
    assert gray.note == "L converted to RGB; resized from 48x64 to 32x32"
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:16, :, 3] = 255                      # top half opaque red, bottom half fully transparent
    im = load_image(_png(tmp_path / "a.png", rgba, "RGBA"))
    assert im.note == "RGBA converted to RGB"
    assert (im.pixels[:, :16] == np.array([200, 0, 0])[:, None, None]).all()
    assert (im.pixels[:, 16:] == 255).all()    # composited on white
    jpg = tmp_path / "p.jpg"
    Image.fromarray(np.full((32, 32, 3), 120, np.uint8)).save(jpg, quality=95)
    assert load_image(jpg).note == "" and abs(int(load_image(jpg).pixels.mean()) - 120) <= 2


def test_broken_and_missing_files_are_clear_errors(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"definitely not a PNG")
    with pytest.raises(ImageError, match=r"bad.png: not an image file"):
        load_image(tmp_path / "bad.png")
    good = _png(tmp_path / "cut.png", np.zeros((32, 32, 3), np.uint8))
    (tmp_path / "cut.png").write_bytes(good.read_bytes()[:60])
    with pytest.raises(ImageError, match=r"cut.png: (unreadable image|not an image)"):
        load_image(tmp_path / "cut.png")
    with pytest.raises(ImageError, match=r"nothere.png: no such file"):
        load_image(tmp_path / "nothere.png")


def test_predict_cli_classifies_the_good_images_and_names_the_bad_one(ckpt, tmp_path, capsys, monkeypatch):
    from cnn_cifar.cli import predict
    monkeypatch.chdir(tmp_path)
    _png(tmp_path / "one.png", np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    _png(tmp_path / "two.png", np.random.default_rng(1).integers(0, 255, (40, 40), dtype=np.uint8), "L")
    (tmp_path / "junk.png").write_bytes(b"junk")
    rc = predict.main(["one.png", "junk.png", "two.png", "--resume", str(ckpt), "--topk", "2",
                       "--backend", "numpy"])
    out, err = capsys.readouterr()
    assert rc == 1
    assert err.strip().splitlines() == ["error: junk.png: not an image file Pillow can read"]
    lines = out.splitlines()
    assert lines[0] == "one.png" and lines[3] == "two.png  (L converted to RGB; resized from 40x40 to 32x32)"
    assert all(line.strip().endswith(tuple(CLASSES)) and "%" in line for line in lines[1:3] + lines[4:6])
    rc = predict.main(["one.png", "--resume", str(ckpt), "--json", "--topk", "20", "--backend", "numpy"])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 0 and doc["model"] == "cnn" and doc["errors"] == []
    top = doc["results"][0]["top"]
    assert len(top) == 10 and abs(sum(t["probability"] for t in top) - 1) < 1e-9


def test_predict_without_a_checkpoint_says_what_is_missing(tmp_path, capsys, monkeypatch):
    from cnn_cifar.cli import predict
    monkeypatch.setattr(predict, "DEFAULT_CHECKPOINT", tmp_path / "pretrained" / "resnet32.pkl")
    assert predict.main([str(tmp_path / "x.png")]) == 1
    assert "no --resume given and no shipped checkpoint at" in capsys.readouterr().err
