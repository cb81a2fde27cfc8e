"""Models end to end: parameter counts, whole-model gradient checks, determinism, overfitting."""
from __future__ import annotations

import numpy as np
import pytest

from cnn_cifar import backend, nn
from cnn_cifar.models import build_model, list_models

from gradcheck import check_module


def test_parameter_counts():
    assert build_model("cnn").num_parameters() == 232_314
    assert build_model("resnet32").num_parameters() == 466_906
    assert build_model("resnet20").num_parameters() == 272_474
    assert build_model("cnn", num_classes=100).num_parameters() == 232_314 + 90 * 129


def test_list_models_and_unknown_name():
    names = list_models()
    for name in ["cnn", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110"]:
        assert name in names
    with pytest.raises(ValueError, match="unknown model 'vgg'"):
        build_model("vgg")


def test_resnet_state_dict_names():
    keys = list(build_model("resnet32").state_dict())
    assert "conv1.weight" in keys and "bn1.running_mean" in keys
    assert "layer2.0.conv1.weight" in keys and "layer2.0.shortcut.0.weight" in keys
    assert "layer3.4.bn2.running_var" in keys and "fc.weight" in keys
    assert "conv1.bias" not in keys   # bias-free convolutions before BN


def test_same_seed_same_weights_different_seed_different():
    a, b, c = (build_model("resnet8", seed=s).state_dict() for s in (1, 1, 2))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["conv1.weight"], c["conv1.weight"])


def test_float32_everywhere(xp):
    model = build_model("resnet8")
    x = backend.to_device(np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32))
    y = model(x)
    crit = nn.SoftmaxCrossEntropy()
    crit(y, backend.to_device(np.array([1, 2])))
    model.conv1.needs_input_grad = True
    dx = model.backward(crit.backward())
    assert y.dtype == np.float32 and dx.dtype == np.float32
    for name, p in model.named_parameters():
        assert p.data.dtype == np.float32 and p.grad.dtype == np.float32, name


def test_simple_cnn_whole_model_gradcheck(xp):
    model = build_model("cnn", dropout=0.3, seed=3).to(np.float64)
    model.conv1.needs_input_grad = True
    x = backend.to_device(np.random.default_rng(1).standard_normal((3, 3, 32, 32)))
    check_module(model, x, max_points=40)


def test_small_resnet_whole_model_gradcheck(xp):
    model = build_model("resnet8", dropout=0.2, seed=4).to(np.float64)
    model.conv1.needs_input_grad = True
    x = backend.to_device(np.random.default_rng(2).standard_normal((2, 3, 16, 16)))
    check_module(model, x, max_points=20)


def test_loss_falls_and_tiny_model_overfits_64_images(xp):
    """SimpleCNN fits 64 fixed random-label images to 100% training accuracy."""
    from cnn_cifar.optim import SGD
    rng = np.random.default_rng(0)
    x = backend.to_device(rng.standard_normal((64, 3, 32, 32)).astype(np.float32))
    y = backend.to_device(rng.integers(0, 10, 64))
    model = build_model("cnn", dropout=0.0, seed=0)
    opt = SGD(model.parameters(), lr=0.05, momentum=0.9)
    crit = nn.SoftmaxCrossEntropy()
    losses = []
    for _ in range(150):
        model.zero_grad()
        losses.append(crit(model(x), y))
        model.backward(crit.backward())
        opt.step()
    model.eval()
    with nn.no_grad():
        acc = float((backend.to_numpy(model(x)).argmax(1) == backend.to_numpy(y)).mean())
    assert losses[-1] < 0.1 * losses[0]
    assert acc == 1.0, f"train accuracy {acc} after 150 steps (loss {losses[-1]:.4f})"


def test_small_resnet_loss_falls(xp):
    from cnn_cifar.optim import SGD
    rng = np.random.default_rng(1)
    x = backend.to_device(rng.standard_normal((16, 3, 16, 16)).astype(np.float32))
    y = backend.to_device(rng.integers(0, 10, 16))
    model = build_model("resnet8", seed=0)
    opt = SGD(model.parameters(), lr=0.05, momentum=0.9)
    crit = nn.SoftmaxCrossEntropy()
    first = None
    for _ in range(30):
        model.zero_grad()
        loss = crit(model(x), y)
        first = loss if first is None else first
        model.backward(crit.backward())
        opt.step()
    assert loss < 0.5 * first


def test_first_layer_skips_the_image_gradient_but_not_its_weight_gradient():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, 4)
    grads = []
    for needs in (False, True):
        model = build_model("cnn", dropout=0.0, seed=1)
        model.conv1.needs_input_grad = needs
        crit = nn.SoftmaxCrossEntropy()
        crit(model(x), y)
        dx = model.backward(crit.backward())
        assert (dx is None) == (not needs)
        grads.append(model.conv1.weight.grad.copy())
    # Same gradient either way; the paths sum in a different order (columns of x vs. of dy).
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", [n for n in list_models() if not n.startswith("resnet") or n == "resnet8"])
def test_every_model_skips_only_the_image_gradient(name):
    """build_model sets needs_input_grad False on the layer the images enter, and on no other: a training step's
    backward returns None (a later layer skipping its input gradient would break the chain), and gives every
    trainable parameter a gradient; with the flag set back, the images' gradient comes out."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
    model = build_model(name, dropout=0.0)
    skipping = [m for m in model.modules() if getattr(m, "needs_input_grad", True) is False]
    assert len(skipping) == 1
    crit = nn.SoftmaxCrossEntropy()
    crit(model(x), np.array([1, 2]))
    assert model.backward(crit.backward()) is None
    assert all(float(np.abs(p.grad).sum()) > 0 for p in model.parameters() if p.requires_grad)
    skipping[0].needs_input_grad = True
    crit(model(x), np.array([1, 2]))
    assert model.backward(crit.backward()).shape == x.shape


def test_initialisation_follows_pytorch():
    """Conv2d and Linear start as PyTorch's layers do (weights and biases U(+-1/sqrt(fan_in))); the CIFAR
    ResNets re-draw their convolutions from He et al.'s normal (std sqrt(2 / fan_out)), as torchvision does."""
    conv = nn.Conv2d(16, 32, 3, rng=np.random.default_rng(0))
    lin = nn.Linear(400, 300, rng=np.random.default_rng(1))
    for layer, fan_in in ((conv, 16 * 9), (lin, 400)):
        bound = 1 / np.sqrt(fan_in)
        for p in (layer.weight.data, layer.bias.data):
            assert np.abs(p).max() <= bound and np.abs(p).max() > 0.97 * bound
        assert abs(layer.weight.data.std() - bound / np.sqrt(3)) < 0.03 * bound      # uniform's std
    model = build_model("resnet20", seed=0)
    w = model.layer2[1].conv1.weight.data
    assert abs(w.std() - np.sqrt(2 / (32 * 9))) < 0.05 * np.sqrt(2 / (32 * 9))
    assert abs(model.fc.weight.data).max() <= 1 / np.sqrt(64)
