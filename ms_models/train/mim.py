"""Masked-image-modeling pretraining in the engine (FastMIM arXiv 2212.06593, LocalMIM arXiv 2303.05251).

A ``mim_pretrain`` model (:mod:`ms_models.mim`) computes its own loss from the images: upstream's
``engine_pretrain.py`` (FastMIM ``mim_vit_pretrain.py``, LocalMIM ``ViT/engine_pretrain.py``) calls
``loss = model(samples, mask_ratio=args.mask_ratio)`` and ignores the labels. :class:`MimObjective` is that call
as the network of the ordinary compiled train step (:mod:`.step`), with :class:`ObjectiveLoss` as its loss, so
accumulation, clipping, loss scaling, data parallel and complete checkpoints work as for any run; the masks are
drawn inside the graph (``ops.rand``, under the run's seed).

Validation (not in upstream, which has none) is the same loss on the val split with masks drawn on the host from
``(seed, rank, batch)``: the same masks every epoch, so ``val_loss`` is comparable across epochs. A pretraining
run has no top-1, hence no ``best.ckpt``; ``last.ckpt`` is the pretrained model (upstream keeps its
``checkpoint-<epoch>.pth``), which fine-tunes through ``model.pretrained`` (:func:`ms_models.mim.load_pretrained`)
and converts to the official torch layout (``python -m convert ms2torch``).
"""
from __future__ import annotations

from typing import Callable, Iterable

import numpy as np

import mindspore as ms
from mindspore import nn

from ..context import execution_mode
from ..mim import FastMIMBase, LocalMIMViT


class MimObjective(nn.Cell):
    """``images -> loss``: the pretraining model's loss at ``mask_ratio`` (FastMIM returns ``(loss, pred, mask)``,
    LocalMIM the loss). Its parameters are the model's, under the model's own names."""

    def __init__(self, model: nn.Cell, mask_ratio: float) -> None:
        super().__init__(auto_prefix=False)          # the model's parameters keep their names (checkpoints)
        self.model = model
        self.mask_ratio = mask_ratio

    def construct(self, images):
        out = self.model(images, self.mask_ratio)
        if isinstance(out, tuple):
            return out[0]
        return out


class ObjectiveLoss(nn.Cell):
    """The train step's ``loss_fn(output, targets)`` for a network whose output is its loss: the output."""

    def construct(self, loss, targets):
        return loss


def noise_shape(model: nn.Cell, batch: int) -> tuple[int, int]:
    """The shape of the ``noise`` a pretraining model masks with: FastMIM one value per ``block_size`` block
    (``block_masking``), LocalMIM one per patch (``random_masking``)."""
    if isinstance(model, FastMIMBase):
        return batch, (model.img_size // model.block_size) ** 2
    if isinstance(model, LocalMIMViT):
        return batch, model.patch_embed.num_patches
    raise TypeError(f"{type(model).__name__} is not a masked-image-modeling pretraining model")


def evaluate_pretraining(model: nn.Cell, batches: Iterable[tuple[np.ndarray, np.ndarray]], mask_ratio: float,
                         key: tuple[int, ...], all_sum: Callable[[np.ndarray], np.ndarray] | None = None,
                         mode: int | None = None) -> dict[str, float | int]:
    """The mean pretraining loss (per image) over ``batches`` in eval mode, batch ``i`` masked with uniform noise
    from ``numpy.random.default_rng((*key, i))``; ``all_sum`` adds the sums over data-parallel ranks."""
    model.set_train(False)
    total = np.zeros(2, np.float64)
    with execution_mode(mode):
        for i, (images, _) in enumerate(batches):
            noise = np.random.default_rng((*key, i)).random(noise_shape(model, len(images)), dtype=np.float32)
            out = model(ms.Tensor(images), mask_ratio, ms.Tensor(noise))
            loss = out[0] if isinstance(out, tuple) else out
            total += (float(loss.asnumpy()) * len(images), len(images))
    if all_sum is not None:
        total = np.asarray(all_sum(total), np.float64)
    return {"loss": float(total[0] / max(total[1], 1)), "images": int(round(total[1]))}
