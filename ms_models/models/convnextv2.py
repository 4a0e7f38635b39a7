"""ConvNeXt V2, MindSpore (arXiv 2301.00808).

Mirrors ``torch_ref/models/convnextv2.py`` cell for cell, so parameter names equal the official keys
(Hao840/vanillaKD@a27b029 ``models/convnextv2.py`` = facebookresearch/ConvNeXt-V2@2553895) with the LayerNorms'
``weight``/``bias`` as MindSpore's ``gamma``/``beta``. The MindSpore defaults that differ are set explicitly:
LayerNorm eps 1e-6 (MindSpore 1e-7), exact-erf GELU (``ms_models.layers.GELU``), convs with bias and explicit
zero padding. In GRAPH_MODE on float32 the 7x7 depthwise conv runs the compiled CPU kernel of
:mod:`ms_models.layers.kernels` (with its bias; cleared by ``layerwise_mode``), elsewhere MindSpore's conv.
"""
from __future__ import annotations

import mindspore as ms
from mindspore import Parameter, nn, ops
from mindspore.ops.primitive import constexpr

from specs.convnextv2 import (DW_KERNEL, GRN_EPS, LN_EPS, MLP_RATIO, STEM_STRIDE, check_arch, check_input_size,
                              drop_path_rates, group_matcher, no_weight_decay)
from specs.errors import ConfigError

from .._registry import registry
from ..layers import (GELU, DropPath, Identity, conv2d, dense, graph_compiled, refresh_graph, spatial_mean,
                      torch_init_dense)
from ..layers.kernels import depthwise_conv, kernel_cfg


@constexpr
def _check_input_size(h: int, w: int) -> None:
    """:func:`specs.convnextv2.check_input_size`, at compile time in GRAPH_MODE."""
    check_input_size(h, w)


class LayerNorm(nn.LayerNorm):
    """The official ``LayerNorm`` (see the torch reference): MindSpore's LayerNorm over the last axis for
    channels-last input, the official formula over axis 1 for channels-first (NCHW) input."""

    def __init__(self, normalized_shape: int, eps: float = LN_EPS, data_format: str = "channels_last"):
        super().__init__((normalized_shape,), epsilon=eps)
        if data_format not in ("channels_last", "channels_first"):
            raise ConfigError(f"LayerNorm data_format must be channels_last or channels_first, got {data_format!r}")
        self.data_format, self.eps = data_format, eps

    def construct(self, x):
        if self.data_format == "channels_last":
            return super().construct(x)
        mean = x.mean(axis=1, keep_dims=True)
        d = x - mean
        x = d / ops.sqrt((d * d).mean(axis=1, keep_dims=True) + self.eps)
        return self.gamma.reshape((-1, 1, 1)) * x + self.beta.reshape((-1, 1, 1))


class GRN(nn.Cell):
    """Global Response Normalization on channels-last input (see the torch reference)."""

    def __init__(self, dim: int):
        super().__init__()
        self.gamma = Parameter(ops.zeros((1, 1, 1, dim), ms.float32), name="gamma")
        self.beta = Parameter(ops.zeros((1, 1, 1, dim), ms.float32), name="beta")

    def construct(self, x):
        gx = ops.sqrt((x * x).sum(axis=(1, 2), keepdims=True))
        nx = gx / (gx.mean(axis=-1, keep_dims=True) + GRN_EPS)
        return self.gamma * (x * nx) + self.beta + x


class Block(nn.Cell):
    """``x + drop_path(pwconv2(grn(gelu(pwconv1(norm(dwconv(x)))))))`` (see the torch reference)."""

    def __init__(self, dim: int, drop_path: float = 0.0):
        super().__init__()
        self.dwconv = conv2d(dim, dim, DW_KERNEL, padding=DW_KERNEL // 2, group=dim)
        self.norm = LayerNorm(dim)
        self.pwconv1 = dense(dim, MLP_RATIO * dim)
        self.act = GELU()
        self.grn = GRN(MLP_RATIO * dim)
        self.pwconv2 = dense(MLP_RATIO * dim, dim)
        self.drop_path = DropPath(drop_path)
        self.fused = depthwise_conv(1, DW_KERNEL // 2, has_bias=True)    # compiled CPU kernel, or None
        self.fused_cfg = kernel_cfg(1, DW_KERNEL // 2)

    def construct(self, x):
        if self.fused is not None and graph_compiled() and x.dtype == ms.float32:
            y = self.fused(x, self.dwconv.weight, self.dwconv.bias, self.fused_cfg)
        else:
            y = self.dwconv(x)
        y = self.pwconv2(self.grn(self.act(self.pwconv1(self.norm(y.transpose(0, 2, 3, 1))))))
        return x + self.drop_path(y.transpose(0, 3, 1, 2))


def _downsample_layers(in_chans: int, dims: tuple[int, ...]) -> nn.CellList:
    """The stem (4x4 conv stride 4, channels-first LayerNorm) and three (LayerNorm, 2x2 conv stride 2) layers."""
    stem = nn.SequentialCell([conv2d(in_chans, dims[0], STEM_STRIDE, stride=STEM_STRIDE),
                              LayerNorm(dims[0], data_format="channels_first")])
    return nn.CellList([stem] + [nn.SequentialCell([LayerNorm(dims[i], data_format="channels_first"),
                                                    conv2d(dims[i], dims[i + 1], 2, stride=2)])
                                 for i in range(len(dims) - 1)])


class ConvNeXtV2(nn.Cell):
    """The official ``ConvNeXtV2`` (see the torch reference): same constructor, API and outputs."""

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, depths: tuple[int, ...] = (3, 3, 9, 3),
                 dims: tuple[int, ...] = (96, 192, 384, 768), drop_path_rate: float = 0.0,
                 head_init_scale: float = 1.0):
        super().__init__()
        check_arch(depths, dims)
        self.depths, self.dims, self.num_classes = tuple(depths), tuple(dims), num_classes
        self.num_features = self.head_hidden_size = dims[-1]
        self.downsample_layers = _downsample_layers(in_chans, self.dims)
        dpr = drop_path_rates(drop_path_rate, sum(depths))
        starts = [sum(depths[:i]) for i in range(len(depths))]
        self.stages = nn.CellList([nn.SequentialCell([Block(dims[i], dpr[starts[i] + j]) for j in range(depths[i])])
                                   for i in range(len(depths))])
        self.norm = nn.LayerNorm((dims[-1],), epsilon=LN_EPS)
        # the official trunc-normal(0.02) draw and zero bias, times head_init_scale
        self.head = dense(dims[-1], num_classes, std=0.02 * head_init_scale) if num_classes > 0 else Identity()

    def reset_classifier(self, num_classes: int) -> None:
        """A new ``head`` for ``num_classes`` (0: the normalised pooled features), torch's default Linear init."""
        self.num_classes = num_classes
        self.head = torch_init_dense(self.num_features, num_classes) if num_classes > 0 else Identity()
        refresh_graph(self)

    def set_epoch(self, epoch: int, total_epochs: int) -> None:
        """Nothing: ConvNeXt V2 has no epoch-dependent state."""

    def no_weight_decay(self) -> set[str]:
        """The GRN gammas and betas (:func:`specs.convnextv2.no_weight_decay`)."""
        return no_weight_decay(self.depths)

    def group_matcher(self, coarse: bool = False) -> dict:
        """ConvNeXt-V2's layer-decay layouts (:func:`specs.convnextv2.group_matcher`)."""
        return group_matcher(self.depths, coarse)

    def forward_features(self, x):
        _check_input_size(x.shape[2], x.shape[3])
        for i in range(len(self.stages)):    # index loop: zip over the two CellLists returned the input after
            x = self.stages[i](self.downsample_layers[i](x))   # refresh_graph (MindSpore 2.8.0, reset_classifier)
        return x

    def forward_head(self, x, pre_logits: bool = False):
        x = self.norm(spatial_mean(x).reshape(x.shape[0], x.shape[1]))
        return x if pre_logits else self.head(x)

    def construct(self, x):
        return self.forward_head(self.forward_features(x))


registry.register_family("convnextv2", ConvNeXtV2)
