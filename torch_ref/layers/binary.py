"""Binary layers shared by the binary-network families, PyTorch (mirrored name for name by ``ms_models/binary.py``).

AdaBin (arXiv 2208.08084; official huawei-noah/Efficient-Computing ``BinaryNetworks/AdaBin/*/utils/binarylib.py``):
- Weights (per output channel, no parameters): ``beta = mean(W)``, ``alpha = sqrt(sum((W - beta)^2) / (k*k*C_in))``
  (population std, computed in that order), ``W_b = sign((W - beta) / alpha) * alpha + beta``. The sign's
  gradient is IR-Net's ``k * t * (1 - tanh^2(t * u))`` (``BinaryQuantize``); ``t``/``k`` follow the per-epoch
  schedule :func:`specs.adabin.temperature` (set with :func:`set_temperature`); they are non-persistent buffers
  (not in the official state_dict), initialised to the official ``t = 0.1``, ``k = 10``.
- Activations (learnable scalars ``alpha_a`` = 1, ``beta_a`` = 0): ``u = (x - beta_a) / alpha_a``, forward
  ``sign(u)`` with Bi-Real's polynomial gradient, written like the code as ``sign(u) - poly(u).detach() +
  poly(u)`` (so the forward carries that expression's float rounding, |error| <= 1 ulp of 1), then
  ``alpha_a * (b + beta_a)``. The code's ``alpha * (b + beta)`` differs from the paper's ``alpha * b + beta``
  (Eq. 5); both official implementations compute the former, so checkpoints need it.
- ``Maxout``: ``pos_scale * relu(x) - neg_scale * relu(-x)`` per channel (init 1.0 / 0.25).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from specs.adabin import K_INIT, T_INIT
from specs.bimlp import check_act_binarize, quantiser_kinks


class BinaryQuantize(torch.autograd.Function):
    """``sign(u)`` with the gradient ``k * t * (1 - tanh(u * t)^2)`` (official ``BinaryQuantize``, from IR-Net)."""

    @staticmethod
    def forward(ctx, u: torch.Tensor, k: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(u, k, t)
        return torch.sign(u)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        u, k, t = ctx.saved_tensors
        th = torch.tanh(u * t)
        return k * t * (1 - th * th) * grad, None, None


class ApproxSign(nn.Module):
    """``sign(u)`` forward, Bi-Real ApproxSign gradient (``2 + 2u`` on [-1, 0), ``2 - 2u`` on [0, 1), else 0),
    in the official mask arithmetic and ``detach`` form (a parameter-free module: official keys unchanged)."""

    step_function = True        # a step function of its input (the tests share its output across frameworks)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        m1, m2, m3 = (u < -1).float(), (u < 0).float(), (u < 1).float()
        out1 = (-1) * m1 + (u * u + 2 * u) * (1 - m1)
        out2 = out1 * m2 + (-u * u + 2 * u) * (1 - m2)
        out3 = out2 * m3 + 1 * (1 - m3)
        return torch.sign(u).detach() - out3.detach() + out3


class BinaryActivation(nn.Module):
    """Adaptive binary set of the activations: ``alpha_a * (sign((x - beta_a) / alpha_a) + beta_a)``."""

    def __init__(self):
        super().__init__()
        self.sign = ApproxSign()
        self.alpha_a = nn.Parameter(torch.tensor(1.0))
        self.beta_a = nn.Parameter(torch.tensor(0.0))

    @torch.no_grad()
    def draw_test_values(self, g: torch.Generator) -> None:
        """Trained-like test values (``torch_ref.testing``): alpha in [0.5, 1.5), beta ~ N(0, 0.1^2)."""
        self.alpha_a.copy_(torch.rand((), generator=g) + 0.5)
        self.beta_a.copy_(torch.randn((), generator=g) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.alpha_a * (self.sign((x - self.beta_a) / self.alpha_a) + self.beta_a)


class Maxout(nn.Module):
    """Per-channel two-slope nonlinearity of AdaBin (official ``Maxout``); parameters shaped (C,)."""

    kinks = (0.0,)      # inputs where the gradient steps (the tests share the side of each across frameworks)

    def __init__(self, channels: int, neg_init: float = 0.25, pos_init: float = 1.0):
        super().__init__()
        self.neg_scale = nn.Parameter(neg_init * torch.ones(channels))
        self.pos_scale = nn.Parameter(pos_init * torch.ones(channels))

    @torch.no_grad()
    def draw_test_values(self, g: torch.Generator) -> None:
        """Trained-like test values (``torch_ref.testing``): positive slopes in [0.5, 1.5), negative in [0, 0.5)."""
        self.pos_scale.copy_(torch.rand(self.pos_scale.shape, generator=g) + 0.5)
        self.neg_scale.copy_(torch.rand(self.neg_scale.shape, generator=g) * 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pos_scale.view(1, -1, 1, 1) * F.relu(x) - self.neg_scale.view(1, -1, 1, 1) * F.relu(-x)


def binarize_weight(w: torch.Tensor, k: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``sign((W - beta) / alpha) * alpha + beta`` per output channel (population std, ``k*k*C_in`` divisor)."""
    beta = w.mean((1, 2, 3)).view(-1, 1, 1, 1)
    alpha = torch.sqrt(((w - beta) ** 2).sum((1, 2, 3)) / (w.shape[1] * w.shape[2] * w.shape[3])).view(-1, 1, 1, 1)
    return BinaryQuantize.apply((w - beta) / alpha, k, t) * alpha + beta


class AdaBinConv2d(nn.Conv2d):
    """1-bit conv (official ``AdaBin_Conv2d`` with ``a_bit = w_bit = 1``, no bias): binarised input
    (``binary_a``), binarised weight, then ``F.conv2d``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, bias=False)
        self.register_buffer("k", torch.tensor([K_INIT]), persistent=False)
        self.register_buffer("t", torch.tensor([T_INIT]), persistent=False)
        self.binary_a = BinaryActivation()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(self.binary_a(x), binarize_weight(self.weight, self.k, self.t), None, self.stride,
                        self.padding)


@torch.no_grad()
def set_temperature(model: nn.Module, t: float, k: float) -> None:
    """Write the weight estimator's ``t``/``k`` into every :class:`AdaBinConv2d` of ``model``."""
    for m in model.modules():
        if isinstance(m, AdaBinConv2d):
            m.t.fill_(float(t))
            m.k.fill_(float(k))




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


class _ActQuantizeFn(torch.autograd.Function):
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


class ActQuantize(nn.Module):
    """The activation quantiser as a parameter-free module (``quant_a`` of :class:`XnorConv2d`, like MindSpore's)."""

    step_function = True        # a step function of its input (the tests share its output across frameworks)

    def __init__(self, mode: str = "round"):
        super().__init__()
        self.mode = check_act_binarize(mode)
        self.kinks = quantiser_kinks(mode)      # where the value or the gradient steps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _ActQuantizeFn.apply(x, self.mode)


class XnorConv2d(nn.Conv2d):
    """Bias-free convolution on quantised activations with XNOR weights (official ``QuanConv``, 'xnor'/'xnor',
    1 bit): key ``weight``, PyTorch's default initialisation (MindSpore's ``nn.Conv2d`` default since 2.3)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int] = 1,
                 padding: int | tuple[int, int] = 0, groups: int = 1, act_binarize: str = "round"):
        super().__init__(in_channels, out_channels, kernel_size, padding=padding, groups=groups, bias=False)
        self.quant_a = ActQuantize(act_binarize)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(self.quant_a(x), XnorWeight.apply(self.weight), None,
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

    kinks = (0.0,)      # inputs where the gradient steps (the tests share the side of each across frameworks)

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
