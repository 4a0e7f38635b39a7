"""Complete training checkpoints: one MindSpore ``.ckpt`` file per save, written atomically.

A checkpoint holds every Parameter of the train step (:class:`ms_models.train.step.TrainStep`) but a
distillation teacher's (frozen, loaded from its own file at start): the model's
weights under their own names (so the file loads into the model, converts to torch and validates like any model
checkpoint), the EMA weights under ``ema.``, and everything else under ``train_state.``: the optimizer's moments,
step counter and per-step learning rates, the loss scale, accumulation buffers, the count of skipped non-finite
updates, and the run's meta data (``train_state.meta.*``: :class:`TrainState` and the resolved config as YAML
bytes). The data order and augmentation of an epoch are functions of ``(seed, epoch, shard)`` (``train.data``), so
the completed-epoch count and the rows consumed in the current epoch are the data position: a checkpoint written
mid-epoch (``train.save_every_steps``) resumes on the next batch. Reading a checkpoint as model weights is
:func:`convert.io.unwrap`'s job (it knows the prefixes).

Files are written to a temporary file beside the target and renamed over it (:func:`convert.io.write_checkpoint`):
a process killed while writing leaves the previous ``last.ckpt`` whole (and a ``.last.ckpt.<pid>.partial`` file,
which the next run in that folder removes).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from mindspore import nn

from convert.io import EMA, TRAIN_STATE, read_checkpoint_raw, write_checkpoint
from specs.errors import CheckpointError

from .config import Config, config_from_dict, config_to_dict

FORMAT = 2
META = TRAIN_STATE + "meta."


@dataclass
class TrainState:
    """The run's position: ``epoch`` epochs are complete; ``global_step`` micro-batches were trained; of epoch
    ``epoch``, ``batch`` batches (``position`` rows of this rank's shard order: :attr:`.data.Loader.consumed`)
    with ``loss_images`` images of finite loss summing ``loss_sum`` (loss x images); ``nonfinite_before``: the
    step's count of skipped non-finite updates when that epoch began; ``world``: the run's number of processes."""

    epoch: int = 0
    global_step: int = 0
    best_top1: float = -1.0
    best_epoch: int = -1
    batch: int = 0
    position: int = 0
    loss_sum: float = 0.0
    loss_images: int = 0
    nonfinite_before: int = 0
    world: int = 1

    def next_epoch(self, nonfinite: int) -> None:
        """Mark the current epoch complete (``nonfinite``: the step's count of skipped updates now)."""
        self.epoch += 1
        self.batch = self.position = self.loss_images = 0
        self.loss_sum = 0.0
        self.nonfinite_before = nonfinite


_INTS = ("epoch", "global_step", "best_epoch", "batch", "position", "loss_images", "nonfinite_before", "world")
_FLOATS = ("best_top1", "loss_sum")


def _file_name(step: nn.Cell, model: nn.Cell) -> dict[str, str]:
    """Parameter name (``Parameter.name``, unique in the step) -> entry name in the file."""
    own = {param.name for param in model.get_parameters()}
    names = [p.name for p in step.state_parameters()]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise CheckpointError(f"{len(twice)} Parameter name(s) of the train step are used twice (e.g. {twice[0]!r}): "
                              f"a checkpoint could not tell them apart")
    return {n: n if n in own or n.startswith(EMA) else TRAIN_STATE + n for n in names}


def save_train_checkpoint(path: str | os.PathLike, step: nn.Cell, model: nn.Cell, state: TrainState,
                          cfg: Config) -> Path:
    """Write the complete state of ``step`` (which trains ``model``) and the meta data to ``path`` atomically."""
    names = _file_name(step, model)
    arrays: dict[str, np.ndarray] = {names[p.name]: p.asnumpy() for p in step.state_parameters()}
    config = yaml.safe_dump(config_to_dict(cfg), sort_keys=False).encode()
    arrays[META + "format"] = np.array(FORMAT, np.int64)
    arrays.update({META + key: np.array(getattr(state, key), np.int64) for key in _INTS})
    arrays.update({META + key: np.array(getattr(state, key), np.float64) for key in _FLOATS})
    arrays[META + "config"] = np.frombuffer(config, np.uint8).copy()
    return write_checkpoint(arrays, path)


def read_train_checkpoint(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], TrainState, dict[str, Any]]:
    """``(arrays, state, config as plain data)`` of a training checkpoint; :class:`CheckpointError` otherwise."""
    arrays = read_checkpoint_raw(path)
    if META + "format" not in arrays:
        raise CheckpointError(f"{path}: not a training checkpoint (no {META}format entry); to start from model "
                              f"weights use model.pretrained")
    if int(arrays[META + "format"]) != FORMAT:
        raise CheckpointError(f"{path}: training checkpoint format {int(arrays[META + 'format'])}, "
                              f"this version reads {FORMAT}")
    state = TrainState(**{key: int(arrays[META + key]) for key in _INTS},
                       **{key: float(arrays[META + key]) for key in _FLOATS})
    config = yaml.safe_load(arrays[META + "config"].astype(np.uint8).tobytes().decode())
    return arrays, state, config


# Keys that may change between a run and its resumption: where the data is read from, what is shown or kept, and
# whether a non-finite update stops the run (a run stopped by one resumes with train.skip_nonfinite=true).
RESUMABLE_CHANGES = ("data.dir", "data.workers", "train.log_interval", "train.eval_interval", "train.save_interval",
                     "train.save_every_steps", "train.skip_nonfinite", "train.export_torch")


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict) and not prefix.endswith("kwargs."):
        return {k: v for key, value in data.items() for k, v in _flat(value, f"{prefix}{key}.").items()}
    return {prefix[:-1]: data}


def config_differences(saved: dict[str, Any], cfg: Config) -> list[str]:
    """The dotted keys whose values differ between a checkpoint's config and ``cfg`` (resumable changes aside)."""
    a, b = _flat(saved), _flat(config_to_dict(cfg))
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in RESUMABLE_CHANGES)


def restore_train_checkpoint(path: str | os.PathLike, step: nn.Cell, model: nn.Cell, cfg: Config | None = None,
                             read: tuple[dict[str, np.ndarray], TrainState, dict[str, Any]] | None = None
                             ) -> tuple[TrainState, Config]:
    """Load a checkpoint written by :func:`save_train_checkpoint` into ``step`` (all of its Parameters, shapes
    checked); returns the run position and the config it was written with. With ``cfg``, a checkpoint written
    under other settings (the model, data, optimizer, schedule or step; :data:`RESUMABLE_CHANGES` aside) is a
    one-line :class:`CheckpointError` naming the differing keys. ``read``: what :func:`read_train_checkpoint`
    already returned for ``path`` (the file is then not read again)."""
    import mindspore as ms
    arrays, state, config = read if read is not None else read_train_checkpoint(path)
    if cfg is not None:
        differ = config_differences(config, cfg)
        if differ:
            shown = ", ".join(f"{k} ({_flat(config).get(k)!r} -> {_flat(config_to_dict(cfg)).get(k)!r})"
                              for k in differ[:4])
            raise CheckpointError(f"{path}: written by a run with other settings: {shown}"
                                  f"{' ...' if len(differ) > 4 else ''}")
    names = _file_name(step, model)
    missing = [file for file in names.values() if file not in arrays]
    if missing:
        raise CheckpointError(f"{path}: {len(missing)} entries of this run missing (e.g. {missing[0]}): "
                              f"written for another model, optimizer or train settings")
    for param in step.state_parameters():
        value = arrays[names[param.name]]
        if tuple(value.shape) != tuple(param.shape):
            raise CheckpointError(f"{path}: {names[param.name]} has shape {tuple(value.shape)}, "
                                  f"the run has {tuple(param.shape)}")
        param.set_data(ms.Tensor(np.asarray(value), param.dtype))
    return state, config_from_dict(config)
