"""predict_cli and cnn_cifar.inference: image files (RGB, grayscale, 16-bit, float, palette, CMYK, transparent,
EXIF-rotated, other sizes, broken, too large) loaded as a viewer shows them and classified with a checkpoint's
own normalisation, the same way test_cli evaluates."""
from __future__ import annotations

import json
import re

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


def test_top_k_is_most_probable_first_with_ties_by_class_index(ckpt):
    clf = Classifier(ckpt)
    probs = np.array([[0.1, 0.2, 0.2, 0.0, 0.2, 0.1, 0.1, 0.05, 0.05, 0.0]])
    assert [c for c, _ in clf.top(probs, 5)[0]] == ["thing1", "thing2", "thing4", "thing0", "thing5"]


def test_class_names_fall_back_when_the_checkpoint_has_none_or_the_wrong_number(tmp_path):
    model = build_model("cnn", seed=3)
    for stored, want in ((None, "airplane"), (["a", "b", "c"], "airplane"), ([f"n{i}" for i in range(10)], "n0")):
        path = save_checkpoint(tmp_path / "m.pkl", Checkpoint(model="cnn", state_dict=model.state_dict(),
                                                              model_config=model.config, classes=stored))
        assert Classifier(path).classes[0] == want


def test_predict_cli_shows_five_classes_per_image_by_default(ckpt, tmp_path, capsys, monkeypatch):
    from cnn_cifar.cli import predict
    monkeypatch.chdir(tmp_path)
    _png(tmp_path / "one.png", np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    assert predict.main(["one.png", "--resume", str(ckpt), "--backend", "numpy"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1 + 5


def test_predict_without_a_checkpoint_says_what_is_missing(tmp_path, capsys, monkeypatch):
    from cnn_cifar.cli import predict
    monkeypatch.setattr(predict, "DEFAULT_CHECKPOINT", tmp_path / "pretrained" / "resnet32.pkl")
    assert predict.main([str(tmp_path / "x.png")]) == 1
    assert "no --resume given and no shipped checkpoint at" in capsys.readouterr().err


def _shrink(profile: np.ndarray, size: int = 32) -> np.ndarray:
    """A 1-D profile shrunk as torchvision's Resize (bilinear, antialiased) shrinks it: each output pixel is the
    mean of the inputs weighted by a triangle two output pixels wide around its centre (taps off the edge
    dropped)."""
    scale = len(profile) / size
    centres = (np.arange(size) + 0.5) * scale
    weights = np.clip(1 - np.abs(np.arange(len(profile)) + 0.5 - centres[:, None]) / scale, 0, None)
    return weights @ profile / weights.sum(1)


def test_downscaling_averages_fine_detail_as_torchvision_does_instead_of_aliasing(tmp_path):
    parity = np.indices((64, 64)).sum(0) % 2                     # a checkerboard of 1-pixel squares
    board = load_image(_png(tmp_path / "board.png", (255 * parity).astype(np.uint8)))
    assert board.note == "L converted to RGB; resized from 64x64 to 32x32"
    assert (np.abs(board.pixels.astype(int) - 127.5) <= 3).all()      # mid-gray, not black or white
    p = _shrink(np.arange(64) % 2)
    want = 255 * (p[:, None] + p[None, :] - 2 * p[:, None] * p[None, :])   # the filtered XOR of the parities
    assert (np.abs(board.pixels - want) <= 1.5).all()
    edge = np.zeros((32, 80, 3), np.uint8)
    edge[:, 40:] = (255, 128, 0)                                 # a sharp vertical edge, shrunk 2.5x
    shrunk = load_image(_png(tmp_path / "edge.png", edge)).pixels
    want = _shrink(np.arange(80) >= 40)[None, None, :] * np.array([255, 128, 0])[:, None, None]
    assert (np.abs(shrunk - want) <= 1).all()                    # softened over two pixels, as bilinear does


@pytest.mark.parametrize("name, mode", [("g16.png", "I;16"), ("g16.pgm", "I;16"), ("g16b.tif", "I;16B")])
def test_16_bit_grayscale_is_scaled_to_8_bits_instead_of_clipped_to_white(tmp_path, name, mode):
    """Pillow opens the PNG as I;16 (I in older Pillow), the PGM as I and the big-endian TIFF as I;16B."""
    values = np.linspace(0, 65535, 32 * 32).round().reshape(32, 32)
    values[0, :6] = [128, 129, 385, 386, 65407, 65408]           # either side of the rounding points
    raw = values.astype("<u2" if mode == "I;16" else ">u2").tobytes()
    Image.frombytes(mode, (32, 32), raw).save(tmp_path / name)
    im = load_image(tmp_path / name)
    want = np.round(values * 255 / 65535)
    assert (im.pixels == want).all()                             # every pixel, every channel
    assert re.fullmatch(r"I(;16B?)? \((taken as )?16-bit\) scaled to 8 bits and converted to RGB", im.note)


def test_float_images_are_scaled_from_0_1_or_else_clipped_to_0_255(tmp_path):
    unit = np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)
    unit[0, 0] = np.nan                                          # black, and no reason to doubt the 0..1 range
    Image.fromarray(unit).save(tmp_path / "unit.tif")
    im = load_image(tmp_path / "unit.tif")
    assert (im.pixels == np.round(np.nan_to_num(unit.astype(np.float64)) * 255)).all()
    assert im.note == "F (floats taken as 0..1) scaled to 8 bits and converted to RGB"
    wide = np.linspace(-20, 300, 32 * 32, dtype=np.float32).reshape(32, 32)
    Image.fromarray(wide).save(tmp_path / "wide.tif")
    im = load_image(tmp_path / "wide.tif")
    assert (im.pixels == np.clip(np.round(wide.astype(np.float64)), 0, 255)).all()
    assert im.note == "F (floats taken as 0..255) rounded to 8 bits and converted to RGB"


def test_transparent_pixels_of_every_kind_of_image_are_composited_on_white(tmp_path):
    """The left half of each image is opaque, the right half transparent (alpha 0) or, for PNG tRNS and GIF,
    the transparent colour."""
    gray = np.full((32, 32), 60, np.uint8)
    gray[:, 16:] = 7
    rgb = np.stack([gray, gray // 2, gray + 100], -1)
    alpha = np.where(gray == 60, 255, 0).astype(np.uint8)
    Image.fromarray(gray).convert("P").save(tmp_path / "p.png", transparency=7)
    Image.fromarray(gray).convert("P").save(tmp_path / "p.gif", transparency=7)
    Image.fromarray(np.stack([gray, alpha], -1), "LA").save(tmp_path / "la.png")
    Image.fromarray(gray).save(tmp_path / "l.png", transparency=7)
    Image.fromarray(rgb).save(tmp_path / "rgb.png", transparency=(7, 3, 107))
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "l16.png", transparency=7 * 257)  # 16-bit
    for name, left, note in [("p.png", 60, "P converted to RGB"), ("p.gif", 60, "P converted to RGB"),
                             ("la.png", 60, "LA converted to RGB"), ("l.png", 60, "L converted to RGB"),
                             ("rgb.png", (60, 30, 160), "transparent colour composited on white"),
                             ("l16.png", 60, r"I(;16)? \((taken as )?16-bit\) scaled to 8 bits and converted to RGB")]:
        im = load_image(tmp_path / name)
        assert (im.pixels[:, :, :16] == np.reshape(left, (-1, 1, 1))).all(), name
        assert (im.pixels[:, :, 16:] == 255).all(), name
        assert re.fullmatch(note, im.note), name


@pytest.mark.parametrize("name, mode, tolerance", [("cmyk.tif", "CMYK", 0), ("cmyk.jpg", "CMYK", 8),
                                                   ("ycc.tif", "YCbCr", 0), ("lab.tif", "LAB", 0),
                                                   ("bw.png", "1", 0), ("pal.png", "P", 0)])
def test_other_colour_modes_load_as_pillow_converts_them_to_rgb(tmp_path, name, mode, tolerance):
    rng = np.random.default_rng(5)
    blocks = rng.integers(0, 256, (4, 4, 4), dtype=np.uint8).repeat(8, 0).repeat(8, 1)    # 8x8 flat blocks
    original = Image.fromarray(blocks, "CMYK")
    original = original if mode == "CMYK" else Image.fromarray(blocks[..., :3]).convert(mode)
    original.save(tmp_path / name, quality=95)
    im = load_image(tmp_path / name)
    want = np.asarray(original.convert("RGB")).transpose(2, 0, 1).astype(int)
    inner = np.indices((32, 32)) % 8
    inner = ((inner > 1) & (inner < 6)).all(0)                    # away from the blocks' edges (JPEG blurs them)
    assert (np.abs(im.pixels - want)[:, inner] <= tolerance).all()
    assert im.note == f"{mode} converted to RGB"


@pytest.mark.parametrize("orientation, left, right, rotated", [
    (6, (0, 0, 255), (255, 0, 0), "rotated 90 degrees clockwise"),
    (8, (255, 0, 0), (0, 0, 255), "rotated 90 degrees counter-clockwise"),
])
def test_exif_rotated_photos_are_loaded_upright_as_a_viewer_shows_them(tmp_path, orientation, left, right,
                                                                        rotated):
    stored = np.zeros((32, 64, 3), np.uint8)                     # as the camera wrote it: 64 wide, 32 high,
    stored[:16] = (255, 0, 0)                                    # top half red,
    stored[16:] = (0, 0, 255)                                    # bottom half blue
    exif = Image.Exif()
    exif[0x0112] = orientation                                   # the Orientation tag
    Image.fromarray(stored).save(tmp_path / "photo.jpg", quality=95, exif=exif)
    im = load_image(tmp_path / "photo.jpg")                      # shown 32 wide, 64 high: halves side by side
    assert im.note == f"{rotated} as its EXIF orientation {orientation} says; resized from 32x64 to 32x32"
    px = im.pixels.astype(int)
    assert (np.abs(px[:, :, :14] - np.reshape(left, (3, 1, 1))) <= 12).all()
    assert (np.abs(px[:, :, 18:] - np.reshape(right, (3, 1, 1))) <= 12).all()


def test_an_image_too_large_to_decode_safely_is_a_one_line_error(ckpt, tmp_path, capsys, monkeypatch):
    from cnn_cifar.cli import predict
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)          # 32x32 is then over Pillow's bomb limit (2x)
    _png(tmp_path / "small.png", np.zeros((16, 16, 3), np.uint8))
    _png(tmp_path / "big.png", np.zeros((32, 32, 3), np.uint8))
    assert predict.main(["small.png", "big.png", "--resume", str(ckpt), "--backend", "numpy"]) == 1
    out, err = capsys.readouterr()
    assert out.startswith("small.png  (resized from 16x16 to 32x32)\n")
    assert re.fullmatch(r"error: big\.png: unreadable image \(DecompressionBombError: .*\)\n", err)
