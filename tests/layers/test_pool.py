"""Global average pooling (``ms_models/layers/pool.py``): the MatMul mean of GRAPH_MODE and PyNative's plain
mean against torch's."""
from __future__ import annotations

import mindspore as ms
import numpy as np
import torch

from ms_models import layers


def test_spatial_mean_equals_torch_mean(any_mode):
    x = np.random.RandomState(3).randn(2, 5, 7, 3).astype(np.float32) + 2.0
    ref = torch.from_numpy(x).mean((2, 3), keepdim=True).numpy()
    got = layers.GlobalAvgPool()(ms.Tensor(x)).asnumpy()
    assert got.shape == ref.shape and np.abs(got - ref).max() <= 1e-6 * np.abs(ref).max()
