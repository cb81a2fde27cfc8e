"""SoftmaxCrossEntropy's reductions against PyTorch's numbers (its gradient, label smoothing included, is checked
by finite differences in tests/test_layers_gradcheck.py)."""
from __future__ import annotations

import numpy as np
import pytest

from cnn_cifar import backend, nn


def test_label_smoothed_cross_entropy_summed_over_the_batch_matches_torch(xp):
    """torch 2.13.0: cross_entropy(z, y, label_smoothing=0.2, reduction='sum') in float64 and its gradient."""
    z = xp.asarray([[1.0, -2.0, 0.5, 3.0], [0.2, 0.1, -0.3, 0.0], [-1.0, 2.5, 0.7, -0.4]])
    crit = nn.SoftmaxCrossEntropy(0.2, reduction="sum")
    assert crit(z, xp.asarray([3, 0, 2])) == pytest.approx(3.9938144884976516, rel=1e-14)
    np.testing.assert_allclose(backend.to_numpy(crit.backward()), [
        [0.060553750361739225, -0.04449585287241633, 0.01705423914061148, -0.0331121366299344],
        [-0.5497086120258519, 0.2217148841529628, 0.13213593365398246, 0.19585779421890676],
        [-0.025852128957014837, 0.7496676634286725, -0.7178158242884867, -0.005999710183171164]], rtol=1e-13)
    with pytest.raises(ValueError, match="reduction must be one of mean, sum, got 'none'"):
        nn.SoftmaxCrossEntropy(reduction="none")
