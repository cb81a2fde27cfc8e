"""Batch augmentation added to the loader (cutout fill and probability, shift-scale-rotate, colour jitter,
mixup and cutmix) against torch 2.13.0's numbers, plain-loop and by-hand references; the two-label loss by
finite differences on both backends; exact resume with everything on; the loader's prefetch thread."""
from __future__ import annotations

import colorsys
import math
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from cnn_cifar import backend, nn
from cnn_cifar.cli import train as train_cli
from cnn_cifar.data import BatchLoader
from cnn_cifar.data import augment as A
from cnn_cifar.data.loader import AugmentConfig
from cnn_cifar.errors import SettingError
from cnn_cifar.training import load_checkpoint
from cnn_cifar.training.mixing import MixedCrossEntropy, hard_labels

MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
BASE = ["--no-download", "--limit-train", "128", "--limit-test", "64", "--epochs", "1", "--batch-size", "32",
        "--no-prefetch", "--checkpoint-dir", "ck", "--log-dir", "log", "--quiet"]


def images(n=6, h=7, w=6, seed=0, dtype=np.float64):
    return np.random.default_rng(seed).uniform(0, 255, (n, 3, h, w)).astype(dtype)


# ------------------------------------------------------------------ cutout
def test_cutout_fill_and_probability():
    base = A.normalize(np.full((400, 3, 8, 8), 200, np.uint8), MEAN, STD)
    x = base.copy()
    black = -np.asarray(MEAN, np.float32) / np.asarray(STD, np.float32)          # (0/255 - mean) / std
    A.cutout(x, 4, np.random.default_rng(0), fill=black, p=0.5)
    cut = (x != base).any(axis=1)                                                # pixels that changed
    hit = cut.any(axis=(1, 2))
    assert 150 < hit.sum() < 250                                                 # about half the images
    for k in np.nonzero(hit)[0][:20]:
        ys, xs = np.nonzero(cut[k])
        assert cut[k].sum() == (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1) <= 16    # one square
    np.testing.assert_allclose(x.transpose(0, 2, 3, 1)[cut], np.broadcast_to(black, (cut.sum(), 3)), rtol=1e-6)
    y = base[:4].copy()
    A.cutout(y, 4, np.random.default_rng(0))                                     # default: mean fill, always
    assert ((y == 0).all(axis=1).any(axis=(1, 2))).all()


def test_loader_cutout_fills_black_or_the_mean():
    """--cutout-fill zero paints black pixels (0 before normalisation); mean paints the dataset mean (0 after)."""
    x = np.full((64, 3, 8, 8), 200, np.uint8)
    for fill, pixel in (("zero", 0.0), ("mean", 255 * np.asarray(MEAN))):
        cfg = AugmentConfig(crop_padding=0, flip=False, cutout=4, cutout_fill=fill)
        (xb, _), = BatchLoader(x, np.zeros(64, np.int64), 64, MEAN, STD, augment_cfg=cfg,
                               rng=np.random.default_rng(0), prefetch=False)
        raw = (xb * np.asarray(STD, np.float32)[:, None, None] + np.asarray(MEAN, np.float32)[:, None, None]) * 255
        cut = (np.abs(raw - 200) > 0.01).any(axis=1)
        assert cut.any(axis=(1, 2)).all()
        np.testing.assert_allclose(raw.transpose(0, 2, 3, 1)[cut], np.broadcast_to(pixel, (cut.sum(), 3)),
                                   atol=1e-3)


# ------------------------------------------------------------------ shift-scale-rotate
# torch 2.13.0: F.grid_sample(img, F.affine_grid(theta, align_corners=True), "bilinear", padding_mode,
# align_corners=True) with theta the normalised inverse of cv2.getRotationMatrix2D(((w-1)/2, (h-1)/2), angle,
# scale) + (dx*w, dy*h); img = arange(50).reshape(1, 2, 5, 5) ** 1.5 % 17 in float64; channel 0.
TORCH_SSR = {
    (30.0, 1.1, 0.1, -0.05, "reflect"): [
        [7.6456801141, 2.39030283353, 3.53916477589, 6.34473544942, 7.39068253645],
        [3.68293141583, 9.51316324863, 3.14209437425, 8.948534028, 7.32034915154],
        [11.5988919354, 9.74595916581, 5.08690632714, 6.84697460767, 9.20189875297],
        [8.86520023269, 10.6699903798, 10.1748380909, 3.77363474835, 5.67881138433],
        [9.16794023747, 8.07603350286, 9.37952674222, 7.51010975769, 2.66416469165]],
    (30.0, 1.1, 0.1, -0.05, "constant"): [
        [0.401917852471, 1.99705238696, 3.53916477589, 6.34473544942, 7.39068253645],
        [3.68293141583, 9.51316324863, 3.14209437425, 8.948534028, 7.32034915154],
        [10.4560292191, 9.74595916581, 5.08690632714, 6.84697460767, 9.20189875297],
        [6.53584985719, 10.6699903798, 10.1748380909, 3.77363474835, 5.67881138433],
        [0.0889052916736, 5.46053546806, 9.37952674222, 7.51010975769, 1.26568364054]],
    (-12.0, 0.85, -0.2, 0.13, "reflect"): [
        [9.60753153914, 9.77465262164, 5.54026173568, 6.80438464527, 9.72491415297],
        [4.70017636311, 2.57116643605, 4.59629590694, 8.42761445266, 5.30008806809],
        [9.95044287215, 4.40786659407, 5.64717600109, 8.95540325564, 4.46082546374],
        [9.32117284557, 5.85099589243, 10.1147369235, 6.04501701364, 7.83436180585],
        [9.75676395904, 3.818178994, 11.5727903247, 10.7587440887, 4.40673240473]],
}


@pytest.mark.parametrize("case", list(TORCH_SSR))
def test_affine_warp_matches_torch_grid_sample(case):
    img = (np.arange(50, dtype=np.float64).reshape(1, 2, 5, 5) ** 1.5) % 17
    out = A.affine_warp(img, np.array([case[:4]]), case[4])
    np.testing.assert_allclose(out[0, 0], TORCH_SSR[case], rtol=1e-10)


def _warp_loop(img, angle, scale, dx, dy, border):
    """Plain-loop reference: for each output pixel, invert cv2's rotation matrix and interpolate."""
    c, h, w = img.shape
    cx, cy = (w - 1) / 2, (h - 1) / 2
    t = math.radians(angle)
    a, b = scale * math.cos(t), scale * math.sin(t)
    m = np.array([[a, b, (1 - a) * cx - b * cy + dx * w], [-b, a, b * cx + (1 - a) * cy + dy * h]])
    inv = np.linalg.inv(np.vstack([m, [0, 0, 1]]))
    out = np.zeros_like(img)

    def pixel(ch, yy, xx):
        if border == "constant":
            return img[ch, yy, xx] if 0 <= yy < h and 0 <= xx < w else 0.0

        def ref(i, n):
            return abs(i) % (2 * n - 2) if abs(i) % (2 * n - 2) < n else 2 * n - 2 - abs(i) % (2 * n - 2)
        return img[ch, ref(yy, h), ref(xx, w)]
    for i in range(h):
        for j in range(w):
            sx, sy, _ = inv @ [j, i, 1]
            x0, y0 = math.floor(sx), math.floor(sy)
            fx, fy = sx - x0, sy - y0
            for ch in range(c):
                out[ch, i, j] = ((1 - fx) * (1 - fy) * pixel(ch, y0, x0) + fx * (1 - fy) * pixel(ch, y0, x0 + 1)
                                 + (1 - fx) * fy * pixel(ch, y0 + 1, x0) + fx * fy * pixel(ch, y0 + 1, x0 + 1))
    return out


@pytest.mark.parametrize("border", ["reflect", "constant"])
def test_shift_scale_rotate_batch_against_plain_loops(border):
    x = images()                                                       # 7 x 6: not square
    params = A.ssr_params(len(x), 0.2, 0.3, 40, np.random.default_rng(3))
    out = A.affine_warp(x, params, border)
    for k in range(len(x)):
        np.testing.assert_allclose(out[k], _warp_loop(x[k], *params[k], border), rtol=1e-9, atol=1e-9)
    assert np.array_equal(A.affine_warp(x, np.array([[0.0, 1, 0, 0]] * len(x)), border), x)       # identity
    sq = images(2, 5, 5)
    np.testing.assert_allclose(A.affine_warp(sq, np.array([[90.0, 1, 0, 0]] * 2), border),
                               np.rot90(sq, 1, axes=(2, 3)), atol=1e-9)     # +90 degrees: counter-clockwise
    shifted = A.affine_warp(sq, np.array([[0.0, 1, 0.2, 0]] * 2), border)   # 0.2 * 5 = one pixel right
    np.testing.assert_allclose(shifted[..., 1:], sq[..., :-1], atol=1e-9)


def test_ssr_params_ranges_and_probability():
    p = A.ssr_params(4000, 0.0625, 0.1, 15, np.random.default_rng(0))
    lo, hi = p.min(axis=0), p.max(axis=0)
    np.testing.assert_allclose(lo, [-15, 0.9, -0.0625, -0.0625], atol=0.02)
    np.testing.assert_allclose(hi, [15, 1.1, 0.0625, 0.0625], atol=0.02)
    x = images(400, 5, 5, dtype=np.float32)
    out = A.shift_scale_rotate(x.copy(), 0.1, 0.1, 20, 0.5, np.random.default_rng(1))
    changed = (out != x).any(axis=(1, 2, 3)).sum()
    assert 160 < changed < 240


# ------------------------------------------------------------------ colour jitter
def _adjust_loop(img, kind, f):
    """Per-pixel reference on [0, 1] (3, H, W): brightness, contrast, saturation as torchvision's _blend,
    hue through colorsys."""
    def gray(p):
        return 0.2989 * p[0] + 0.587 * p[1] + 0.114 * p[2]
    out = np.empty_like(img)
    m = np.mean([gray(img[:, i, j]) for i in range(img.shape[1]) for j in range(img.shape[2])])
    for i in range(img.shape[1]):
        for j in range(img.shape[2]):
            p = img[:, i, j]
            if kind == 0:
                q = f * p
            elif kind == 1:
                q = f * p + (1 - f) * m
            elif kind == 2:
                q = f * p + (1 - f) * gray(p)
            else:
                h, s, v = colorsys.rgb_to_hsv(*p)
                q = np.array(colorsys.hsv_to_rgb((h + f) % 1.0, s, v))
            out[:, i, j] = np.clip(q, 0, 1)
    return out


def test_color_jitter_each_adjustment_and_per_image_order():
    x = images(3, 4, 5) / 255
    x[0, :, 0, 0] = [0.5, 0.5, 0.5]                                  # a grey pixel (hue undefined)
    for kind, f in ((0, 1.3), (1, 0.6), (2, 1.7), (3, 0.21), (3, -0.4)):
        out = A.adjust(x.copy(), kind, np.full(3, f), peak=1.0)
        for k in range(3):
            np.testing.assert_allclose(out[k], _adjust_loop(x[k], kind, f), atol=1e-12)
    order = np.array([[0, 1, 2, 3], [3, 2, 1, 0], [2, 0, 3, 1]])
    factors = np.array([[1.2, 0.8, 1.5, 0.1], [0.7, 1.3, 0.5, -0.2], [1.1, np.nan, 0.9, 0.05]])   # nan: off
    out = A.apply_jitter(x.copy(), order, factors, peak=1.0)
    for k in range(3):
        ref = x[k]
        for kind in order[k]:
            if not np.isnan(factors[k, kind]):
                ref = _adjust_loop(ref, kind, factors[k, kind])
        np.testing.assert_allclose(out[k], ref, atol=1e-12)


def test_jitter_params_follow_torchvision_ranges():
    order, f = A.jitter_params(4000, 0.2, 0.4, 1.5, 0.05, np.random.default_rng(0))
    assert (np.sort(order, axis=1) == np.arange(4)).all()                   # a permutation per image
    assert len({tuple(o) for o in order}) == 24                              # all 24 orders occur
    np.testing.assert_allclose(f.min(axis=0), [0.8, 0.6, 0.0, -0.05], atol=2e-3)   # saturation: max(0, 1-1.5)
    np.testing.assert_allclose(f.max(axis=0), [1.2, 1.4, 2.5, 0.05], atol=2e-3)
    _, off = A.jitter_params(5, 0.0, 0.1, 0.0, 0.0, np.random.default_rng(0))
    assert np.isnan(off[:, [0, 2, 3]]).all() and not np.isnan(off[:, 1]).any()


# ------------------------------------------------------------------ mixup, cutmix and their loss
def test_mixup_and_cutmix_by_hand():
    x, y = images(8, 6, 6), np.arange(8)
    out, t = A.mixup(x.copy(), y, 0.4, np.random.default_rng(5))
    r = np.random.default_rng(5)
    lam, perm = r.beta(0.4, 0.4), r.permutation(8)
    np.testing.assert_allclose(out, lam * x + (1 - lam) * x[perm], rtol=1e-12)
    assert t.lam == lam and np.array_equal(t.y_b, perm) and len(t) == 8
    assert np.array_equal(t.dominant, y if lam >= 0.5 else perm)
    for seed in range(6):
        out, t = A.cutmix(x.copy(), y, 1.0, np.random.default_rng(seed))
        changed = (out != x).any(axis=(0, 1))                              # the pasted box, over the batch
        rows, cols = np.nonzero(changed.any(axis=1))[0], np.nonzero(changed.any(axis=0))[0]
        area = 0 if not len(rows) else (rows[-1] - rows[0] + 1) * (cols[-1] - cols[0] + 1)
        assert changed.sum() == area                                       # a rectangle
        assert t.lam == pytest.approx(1 - area / 36)
        src = t.y_b                                                        # inside: the partner's pixels
        np.testing.assert_array_equal(out[:, :, changed], x[src][:, :, changed])


def test_cutmix_box_covers_one_minus_lam_of_the_image():
    """The box's side is sqrt(1 - lam) of the image's (so its area is 1 - lam): with alpha large, lam ~
    Beta(alpha, alpha) sits at 1/2, and every box that the border did not clip covers about half the image."""
    x, y = images(8, 32, 32), np.arange(8)
    interior = []
    for seed in range(120):
        out, t = A.cutmix(x.copy(), y, 5000.0, np.random.default_rng(seed))
        rows, cols = (np.nonzero((out != x).any(axis=(0, 1)).any(axis=a))[0] for a in (1, 0))
        if rows[0] > 0 and cols[0] > 0 and rows[-1] < 31 and cols[-1] < 31:
            interior.append((len(rows), len(cols), t.lam))
    assert len(interior) >= 5
    for hgt, wid, lam in interior:
        assert hgt == wid == 22                       # 2 * (int(32 * sqrt(1/2)) // 2): the authors' rand_bbox
        assert lam == pytest.approx(1 - 22 * 22 / 1024)


def test_mixed_loss_is_the_soft_target_cross_entropy_with_its_gradient(xp):
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((5, 4)) * 2
    y_a, y_b, lam, eps = np.array([0, 1, 2, 3, 1]), np.array([3, 3, 0, 1, 1]), 0.3, 0.1
    targets = A.MixedTargets(xp.asarray(y_a), xp.asarray(y_b), lam)
    crit = MixedCrossEntropy(nn.SoftmaxCrossEntropy(eps))
    soft = lam * np.eye(4)[y_a] + (1 - lam) * np.eye(4)[y_b]
    soft = (1 - eps) * soft + eps / 4                                      # label smoothing, as torch
    logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    dev = xp.asarray(logits)
    assert crit(dev, targets) == pytest.approx(-(soft * logp).sum(axis=1).mean(), rel=1e-12)
    grad = backend.to_numpy(crit.backward())
    num = np.zeros_like(logits)
    for i in np.ndindex(logits.shape):                                     # central differences
        for s in (1, -1):
            z = logits.copy()
            z[i] += s * 1e-6
            num[i] += s * crit(xp.asarray(z), targets) / 2e-6
    np.testing.assert_allclose(grad, num, rtol=1e-6, atol=1e-9)
    crit(dev, targets)
    plain = crit(dev, xp.asarray(y_a))                                     # plain labels pass through
    assert plain == pytest.approx(nn.SoftmaxCrossEntropy(eps)(dev, xp.asarray(y_a)))
    assert np.array_equal(backend.to_numpy(hard_labels(targets)), y_b)   # lam 0.3: the partner dominates


def test_loader_yields_mixed_targets_on_the_backend(xp):
    x = np.random.default_rng(0).integers(0, 256, (16, 3, 8, 8), dtype=np.uint8)
    cfg = AugmentConfig(2, True, 3, "zero", 0.5, (0.1, 0.1, 10), 0.5, "constant", (0.2, 0.2, 0.2, 0.05), 0.2, 1.0)
    batches = [list(BatchLoader(x, np.arange(16) % 10, 8, MEAN, STD, shuffle=True, augment_cfg=cfg,
                                rng=np.random.default_rng(7), prefetch=pf)) for pf in (False, True)]
    for (xa, ta), (xb, tb) in zip(*batches):                    # same stream with and without the thread
        assert isinstance(ta, A.MixedTargets) and backend.get_array_module(ta.y_a) is xp
        assert np.array_equal(backend.to_numpy(xa), backend.to_numpy(xb)) and ta.lam == tb.lam


def test_loader_with_mixup_and_cutmix_picks_one_per_batch_half_the_time():
    """Both on: each batch is mixed by one of them, chosen by a fair coin (timm's Mixup switch). CutMix leaves
    the pixels outside its box as they were; mixup (lam < 1) changes every pixel."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (8, 3, 8, 8), dtype=np.uint8)
    plain = A.normalize(x, MEAN, STD)
    cfg = AugmentConfig(crop_padding=0, flip=False, mixup=0.4, cutmix=1.0)
    loader = BatchLoader(np.concatenate([x] * 60), np.zeros(480, np.int64), 8, MEAN, STD, augment_cfg=cfg,
                         rng=np.random.default_rng(1), prefetch=False)
    kinds = []
    for xb, _ in loader:
        kept = (xb == plain).all(axis=(0, 1))                        # pixels no image in the batch changed
        kinds.append("cutmix" if kept.any() else "mixup")
    assert 18 <= kinds.count("cutmix") <= 42


# ------------------------------------------------------------------ through train_cli
def _straight_and_resumed(flags: list[str], epochs: int, cifar_root):
    """train_cli with ``flags`` for ``epochs`` epochs in ./a, and for 1 epoch in ./b then resumed there to
    ``epochs``; returns the two last checkpoints, after checking they hold the same weights."""
    assert train_cli.main([*flags, "--epochs", str(epochs), "--checkpoint-dir", "a"]) == 0
    assert train_cli.main([*flags, "--epochs", "1", "--checkpoint-dir", "b"]) == 0
    assert train_cli.main(["--resume", "b/cnn_last.pkl", "--epochs", str(epochs), "--checkpoint-dir", "b", "--quiet",
                           "--data", str(cifar_root), "--no-download", "--no-prefetch"]) == 0
    a, b = (load_checkpoint(Path(d) / "cnn_last.pkl") for d in "ab")
    assert all(np.array_equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)
    return a, b


def test_every_augmentation_resumes_exactly(cifar_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CNN_CIFAR_BACKEND", "numpy")
    flags = ["--data", str(cifar_root), *BASE, "--cutout", "6", "--cutout-fill", "zero", "--cutout-p", "0.7",
             "--shift-scale-rotate", "0.0625", "0.1", "15", "--ssr-p", "0.6", "--ssr-border", "constant",
             "--color-jitter", "0.2", "0.2", "0.2", "0.02", "--mixup", "0.2", "--cutmix", "1.0"]
    a, b = _straight_and_resumed(flags, 2, cifar_root)
    assert a.rng["data"] == b.rng["data"] and a.history[1]["train_loss"] == b.history[1]["train_loss"]
    assert (b.args["shift_scale_rotate"], b.args["color_jitter"]) == ([0.0625, 0.1, 15.0], [0.2, 0.2, 0.2, 0.02])
    assert (b.args["cutout_fill"], b.args["cutout_p"], b.args["mixup"], b.args["cutmix"]) == ("zero", 0.7, 0.2, 1.0)


def test_settings_table_and_show_augment(cifar_root, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CNN_CIFAR_BACKEND", "numpy")
    flags = ["--data", str(cifar_root), *BASE[:-1], "--shift-scale-rotate", "0.0625", "0.1", "15", "--mixup", "0.2",
             "--show-augment", "6"]
    assert train_cli.main([*flags, "--verbose"]) == 0
    out = capsys.readouterr().out
    assert "  shift-scale-rotate  0.0625 0.1 15\n" in out and "  color-jitter        None\n" in out
    assert train_cli.main(flags) == 0
    assert "\naugment    crop 4, flip, shift-scale-rotate, mixup 0.2; " in capsys.readouterr().out
    png = tmp_path / "viz" / "cnn" / "cnn_augment.png"
    assert f"wrote {Path('viz/cnn/cnn_augment.png')}" in out and png.read_bytes()[:4] == b"\x89PNG"
    assert not (tmp_path / "ck").exists()                                  # it did not train


@pytest.mark.parametrize("flags,msg", [
    (["--shift-scale-rotate", "0.1", "1", "10"], "--shift-scale-rotate needs 0 <= shift <= 1, 0 <= scale < 1 "
                                                 "and 0 <= degrees <= 180, got 0.1 1 10"),
    (["--color-jitter", "0.2", "0.2", "0.2", "0.6"], "--color-jitter needs brightness, contrast, saturation >= 0 "
                                                     "and 0 <= hue <= 0.5, got 0.2 0.2 0.2 0.6"),
    (["--color-jitter", "0.2", "0.2"], "argument --color-jitter: expected 4 arguments"),
    (["--cutout-p", "0"], "argument --cutout-p: must be a positive number, got 0"),
    (["--cutout-fill", "blue"], "argument --cutout-fill: invalid choice: 'blue'"),
    (["--mixup", "-1"], "argument --mixup: must be a non-negative number, got -1"),
])
def test_augmentation_flag_errors(capsys, flags, msg):
    with pytest.raises(SystemExit) as exc:
        train_cli.main(["--epochs", "1", *flags])
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(f"train_cli.py: error: {msg}")


# ------------------------------------------------------------------ the prefetch thread
def test_prefetch_stops_when_the_consumer_stops_after_the_last_batch_was_built():
    """The producer has built every batch and waits to hand over its end marker on a full queue; closing the
    iterator then must not hang (it did, with a blocking put of the marker)."""
    x = np.zeros((8, 3, 4, 4), np.uint8)
    loader = BatchLoader(x, np.zeros(8, np.int64), 2, (0.5,) * 3, (0.25,) * 3, prefetch=True)
    it = iter(loader)
    next(it), next(it)
    time.sleep(0.15)                             # batches 3 and 4 queued, the end marker waiting
    closer = threading.Thread(target=it.close, daemon=True)
    closer.start()
    closer.join(timeout=10)
    assert not closer.is_alive(), "closing the prefetching iterator hung"


def test_augmentation_errors_name_parameters_in_the_library_and_flags_on_the_command_line():
    with pytest.raises(SettingError, match=r"^cutout_p must be in \(0, 1\], got 0$") as exc:
        AugmentConfig(cutout_p=0)
    assert exc.value.worded(lambda s: f"<{s}>") == "<cutout_p> must be in (0, 1], got 0"
    with pytest.raises(SettingError, match=r"^mixup and cutmix take an alpha >= 0") as exc:
        AugmentConfig(mixup=-1)
    assert exc.value.worded(lambda s: "--" + s) == "--mixup and --cutmix take an alpha >= 0 (0 = off)"


# ------------------------------------------------------------------ the fast recipes' translation and flips
def test_translate_is_a_reflect_padded_random_window():
    x = np.arange(2 * 3 * 6 * 6, dtype=np.uint8).reshape(2, 3, 6, 6)
    out = A.random_crop(np.concatenate([x] * 20), 2, np.random.default_rng(0), mode="reflect")
    padded = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)), mode="reflect")
    windows = {(i, oy, ox): padded[i, :, oy:oy + 6, ox:ox + 6] for i in range(2) for oy in range(5) for ox in range(5)}
    seen = set()
    for k, o in enumerate(out):
        match = [key for key, w in windows.items() if key[0] == k % 2 and np.array_equal(o, w)]
        assert match, k                                            # every output is one reflect-padded window
        seen.add(match[0][1:])
    assert len(seen) > 10                                          # and they vary
    cfg = AugmentConfig(crop_padding=0, flip=False, translate=2)   # the loader's translation is this one
    (xb, _), = BatchLoader(x, np.arange(2), 2, MEAN, STD, augment_cfg=cfg, rng=np.random.default_rng(3),
                           prefetch=False)
    want = A.random_crop(x, 2, np.random.default_rng(3), mode="reflect")
    np.testing.assert_array_equal(xb, A.normalize(want, MEAN, STD))


def test_alternating_flip_flips_half_the_images_then_swaps_each_epoch():
    """Each image is flipped on alternate epochs: a fixed half from the first epoch, the other half on the
    next, whatever the order the batches come in; the choice does not advance the data stream."""
    x = np.random.default_rng(0).integers(0, 256, (40, 3, 4, 4), dtype=np.uint8)
    cfg = AugmentConfig(crop_padding=0, alternating_flip=True)
    rng = np.random.default_rng(5)
    loader = BatchLoader(x, np.arange(40), 8, MEAN, STD, shuffle=True, augment_cfg=cfg, rng=rng, prefetch=False)
    assert rng.bit_generator.state == np.random.default_rng(5).bit_generator.state     # not advanced
    plain, mirrored = A.normalize(x, MEAN, STD), A.normalize(np.ascontiguousarray(x[..., ::-1]), MEAN, STD)
    flipped = []
    for epoch in range(3):
        loader.set_epoch(epoch)
        state = np.zeros(40, bool)
        for xb, yb in loader:
            for img, i in zip(xb, yb):
                assert np.array_equal(img, mirrored[i]) or np.array_equal(img, plain[i])
                state[i] = np.array_equal(img, mirrored[i])
        flipped.append(state)
    assert 10 < flipped[0].sum() < 30
    assert np.array_equal(flipped[1], ~flipped[0]) and np.array_equal(flipped[2], flipped[0])
    again = BatchLoader(x, np.arange(40), 8, MEAN, STD, shuffle=True, augment_cfg=cfg,
                        rng=np.random.default_rng(5), prefetch=False)
    assert np.array_equal(again._flipped_first, loader._flipped_first)    # a resumed run rebuilds the same half


def test_translate_and_alternating_flip_resume_exactly_through_the_cli(cifar_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    flags = ["--data", str(cifar_root), *BASE[:-1], "--quiet", "--crop-padding", "0", "--translate", "2",
             "--alternating-flip"]
    a, b = _straight_and_resumed(flags, 3, cifar_root)
    assert (b.args["translate"], b.args["alternating_flip"]) == (2, True)


@pytest.mark.parametrize("flags,msg", [
    (["--translate", "2"], "--translate (reflect-padded) and --crop-padding (zero-padded) are two ways to shift"),
    (["--alternating-flip", "--no-flip"], "--alternating-flip needs flip"),
])
def test_translate_and_alternating_flip_errors(capsys, flags, msg):
    with pytest.raises(SystemExit):
        train_cli.main(["--epochs", "1", *flags])
    assert msg in capsys.readouterr().err.strip().splitlines()[-1]
