"""What is special to AdderNet: the adder layer's forward and custom gradients against a naive float64
reference (official huawei-noah/AdderNet ``adder.py`` semantics) in both frameworks, its bounded working
memory, and the post-training quantization of arXiv 2212.10200 (official mindspore-ai/models AdderQuant)."""
from __future__ import annotations

import math

import mindspore as ms
import numpy as np
import pytest
import torch

import ms_models.adder as ms_adder
import torch_ref.adder as t_adder
from helpers import rel_err

TOL = 1e-4   # float32 vs float64 reference, relative to the tensor's scale (sums of <= 600 terms: ~1e-6 seen)


def _pad(x, p):
    return np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))


def naive_adder(x, w, stride, padding):
    """Official definition, float64: ``-sum |X - W|`` over each window."""
    x, w = _pad(x.astype(np.float64), padding), w.astype(np.float64)
    n, _, h, wd = x.shape
    o, _, k, _ = w.shape
    ho, wo = (h - k) // stride + 1, (wd - k) // stride + 1
    out = np.zeros((n, o, ho, wo))
    for i in range(ho):
        for j in range(wo):
            patch = x[:, None, :, i * stride:i * stride + k, j * stride:j * stride + k]
            out[:, :, i, j] = -np.abs(patch - w[None]).sum(axis=(2, 3, 4))
    return out


def naive_grads(x, w, g, stride, padding):
    """Official backward, float64: dW = sum (X - W) g rescaled by sqrt(numel) / (5 ||.||), dX = sum clamp(W - X) g."""
    xp, w = _pad(x.astype(np.float64), padding), w.astype(np.float64)
    gw, gxp = np.zeros_like(w), np.zeros_like(xp)
    k = w.shape[2]
    for i in range(g.shape[2]):
        for j in range(g.shape[3]):
            sl = (slice(None), None, slice(None), slice(i * stride, i * stride + k), slice(j * stride, j * stride + k))
            diff = xp[sl] - w[None]                                  # (N, O, C, k, k)
            gij = g[:, :, i, j][:, :, None, None, None]
            gw += (diff * gij).sum(0)
            gxp[sl[0], sl[2], sl[3], sl[4]] += (np.clip(-diff, -1, 1) * gij).sum(1)
    gw *= math.sqrt(w.size) / 5 / max(np.linalg.norm(gw), 1e-12)
    h, wd = x.shape[2:]
    return gw, gxp[:, :, padding:padding + h, padding:padding + wd]


class ProjLoss(ms.nn.Cell):
    """``sum(layer(x) * g)``: a fixed projection, so gradients are vector-Jacobian products with ``g``."""

    def __init__(self, layer, g):
        super().__init__()
        self.layer, self.g = layer, ms.Tensor(g)

    def construct(self, x):
        return (self.layer(x) * self.g).sum()


CASES = [(2, 3, 5, 7, 3, 1, 1), (1, 4, 6, 8, 3, 2, 1), (2, 6, 3, 5, 1, 2, 0), (1, 2, 4, 6, 1, 1, 0)]


def _case(n, c, o, hw, k, seed=0):
    r = np.random.RandomState(seed)
    return (r.randn(n, c, hw, hw).astype(np.float32) * 0.8, r.randn(o, c, k, k).astype(np.float32) * 0.8)


@pytest.mark.parametrize("n,c,o,hw,k,stride,padding", CASES)
def test_torch_adder_equals_naive(n, c, o, hw, k, stride, padding):
    x, w = _case(n, c, o, hw, k)
    ref = naive_adder(x, w, stride, padding)
    xt, wt = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    out = t_adder.adder2d(xt, wt, stride, padding)
    assert rel_err(ref, out.detach().numpy()) <= TOL
    g = np.random.RandomState(1).randn(*ref.shape).astype(np.float32)
    (out * torch.from_numpy(g)).sum().backward()
    gw, gx = naive_grads(x, w, g, stride, padding)
    assert rel_err(gw, wt.grad.numpy()) <= TOL and rel_err(gx, xt.grad.numpy()) <= TOL


@pytest.mark.parametrize("mode", ["graph", "pynative"])
@pytest.mark.parametrize("n,c,o,hw,k,stride,padding", CASES[:2])
def test_mindspore_adder_equals_naive(n, c, o, hw, k, stride, padding, mode, request):
    request.getfixturevalue(f"{mode}_mode")
    x, w = _case(n, c, o, hw, k)
    ref = naive_adder(x, w, stride, padding)
    layer = ms_adder.Adder2d(c, o, k, stride, padding)
    layer.adder.set_data(ms.Tensor(w))
    g = np.random.RandomState(1).randn(*ref.shape).astype(np.float32)
    fn = ms.value_and_grad(ProjLoss(layer, g), 0, layer.trainable_params())
    _, (gx, (gw,)) = fn(ms.Tensor(x))
    assert rel_err(ref, layer(ms.Tensor(x)).asnumpy()) <= TOL
    rgw, rgx = naive_grads(x, w, g, stride, padding)
    assert rel_err(rgw, gw.asnumpy()) <= TOL and rel_err(rgx, gx.asnumpy()) <= TOL


def test_bias_and_key_names():
    t = t_adder.Adder2d(3, 4, 3, 1, 1, bias=True)
    m = ms_adder.Adder2d(3, 4, 3, 1, 1, bias=True)
    assert sorted(t.state_dict()) == ["adder", "b"]
    assert sorted(n for n, _ in m.parameters_and_names()) == ["adder", "b"]
    x = np.random.RandomState(0).randn(1, 3, 5, 5).astype(np.float32)
    with torch.no_grad():
        t.b.copy_(torch.arange(4.0))
        got = t(torch.from_numpy(x)).numpy()
    ref = naive_adder(x, t.adder.detach().numpy(), 1, 1) + np.arange(4.0).reshape(1, 4, 1, 1)
    assert rel_err(ref, got) <= TOL


@pytest.mark.parametrize("framework", ["torch", "mindspore"])
def test_chunked_input_gradient_bounds_memory_and_is_exact(framework, monkeypatch, pynative_mode):
    """With a tiny chunk budget the input gradient is accumulated over several chunks of output channels
    (each intermediate below the budget) and equals the one-chunk result."""
    x, w = _case(2, 3, 8, 6, 3)
    g = np.random.RandomState(1).randn(2, 8, 6, 6).astype(np.float32)
    mod = t_adder if framework == "torch" else ms_adder
    k, m = 27, 2 * 36
    grads = []
    for budget in (1 << 30, 3 * k * m * 4):
        monkeypatch.setattr(mod, "CHUNK_BYTES", budget)
        if framework == "torch":
            assert t_adder._chunk(8, k, m, 4) * k * m * 4 <= budget
            xt = torch.tensor(x, requires_grad=True)
            (t_adder.adder2d(xt, torch.from_numpy(w), 1, 1) * torch.from_numpy(g)).sum().backward()
            grads.append(xt.grad.numpy())
        else:
            layer = ms_adder.Adder2d(3, 8, 3, 1, 1)
            layer.adder.set_data(ms.Tensor(w))
            gx = ms.grad(ProjLoss(layer, g), 0)(ms.Tensor(x))
            grads.append(gx.asnumpy())
    assert rel_err(grads[0], grads[1]) <= 1e-6
    assert rel_err(naive_grads(x, w, g, 1, 1)[1], grads[1]) <= TOL
