"""Binary layers shared by the binary-network families, PyTorch (mirrors ``ms_models/binary.py``)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from specs.bimlp import ACT_BINARIZE


# ---------------------------------------------------------------- BiMLP (XNOR weights, {-1, 0, +1} activations)
# Official mindspore-ai/models research/cv/BiMLP/src/quan_conv.py: ``QuanConv(quan_name_w='xnor',
# quan_name_a='xnor', nbit_w=1, nbit_a=1)``, ``XnorM``, ``dorefa_a``, and ``LearnableBias``/``prelu``/``RPReLU``
# of src/bimlp.py.
class XnorWeight(torch.autograd.Function):
    """``sign(W) * mean(|W|, axis=1)`` (official ``XnorM``): the mean runs over the input-channel axis only, per
    output channel and kernel position (so a depthwise kernel keeps its full-precision values); the gradient
    is passed straight through, unclipped (official ``bprop``: ``dout``)."""

    @staticmethod
    def forward(ctx, w: torch.Tensor) -> torch.Tensor:
        return torch.sign(w) * w.abs().mean(1, keepdim=True)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad


class ActQuantize(torch.autograd.Function):
    """1-bit activation quantiser: forward ``round(clip(x, -1, 1))`` in {-1, 0, +1} (official ``dorefa_a`` with
    nbit 1: ``Rint(x * 1) / 1``, round half to even) or ``sign(clip(x, -1, 1))``; backward the straight-through
    estimator of the clipped quantiser, ``grad * (|x| <= 1)``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, mode: str) -> torch.Tensor:
        ctx.save_for_backward(x)
        c = x.clamp(-1.0, 1.0)
        return torch.round(c) if mode == "round" else torch.sign(c)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= 1.0).to(grad.dtype), None


def check_act_binarize(mode: str) -> str:
    if mode not in ACT_BINARIZE:
        raise ValueError(f"act_binarize must be one of {', '.join(ACT_BINARIZE)}, not {mode!r}")
    return mode


class XnorConv2d(nn.Conv2d):
    """Bias-free convolution on quantised activations with XNOR weights (official ``QuanConv``, 'xnor'/'xnor',
    1 bit): key ``weight``, PyTorch's default initialisation (MindSpore's ``nn.Conv2d`` default since 2.3)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int] = 1,
                 padding: int | tuple[int, int] = 0, groups: int = 1, act_binarize: str = "round"):
        super().__init__(in_channels, out_channels, kernel_size, padding=padding, groups=groups, bias=False)
        self.act_binarize = check_act_binarize(act_binarize)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(ActQuantize.apply(x, self.act_binarize), XnorWeight.apply(self.weight), None,
                        self.stride, self.padding, self.dilation, self.groups)


class LearnableBias(nn.Module):
    """``x + bias``, bias (1, C, 1, 1) initialised to zero (official ``LearnableBias``)."""

    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bias


class PReLU(nn.Module):
    """``max(x, 0) + w * min(x, 0)``, slope ``w`` (1, C, 1, 1) initialised to 0.25 (official ``prelu``; gradient
    ``1 + w`` at exactly 0, as the official masked copies give)."""

    def __init__(self, channels: int):
        super().__init__()
        self.w = nn.Parameter(torch.full((1, channels, 1, 1), 0.25))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(min=0) + self.w * x.clamp(max=0)


class RPReLU(nn.Module):
    """ReActNet's RPReLU ``move2(prelu(move1(x)))`` (official ``RPReLU``)."""

    def __init__(self, channels: int):
        super().__init__()
        self.move1 = LearnableBias(channels)
        self.act = PReLU(channels)
        self.move2 = LearnableBias(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.move2(self.act(self.move1(x)))
