"""GhostNetV2's conv + BN fast path (``ms_models/layers/conv_bn.py``): the eval-mode BN fold into the conv or
the compiled depthwise kernel, and training-mode BN, against torch's ``bn(conv(x))`` in both modes."""
from __future__ import annotations

import mindspore as ms
import numpy as np
import pytest
import torch

from ms_models import layers


class ProjectedConvBn(ms.nn.Cell):
    """``sum(layer(x) * proj)`` and ``layer(x)`` for a :class:`layers.ConvBn` ``layer`` (``bn(conv(x))``)."""

    def __init__(self, layer, proj):
        super().__init__()
        self.layer, self.proj = layer, proj

    def construct(self, x):
        y = self.layer(x)
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
    bn = layers.batch_norm(cout, 1e-5)
    layer = layers.ConvBn(conv, bn)
    if depthwise:
        if not fast:
            conv.fused = None
        assert (conv.fused is not None) == fast
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
    net = ProjectedConvBn(layer, ms.Tensor(proj))
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
