"""ResNet-18/34/50/101/152 (arXiv 1512.03385), as timm builds them: huggingface/pytorch-image-models
@aa4b5850c154 ``timm/models/resnet.py`` (``ResNet`` with ``BasicBlock`` / ``Bottleneck``, ``make_blocks``).

That file's plain ``resnet*`` are torchvision's ResNet v1.5 (stride 2 on the bottleneck's 3x3 conv, 1x1
stride-2 projection shortcuts ``downsample.0/1``) with the same state-dict keys; timm adds stochastic depth on
the residual branch (``drop_path_rate``, linear in the block index over the whole net), dropout before ``fc``
(``drop_rate``) and the zero init of each block's last BN gamma (``zero_init_last``, default True).

The stage table is written once here; both frameworks build from :func:`block_plan`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from ._registry import ModelCfg, register_cfgs
from .param_groups import Matcher, resnet_matcher

PAPER = "1512.03385"
OFFICIAL_CODE = "huggingface/pytorch-image-models@aa4b5850c154 timm/models/resnet.py"
BN_EPS = 1e-5
STEM_WIDTH = 64                       # timm: ``inplanes = 64`` for the plain 7x7 stem, whatever ``channels``
CHANNELS = (64, 128, 256, 512)        # timm ``ResNet(channels=...)`` default: the ``planes`` of each stage
EXPANSION = {"basic": 1, "bottleneck": 4}
RSB_URL = "https://github.com/huggingface/pytorch-image-models/releases/download/v0.1-rsb-weights/"
RSB_URL_OLD = "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-rsb-weights/"

# name -> (block, blocks per stage, timm's default pretrained tag, its weight URL). timm's default tag is the first
# one its ``default_cfgs`` lists for the architecture: the "ResNet strikes back" A1 weights (A1h for 101/152).
VARIANTS: dict[str, tuple[str, tuple[int, int, int, int], str, str]] = {
    "resnet18": ("basic", (2, 2, 2, 2), "a1_in1k", RSB_URL + "resnet18_a1_0-d63eafa0.pth"),
    "resnet34": ("basic", (3, 4, 6, 3), "a1_in1k", RSB_URL + "resnet34_a1_0-46f8f793.pth"),
    "resnet50": ("bottleneck", (3, 4, 6, 3), "a1_in1k", RSB_URL_OLD + "resnet50_a1_0-14fe96d1.pth"),
    "resnet101": ("bottleneck", (3, 4, 23, 3), "a1h_in1k", RSB_URL_OLD + "resnet101_a1h-36d3f2aa.pth"),
    "resnet152": ("bottleneck", (3, 8, 36, 3), "a1h_in1k", RSB_URL_OLD + "resnet152_a1h-dc400468.pth"),
}
# the same architectures' torchvision weights (timm tag ``tv_in1k``): same keys, bilinear, crop 0.875
TORCHVISION_URLS = {
    "resnet18": "https://download.pytorch.org/models/resnet18-f37072fd.pth",
    "resnet34": "https://download.pytorch.org/models/resnet34-b627a593.pth",
    "resnet50": "https://download.pytorch.org/models/resnet50-0676ba61.pth",
    "resnet101": "https://download.pytorch.org/models/resnet101-63fe2227.pth",
    "resnet152": "https://download.pytorch.org/models/resnet152-394f9c45.pth",
}


@dataclass(frozen=True)
class BlockSpec:
    """One residual block ``layer{stage + 1}.{index}``."""

    stage: int
    index: int
    in_chs: int
    planes: int                 # width of the block's inner convs (timm ``planes``; ``width`` = planes here)
    out_chs: int                # planes * expansion
    stride: int                 # on the first 3x3 conv (BasicBlock) / the 3x3 conv2 (Bottleneck: v1.5)
    downsample: bool            # 1x1 conv (stride) + BN projection shortcut ``downsample.0/1``
    drop_path: float            # stochastic-depth rate of the residual branch


def check_arch(block: str, layers: Sequence[int], channels: Sequence[int]) -> None:
    """The plain timm ResNets: a known block type, four stages of at least one block, four stage widths."""
    if block not in EXPANSION:
        raise ValueError(f"ResNet block must be one of {sorted(EXPANSION)}, not {block!r}")
    if len(layers) != 4 or len(channels) != 4 or min(layers) < 1:
        raise ValueError(f"ResNet needs 4 stages of >= 1 block and 4 widths, got layers={tuple(layers)}, "
                         f"channels={tuple(channels)}")


def block_plan(block: str, layers: Sequence[int], channels: Sequence[int] = CHANNELS,
               drop_path_rate: float = 0.0) -> tuple[tuple[BlockSpec, ...], ...]:
    """Every block of the network, as timm's ``make_blocks`` computes it (output stride 32): stage 1 at stride
    1, the others at stride 2 on their first block; a projection shortcut where the stride or the width changes;
    block ``i`` of ``n`` (counted over the whole net) drops its branch with ``drop_path_rate * i / (n - 1)``."""
    check_arch(block, layers, channels)
    expansion, total = EXPANSION[block], sum(layers)
    in_chs, i, stages = STEM_WIDTH, 0, []
    for s, (planes, n) in enumerate(zip(channels, layers)):
        out_chs, blocks = planes * expansion, []
        for j in range(n):
            stride = 2 if s > 0 and j == 0 else 1
            blocks.append(BlockSpec(s, j, in_chs, planes, out_chs, stride, stride != 1 or in_chs != out_chs,
                                    drop_path_rate * i / (total - 1)))
            in_chs, i = out_chs, i + 1
        stages.append(tuple(blocks))
    return tuple(stages)


def infer_kwargs(shapes: Mapping[str, tuple]) -> dict:
    """Model kwargs a state dict (torch keys) implies: the number of classes (0 without ``fc``)."""
    return {"num_classes": int(shapes["fc.weight"][0]) if "fc.weight" in shapes else 0}


def group_matcher(coarse: bool = False) -> Matcher:
    """timm's ``ResNet.group_matcher``: stem ``conv1``/``bn1``/``maxpool``, then ``layer{i}`` (coarse) or
    ``layer{i}.{j}``; ``fc`` last."""
    return resnet_matcher(("conv1", "bn1", "maxpool"), coarse)


def _cfg(name: str) -> ModelCfg:
    block, layers, tag, url = VARIANTS[name]
    return ModelCfg(
        name=name, family="resnet", arch=dict(block=block, layers=layers), paper=PAPER, official_code=OFFICIAL_CODE,
        urls=(url, TORCHVISION_URLS[name]), test_input_size=(3, 64, 64), min_input_size=(3, 32, 32),
        crop_pct=0.95, interpolation="bicubic", first_conv="conv1", classifier=("fc",), infer_kwargs=infer_kwargs,
        notes=f"preprocessing of timm's default tag {name}.{tag} (RSB recipe: bicubic, crop 0.95; timm evaluates "
              f"it at 288 px, crop 1.0); urls: that tag's weights, then torchvision's ({name}.tv_in1k: bilinear, "
              f"crop 0.875); both load with the same keys")


CFGS = [_cfg(name) for name in VARIANTS]
register_cfgs(CFGS)
