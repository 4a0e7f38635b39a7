"""Learning-rate schedules as one value per optimizer update, framework-free (numpy only).

Semantics of timm's schedulers as ``timm/scheduler/scheduler_factory.py`` builds them (``warmup_prefix=False``,
one cycle, no noise), stepped per update (timm ``step_update``) or, with ``per_epoch``, per epoch (timm
``t_in_epochs``): update ``t`` (0-based; with ``per_epoch`` ``t`` is the epoch) gets

- warmup, ``t < warmup_t``: ``warmup_lr + t * (base_lr - warmup_lr) / warmup_t`` (timm ``warmup_lr_init``);
- ``cosine`` (timm ``CosineLRScheduler``): ``min_lr + (base_lr - min_lr) * (1 + cos(pi * t / T)) / 2``;
- ``step`` (timm ``StepLRScheduler``): ``base_lr * decay_rate ** (t // decay_t)``, here floored at ``min_lr``
  (timm has no floor; the default ``min_lr=0`` gives timm's values);
- ``linear`` (timm ``PolyLRScheduler`` with ``power=1``): ``min_lr + (base_lr - min_lr) * (1 - t / T)``;
- ``mae_cosine`` (MAE ``util/lr_sched.py::adjust_learning_rate``, which FastMIM and LocalMIM pretrain and
  fine-tune with): the cosine starts where the warmup ends, ``min_lr + (base_lr - min_lr) * (1 + cos(pi *
  (t - warmup_t) / (T - warmup_t))) / 2`` for ``t >= warmup_t``; the warmup as above (upstream's is from 0);
- ``inv`` (CAN / CvNoob/SFDA-DE ``solver/utils.py::adjust_learning_rate_inv``, Caffe's "inv" policy):
  ``base_lr / (1 + inv_alpha * t) ** inv_beta``, floored at ``min_lr``;
- cooldown, ``t >= T``: ``min_lr``.

As in timm the decay (but ``mae_cosine``'s) is a function of ``t`` from 0 (the warmup replaces its start; it is not shifted after the
warmup). ``T`` is the length of the schedule without the cooldown: timm adds ``cooldown_epochs`` after
``epochs``, here they are counted inside ``epochs`` (``T = epochs - cooldown_epochs``, in updates when per step).
"""
from __future__ import annotations

import math
from typing import Protocol, Sequence

import numpy as np

from .errors import ConfigError

__all__ = ["lr_per_step", "lr_per_varying_step", "scaled_lr"]


class ScheduleLike(Protocol):
    """The fields of ``ms_models.train.config.ScheduleConfig`` read here."""

    name: str
    warmup_epochs: float
    warmup_lr: float
    min_lr: float
    decay_epochs: float
    decay_rate: float
    cooldown_epochs: int
    per_epoch: bool
    inv_alpha: float
    inv_beta: float


class OptimizerLike(Protocol):
    """The fields of ``ms_models.train.config.OptimizerConfig`` read here."""

    lr: float
    lr_base_size: int | None


def _decayed(sched: ScheduleLike, base_lr: float, min_lr: float, t: np.ndarray, total: float, decay_t: float,
             warmup_t: float) -> np.ndarray:
    if sched.name == "cosine":
        return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + np.cos(math.pi * t / total))
    if sched.name == "mae_cosine":
        return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + np.cos(math.pi * (t - warmup_t) / (total - warmup_t)))
    if sched.name == "step":
        return np.maximum(base_lr * sched.decay_rate ** np.floor(t / decay_t), min_lr)
    if sched.name == "linear":
        return min_lr + (base_lr - min_lr) * (1.0 - t / total)
    if sched.name == "inv":
        return np.maximum(base_lr / (1.0 + sched.inv_alpha * t) ** sched.inv_beta, min_lr)
    raise ConfigError(f"unknown schedule {sched.name!r}: expected cosine, mae_cosine, step, linear or inv")


def _at(sched: ScheduleLike, base_lr: float, min_lr: float, t: np.ndarray, unit: float, epochs: int) -> np.ndarray:
    """The schedule at positions ``t`` counted in ``1 / unit`` epochs (warmup, decay and cooldown)."""
    if epochs <= 0:
        raise ConfigError(f"a schedule needs epochs > 0, got {epochs}")
    if sched.cooldown_epochs >= epochs:
        raise ConfigError(f"schedule.cooldown_epochs ({sched.cooldown_epochs}) must be shorter than the run "
                          f"({epochs} epochs)")
    total = (epochs - sched.cooldown_epochs) * unit
    warmup_t = sched.warmup_epochs * unit
    lr = _decayed(sched, base_lr, min_lr, t, total, sched.decay_epochs * unit, warmup_t)
    if warmup_t > 0:
        warm = t < warmup_t
        lr[warm] = sched.warmup_lr + t[warm] * (base_lr - sched.warmup_lr) / warmup_t
    lr[t >= total] = min_lr
    return lr


def lr_per_step(sched: ScheduleLike, base_lr: float, epochs: int, steps_per_epoch: int) -> np.ndarray:
    """The learning rate of each optimizer update of a run, float64 of length ``epochs * steps_per_epoch``
    (``steps_per_epoch``: optimizer updates per epoch, i.e. batches / gradient-accumulation steps)."""
    if steps_per_epoch <= 0:
        raise ConfigError(f"a schedule needs steps per epoch > 0, got {steps_per_epoch}")
    unit = 1 if sched.per_epoch else steps_per_epoch
    lr = _at(sched, base_lr, sched.min_lr, np.arange(max(epochs, 0) * unit, dtype=np.float64), unit, epochs)
    return np.repeat(lr, steps_per_epoch) if sched.per_epoch else lr


def lr_per_varying_step(sched: ScheduleLike, base_lr: Sequence[float], min_lr: Sequence[float],
                        batches: Sequence[int], accumulate: Sequence[int]) -> np.ndarray:
    """The learning rate of each optimizer update of a run whose epochs differ (FastMIM-P's phases, FastMIM
    ``main_pretrain.py``): epoch ``e`` has ``batches[e]`` micro-batches, ``batches[e] // accumulate[e]`` updates
    (MAE's ``engine_pretrain.py`` zeroes the gradients at each epoch's start: the remainder is dropped) and its own
    ``base_lr[e]`` and ``min_lr[e]``. Update ``j`` of epoch ``e`` is at epoch ``e + j * accumulate[e] / batches[e]``
    (upstream's ``adjust_learning_rate(optimizer, data_iter_step / len(data_loader) + epoch, args)``); with
    ``per_epoch`` at ``e``. Concatenated over the epochs, float64."""
    epochs = len(batches)
    if not epochs == len(base_lr) == len(min_lr) == len(accumulate):
        raise ConfigError("lr_per_varying_step needs one base lr, min lr, batch count and accumulation per epoch")
    parts = []
    for e, (base, low, n, k) in enumerate(zip(base_lr, min_lr, batches, accumulate)):
        if not 0 < k <= n:
            raise ConfigError(f"epoch {e} has {n} batches, fewer than its accumulation ({k}) or none")
        j = np.zeros(n // k) if sched.per_epoch else np.arange(n // k, dtype=np.float64) * k / n
        parts.append(_at(sched, base, low, e + j, 1, epochs))
    return np.concatenate(parts)


def scaled_lr(opt: OptimizerLike, global_batch: int) -> float:
    """The base learning rate for a global batch (per-device batch x devices x accumulation): with
    ``optimizer.lr_base_size`` set, ``lr * global_batch / lr_base_size`` (the linear rule, e.g. base size 256);
    else ``lr`` unchanged. (timm ``train.py`` defaults to the square-root rule for ``ada*``/``lamb``; only the
    linear rule is offered here.)"""
    if global_batch <= 0:
        raise ConfigError(f"the global batch must be positive, got {global_batch}")
    if opt.lr_base_size is None:
        return float(opt.lr)
    return float(opt.lr) * global_batch / opt.lr_base_size
