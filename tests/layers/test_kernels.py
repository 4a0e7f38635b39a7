"""The compiled depthwise-conv kernel (``ms_models/layers/kernels.py``) against PyTorch and the native path:
VanillaNet's relu + 7x7 activation and the generic geometries (stride 2, one-sided padding, (1, 5) / (5, 1) kernels)."""
from __future__ import annotations

import mindspore as ms
import numpy as np
import pytest
import torch

from helpers import ProjectedSum
from ms_models import layers
from ms_models.layers import kernels
from ms_models.models.vanillanet import Activation


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
        _, (gx, gp) = ms.value_and_grad(ProjectedSum(act, ms.Tensor(proj)), 0, params)(ms.Tensor(x))
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


class Projected(ms.nn.Cell):
    """``sum(op(x, w[, b]) * proj)`` for the bare kernel."""

    def __init__(self, op, cfg, proj, bias):
        super().__init__()
        self.op, self.cfg, self.proj, self.bias = op, cfg, proj, bias

    def construct(self, x, w, b):
        y = self.op(x, w, b, self.cfg) if self.bias else self.op(x, w, self.cfg)
        return (y * self.proj).sum()


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
    prev = ms.get_context("mode")
    ms.set_context(mode=mode)
    try:
        rng = np.random.RandomState(0)
        x = rng.randn(*shape).astype(np.float32)
        x[0, 0, 0, 0] = 0.0                                   # relu'(0) = 0, as in torch
        w = rng.randn(shape[1], 1, *kernel).astype(np.float32)
        b = rng.randn(shape[1]).astype(np.float32) if bias else None
        op, cfg = kernels.depthwise_conv(stride, padding, has_bias=bias), kernels.kernel_cfg(stride, padding, relu)
        args = [ms.Tensor(a) for a in (x, w, b if bias else np.zeros(1, np.float32))]
        y = (op(*args, cfg) if bias else op(*args[:2], cfg)).asnumpy()
        proj = rng.randn(*y.shape).astype(np.float32)
        grads = ms.grad(Projected(op, cfg, ms.Tensor(proj), bias), (0, 1, 2) if bias else (0, 1))(*args)
        _check_against_torch(x, w, b, proj, y, [g.asnumpy() for g in grads], stride, padding, relu)
    finally:
        ms.set_context(mode=prev)


def test_geometries_on_one_input_keep_their_shapes(pynative_mode):
    """PyNative caches inferred shapes per primitive: a stride-2 and a stride-1 kernel on the same input."""
    x = ms.Tensor(np.ones((1, 8, 6, 4), np.float32))
    w = ms.Tensor(np.ones((8, 1, 3, 3), np.float32))
    assert kernels.depthwise_conv(2, 1)(x, w, kernels.kernel_cfg(2, 1)).shape == (1, 8, 3, 2)
    assert kernels.depthwise_conv(1, 1)(x, w, kernels.kernel_cfg(1, 1)).shape == (1, 8, 6, 4)


# --- the fast paths GhostNetV2 uses: conv + BN (eval-mode fold, compiled depthwise kernel), DFC gate, mean ---

@pytest.fixture(params=[ms.GRAPH_MODE, ms.PYNATIVE_MODE], ids=["graph", "pynative"])
def any_mode(request):
    prev = ms.get_context("mode")
    ms.set_context(mode=request.param)
    yield request.param
    ms.set_context(mode=prev)


class ConvBn(ms.nn.Cell):
    """``sum(bn(conv(x)) * proj)`` through :func:`layers.depthwise_bn` or :func:`layers.conv_bn_apply`."""

    def __init__(self, conv, bn, proj, depthwise):
        super().__init__()
        self.conv, self.bn, self.proj, self.depthwise = conv, bn, proj, depthwise

    def construct(self, x):
        apply = layers.depthwise_bn if self.depthwise else layers.conv_bn_apply
        y = apply(self.conv, self.bn, x)
        return (y * self.proj).sum(), y


# (in, out, kernel, stride, pad_mode, padding, kernel attached): GhostNetV2's cheap 3x3, stride-2 5x5 and DFC
# (1, 5) 'same' depthwise convs, with and without the compiled kernel, and a 1x1 conv (the fold alone)
CONV_BN = [(12, 12, 3, 1, "pad", 1, True), (10, 10, 5, 2, "pad", 2, True), (9, 9, (1, 5), 1, "same", 0, True),
           (10, 10, 5, 2, "pad", 2, False), (6, 11, 1, 1, "pad", 0, False)]


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("cin,cout,kernel,stride,pad_mode,padding,fast", CONV_BN)
def test_conv_bn_paths_equal_torch(any_mode, train, cin, cout, kernel, stride, pad_mode, padding, fast):
    """Eval: the BN folded into the conv (kernel weight/bias, or conv + BiasAdd) gives torch's ``bn(conv(x))``
    and its gradients for x, weight, gamma and beta to 1e-5 of scale (the fold rounds differently by a few
    ulps). Train: batch statistics and the running-stat update equal torch's."""
    rng = np.random.RandomState(1)
    x = rng.randn(2, cin, 9, 7).astype(np.float32)
    conv = layers.torch_init_conv2d(cin, cout, kernel, stride, padding, group=cin if cin == cout else 1,
                                    pad_mode=pad_mode)
    depthwise = cin == cout
    if depthwise:
        layers.with_depthwise_kernel(conv)
        if not fast:
            conv.fused = None
        assert (conv.fused is not None) == fast
    bn = layers.batch_norm(cout, 1e-5)
    stats = [rng.randn(cout).astype(np.float32) * 0.3 for _ in range(3)] + [rng.rand(cout).astype(np.float32) + 0.5]
    for p, v in zip((bn.beta, bn.moving_mean, bn.gamma, bn.moving_variance), stats):
        p.set_data(ms.Tensor(v))
    tconv = torch.nn.Conv2d(cin, cout, kernel, stride, padding if pad_mode == "pad" else "same",
                            groups=cin if depthwise else 1, bias=False)
    tbn = torch.nn.BatchNorm2d(cout)
    with torch.no_grad():
        tconv.weight.copy_(torch.from_numpy(conv.weight.asnumpy()))
        for p, v in zip((tbn.bias, tbn.running_mean, tbn.weight, tbn.running_var), stats):
            p.copy_(torch.from_numpy(v))
    tconv.train(train), tbn.train(train)
    xt = torch.from_numpy(x).requires_grad_()
    yt = tbn(tconv(xt))
    proj = rng.randn(*yt.shape).astype(np.float32)
    (yt * torch.from_numpy(proj)).sum().backward()
    net = ConvBn(conv, bn, ms.Tensor(proj), depthwise)
    net.set_train(train)
    params = [conv.weight, bn.gamma, bn.beta]
    grad_fn = ms.value_and_grad(net, 0, params, has_aux=True)
    (_, y), (gx, (gw, gg, gb)) = grad_fn(ms.Tensor(x))
    for got, ref in ((y, yt), (gx, xt.grad), (gw, tconv.weight.grad), (gg, tbn.weight.grad), (gb, tbn.bias.grad)):
        ref = ref.detach().numpy()
        assert got.shape == ref.shape
        assert np.abs(got.asnumpy() - ref).max() <= 1e-5 * np.abs(ref).max()
    if train:
        for got, ref in ((bn.moving_mean, tbn.running_mean), (bn.moving_variance, tbn.running_var)):
            assert np.abs(got.asnumpy() - ref.numpy()).max() <= 1e-5 * np.abs(ref.numpy()).max()


class Gate(ms.nn.Cell):
    """``sum(mul_resized(x, gate) * proj)`` and the product itself."""

    def __init__(self, mode, proj):
        super().__init__()
        self.mode, self.proj = mode, proj

    def construct(self, x, gate):
        y = layers.mul_resized(x, gate, self.mode)
        return (y * self.proj).sum(), y


@pytest.mark.parametrize("mode,size,gate_size", [("nearest", (14, 10), (7, 5)), ("nearest", (7, 9), (3, 4)),
                                                  ("bilinear", (14, 10), (7, 5))])
def test_gate_multiply_equals_torch_interpolate(any_mode, mode, size, gate_size):
    """``x * interpolate(gate)``: the broadcast form (whole factors, 14x10 <- 7x5) and the gathers (7 <- 3,
    9 <- 4; bilinear), forward and both gradients."""
    rng = np.random.RandomState(2)
    x, g = rng.randn(2, 3, *size).astype(np.float32), rng.randn(2, 3, *gate_size).astype(np.float32)
    proj = rng.randn(2, 3, *size).astype(np.float32)
    xt, gt = torch.from_numpy(x).requires_grad_(), torch.from_numpy(g).requires_grad_()
    kw = {"align_corners": True} if mode == "bilinear" else {}
    yt = xt * torch.nn.functional.interpolate(gt, size=size, mode=mode, **kw)
    (yt * torch.from_numpy(proj)).sum().backward()
    (_, y), (gx, gg) = ms.value_and_grad(Gate(mode, ms.Tensor(proj)), (0, 1), has_aux=True)(ms.Tensor(x), ms.Tensor(g))
    for got, ref in ((y, yt), (gx, xt.grad), (gg, gt.grad)):
        ref = ref.detach().numpy()
        assert np.abs(got.asnumpy() - ref).max() <= 1e-6 * np.abs(ref).max()


def test_spatial_mean_equals_torch_mean(any_mode):
    x = np.random.RandomState(3).randn(2, 5, 7, 3).astype(np.float32) + 2.0
    ref = torch.from_numpy(x).mean((2, 3), keepdim=True).numpy()
    got = layers.GlobalAvgPool()(ms.Tensor(x)).asnumpy()
    assert got.shape == ref.shape and np.abs(got - ref).max() <= 1e-6 * np.abs(ref).max()
