"""The compiled relu + depthwise-conv kernel (``ms_models/kernels.py``) against PyTorch and the native path."""
from __future__ import annotations

import mindspore as ms
import numpy as np
import pytest
import torch

from ms_models import kernels
from ms_models.vanillanet import Activation


class ProjectedLoss(ms.nn.Cell):
    """``sum(act(x) * proj)``: a fixed vector-Jacobian product."""

    def __init__(self, act, proj):
        super().__init__()
        self.act, self.proj = act, proj

    def construct(self, x):
        return (self.act(x) * self.proj).sum()


def test_kernel_builds_on_this_machine():
    assert kernels.library() is not None, "g++ is part of the set-up: the fast CPU path must be available"


@pytest.mark.parametrize("mode", [ms.GRAPH_MODE, ms.PYNATIVE_MODE], ids=["graph", "pynative"])
@pytest.mark.parametrize("deploy", [False, True], ids=["train", "deploy"])
@pytest.mark.parametrize("shape", [(2, 16, 9, 11), (1, 13, 7, 7), (3, 5, 2, 3)])
def test_forward_and_gradients_equal_torch(mode, deploy, shape):
    prev = ms.get_context("mode")
    ms.set_context(mode=mode)
    try:
        rng = np.random.RandomState(0)
        c = shape[1]
        act = Activation(c, deploy=deploy)
        assert act.fused is not None
        act.weight.set_data(ms.Tensor(rng.randn(c, 1, 7, 7).astype(np.float32)))
        if deploy:
            act.bias.set_data(ms.Tensor(rng.randn(c).astype(np.float32)))
        act.set_train(False)
        x = rng.randn(*shape).astype(np.float32)
        x[0, 0, 0, 0] = 0.0                                   # relu'(0) = 0, as in torch
        proj = rng.randn(*shape).astype(np.float32)
        xt = torch.from_numpy(x).requires_grad_()
        wt = torch.from_numpy(act.weight.asnumpy()).requires_grad_()
        bt = torch.from_numpy(act.bias.asnumpy()).requires_grad_() if deploy else None
        yt = torch.nn.functional.conv2d(torch.relu(xt), wt, bt, padding=3, groups=c)
        if not deploy:
            yt = torch.nn.functional.batch_norm(yt, torch.zeros(c), torch.ones(c), eps=1e-6)
        (yt * torch.from_numpy(proj)).sum().backward()
        assert np.abs(act(ms.Tensor(x)).asnumpy() - yt.detach().numpy()).max() <= 1e-5 * np.abs(yt.detach().numpy()).max()
        params = act.trainable_params()
        _, (gx, gp) = ms.value_and_grad(ProjectedLoss(act, ms.Tensor(proj)), 0, params)(ms.Tensor(x))
        refs = {"weight": wt.grad, "bias": bt.grad if deploy else None, "gamma": None, "beta": None}
        for p, g in zip(params, gp):
            ref = refs[p.name.split(".")[-1]]
            if ref is not None:
                assert np.abs(g.asnumpy() - ref.numpy()).max() <= 1e-5 * np.abs(ref.numpy()).max(), p.name
        assert np.abs(gx.asnumpy() - xt.grad.numpy()).max() <= 1e-5 * np.abs(xt.grad.numpy()).max()
    finally:
        ms.set_context(mode=prev)


def test_falls_back_to_native_ops(monkeypatch, graph_mode):
    x = ms.Tensor(np.random.RandomState(1).randn(2, 8, 6, 6).astype(np.float32))
    fast = Activation(8)
    fast.set_train(False)
    ref = fast(x).asnumpy()
    monkeypatch.setenv("MS_MODELS_NATIVE_KERNELS", "1")
    kernels.library.cache_clear()
    kernels.relu_dwconv.cache_clear()
    try:
        slow = Activation(8)
        assert slow.fused is None
        slow.weight.set_data(fast.weight)
        slow.set_train(False)
        assert np.abs(slow(x).asnumpy() - ref).max() <= 1e-5 * np.abs(ref).max()
    finally:
        monkeypatch.delenv("MS_MODELS_NATIVE_KERNELS")
        kernels.library.cache_clear()
        kernels.relu_dwconv.cache_clear()
