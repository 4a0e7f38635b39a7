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

FastMIM-P (:class:`Phases`, config ``mim.pt_*``) trains in phases of growing resolution, as upstream's
``main_pretrain.py`` meant to (its model never follows the size: ``docs/mim.md``). The phase of epoch ``e`` is the
last whose first epoch ``pt_step[i] <= e``; it sets the train crop (RandomResizedCrop size), the batch, the
accumulation and the lr ``optimizer.lr * global batch / optimizer.lr_base_size`` (upstream ``blr * eff_bs / 256``,
its ``min_lr`` scaled alike), and the model's input size (``set_input_size``: the sin-cos table and the mask grid).
Each epoch starts with no partial accumulation (MAE's engine zeroes the gradients), so epoch ``e`` has
``batches // accumulate`` updates at the schedule's fractional epochs (:func:`specs.schedules.lr_per_varying_step`).
Validation stays at ``data.image_size`` (the model's ``img_size``), so ``val_loss`` is comparable across phases.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterable

import numpy as np

import mindspore as ms
from mindspore import nn

from specs.schedules import lr_per_varying_step, scaled_lr

from ..context import execution_mode
from ..mim import FastMIMBase, LocalMIMSwin, LocalMIMViT


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
    (``block_masking``), LocalMIM's ViT one per patch (``random_masking``), LocalMIM's Swin one per 32-px unit
    (its first row masks the whole batch)."""
    if isinstance(model, FastMIMBase):
        return batch, (getattr(model, "input_side", model.img_size) // model.block_size) ** 2
    if isinstance(model, LocalMIMViT):
        return batch, model.patch_embed.num_patches
    if isinstance(model, LocalMIMSwin):
        return batch, model.units
    raise TypeError(f"{type(model).__name__} is not a masked-image-modeling pretraining model")


def evaluate_pretraining(model: nn.Cell, batches: Iterable[tuple[np.ndarray, np.ndarray]], mask_ratio: float,
                         key: tuple[int, ...], all_sum: Callable[[np.ndarray], np.ndarray] | None = None,
                         mode: int | None = None) -> dict[str, float | int]:
    """The mean pretraining loss (per image) over ``batches`` in eval mode, batch ``i`` masked with uniform noise
    from ``numpy.random.default_rng((*key, i))``; ``all_sum`` adds the sums over data-parallel ranks. A FastMIM-P
    model in a phase's input size is evaluated at its ``img_size`` and set back to the phase's size afterwards."""
    model.set_train(False)
    side = getattr(model, "input_side", None)
    if side is not None:
        model.set_input_size(model.img_size)
    total = np.zeros(2, np.float64)
    try:
        with execution_mode(mode):
            for i, (images, _) in enumerate(batches):
                noise = np.random.default_rng((*key, i)).random(noise_shape(model, len(images)), dtype=np.float32)
                out = model(ms.Tensor(images), mask_ratio, ms.Tensor(noise))
                loss = out[0] if isinstance(out, tuple) else out
                total += (float(loss.asnumpy()) * len(images), len(images))
    finally:
        if side is not None:
            model.set_input_size(side)
    if all_sum is not None:
        total = np.asarray(all_sum(total), np.float64)
    return {"loss": float(total[0] / max(total[1], 1)), "images": int(round(total[1]))}


@dataclasses.dataclass(frozen=True)
class Phase:
    """One FastMIM-P phase: from epoch ``start`` on, ``size``-px crops in batches of ``batch_size``, an update
    every ``accumulate`` of them (config ``mim.pt_step``, ``pt_size``, ``pt_bs``, ``pt_accum``)."""

    start: int
    size: int
    batch_size: int
    accumulate: int


class Phases:
    """The FastMIM-P phases of ``cfg`` (a validated config with ``mim.pt_*`` set; module docstring). :meth:`plan`
    sets the per-epoch batches, updates and lr of a run over ``samples`` train rows per shard."""

    def __init__(self, cfg) -> None:
        k = cfg.mim
        self.cfg = cfg
        self.phases = [Phase(*values) for values in zip(k.pt_step, k.pt_size, k.pt_bs, k.pt_accum)]
        self.max_accumulate = max(k.pt_accum)
        self.batches: list[int] = []        # per epoch: micro-batches, the phase's base lr; per update: the lr
        self.base_lr: list[float] = []
        self.lr = np.zeros(0)

    def plan(self, samples: int, world: int) -> "Phases":
        """Plan a run over ``samples`` train rows per shard and ``world`` data-parallel processes."""
        cfg, opt = self.cfg, self.cfg.optimizer
        at = [self.at(e) for e in range(cfg.train.epochs)]
        self.batches = [samples // p.batch_size for p in at]
        global_batch = [p.batch_size * world * p.accumulate for p in at]
        self.base_lr = [scaled_lr(opt, g) for g in global_batch]
        min_lr = [scaled_lr(dataclasses.replace(opt, lr=cfg.schedule.min_lr), g) for g in global_batch]
        self.lr = lr_per_varying_step(cfg.schedule, self.base_lr, min_lr, self.batches, [p.accumulate for p in at])
        self._first = np.cumsum([0] + [n // p.accumulate for n, p in zip(self.batches, at)])
        return self

    def at(self, epoch: int) -> Phase:
        """The phase of ``epoch``: the last one started by then (upstream's rule)."""
        return [p for p in self.phases if epoch >= p.start][-1]

    def config(self, epoch: int):
        """``cfg`` as ``epoch`` trains: the phase's crop size, batch and accumulation."""
        p = self.at(epoch)
        return dataclasses.replace(self.cfg, data=dataclasses.replace(self.cfg.data, image_size=p.size,
                                                                      batch_size=p.batch_size),
                                   train=dataclasses.replace(self.cfg.train, accumulate=p.accumulate))

    def update_index(self, epoch: int, batch: int) -> int:
        """The optimizer update that batch ``batch`` of ``epoch`` belongs to (an index into :attr:`lr`)."""
        return int(self._first[epoch]) + batch // self.at(epoch).accumulate
