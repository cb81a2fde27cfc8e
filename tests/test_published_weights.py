"""The published option-A CIFAR ResNets (akamaster/pytorch_resnet_cifar10's files in shared/weights),
converted without torch, reproduce PyTorch's logits.

tests/fixtures/published_resnet_logits.npz holds a few fixed, non-trivial input images and the logits
PyTorch computes for them from the original files (benchmarks/published_logits.py, run in bench-venv, wrote
it). A conversion that put a tensor in the wrong place, transposed a kernel or dropped a statistic keeps
every shape and count right but moves these logits, so a shape-and-count check alone could not see it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cnn_cifar import nn
from cnn_cifar.interop import find_state_dict, from_torch, load
from cnn_cifar.models import build_model

SHARED_WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "weights" / "akamaster"
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "published_resnet_logits.npz"
PUBLISHED = {"resnet20": ("resnet20-12fca82f.th", 269_722), "resnet32": ("resnet32-d509ac18.th", 464_154)}

needs_weights = pytest.mark.skipif(not SHARED_WEIGHTS.is_dir(),
                                   reason="shared/weights (the published files) is not beside the repo")


def converted_model(name: str) -> nn.Module:
    """The published file of ``name`` read and converted by the library, in eval mode (as convert_cli does)."""
    ck = from_torch(find_state_dict(load(SHARED_WEIGHTS / PUBLISHED[name][0])), name, shortcut="pad")
    model = build_model(name, shortcut="pad")
    model.load_state_dict(ck.state_dict)
    model.eval()
    return model


def golden() -> dict[str, np.ndarray]:
    """The fixture's arrays: 'inputs' (N, 3, 32, 32) float32, and per model its logits and source file name."""
    with np.load(FIXTURE, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def test_fixture_inputs_are_not_trivial():
    """Zero or constant inputs would leave most of a network unexercised; the fixture's vary in every image."""
    g = golden()
    x = g["inputs"]
    assert x.dtype == np.float32 and x.ndim == 4 and x.shape[1:] == (3, 32, 32) and len(x) >= 4
    assert (x.reshape(len(x), -1).std(axis=1) > 0.2).all()
    for name, (file, _) in PUBLISHED.items():
        assert str(g[f"{name}_file"]) == file                   # golden logits of exactly these files
        assert g[name].shape == (len(x), 10)
        assert len(set(g[name].argmax(1).tolist())) > 1          # not one class for everything


@needs_weights
@pytest.mark.parametrize("name", list(PUBLISHED))
def test_published_file_converts(name):
    """Every parameter arrives (the published counts), and the model runs to finite logits."""
    file, params = PUBLISHED[name]
    ck = from_torch(find_state_dict(load(SHARED_WEIGHTS / file)), name, shortcut="pad")
    assert sum(v.size for k, v in ck.state_dict.items() if "running" not in k and "num_batches" not in k) == params
    model = build_model(name, shortcut="pad")
    model.load_state_dict(ck.state_dict)
    model.eval()
    with nn.no_grad():
        logits = model(np.zeros((2, 3, 32, 32), np.float32))
    assert logits.shape == (2, 10) and np.isfinite(logits).all()


@needs_weights
@pytest.mark.parametrize("name", list(PUBLISHED))
def test_published_file_reproduces_torch_logits(name):
    """Our float32 forward pass of the converted file matches PyTorch's float64 logits to float32 rounding
    (PyTorch's own float32 logits differ from them by ~5e-6), with the same predicted class everywhere."""
    g = golden()
    want = g[name]
    with nn.no_grad():
        got = np.asarray(converted_model(name)(g["inputs"]), np.float64)
    scale = np.abs(want).max()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * scale,
                               err_msg=f"{name}: logits differ from PyTorch's (max |logit| {scale:.2f})")
    np.testing.assert_array_equal(got.argmax(1), want.argmax(1))
