"""The binary layers of both frameworks (``{ms_models,torch_ref}/layers/binary.py``): AdaBin's estimators
(``BinaryQuantize``'s tanh straight-through, ``ApproxSign``'s piecewise-linear one) and BiMLP's ``XnorConv2d``
and activation quantisers, values and gradients against their formulas (MindSpore's own Sign/Rint have a zero
gradient)."""
from __future__ import annotations

import mindspore as ms
import numpy as np
import pytest
import torch

from helpers import ProjectedSum
from ms_models.layers import binary as ms_binary
from specs.adabin import temperature
from torch_ref.layers import binary as torch_binary


def _np_ste(u: np.ndarray, t: float, k: float) -> np.ndarray:
    return k * t * (1 - np.tanh(u * t) ** 2)


def _np_approx(u: np.ndarray) -> np.ndarray:
    return np.where((u >= -1) & (u < 0), 2 + 2 * u, np.where((u >= 0) & (u < 1), 2 - 2 * u, 0.0))


def test_estimator_gradients_are_not_sign_zero_gradient(any_mode):
    """Both estimators' gradients equal their formulas in both frameworks (MindSpore's own ``Sign`` would give 0)."""
    u = np.linspace(-2.5, 2.5, 101).astype(np.float32)
    w = np.random.RandomState(1).rand(101).astype(np.float32) + 0.5
    t, k = temperature(37, 120)
    ut = torch.tensor(u, requires_grad=True)
    (torch_binary.BinaryQuantize.apply(ut, torch.tensor([k]), torch.tensor([t])) * torch.from_numpy(w)).sum().backward()
    ref = _np_ste(u.astype(np.float64), float(t), float(k)) * w
    assert np.abs(ut.grad.numpy() - ref).max() <= 1e-5 * np.abs(ref).max()
    ua = torch.tensor(u, requires_grad=True)
    out_t = torch_binary.ApproxSign()(ua)
    (out_t * torch.from_numpy(w)).sum().backward()
    assert np.abs(ua.grad.numpy() - _np_approx(u) * w).max() <= 1e-5
    assert np.array_equal(out_t.detach().numpy(), np.sign(u))
    quantize = ms_binary.BinaryQuantize()
    kt = (ms.Tensor([k], ms.float32), ms.Tensor([t], ms.float32))
    sign = ms_binary.ApproxSign()
    g = ms.grad(ProjectedSum(quantize, w))(ms.Tensor(u), *kt)
    assert np.abs(g.asnumpy() - ref).max() <= 1e-5 * np.abs(ref).max()
    g = ms.grad(ProjectedSum(sign, w))(ms.Tensor(u))
    assert np.abs(g.asnumpy() - _np_approx(u) * w).max() <= 1e-5
    assert np.array_equal(sign(ms.Tensor(u)).asnumpy(), out_t.detach().numpy())


def test_official_approx_sign_forward_is_exactly_sign(any_mode):
    """The official ``sign - poly.detach() + poly`` is ``sign(u)`` bit for bit in float32 below the overflow of
    ``u * u`` (1.8e19), which MindSpore's ``ApproxSign`` computes directly; above it the official expression
    gives NaN (the documented difference). The values: 11 M normals and uniforms on [-1.2, 1.2], tiny normal
    values, the kinks and their float32 neighbours (no subnormals: MindSpore's GRAPH_MODE flushes them to zero
    on CPU, in the official expression as in ``sign``). The MindSpore gradient equals torch's autograd of
    the official expression to float32 rounding (its sums may be ordered differently)."""
    r = np.random.RandomState(0)
    ones = np.float32([-1, 1])         # 0's float32 neighbours are subnormal
    edges = np.concatenate([ones, np.nextafter(ones, np.float32(-2)), np.nextafter(ones, np.float32(2)),
                            np.float32([0, 1e19, -1e19, 1e-20, -1e-20, 2e-38, -2e-38])])
    u = np.concatenate([r.randn(5_000_000), r.uniform(-1.2, 1.2, 6_000_000), edges]).astype(np.float32)
    ut = torch.from_numpy(u).requires_grad_()
    out_t = torch_binary.ApproxSign()(ut)
    assert np.array_equal(out_t.detach().numpy(), np.sign(u))
    w = r.rand(u.size).astype(np.float32) + 0.5
    (out_t * torch.from_numpy(w)).sum().backward()
    sign = ms_binary.ApproxSign()
    assert np.array_equal(sign(ms.Tensor(u)).asnumpy(), np.sign(u))
    g = ms.grad(ProjectedSum(sign, w))(ms.Tensor(u)).asnumpy()
    assert np.abs(g - ut.grad.numpy()).max() <= 1e-6 * np.abs(ut.grad.numpy()).max()
    assert np.isnan(torch_binary.ApproxSign()(torch.tensor([1.9e19, -1.9e19]))).all()
    assert np.array_equal(sign(ms.Tensor(np.float32([1.9e19, -1.9e19]))).asnumpy(), [1, -1])


@pytest.mark.parametrize("act", ["round", "sign"])
def test_binary_conv_values_and_straight_through_gradients(act, any_mode):
    """Activations in {-1, 0, +1} (round half to even: +-0.5 -> 0) or sign; weights ``sign(W) mean_c|W|``;
    gradients: input ``g * (|x| <= 1)`` through the quantiser, weight the unclipped straight-through ``dW``.
    A quantiser that fell back to MindSpore's zero (or missing) gradient of Sign/Rint fails here."""
    rs = np.random.RandomState(0)
    x = (rs.randn(2, 6, 5, 5) * 1.5).astype(np.float32)
    x[0, 0, 0, :5] = [0.5, -0.5, 1.5, -1.0, 0.0]
    torch.manual_seed(0)
    tc = torch_binary.XnorConv2d(6, 4, act_binarize=act)
    mc = ms_binary.XnorConv2d(6, 4, act_binarize=act)
    w = tc.weight.detach().numpy()
    mc.weight.set_data(ms.Tensor(w))
    xt = torch.from_numpy(x).requires_grad_()
    out = tc(xt)
    proj = rs.randn(*out.shape).astype(np.float32)
    (out * torch.from_numpy(proj)).sum().backward()
    q = np.round(np.clip(x, -1, 1)) if act == "round" else np.sign(np.clip(x, -1, 1))
    assert set(np.unique(q)) == {-1.0, 0.0, 1.0} and q[0, 0, 0, 4] == 0
    assert (q[0, 0, 0, :2] == 0).all() if act == "round" else (q[0, 0, 0, :2] == [1, -1]).all()
    wb = np.sign(w) * np.abs(w).mean(1, keepdims=True)
    ref = np.einsum("nchw,oc->nohw", q, wb[:, :, 0, 0])
    assert np.abs(out.detach().numpy() - ref).max() <= 1e-5
    mask = (np.abs(x) <= 1).astype(np.float32)
    gx_ref = np.einsum("nohw,oc->nchw", proj, wb[:, :, 0, 0]) * mask
    gw_ref = np.einsum("nohw,nchw->oc", proj, q)[:, :, None, None]
    assert np.abs(xt.grad.numpy() - gx_ref).max() <= 1e-5
    assert np.abs(tc.weight.grad.numpy() - gw_ref).max() <= 1e-4
    assert np.abs(gx_ref).max() > 0.1 and np.abs(gw_ref).max() > 0.1
    gx, gw = ms.grad(ProjectedSum(mc, proj), 0, [mc.weight])(ms.Tensor(x))
    assert np.abs(mc(ms.Tensor(x)).asnumpy() - ref).max() <= 1e-5
    assert np.abs(gx.asnumpy() - gx_ref).max() <= 1e-5
    assert np.abs(gw[0].asnumpy() - gw_ref).max() <= 1e-4


def test_quantiser_gradient_is_not_zero_in_both_frameworks(pynative_mode):
    """The quantisers' gradient is the clip mask, not the zero gradient of Sign/Rint."""
    x = np.linspace(-2, 2, 41, dtype=np.float32)
    for mode in ("round", "sign"):
        g = ms.grad(ms_binary.ActQuantize(mode))(ms.Tensor(x)).asnumpy()
        assert np.array_equal(g, (np.abs(x) <= 1).astype(np.float32))
        xt = torch.from_numpy(x).requires_grad_()
        torch_binary.ActQuantize(mode)(xt).sum().backward()
        assert np.array_equal(xt.grad.numpy(), g)
