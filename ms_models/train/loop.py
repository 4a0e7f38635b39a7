"""The training run: factories composed as mindcv's ``train.py`` does, then the epoch loop.

``create_loader`` -> ``create_model`` -> ``create_loss`` -> ``lr_per_step`` -> ``create_optimizer`` ->
``build_train_network``; each epoch calls ``model.set_epoch`` (VanillaNet's activation lambda, AdaBin's t/k:
Parameters, so the compiled step is not rebuilt), trains on the epoch's batches (seeded by ``(seed, epoch)``),
validates (the model, and the EMA weights when ``train.ema_decay`` is set), and writes ``metrics.jsonl``,
``curves.png``, ``last.ckpt`` and, on a new best val top-1, ``best.ckpt`` (complete checkpoints:
:mod:`.checkpoint`); with ``train.save_every_steps`` also ``last.ckpt`` every that many batches. ``resume``
continues a run from a checkpoint, also one written mid-epoch: epoch count, data position (the next batch, with
the augmentation it had), lr schedule position, optimizer moments, EMA, loss scale and the epoch's running train
loss, so that a resumed run ends with the weights of an uninterrupted one, bit for bit when the model draws no
random numbers (docs/training_resume.md: MindSpore's dropout / drop-path kernels keep their generator state inside
the compiled graph, where nothing can read or set it; a resumed run re-seeds them from ``(seed, rank, step)``).

With ``distill.method`` the step also runs the frozen teacher and adds the distillation loss (:mod:`.distill`);
with ``distill.cache_teacher`` epoch ``e`` trains on epoch ``e mod distill.cache_epochs``'s batches and replays
the teacher logits recorded for them (``teacher_replayed`` in ``metrics.jsonl``: the fraction of the epoch's
batches that did). ``distill.students`` trains more students beside the run's own, on the same batches and the
same teacher forward (``train-kd.py`` with several ``--model``): student ``i`` writes its files to
``output/student<i>`` and resumes from the checkpoint of the same name there.

With a ``mim_pretrain`` model (FastMIM, LocalMIM) the step trains the model's own masked-modeling loss and the
validation reports that loss under fixed masks (:mod:`.mim`); no top-1, so no ``best.ckpt``. A ``mim_finetune``
model's ``model.pretrained`` is a pretrained encoder, loaded as upstream's ``--finetune`` (:func:`build_model`).

With ``sfda.adapt`` the run is an SFDA-DE adaptation of ``model.pretrained`` to the target ``data.dir``
(:mod:`.sfda`: loops of clustering, estimation and CDD steps instead of epochs of labelled batches).

A step with a non-finite loss or gradients is never applied (:mod:`.step`); the run then stops with a
:class:`~specs.errors.NonFiniteError` naming the step, its last checkpoint untouched, or, with
``train.skip_nonfinite``, goes on and counts the skipped updates (``skipped_steps`` in ``metrics.jsonl``).

Under ``msrun`` the run is data parallel (:mod:`.distributed`): shards per rank, gradients averaged, running
statistics averaged at each epoch end and checkpoint, val counts summed; rank 0 writes. The global MindSpore state
this needs (execution mode, random seed, auto-parallel context) is set for the run and restored afterwards.
"""
from __future__ import annotations

import contextlib
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np

import mindspore as ms

from specs import get_model_cfg
from specs.errors import CheckpointError, ConfigError, NonFiniteError
from specs.mim import REINIT_BUFFERS, is_pretraining
from specs.schedules import lr_per_step, scaled_lr

from .. import create_model, load_checkpoint
from ..context import execution_mode
from .callbacks import RunLog
from .checkpoint import TrainState, read_train_checkpoint, restore_train_checkpoint, save_train_checkpoint
from .config import Config, save_config, student_configs
from .data import Loader, create_loader
from .distill import TeacherCache, build_teacher, create_distill_loss
from .distributed import Distributed, distributed
from .evaluate import evaluate, ms_predictor
from .losses import create_loss
from .mim import MimObjective, ObjectiveLoss, Phases, evaluate_pretraining
from .optim import create_optimizer
from .step import TrainStep, build_train_network

LAST = "last.ckpt"
BEST = "best.ckpt"
BEST_TORCH = "best.pth"


@dataclass
class TrainResult:
    """Where a run wrote its files, its best val top-1 (and epoch, 0-based), the per-epoch records, and the same
    for each extra student (``distill.students``)."""

    output: Path
    best_top1: float
    best_epoch: int
    records: list[dict[str, Any]] = field(default_factory=list)
    students: list["TrainResult"] = field(default_factory=list)     # those of distill.students, in order


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


def build_model(cfg: Config, notes: list[str] | None = None) -> ms.nn.Cell:
    """The registered model with the config's head size, regularisation and constructor kwargs, and the
    ``model.pretrained`` weights: loaded strictly, or for a ``mim_finetune`` model (or with ``model.mim_finetune``)
    as upstream's ``--finetune`` (:func:`load_finetune_encoder`; its report line appended to ``notes``)."""
    model = create_model(cfg.model.name, num_classes=cfg.model.num_classes, drop_rate=cfg.model.drop_rate,
                         drop_path_rate=cfg.model.drop_path_rate, **cfg.model.kwargs)
    if cfg.model.pretrained and (cfg.model.mim_finetune or get_model_cfg(cfg.model.name).task == "mim_finetune"):
        line = load_finetune_encoder(model, cfg.model.pretrained)
        if notes is not None:
            notes.append(line)
    elif cfg.model.pretrained:
        load_checkpoint(model, cfg.model.pretrained)
    return model


def load_finetune_encoder(model: ms.nn.Cell, path: str | os.PathLike) -> str:
    """FastMIM ``main_finetune.py`` / LocalMIM ``run_finetune.py`` with ``--finetune``: the pretrained encoder
    through :func:`ms_models.mim.load_pretrained`, upstream's check that only the head (and ``fc_norm`` with global
    pooling, always for FastMIM's Swin; LocalMIM's fine-tune Swin: its ``norm``, where upstream does not check) and
    the re-initialised Swin geometry buffers are missing (a one-line error
    otherwise), and the head redrawn with ``trunc_normal_(std=2e-5)`` (timm's bounds are +-2 absolute, so in effect
    a plain normal). Returns a line for the log."""
    from mindspore.common.initializer import Normal, initializer
    from ..mim import FinetuneSwin, load_pretrained
    missing, unexpected = load_pretrained(model, path)
    final_norm = "norm" if isinstance(model, FinetuneSwin) else "fc_norm" if getattr(model, "global_pool", True) else ""
    allowed = {"head.weight", "head.bias"} | ({f"{final_norm}.weight", f"{final_norm}.bias"} if final_norm else set())
    extra = [k for k in missing if k not in allowed and k.rsplit(".", 1)[-1] not in REINIT_BUFFERS]
    if extra:
        raise CheckpointError(f"{path}: not a pretrained encoder of this model: {len(extra)} key(s) missing beyond "
                              f"the head, e.g. {extra[0]}")
    model.head.weight.set_data(initializer(Normal(sigma=2e-5), model.head.weight.shape, ms.float32))
    return (f"encoder from {path}; newly initialised: {', '.join(missing) or 'nothing'}; not used: "
            f"{len(unexpected)} key(s){' (' + ', '.join(unexpected[:3]) + ', ...)' if unexpected else ''}")


def model_seed(seed: int, rank: int, global_step: int) -> int:
    """The global seed under which a process builds the model and compiles the train step, so the seed its random
    operators draw from (``nn.Dropout`` takes its kernel seeds when built, ``DropPath``'s ``ops.rand`` when the
    graph compiles): the run's ``seed`` for rank 0 of a fresh run, else one derived from ``(seed, rank, step the
    process starts at)``: each rank draws its own masks (timm seeds ``seed + rank``), and a resumed process draws
    a fresh sequence instead of repeating the first steps' masks. (The initial weights of the other ranks are
    rank 0's: :meth:`.distributed.Distributed.broadcast`.)"""
    if rank == 0 and global_step == 0:
        return seed
    return int(np.random.SeedSequence([seed, rank, global_step]).generate_state(1)[0])


def train(cfg: Config, output: str | os.PathLike, resume: str | os.PathLike | None = None) -> TrainResult:
    """Train ``cfg`` and write the run's files to ``output`` (see the module docstring)."""
    output = Path(output)
    mode = ms.GRAPH_MODE if cfg.train.mode == "graph" else ms.PYNATIVE_MODE
    _device(cfg.train.device_target)
    with distributed() as dist, execution_mode(mode), _seeded(cfg.seed):
        if cfg.sfda.adapt:
            from .sfda import adapt
            return adapt(cfg, output, resume_path(output, resume), mode, dist.world)
        return _run(cfg, output, resume_path(output, resume), mode, dist)


@dataclass
class _Student:
    """One trained model of a run (the run's own, or one of ``distill.students``): its config, folder, model,
    compiled step, lr per optimizer step, position and log."""

    cfg: Config
    output: Path
    model: ms.nn.Cell
    step: TrainStep
    lr: np.ndarray
    state: TrainState
    log: RunLog
    known: int = 0                      # the step's non-finite count when last checked
    phases: Phases | None = None        # FastMIM-P's (mim.pt_*)

    def rate(self) -> float:
        index = self.phases.update_index(self.state.epoch, self.state.batch) if self.phases else \
            self.state.global_step // self.cfg.train.accumulate
        return float(self.lr[min(index, len(self.lr) - 1)])


def student_output(output: Path, index: int) -> Path:
    """Where extra student ``index`` (1-based: ``distill.students[index - 1]``) writes its files."""
    return output / f"student{index}"


def _student_resume(resume: Path | None, index: int) -> Path | None:
    """Extra student ``index``'s checkpoint beside the run's ``resume`` (``student<index>/<same name>``)."""
    if resume is None:
        return None
    path = student_output(resume.parent, index) / resume.name
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint of student {index} to resume with {resume}")
    return path


def _run(cfg: Config, output: Path, resume: Path | None, mode: int, dist: Distributed) -> TrainResult:
    rank, world = dist.rank, dist.world
    if world > 1 and cfg.data.skip_bad_images:
        raise ConfigError("config key 'data.skip_bad_images' needs a single process: skipped images would give the "
                          "ranks different batch counts; fix or remove the unreadable images instead")
    model_cfg = get_model_cfg(cfg.model.name)
    epochs, accumulate = cfg.train.epochs, cfg.train.accumulate
    phases = Phases(cfg) if cfg.mim.pt_size is not None else None
    train_data = create_loader(phases.config(0) if phases else cfg, "train", model_cfg, epoch=0, num_shards=world,
                               shard_id=rank)
    val_data = create_loader(cfg, "val", model_cfg, num_shards=world, shard_id=rank)
    if train_data.steps < accumulate:
        raise ConfigError(f"config key 'train.accumulate' is {accumulate} but an epoch has only "
                          f"{train_data.steps} batches of {cfg.data.batch_size}")
    if phases:
        phases.plan(train_data.num_samples, world)
    steps = train_data.steps
    configs = [cfg] + student_configs(cfg)
    resumes = [resume] + [_student_resume(resume, i) for i in range(1, len(configs))]
    reads = [read_train_checkpoint(path) if path is not None else None for path in resumes]
    states = [read[1] if read is not None else TrainState(world=world) for read in reads]
    for path, state in zip(resumes, states):
        if state.world != world:
            raise CheckpointError(f"{path}: written by a run of {state.world} process(es), this run has {world}: "
                                  f"resume with as many (the shards and the lr schedule depend on it)")
        if state.global_step != states[0].global_step:
            raise CheckpointError(f"{path}: at global step {state.global_step}, {resume} at "
                                  f"{states[0].global_step}: the students must resume from the same step")
    _agree(dist, resume, states[0])
    distilled = cfg.distill.method is not None
    cache = TeacherCache(cfg.distill.cache_epochs, cfg.distill.cache_topk) \
        if distilled and cfg.distill.cache_teacher else None
    teacher = build_teacher(cfg) if distilled else None
    students, notes = [], []
    for i, (c, path, read, state) in enumerate(zip(configs, resumes, reads, states)):
        # every student is built as its own run would build it (same seed), so it trains as it would alone
        ms.set_seed(model_seed(cfg.seed, rank, state.global_step))
        model = build_model(c, notes if i == 0 and read is None else None)
        if read is None:
            dist.broadcast(list(model.get_parameters()))       # every rank starts from rank 0's weights
        lr = phases.lr if phases else lr_per_step(
            c.schedule, scaled_lr(c.optimizer, c.data.batch_size * world * accumulate), epochs, steps // accumulate)
        # FastMIM-P: one step for every phase, built for the largest accumulation (set per phase: _enter_phase)
        built = replace(c, train=replace(c.train, accumulate=phases.max_accumulate)) if phases else c
        step = _train_step(built, model, lr, teacher, cache is not None or len(configs) > 1)
        if read is not None:
            state, _ = restore_train_checkpoint(path, step, model, c, read)
        where = output if i == 0 else student_output(output, i)
        students.append(_Student(c, where, model, step, lr, state,
                                 RunLog(where, enabled=dist.writer, start_epoch=state.epoch), phases=phases))
    state = students[0].state
    try:
        if dist.writer:
            for s in students:
                for stale in s.output.glob(".*.partial*"):      # left by a process killed while writing
                    stale.unlink()
                save_config(s.cfg, s.output / "config.yaml")
        log = students[0].log
        epoch_steps = phases.batches[min(state.epoch, epochs - 1)] if phases else steps
        log.info(f"{cfg.model.name}: {train_data.num_samples} train / {val_data.num_samples} val images"
                 f"{' per rank' if world > 1 else ''}, {len(train_data.classes)} classes, "
                 f"{f'{len(phases.phases)} FastMIM-P phases' if phases else f'{steps} steps per epoch'}, "
                 f"{'GRAPH_MODE' if mode == ms.GRAPH_MODE else 'PYNATIVE_MODE'}, amp {cfg.train.amp_level}"
                 + (f", data parallel over {world} processes" if world > 1 else "")
                 + (f", {cfg.distill.method} distillation from {cfg.distill.teacher.name}" if distilled else "")
                 + (f"; resumed from {resume} at epoch {state.epoch + 1} step {state.batch}/{epoch_steps}"
                    if resume else ""))
        for line in notes:
            log.info(line)
        for i, s in enumerate(students[1:], 1):
            line = (f"student {i}: {s.cfg.model.name}, {s.cfg.distill.method} distillation, beside "
                    f"{cfg.model.name} on its batches and teacher logits (files in {s.output})")
            log.info(line)
            s.log.info(line)
        for epoch in range(state.epoch, epochs):
            data = train_data if epoch == 0 and not state.position else \
                create_loader(phases.config(epoch) if phases else cfg, "train", model_cfg,
                              epoch=cache.data_epoch(epoch) if cache else epoch, num_shards=world, shard_id=rank,
                              start=state.position)
            if phases:
                _enter_phase(students[0], epoch, announce=epoch in (state.epoch, phases.at(epoch).start))
            records = _epoch(students, epoch, data, phases.batches[epoch] if phases else steps, val_data, dist, cache)
            for s, record in zip(students, records):
                _end_epoch(s, record, epoch, dist)
        for s in students:
            if s.state.best_epoch >= 0:
                s.log.info(f"best val top-1 {s.state.best_top1:.2f} at epoch {s.state.best_epoch + 1}")
        results = [TrainResult(s.output, s.state.best_top1, s.state.best_epoch, list(s.log.records))
                   for s in students]
        results[0].students = results[1:]
        return results[0]
    finally:
        for s in students:
            s.log.close()


def _end_epoch(s: _Student, record: dict, epoch: int, dist: Distributed) -> None:
    """A student's epoch record, best and last checkpoints."""
    state = s.state
    state.next_epoch(s.step.nonfinite_count())
    best = record["val_top1"] is not None and record["val_top1"] > state.best_top1
    if best:
        state.best_top1, state.best_epoch = record["val_top1"], epoch
    # the record first: a run stopped before the next checkpoint resumes from an earlier one and drops the
    # records after it (RunLog), so every epoch of metrics.jsonl belongs to the weights that follow it
    s.log.epoch(record)
    if dist.writer and best:
        save_train_checkpoint(s.output / BEST, s.step, s.model, state, s.cfg)
        if s.cfg.train.export_torch:
            _export_torch(s.cfg, s.output)
    if dist.writer and (state.epoch % s.cfg.train.save_interval == 0 or state.epoch == s.cfg.train.epochs):
        save_train_checkpoint(s.output / LAST, s.step, s.model, state, s.cfg)


def _enter_phase(s: _Student, epoch: int, announce: bool) -> None:
    """Set the model and step for ``epoch``'s FastMIM-P phase (:class:`.mim.Phases`): its input size and
    accumulation, and no partial accumulation at the start of an epoch (a resumed one keeps its own); logged when
    ``announce``."""
    phase = s.phases.at(epoch)
    s.model.set_input_size(phase.size)
    s.step.set_accumulate(phase.accumulate)
    if s.state.batch == 0:
        s.step.reset_accumulation()
    if announce:
        s.log.info(f"epoch {epoch + 1}: FastMIM-P phase {s.phases.phases.index(phase) + 1}/{len(s.phases.phases)}, "
                   f"{phase.size} px, batch {phase.batch_size} x {phase.accumulate} accumulated, "
                   f"{s.phases.batches[epoch]} steps per epoch, lr {s.phases.base_lr[epoch]:.4g} (before the schedule)")


def _train_step(cfg: Config, model: ms.nn.Cell, lr, teacher: ms.nn.Cell | None, teacher_logits: bool) -> TrainStep:
    """The compiled train step of ``cfg``; with ``distill.method``, around the frozen ``teacher``
    (:mod:`.distill`), returning the teacher's logits too when ``teacher_logits``."""
    optimizer = create_optimizer(model, cfg.optimizer, lr)
    if is_pretraining(cfg.model.name):
        return build_train_network(MimObjective(model, cfg.mim.mask_ratio), ObjectiveLoss(), optimizer, cfg.train)
    if teacher is None:
        return build_train_network(model, create_loss(cfg), optimizer, cfg.train)
    return build_train_network(model, create_distill_loss(cfg.distill, create_loss(cfg)), optimizer, cfg.train,
                               teacher=teacher, student_resize=cfg.distill.student_resize,
                               return_teacher_logits=teacher_logits)


def _train_batch(students: list[_Student], images: np.ndarray, targets: np.ndarray, cache: TeacherCache | None,
                 epoch: int, batch: int) -> list[float]:
    """One micro-batch through every student's step: the first runs the teacher (unless the cache replays its
    logits), the others take the logits it returned (or the replayed ones). Returns the students' losses."""
    x, y = ms.Tensor(images), ms.Tensor(targets)
    first = students[0].step
    if not first.return_teacher_logits:
        return [float(first(x, y).asnumpy())]
    recorded = cache.get(epoch, batch, images) if cache is not None else None
    if recorded is None:
        loss, logits = first(x, y)
        if cache is not None:
            cache.put(epoch, batch, images, logits.asnumpy())
    else:
        logits = ms.Tensor(recorded)
        loss, _ = first(x, y, logits)
    return [float(loss.asnumpy())] + [float(s.step(x, y, logits)[0].asnumpy()) for s in students[1:]]


def _agree(dist: Distributed, resume: Path | None, state: TrainState) -> None:
    """Under data parallel, every rank must start from the same checkpoint (or none)."""
    if dist.world == 1:
        return
    resumed, steps = dist.all_sum([resume is not None, state.global_step])
    if resumed not in (0, dist.world) or steps != dist.world * state.global_step:
        raise CheckpointError(f"the ranks start from different checkpoints ({int(resumed)} of {dist.world} found "
                              f"one): keep the run folder on a file system every node sees")


def _running(step: TrainStep) -> list:
    """The running statistics of the model and of its EMA copy (what data-parallel ranks hold differently)."""
    ema = {p.name: p for p in step.ema_parameters()}
    return list(step.running) + [ema["ema." + p.name] for p in step.running if "ema." + p.name in ema]


def _check_finite(s: _Student, loss: float, where: str, images: int) -> None:
    """Count a student's step: its loss into the epoch's mean, or a skipped update (or the run's end)."""
    count = s.step.nonfinite_count()
    if count > s.known or not math.isfinite(loss):
        if not s.cfg.train.skip_nonfinite:
            raise NonFiniteError(f"{s.cfg.model.name}: train loss {loss} or its gradients not finite at {where}; the "
                                 f"update was not applied and {s.output / LAST} was left as it was: lower "
                                 f"optimizer.lr, set train.grad_clip, or resume with train.skip_nonfinite=true")
        if count > s.known:
            s.log.info(f"{where}: non-finite loss ({loss:.4g}) or gradients, update skipped")
        s.known = count
    else:
        s.state.loss_sum += loss * images
        s.state.loss_images += images


def _epoch(students: list[_Student], epoch: int, data: Loader, steps: int, val_data: Loader, dist: Distributed,
           cache: TeacherCache | None) -> list[dict]:
    """One epoch (or its rest, after ``state.batch`` batches) of training and validation of every student on the
    same batches; returns their ``metrics.jsonl`` records."""
    start = time.perf_counter()
    main = students[0]
    cfg = main.cfg
    for s in students:
        s.model.set_epoch(epoch, cfg.train.epochs)
        s.model.set_train(True)
        s.known = s.step.nonfinite_count()
    progress = main.log.progress(data, steps, epoch, cfg.train.epochs, cfg.train.log_interval, done=main.state.batch)
    every = cfg.train.save_every_steps
    rates = [s.rate() for s in students]
    for images, targets in progress:
        rates = [s.rate() for s in students]
        losses = _train_batch(students, images, targets, cache, epoch, main.state.batch)
        for s, loss in zip(students, losses):
            s.state.global_step += 1
            s.state.batch += 1
            s.state.position = data.consumed
            _check_finite(s, loss, f"epoch {epoch + 1} step {s.state.batch}/{steps} (global step "
                                   f"{s.state.global_step})", len(images))
        progress.update(losses[0], rates[0], len(images))
        if every and main.state.global_step % every == 0 and main.state.batch < steps:
            for s in students:
                dist.average(_running(s.step))
                if dist.writer:
                    save_train_checkpoint(s.output / LAST, s.step, s.model, s.state, s.cfg)
    images_per_s = float(dist.all_sum([progress.images_per_s])[0])
    # validation every train.eval_interval epochs and after the last; the other epochs' val entries are null
    evaluated = (epoch + 1) % cfg.train.eval_interval == 0 or epoch + 1 == cfg.train.epochs
    replayed = None
    if cache is not None:
        replayed, cache.hits, cache.misses = cache.hits / max(cache.hits + cache.misses, 1), 0, 0
    records = []
    for s, rate in zip(students, rates):
        dist.average(_running(s.step))   # timm distribute_bn "reduce": every rank validates and saves the same weights
        record = {"epoch": epoch, "lr": rate, "train_loss": s.state.loss_sum / max(s.state.loss_images, 1),
                  "images_per_s": images_per_s, "skipped_steps": s.step.nonfinite_count() - s.state.nonfinite_before}
        val = _validate(s.model, val_data, dist, s.cfg) if evaluated else {}
        record.update(val_loss=val.get("loss"), val_top1=val.get("top1"), val_top5=val.get("top5"))
        if s.cfg.train.ema_decay is not None:
            ema = _validate(s.step.ema_model(), val_data, dist, s.cfg) if evaluated else {}
            record.update(ema_top1=ema.get("top1"), ema_top5=ema.get("top5"), ema_loss=ema.get("loss"))
        if replayed is not None:
            record["teacher_replayed"] = replayed
        if data.bad_images():
            record["bad_images"] = data.bad_images()
            s.log.info(f"epoch {epoch + 1}: skipped {data.bad_images()} unreadable image(s), e.g. "
                       f"{data.bad_images.files[0]}")
        record["seconds"] = time.perf_counter() - start
        s.model.set_train(True)
        records.append(record)
    return records


def _validate(model, val_data: Loader, dist: Distributed, cfg: Config) -> dict:
    """Top-1, top-5 and loss; for a pretraining model its masked-modeling loss under fixed masks (:mod:`.mim`)."""
    all_sum = dist.all_sum if dist.world > 1 else None
    if is_pretraining(cfg.model.name):
        return evaluate_pretraining(model, val_data, cfg.mim.mask_ratio, (cfg.seed, dist.rank), all_sum)
    return evaluate(ms_predictor(model), val_data, all_sum=all_sum)


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
