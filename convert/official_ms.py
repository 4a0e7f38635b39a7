"""Declared name maps from official MindSpore checkpoints (mindspore-ai/models ports) to our MindSpore names.

Pure functions over ``{name: array}``: nothing is built or loaded. GhostNetV2: ``ghostnetv2_1x.ckpt`` from
mindspore-ai/models ``research/cv/ghostnetv2/src/ghostnetv2.py`` has a flat ``blocks.0..15`` (one per cfg row)
plus ``blocks.16`` (the final ConvUnit), and ``ConvUnit`` children ``conv``/``bn``. That network upsamples
the DFC gate bilinearly (align_corners): load the result into a model built with ``dfc_upsample='bilinear'``
to reproduce it. Its ``ceil`` channel rounding equals the PyTorch rounding at width 1.0 only.

AdaBin: the CIFAR-10 ResNet-20 of mindspore-ai/models ``research/cv/AdaBin/src/resnet.py`` (checkpoint
``adabin_ascend_v180_cifar10_research_cv_acc88.15.ckpt``) has our names; its ``Maxout`` parameters are shaped
(1, C, 1, 1) and are flattened to our (C,). The estimator temperatures ``t``/``k`` it lacks are filled with
their initial values by the strict loader (MindSpore-only state).
"""
from __future__ import annotations

import re
from typing import Callable, Mapping

import numpy as np

from specs import get_model_cfg
from specs.errors import CheckpointError
from specs.ghostnetv2 import STAGES

# Training state a MindSpore checkpoint may carry besides the network (optimizer moments, step counters).
TRAINING_STATE = re.compile(r"^(moments\.|accum\.|mean_square\.|ema\.|global_step$|learning_rate$|momentum$|"
                            r"beta1_power$|beta2_power$|scale_sense$|current_iterator_step$|"
                            r"last_overflow_iterator_step$|epoch_num$|step_num$)")

# (official flat block index) -> "stage.index"; blocks.16 is the final ConvBnAct ``blocks.9.0``
_GHOST_BLOCKS = [f"{s}.{j}" for s, rows in enumerate(STAGES) for j in range(len(rows))] + [f"{len(STAGES)}.0"]
_BN = r"(gamma|beta|moving_mean|moving_variance)"
# (pattern inside one official block, replacement); ConvUnit i of a Sequential -> children 2i (conv), 2i+1 (bn)
_GHOST_RULES: tuple[tuple[str, Callable[[re.Match], str]], ...] = (
    (r"^(ghost[12]\.(?:primary_conv|cheap_operation))\.conv\.weight$", lambda m: f"{m[1]}.0.weight"),
    (rf"^(ghost[12]\.(?:primary_conv|cheap_operation))\.bn\.{_BN}$", lambda m: f"{m[1]}.1.{m[2]}"),
    (r"^(ghost1\.short_conv|shortcut)\.(\d)\.conv\.weight$", lambda m: f"{m[1]}.{2 * int(m[2])}.weight"),
    (rf"^(ghost1\.short_conv|shortcut)\.(\d)\.bn\.{_BN}$", lambda m: f"{m[1]}.{2 * int(m[2]) + 1}.{m[3]}"),
    (r"^dw\.conv\.weight$", lambda m: "conv_dw.weight"),
    (rf"^dw\.bn\.{_BN}$", lambda m: f"bn_dw.{m[1]}"),
    (r"^(se\.conv_(?:reduce|expand)\.(?:weight|bias))$", lambda m: m[1]),
)
_GHOST_FINAL_RULES = (
    (r"^conv\.weight$", lambda m: "conv.weight"),
    (rf"^bn\.{_BN}$", lambda m: f"bn1.{m[1]}"),
)
_GHOST_TOP = re.compile(rf"^(conv_stem\.weight|bn1\.{_BN}|conv_head\.(weight|bias)|classifier\.(weight|bias))$")


def _ghostnetv2_name(key: str) -> str | None:
    if _GHOST_TOP.match(key):
        return key
    m = re.match(r"^blocks\.(\d+)\.(.+)$", key)
    if not m or int(m[1]) >= len(_GHOST_BLOCKS):
        return None
    final = int(m[1]) == len(_GHOST_BLOCKS) - 1
    for pattern, repl in (_GHOST_FINAL_RULES if final else _GHOST_RULES):
        hit = re.match(pattern, m[2])
        if hit:
            return f"blocks.{_GHOST_BLOCKS[int(m[1])]}.{repl(hit)}"
    return None


_ADABIN = re.compile(rf"^(conv1\.weight|bn[12]\.{_BN}|nonlinear1\.(neg|pos)_scale|linear\.(weight|bias)|"
                     rf"layer\d\.\d+\.(conv[12]\.(weight|binary_a\.(alpha_a|beta_a))|bn[12]\.{_BN}|"
                     r"nonlinear[12]\.(neg|pos)_scale))$")


def _adabin_name(key: str) -> str | None:
    return key if _ADABIN.match(key) else None


def _adabin_value(key: str, value: np.ndarray) -> np.ndarray:
    """(1, C, 1, 1) ``Maxout`` scales -> (C,)."""
    return value.reshape(-1) if key.endswith(("neg_scale", "pos_scale")) else value


_FAMILIES: dict[str, Callable[[str], str | None]] = {"ghostnetv2": _ghostnetv2_name, "adabin": _adabin_name}
# per-family value transforms applied after the rename (layout differences beyond names)
_VALUES: dict[str, Callable[[str, np.ndarray], np.ndarray]] = {"adabin": _adabin_value}


def official_ms_to_ours(name: str, state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Rename an official MindSpore checkpoint of model ``name`` to our MindSpore parameter names.

    Training state (optimizer moments, step counters) is dropped; any other name the declared map does not
    cover raises :class:`CheckpointError` (the strict key/shape check against the model comes after).
    """
    family = get_model_cfg(name).family
    if family not in _FAMILIES:
        raise CheckpointError(f"{name}: no official MindSpore checkpoint layout is declared for {family}")
    rename, out, unknown = _FAMILIES[family], {}, []
    fix = _VALUES.get(family, lambda _k, v: v)
    for key, value in state.items():
        if TRAINING_STATE.match(key):
            continue
        new = rename(key)
        if new is None:
            unknown.append(key)
        else:
            out[new] = fix(new, value)
    if unknown:
        more = f" (+{len(unknown) - 3} more)" if len(unknown) > 3 else ""
        raise CheckpointError(f"{name}: not an official MindSpore {family} checkpoint: unknown name(s) "
                              f"{', '.join(sorted(unknown)[:3])}{more}")
    return out
