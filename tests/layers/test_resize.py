"""Resizing as PyTorch's ``F.interpolate`` (``ms_models/layers/resize.py``): nearest (legacy rounding), bilinear
(align_corners) and bicubic resizes, and GhostNetV2's DFC gate ``x * interpolate(gate)`` with its gradients."""
from __future__ import annotations

import mindspore as ms
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import ProjectedSum, rel_err
from ms_models import layers
from ms_models.layers import resize
from specs import vig as vig_spec
from specs.pooling import nearest_indices


def test_dfc_upsample_equals_torch_interpolate(any_mode):
    """3 -> 7 repeats rows [0, 0, 0, 1, 1, 2, 2] (PyTorch's legacy nearest); every DFC size pair, non-square
    maps and the bilinear (align_corners) option equal ``F.interpolate``."""
    assert nearest_indices(3, 7) == (0, 0, 0, 1, 1, 2, 2)
    for (h, w) in [(7, 7), (7, 5), (4, 3), (5, 14), (28, 28), (1, 3)]:
        x = np.random.RandomState(h * w).randn(2, 3, max(h // 2, 1), max(w // 2, 1)).astype(np.float32)
        ref = F.interpolate(torch.from_numpy(x), size=(h, w), mode="nearest").numpy()
        assert np.array_equal(resize(ms.Tensor(x), (h, w)).asnumpy(), ref), (h, w)
        ref = F.interpolate(torch.from_numpy(x), size=(h, w), mode="bilinear", align_corners=True).numpy()
        # weights in float64 here, float32 in torch: a few float32 ulps apart
        assert rel_err(ref, resize(ms.Tensor(x), (h, w), "bilinear").asnumpy()) <= 1e-5, (h, w)


def test_bicubic_resize_equals_torch(pynative_mode):
    """MindSpore's and NumPy's bicubic (A = -0.75, align_corners False, down and up) equal F.interpolate to 1e-5
    relative: torch rounds the source coordinate ``(dst + 0.5) * in / out - 0.5`` to float32 and the kernel's
    slope amplifies that (observed <= 2.7e-6 for MindSpore float32, <= 4.6e-6 for NumPy float64; an A = -0.5
    kernel or align_corners=True is off by > 1e-2). Integer ratios (relative_pos tables) agree to 1 ulp."""
    x = np.random.RandomState(0).randn(1, 2, 13, 40).astype(np.float32)
    for size in ((7, 17), (20, 12), (13, 55), (26, 80)):
        ref = F.interpolate(torch.from_numpy(x), size=size, mode="bicubic", align_corners=False).numpy()
        assert rel_err(ref, resize(ms.Tensor(x), size, "bicubic").asnumpy()) <= 1e-5
        assert rel_err(ref, vig_spec.resize_bicubic(x, *size)) <= 1e-5


class Gate(ms.nn.Cell):
    """``mul_resized(x, gate)``."""

    def __init__(self, mode):
        super().__init__()
        self.mode = mode

    def construct(self, x, gate):
        return layers.mul_resized(x, gate, self.mode)


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
    net = ProjectedSum(Gate(mode), proj, with_output=True)
    (_, y), (gx, gg) = ms.value_and_grad(net, (0, 1), has_aux=True)(ms.Tensor(x), ms.Tensor(g))
    for got, ref in ((y, yt), (gx, xt.grad), (gg, gt.grad)):
        ref = ref.detach().numpy()
        assert np.abs(got.asnumpy() - ref).max() <= 1e-6 * np.abs(ref).max()
