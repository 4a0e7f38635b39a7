"""The compiled depthwise-conv kernel (``ms_models/layers/kernels.py``) against PyTorch and the native path:
VanillaNet's relu + 7x7 activation and the generic geometries (stride 2, one-sided padding, (1, 5) / (5, 1)
kernels). GhostNetV2's conv + BN path through the kernel: ``test_conv_bn.py``."""
from __future__ import annotations

import mindspore as ms
import numpy as np
import pytest
import torch

from helpers import ProjectedSum
from ms_models.context import execution_mode
from ms_models.layers import kernels
from ms_models.models.vanillanet import Activation


def test_kernel_builds_on_this_machine():
    assert kernels.library() is not None, "g++ is part of the set-up: the fast CPU path must be available"


@pytest.mark.parametrize("mode", [ms.GRAPH_MODE, ms.PYNATIVE_MODE], ids=["graph", "pynative"])
@pytest.mark.parametrize("deploy", [False, True], ids=["train", "deploy"])
@pytest.mark.parametrize("shape", [(2, 16, 9, 11), (1, 13, 7, 7), (3, 5, 2, 3)])
def test_forward_and_gradients_equal_torch(mode, deploy, shape):
    with execution_mode(mode):
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
        _, (gx, gp) = ms.value_and_grad(ProjectedSum(act, ms.Tensor(proj)), 0, params)(ms.Tensor(x))
        refs = {"weight": wt.grad, "bias": bt.grad if deploy else None, "gamma": None, "beta": None}
        for p, g in zip(params, gp):
            ref = refs[p.name.split(".")[-1]]
            if ref is not None:
                assert np.abs(g.asnumpy() - ref.numpy()).max() <= 1e-5 * np.abs(ref.numpy()).max(), p.name
        assert np.abs(gx.asnumpy() - xt.grad.numpy()).max() <= 1e-5 * np.abs(xt.grad.numpy()).max()


def test_falls_back_to_native_ops(monkeypatch, graph_mode):
    x = ms.Tensor(np.random.RandomState(1).randn(2, 8, 6, 6).astype(np.float32))
    fast = Activation(8)
    fast.set_train(False)
    ref = fast(x).asnumpy()
    monkeypatch.setenv("MS_MODELS_NATIVE_KERNELS", "0")
    kernels.library.cache_clear()
    try:
        slow = Activation(8)
        assert slow.fused is None
        slow.weight.set_data(fast.weight)
        slow.set_train(False)
        assert np.abs(slow(x).asnumpy() - ref).max() <= 1e-5 * np.abs(ref).max()
    finally:
        monkeypatch.delenv("MS_MODELS_NATIVE_KERNELS")
        kernels.library.cache_clear()


def _check_against_torch(x, w, b, proj, y, grads, stride, padding, relu):
    """``y`` and ``grads`` (of ``sum(y * proj)`` w.r.t. x, w[, b]) against torch's conv2d, to 1e-5 of scale."""
    xt, wt = torch.from_numpy(x).requires_grad_(), torch.from_numpy(w).requires_grad_()
    bt = None if b is None else torch.from_numpy(b).requires_grad_()
    top, bottom, left, right = padding
    xi = torch.nn.functional.pad(torch.relu(xt) if relu else xt, (left, right, top, bottom))
    yt = torch.nn.functional.conv2d(xi, wt, bt, stride=stride, groups=x.shape[1])
    (yt * torch.from_numpy(proj)).sum().backward()
    for got, ref in zip((y, *grads), (yt, xt.grad, wt.grad) + (() if b is None else (bt.grad,))):
        ref = ref.detach().numpy()
        assert got.shape == ref.shape
        assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()


# (x shape, kernel, stride, (top, bottom, left, right), relu, bias): stride 2 with even and odd sizes, one-sided
# padding, the DFC (1, 5) / (5, 1) kernels, channels not a multiple of the kernel's 8 lanes
GEOMETRIES = [((2, 12, 9, 10), (3, 3), 2, (1, 1, 1, 1), False, False),
              ((2, 10, 8, 7), (5, 5), 2, (2, 2, 2, 2), True, True),
              ((1, 9, 7, 7), (3, 3), 2, (0, 1, 0, 1), True, False),
              ((3, 13, 5, 6), (1, 5), 1, (0, 0, 2, 2), False, True),
              ((1, 17, 6, 3), (5, 1), 1, (2, 2, 0, 0), False, False)]


@pytest.mark.parametrize("mode", [ms.GRAPH_MODE, ms.PYNATIVE_MODE], ids=["graph", "pynative"])
@pytest.mark.parametrize("shape,kernel,stride,padding,relu,bias", GEOMETRIES)
def test_generic_kernel_equals_torch(mode, shape, kernel, stride, padding, relu, bias):
    with execution_mode(mode):
        rng = np.random.RandomState(0)
        x = rng.randn(*shape).astype(np.float32)
        x[0, 0, 0, 0] = 0.0                                   # relu'(0) = 0, as in torch
        w = rng.randn(shape[1], 1, *kernel).astype(np.float32)
        b = rng.randn(shape[1]).astype(np.float32) if bias else None
        op, cfg = kernels.depthwise_conv(stride, padding, has_bias=bias), kernels.kernel_cfg(stride, padding, relu)
        args = [ms.Tensor(a) for a in ((x, w, b) if bias else (x, w))]
        y = op(*args, cfg).asnumpy()
        proj = rng.randn(*y.shape).astype(np.float32)
        grads = ms.grad(ProjectedSum(op, proj), tuple(range(len(args))))(*args, cfg)
        _check_against_torch(x, w, b, proj, y, [g.asnumpy() for g in grads], stride, padding, relu)


def test_geometries_on_one_input_keep_their_shapes(pynative_mode):
    """PyNative caches inferred shapes per primitive: a stride-2 and a stride-1 kernel on the same input."""
    x = ms.Tensor(np.ones((1, 8, 6, 4), np.float32))
    w = ms.Tensor(np.ones((8, 1, 3, 3), np.float32))
    assert kernels.depthwise_conv(2, 1)(x, w, kernels.kernel_cfg(2, 1)).shape == (1, 8, 3, 2)
    assert kernels.depthwise_conv(1, 1)(x, w, kernels.kernel_cfg(1, 1)).shape == (1, 8, 6, 4)
