"""Training losses with timm's semantics, and the selection of timm ``train.py``.

:class:`LabelSmoothingCrossEntropy` and :class:`SoftTargetCrossEntropy` follow ``timm/loss/cross_entropy.py``,
:class:`BinaryCrossEntropy` follows ``timm/loss/binary_cross_entropy.py`` (``reduction='mean'``, no class weights).
Each takes logits ``(B, C)`` and the targets the train loader yields (int labels ``(B,)`` or float soft targets
``(B, C)``), computes in float32 (also under AMP) and returns the scalar batch mean. All compile in GRAPH_MODE.
"""
from __future__ import annotations

import mindspore as ms
from mindspore import nn, ops

from .config import Config, mixup_active

__all__ = ["CrossEntropy", "LabelSmoothingCrossEntropy", "SoftTargetCrossEntropy", "BinaryCrossEntropy",
           "create_loss", "eval_loss"]


class CrossEntropy(nn.Cell):
    """Plain cross-entropy on int labels (torch ``nn.CrossEntropyLoss()``, mean over the batch)."""

    def construct(self, logits, target):
        return ops.cross_entropy(logits.astype(ms.float32), target.astype(ms.int32))


class LabelSmoothingCrossEntropy(nn.Cell):
    """timm ``LabelSmoothingCrossEntropy``: ``(1 - s) * nll + s * mean_c(-log p_c)`` on int labels."""

    def __init__(self, smoothing: float = 0.1):
        super().__init__()
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"label smoothing must be in [0, 1), got {smoothing!r}")
        self.smoothing = smoothing
        self.confidence = 1.0 - smoothing

    def construct(self, logits, target):
        logprobs = ops.log_softmax(logits.astype(ms.float32), -1)
        one_hot = ops.one_hot(target.astype(ms.int32), logprobs.shape[-1], ms.Tensor(1.0, ms.float32),
                              ms.Tensor(0.0, ms.float32))
        nll = -(logprobs * one_hot).sum(-1)
        smooth = -logprobs.mean(-1)
        return (self.confidence * nll + self.smoothing * smooth).mean()


class SoftTargetCrossEntropy(nn.Cell):
    """timm ``SoftTargetCrossEntropy``: ``mean_b sum_c -t_c log p_c`` on soft targets ``(B, C)`` (Mixup/CutMix)."""

    def construct(self, logits, target):
        logprobs = ops.log_softmax(logits.astype(ms.float32), -1)
        return (-target.astype(ms.float32) * logprobs).sum(-1).mean()


class BinaryCrossEntropy(nn.Cell):
    """timm ``BinaryCrossEntropy``: int labels become dense targets ``off = s / C`` and ``on = 1 - s + off``
    (soft targets are used as they are: smoothing is then upstream, in Mixup); with ``target_threshold`` the
    targets become ``target > threshold`` (0 or 1); then BCE-with-logits averaged over all ``B * C`` elements."""

    def __init__(self, smoothing: float = 0.1, target_threshold: float | None = None):
        super().__init__()
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"label smoothing must be in [0, 1), got {smoothing!r}")
        self.smoothing = smoothing
        self.target_threshold = target_threshold

    def construct(self, logits, target):
        logits = logits.astype(ms.float32)
        if target.ndim == 1:
            num_classes = logits.shape[-1]
            off_value = self.smoothing / num_classes
            target = ops.one_hot(target.astype(ms.int32), num_classes,
                                 ms.Tensor(1.0 - self.smoothing + off_value, ms.float32),
                                 ms.Tensor(off_value, ms.float32))
        else:
            target = target.astype(ms.float32)
        if self.target_threshold is not None:
            target = (target > self.target_threshold).astype(ms.float32)
        return ops.binary_cross_entropy_with_logits(logits, target, reduction="mean")


def create_loss(cfg: Config) -> nn.Cell:
    """The training loss for what the train loader yields, chosen as timm ``train.py`` does: Mixup/CutMix on
    (soft targets, smoothing already folded in) -> :class:`SoftTargetCrossEntropy`, or ``BinaryCrossEntropy
    (target_threshold)`` for ``train.loss=bce``; else ``data.smoothing > 0`` -> :class:`LabelSmoothingCrossEntropy`
    or ``BinaryCrossEntropy(smoothing, target_threshold)``; else plain CE, or ``BinaryCrossEntropy(0,
    target_threshold)`` for ``bce`` (timm falls back to CE there, ignoring ``--bce-loss``; we honour the config)."""
    bce = cfg.train.loss == "bce"
    threshold = cfg.train.bce_target_thresh
    if mixup_active(cfg.data):
        return BinaryCrossEntropy(target_threshold=threshold) if bce else SoftTargetCrossEntropy()
    if cfg.data.smoothing > 0:
        if bce:
            return BinaryCrossEntropy(smoothing=cfg.data.smoothing, target_threshold=threshold)
        return LabelSmoothingCrossEntropy(smoothing=cfg.data.smoothing)
    return BinaryCrossEntropy(smoothing=0.0, target_threshold=threshold) if bce else CrossEntropy()


def eval_loss() -> nn.Cell:
    """The validation loss: plain cross-entropy on int labels (timm ``validate``'s ``nn.CrossEntropyLoss()``)."""
    return CrossEntropy()
