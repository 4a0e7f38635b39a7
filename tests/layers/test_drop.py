"""Stochastic depth (``{ms_models,torch_ref}/layers/drop.py``): timm's ``DropPath`` in both frameworks. Its use in
the ViG blocks: ``tests/models/test_vig.py``."""
from __future__ import annotations

import mindspore as ms
import numpy as np
import torch

from helpers import ms_train_output
from ms_models.layers import DropPath as MsDropPath
from torch_ref.layers import DropPath as PtDropPath


def test_drop_path_layer(any_mode):
    """timm semantics in both frameworks: identity in eval and at p = 0; in training each sample is either
    dropped (exactly 0) or kept and scaled by exactly float32(1 / (1 - p)), kept with probability 1 - p
    (4000 samples: within 5 binomial standard deviations), independently per call."""
    x = np.random.RandomState(0).randn(4000, 2, 3, 3).astype(np.float32)
    torch.manual_seed(0)
    ms.set_seed(0)
    t = PtDropPath(0.25)
    with torch.no_grad():
        t_out = [t.train()(torch.from_numpy(x)).numpy() for _ in range(2)]
        assert np.array_equal(t.eval()(torch.from_numpy(x)).numpy(), x)
        assert np.array_equal(PtDropPath(0.0).train()(torch.from_numpy(x)).numpy(), x)
    m = MsDropPath(0.25)
    m_out = [ms_train_output(m, x) for _ in range(2)]
    m.set_train(False)
    assert np.array_equal(m(ms.Tensor(x)).asnumpy(), x)
    assert np.array_equal(ms_train_output(MsDropPath(0.0), x), x)
    scaled = x * (np.float32(1) / np.float32(0.75))
    for a, b in (t_out, m_out):
        for out in (a, b):
            kept = (out == scaled).all(axis=(1, 2, 3))
            assert ((out == 0).all(axis=(1, 2, 3)) | kept).all()
            assert abs(kept.sum() - 3000) <= 5 * np.sqrt(4000 * 0.75 * 0.25)
        assert ((a == 0).all(axis=(1, 2, 3)) != (b == 0).all(axis=(1, 2, 3))).any()
