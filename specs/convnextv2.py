"""ConvNeXt V2 variants and checkpoint rules (arXiv 2301.00808), as VanillaKD defines them
(Hao840/vanillaKD@a27b029 ``models/convnextv2.py``, unchanged since its first commit be6a1a9: the
facebookresearch/ConvNeXt-V2@2553895 ``models/convnextv2.py`` with the ``LayerNorm`` and ``GRN`` of its
``models/utils.py`` inlined, plus timm registration).

Framework-free: the variant table, the constants of the official code, its parameter-group rules (the
``no_weight_decay`` names and the two layer-decay layouts of ConvNeXt-V2's ``optim_factory.py``) and the checkpoint
rules both frameworks and the converter read.
"""
from __future__ import annotations

from typing import Mapping, Sequence

from ._registry import ModelCfg, register_cfgs
from .errors import ConfigError, InputSizeError
from .param_groups import Matcher
from .vig import drop_path_rates  # noqa: F401  (the official torch.linspace(0, rate, sum(depths)) schedule)

PAPER = "2301.00808"
VANILLAKD_COMMIT = "a27b029f693a13d67b85c61a52e25a85f9414e70"
FB_COMMIT = "2553895753323c6fe0b2bf390683f5ea358a42b9"
OFFICIAL_CODE = (f"Hao840/vanillaKD@{VANILLAKD_COMMIT[:7]} models/convnextv2.py (ConvNeXtV2, Block, GRN, LayerNorm; "
                 f"= facebookresearch/ConvNeXt-V2@{FB_COMMIT[:7]} models/convnextv2.py + models/utils.py)")
LN_EPS = 1e-6           # every LayerNorm of the official code (channels-last, channels-first and the final one)
GRN_EPS = 1e-6          # GRN: Gx / (mean_c(Gx) + 1e-6)
DW_KERNEL = 7           # the block's depthwise conv: 7x7, padding 3, with bias
MLP_RATIO = 4           # pwconv1: dim -> 4 dim
STEM_STRIDE = 4         # stem: 4x4 conv, stride 4; then three 2x2 stride-2 downsampling convs
NUM_STAGES = 4
MIN_SIZE = STEM_STRIDE * 2 ** (NUM_STAGES - 1)    # 32: the last stage's map is at least 1x1
# name -> (depths, dims): the official convnextv2_{atto,nano,tiny,base}
VARIANTS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "convnextv2_atto": ((2, 2, 6, 2), (40, 80, 160, 320)),
    "convnextv2_nano": ((2, 2, 8, 2), (80, 160, 320, 640)),
    "convnextv2_tiny": ((3, 3, 9, 3), (96, 192, 384, 768)),
    "convnextv2_base": ((3, 3, 27, 3), (128, 256, 512, 1024)),
}
_FB = "https://dl.fbaipublicfiles.com/convnext/convnextv2/im1k"
URLS = {
    "convnextv2_atto": (f"{_FB}/convnextv2_atto_1k_224_ema.pt",),
    "convnextv2_nano": (f"{_FB}/convnextv2_nano_1k_224_ema.pt",),
    "convnextv2_tiny": ("https://github.com/Hao840/vanillaKD/releases/download/checkpoint/convnextv2_tiny-85.030.pth",
                        f"{_FB}/convnextv2_tiny_1k_224_ema.pt"),
    "convnextv2_base": (f"{_FB}/convnextv2_base_1k_224_ema.pt",),
}
_NOTES = {
    "convnextv2_atto": "ConvNeXt-V2 README: FCMAE pre-trained, ImageNet-1k fine-tuned, 76.7 % top-1 (3.7 M, 0.55 G)",
    "convnextv2_nano": "ConvNeXt-V2 README: FCMAE pre-trained, ImageNet-1k fine-tuned, 81.9 % top-1 (15.6 M, 2.45 G)",
    "convnextv2_tiny": ("VanillaKD student (Hao840/vanillaKD readme, timm 0.6.5): 85.03 % ImageNet top-1 (first URL); "
                        "ConvNeXt-V2 README ImageNet-1k fine-tuned: 83.0 % (second URL)"),
    "convnextv2_base": "ConvNeXt-V2 README: FCMAE pre-trained, ImageNet-1k fine-tuned, 84.9 % top-1 (89 M, 15.4 G)",
}


def check_arch(depths: Sequence[int], dims: Sequence[int]) -> None:
    """The official network has four stages: ``depths`` and ``dims`` of four entries each (one-line error)."""
    if len(depths) != NUM_STAGES or len(dims) != NUM_STAGES:
        raise ConfigError(f"ConvNeXtV2 has {NUM_STAGES} stages: depths and dims need {NUM_STAGES} entries each, "
                          f"got {len(depths)} and {len(dims)}")


def check_input_size(h: int, w: int) -> None:
    """Inputs below 32 px leave the last stage without pixels (the official code then fails inside a conv): a
    one-line :class:`InputSizeError` instead."""
    if h < MIN_SIZE or w < MIN_SIZE:
        raise InputSizeError(f"ConvNeXtV2 needs an input of at least {MIN_SIZE}x{MIN_SIZE}, got {h}x{w}")


def no_weight_decay(depths: Sequence[int]) -> set[str]:
    """ConvNeXt-V2 ``optim_factory.get_parameter_groups``: no decay for 1-d parameters and biases (the training
    engine's own rule) and for names ending in ``.gamma`` / ``.beta``: the GRN parameters, shaped (1, 1, 1, C),
    which the engine's ``ndim <= 1`` rule would decay; listed here by name."""
    return {f"stages.{i}.{j}.grn.{p}" for i, d in enumerate(depths) for j in range(d) for p in ("gamma", "beta")}


def group_matcher(depths: Sequence[int], coarse: bool = False) -> Matcher:
    """Layer-wise lr decay groups of ConvNeXt-V2 ``optim_factory.py`` (``LayerDecayValueAssigner``), in the
    project's matcher format (no separate stem entry: the official stem shares a layer with the first block):

    - fine (``--layer_decay_type single``, the official recipe of atto..tiny): one layer per block, each
      ``downsample_layers.i`` with the first block of stage i (the stem with ``stages.0.0``), the final ``norm``
      and the ``head`` last (unmatched); ``sum(depths) + 1`` layers, the official ids and scales.
    - coarse (``--layer_decay_type group``, the official recipe of base and larger): BEiT's 12 groups of three
      consecutive blocks: stem 0, stage 0 1, stage 1 (with its downsample) 2, stage 2's downsample 3 and its block
      j ``3 + j // 3``, stage 3 (with its downsample) 12, ``norm`` and ``head`` last. For depths other than
      (3, 3, 27, 3) the official ids leave gaps (tiny: 3, 4, 5 then 12); the groups here are consecutive.
    """
    if not coarse:
        return dict(blocks=[(r"^downsample_layers\.(\d+)\.", (0,)), (r"^stages\.(\d+)\.(\d+)\.", None)])
    stage2 = [(rf"^stages\.2\.{j}\.", (3 + j // 3,)) for j in range(depths[2])]
    return dict(blocks=[(r"^downsample_layers\.0\.", (0,)), (r"^stages\.0\.", (1,)),
                        (r"^(?:downsample_layers|stages)\.1\.", (2,)), (r"^downsample_layers\.2\.", (3,)),
                        *stage2, (r"^(?:downsample_layers|stages)\.3\.", (12,))])


def infer_kwargs(shapes: Mapping[str, tuple]) -> dict:
    """Model kwargs a state dict implies: the number of classes (0 without ``head``)."""
    return {"num_classes": int(shapes["head.weight"][0]) if "head.weight" in shapes else 0}


def _cfg(name: str) -> ModelCfg:
    depths, dims = VARIANTS[name]
    return ModelCfg(
        name=name, family="convnextv2", paper=PAPER, official_code=OFFICIAL_CODE, urls=URLS[name],
        arch=dict(depths=depths, dims=dims),
        input_size=(3, 224, 224), test_input_size=(3, 64, 64), min_input_size=(3, MIN_SIZE, MIN_SIZE),
        # ConvNeXt-V2 datasets.py: ImageNet mean/std, eval resize 256 -> crop 224 (crop_pct 0.875), bicubic
        crop_pct=0.875, interpolation="bicubic",
        first_conv="downsample_layers.0.0", classifier=("head",), notes=_NOTES[name], infer_kwargs=infer_kwargs)


CFGS = [_cfg(name) for name in VARIANTS]
register_cfgs(CFGS)
