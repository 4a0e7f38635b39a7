"""The training run: factories composed as mindcv's ``train.py`` does, then the epoch loop.

``create_loader`` -> ``create_model`` -> ``create_loss`` -> ``lr_per_step`` -> ``create_optimizer`` ->
``build_train_network``; each epoch calls ``model.set_epoch`` (VanillaNet's activation lambda, AdaBin's t/k:
Parameters, so the compiled step is not rebuilt), trains on the epoch's batches (seeded by ``(seed, epoch)``),
validates (the model, and the EMA weights when ``train.ema_decay`` is set), and writes ``metrics.jsonl``,
``curves.png``, ``last.ckpt`` and, on a new best val top-1, ``best.ckpt`` (complete checkpoints:
:mod:`.checkpoint`). ``resume`` continues a run from a checkpoint: epoch count, lr schedule position, optimizer
moments, EMA and loss scale. The global MindSpore state this needs (execution mode, random seed) is set for the
run and restored afterwards.
"""
from __future__ import annotations

import contextlib
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import mindspore as ms

from specs import get_model_cfg
from specs.errors import CheckpointError, ConfigError
from specs.schedules import lr_per_step, scaled_lr

from .. import create_model, load_checkpoint
from ..context import execution_mode
from .callbacks import RunLog
from .checkpoint import TrainState, restore_train_checkpoint, save_train_checkpoint
from .config import Config, save_config
from .data import create_loader
from .evaluate import evaluate, ms_predictor
from .losses import create_loss
from .optim import create_optimizer
from .step import build_train_network

LAST = "last.ckpt"
BEST = "best.ckpt"
BEST_TORCH = "best.pth"


@dataclass
class TrainResult:
    """Where a run wrote its files, its best val top-1 (and epoch, 0-based) and the per-epoch records."""

    output: Path
    best_top1: float
    best_epoch: int
    records: list[dict[str, Any]] = field(default_factory=list)


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """MindSpore's global seed (dropout, drop path, initialisers) for the run; the caller's is restored."""
    prev = ms.get_seed()
    ms.set_seed(seed)
    try:
        yield
    finally:
        if prev is not None:
            ms.set_seed(prev)


def _device(target: str) -> None:
    current = ms.get_context("device_target")
    if current != target:
        raise ConfigError(f"config key 'train.device_target' is {target!r} but this process runs on {current!r} "
                          f"(set it before MindSpore starts, e.g. with ms.set_device)")


def resume_path(output: Path, resume: str | os.PathLike | None) -> Path | None:
    """``'auto'``: ``output/last.ckpt`` when it exists (else a fresh start); a path: that file (must exist)."""
    if resume is None:
        return None
    if str(resume) == "auto":
        last = output / LAST
        return last if last.is_file() else None
    path = Path(resume)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint to resume from")
    return path


def build_model(cfg: Config) -> ms.nn.Cell:
    """The registered model with the config's head size, regularisation and constructor kwargs (and the
    ``model.pretrained`` weights, loaded strictly)."""
    model = create_model(cfg.model.name, num_classes=cfg.model.num_classes, drop_rate=cfg.model.drop_rate,
                         drop_path_rate=cfg.model.drop_path_rate, **cfg.model.kwargs)
    if cfg.model.pretrained:
        load_checkpoint(model, cfg.model.pretrained)
    return model


def train(cfg: Config, output: str | os.PathLike, resume: str | os.PathLike | None = None) -> TrainResult:
    """Train ``cfg`` and write the run's files to ``output`` (see the module docstring)."""
    output = Path(output)
    mode = ms.GRAPH_MODE if cfg.train.mode == "graph" else ms.PYNATIVE_MODE
    _device(cfg.train.device_target)
    with execution_mode(mode), _seeded(cfg.seed):
        return _run(cfg, output, resume_path(output, resume), mode)


def _run(cfg: Config, output: Path, resume: Path | None, mode: int) -> TrainResult:
    rank, world = 0, 1
    model_cfg = get_model_cfg(cfg.model.name)
    epochs, accumulate = cfg.train.epochs, cfg.train.accumulate
    train_data = create_loader(cfg, "train", model_cfg, epoch=0, num_shards=world, shard_id=rank)
    val_data = create_loader(cfg, "val", model_cfg, num_shards=world, shard_id=rank)
    if train_data.steps < accumulate:
        raise ConfigError(f"config key 'train.accumulate' is {accumulate} but an epoch has only "
                          f"{train_data.steps} batches of {cfg.data.batch_size}")
    updates = train_data.steps // accumulate
    lr = lr_per_step(cfg.schedule, scaled_lr(cfg.optimizer, cfg.data.batch_size * world * accumulate),
                     epochs, updates)

    model = build_model(cfg)
    step = build_train_network(model, create_loss(cfg), create_optimizer(model, cfg.optimizer, lr), cfg.train)
    state = TrainState()
    if resume is not None:
        state, _ = restore_train_checkpoint(resume, step, model, cfg)
    log = RunLog(output, enabled=rank == 0, start_epoch=state.epoch)
    try:
        if rank == 0:
            save_config(cfg, output / "config.yaml")
        log.info(f"{cfg.model.name}: {train_data.num_samples} train / {val_data.num_samples} val images, "
                 f"{len(train_data.classes)} classes, {train_data.steps} steps per epoch, "
                 f"{'GRAPH_MODE' if mode == ms.GRAPH_MODE else 'PYNATIVE_MODE'}, amp {cfg.train.amp_level}"
                 + (f"; resumed from {resume} after epoch {state.epoch}" if resume else ""))
        for epoch in range(state.epoch, epochs):
            data = train_data if epoch == 0 else create_loader(cfg, "train", model_cfg, epoch=epoch,
                                                              num_shards=world, shard_id=rank)
            record = _epoch(cfg, epoch, model, step, data, val_data, lr, state, log)
            state.epoch = epoch + 1
            best = record["val_top1"] is not None and record["val_top1"] > state.best_top1
            if best:
                state.best_top1, state.best_epoch = record["val_top1"], epoch
            # the record first: a run stopped before the next checkpoint resumes from an earlier one and drops the
            # records after it (RunLog), so every epoch of metrics.jsonl belongs to the weights that follow it
            log.epoch(record)
            if rank == 0 and best:
                save_train_checkpoint(output / BEST, step, model, state, cfg)
                if cfg.train.export_torch:
                    _export_torch(cfg, output)
            if rank == 0 and (state.epoch % cfg.train.save_interval == 0 or state.epoch == epochs):
                save_train_checkpoint(output / LAST, step, model, state, cfg)
        log.info(f"best val top-1 {state.best_top1:.2f} at epoch {state.best_epoch + 1}")
        return TrainResult(output, state.best_top1, state.best_epoch, list(log.records))
    finally:
        log.close()


def _epoch(cfg: Config, epoch: int, model, step, data, val_data, lr, state: TrainState, log: RunLog) -> dict:
    """One epoch of training and validation; returns its ``metrics.jsonl`` record."""
    start = time.perf_counter()
    model.set_epoch(epoch, cfg.train.epochs)
    model.set_train(True)
    progress = log.progress(data, data.steps, epoch, cfg.train.epochs, cfg.train.log_interval)
    total, seen = 0.0, 0
    for images, targets in progress:
        rate = float(lr[min(state.global_step // cfg.train.accumulate, len(lr) - 1)])
        loss = float(step(ms.Tensor(images), ms.Tensor(targets)).asnumpy())
        state.global_step += 1
        if not math.isfinite(loss) and cfg.train.loss_scale == "none":
            raise FloatingPointError(f"train loss is {loss} at epoch {epoch + 1} step {state.global_step}: lower "
                                     f"optimizer.lr or set train.grad_clip")
        total += loss * len(images)
        seen += len(images)
        progress.update(loss, rate, len(images))
    speed = progress.images_per_s
    record = {"epoch": epoch, "lr": rate, "train_loss": total / max(seen, 1), "images_per_s": speed}
    # validation every train.eval_interval epochs and after the last; the other epochs' val entries are null
    evaluated = (epoch + 1) % cfg.train.eval_interval == 0 or epoch + 1 == cfg.train.epochs
    val = _validate(model, val_data) if evaluated else {}
    record.update(val_loss=val.get("loss"), val_top1=val.get("top1"), val_top5=val.get("top5"))
    if cfg.train.ema_decay is not None:
        ema = _validate(step.ema_model(), val_data) if evaluated else {}
        record.update(ema_top1=ema.get("top1"), ema_top5=ema.get("top5"), ema_loss=ema.get("loss"))
    if data.bad_images():
        record["bad_images"] = data.bad_images()
        log.info(f"epoch {epoch + 1}: skipped {data.bad_images()} unreadable image(s), e.g. {data.bad_images.files[0]}")
    record["seconds"] = time.perf_counter() - start
    model.set_train(True)
    return record


def _validate(model, val_data) -> dict:
    return evaluate(ms_predictor(model), val_data)


def _export_torch(cfg: Config, output: Path) -> None:
    """``best.pth``: the best weights in the official torch key layout, through the converter. In a process
    that imported torch first this runs in-process; otherwise in a child (torch imported after MindSpore clashes
    on libgomp), ``python -m convert ms2torch``."""
    src, dst = output / BEST, output / BEST_TORCH
    if "torch" in sys.modules:
        from convert.api import convert_file
        convert_file(cfg.model.name, src, dst, direction="ms2torch")
        return
    done = subprocess.run([sys.executable, "-m", "convert", "ms2torch", "--model", cfg.model.name, str(src), str(dst)],
                          capture_output=True, text=True)
    if done.returncode:
        lines = (done.stderr or done.stdout).strip().splitlines()
        raise CheckpointError(f"exporting {dst} failed: {lines[-1] if lines else done.returncode}")
