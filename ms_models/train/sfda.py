"""SFDA-DE adaptation in the training engine (issue 18 section 2; CvNoob/SFDA-DE@213e138
``solver/anchor_solver.py::AnchorSolver.solve``, ``solver/base_solver.py``, ``data/class_aware_dataset_dataloader.py``).

A run with ``sfda.adapt`` adapts the source model of ``model.pretrained`` to the unlabelled target data of
``data.dir`` (its ``train/`` split is adapted on, its ``val/`` split scored). Each loop (an epoch of the run,
``train.epochs`` = upstream ``TRAIN.MAX_LOOP``):

1. **features** of every target train image, model in eval mode, with the *train* transforms (upstream's
   clustering loader), batch ``sfda.cluster_batch_size``, with a progress bar;
2. **clustering**: :func:`ms_models.sfda.spherical_kmeans` from the frozen classifier's weights;
3. **filtering**: :func:`~ms_models.sfda.filter_samples` (``filtering_threshold``, ``min_per_class``);
4. **estimate**: the kept samples' features again (eval mode, fresh train augmentation: upstream's class-wise
   loader) into :func:`~ms_models.sfda.estimate_source_distribution` (``variance_mult``);
5. ``sfda.iters_per_loop`` **steps**, model in train mode: class-aware batches (upstream ``RandomSampler`` over
   the kept classes in ``BatchSampler``\\ s of ``num_selected_classes`` with ``drop_last``, restarted when used
   up; ``class_batch_size`` images per class drawn without replacement, fewer when a class has fewer), the same
   number of surrogate source features per class drawn from ``Normal(mean, std)``, and one SGD update of
   :class:`~ms_models.sfda.AdaptLoss` (CDD over ``feat`` and ``probs``) on every parameter but the frozen
   classifier; lr per update from ``schedule`` (``inv`` in the recipes), times ``sfda.bn_lr_mult`` for the
   parameters whose name holds ``bn`` (upstream ``set_param_groups_bn_mult``);
6. validation on the target ``val/`` split (overall or, with ``sfda.mean_class_accuracy``, mean per-class top-1)
   every ``train.eval_interval`` loops and after the last.

Every random draw of a loop (augmentation, class order, per-class samples, surrogate features) comes from
``(seed, loop)``, and ``last.ckpt`` (a complete training checkpoint) is written after each loop, so a resumed run
ends with the weights of an uninterrupted one (``train.save_interval`` thins the writes; the last loop is always
saved). ``metrics.jsonl`` adds per loop: ``cdd_intra`` (the mean intra-class
term), ``kept`` (the filtered fraction), ``classes`` (the kept classes), and ``pseudo_top1``: the accuracy of the
cluster labels against the target train folders' labels, a diagnostic that nothing trains on.

Where this differs from upstream, on purpose:

- **no best checkpoint**: upstream saves the weights of the loop with the best target *test* accuracy, which
  chooses by target labels (leakage); only ``last.ckpt`` is written, and ``best_top1`` of the result is the last
  loop's;
- **no source image is read**: a ``data.dir`` equal to the one the source checkpoint was trained on (recorded in
  an engine checkpoint) is refused, and the run takes no other data path;
- a class whose estimated mean has norm < 1e-3 (upstream: no sampler, a crash if drawn) is not drawn;
- one process only (upstream: ``DataParallel`` in one process); under ``msrun`` with several ranks it stops.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops
from tqdm import tqdm

from specs import ModelCfg, get_model_cfg
from specs.errors import CheckpointError, ConfigError, NonFiniteError
from specs.schedules import lr_per_step, scaled_lr

from ..sfda import CDD, AdaptLoss, classifier_of, estimate_source_distribution, filter_samples, spherical_kmeans
from .callbacks import RunLog
from .checkpoint import TrainState, read_train_checkpoint, restore_train_checkpoint, save_train_checkpoint
from .config import Config, save_config
from .data import Loader, create_loader, create_rows_loader, dataset_classes, num_images
from .evaluate import Meter
from .optim import create_optimizer

if TYPE_CHECKING:
    from .loop import TrainResult

LAST = "last.ckpt"
_FEATURES, _STATISTICS, _STEPS = 1, 2, 3          # the streams of a loop's random draws


class AdaptStep(nn.Cell):
    """``step(images, surrogate, counts) -> (loss, intra)``: one SGD update of :class:`~ms_models.sfda.AdaptLoss`
    over ``optimizer.parameters`` (every model parameter but the frozen classifier). An update whose loss or
    gradients are not finite is not applied and is counted (``nonfinite_steps``)."""

    def __init__(self, loss: AdaptLoss, optimizer: nn.Optimizer) -> None:
        super().__init__(auto_prefix=False)
        # listed first, so that parameters_and_names() gives the model's parameters their own names (checkpoints)
        self.model_parameters = ms.ParameterTuple(list(loss.model.get_parameters()))
        self.loss = loss
        self.optimizer = optimizer
        self.grad_fn = ops.value_and_grad(loss, None, optimizer.parameters, has_aux=True)
        self.nonfinite_steps = Parameter(Tensor(0, ms.int32), name="nonfinite_steps", requires_grad=False)

    def construct(self, images, surrogate, counts):
        (loss, intra), grads = self.grad_fn(images, surrogate, counts)
        ok = ops.logical_and(ms.amp.all_finite(grads), ops.isfinite(loss))
        if ok:
            loss = ops.depend(loss, self.optimizer(grads))
        else:
            loss = ops.depend(loss, ops.assign_add(self.nonfinite_steps, Tensor(1, ms.int32)))
        return loss, intra

    def state_parameters(self) -> list[Parameter]:
        """Every Parameter a training checkpoint holds (:mod:`.checkpoint`)."""
        return list(self.get_parameters())

    def nonfinite_count(self) -> int:
        return int(self.nonfinite_steps.asnumpy())


class _Features(nn.Cell):
    """Pooled features (``forward_head(..., pre_logits=True)``), upstream ``feature_extractor(x)['feat']``."""

    def __init__(self, model: nn.Cell) -> None:
        super().__init__(auto_prefix=False)
        self.model = model

    def construct(self, images):
        return self.model.forward_head(self.model.forward_features(images), pre_logits=True)


def bn_lr_mult(model: nn.Cell, mult: float) -> dict[str, float]:
    """``mult`` for every trainable parameter whose name holds ``bn`` (upstream ``set_param_groups_bn_mult``:
    ``k.find('bn') != -1`` on the torch names; MindSpore's names share the module paths, and neither framework's
    leaf names hold ``bn``, so the same parameters match: a ResNet's ``bn1``-``bn3``, not ``downsample.1``)."""
    return {p.name: mult for p in model.trainable_params() if "bn" in p.name} if mult != 1.0 else {}


def refuse_source_data(cfg: Config) -> None:
    """A one-line :class:`ConfigError` when ``data.dir`` is the data the source checkpoint was trained on (an
    engine checkpoint records its config; other weight files carry no data path to compare)."""
    try:
        _, _, source = read_train_checkpoint(cfg.model.pretrained)
    except CheckpointError:
        return
    source_dir = (source.get("data") or {}).get("dir")
    if source_dir is not None and _same_data(source_dir, cfg.data.dir):
        raise ConfigError(f"config key 'data.dir' is {cfg.data.dir!r}, the source data {cfg.model.pretrained} was "
                          f"trained on: SFDA-DE adaptation reads only the target domain (source-free)")


def _same_data(a: str, b: str | None) -> bool:
    if b is None:
        return False
    if a.startswith("builtin:") or b.startswith("builtin:"):
        return a == b
    return Path(a).resolve() == Path(b).resolve()


def _rng(seed: int, loop: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, loop, stream])


def _sample_seeds(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 2 ** 63, size=n, dtype=np.uint64)


def class_aware_batches(rng: np.random.Generator, members: dict[int, np.ndarray], classes: list[int],
                        num_selected: int, class_batch_size: int, steps: int
                        ) -> list[tuple[list[int], list[np.ndarray]]]:
    """``steps`` class-aware batches (upstream ``TargetClassAwareDataLoader``): classes in a random order taken
    ``min(num_selected, len(classes))`` at a time (a last incomplete group is dropped; the order is redrawn when
    used up), and per class ``min(class_batch_size, its size)`` of its ``members`` (row indices) drawn without
    replacement. Returns per step the classes and their rows."""
    per_step = min(num_selected, len(classes))
    out: list[tuple[list[int], list[np.ndarray]]] = []
    order: list[int] = []
    while len(out) < steps:
        if len(order) < per_step:
            order = [classes[i] for i in rng.permutation(len(classes))]
        chosen, order = order[:per_step], order[per_step:]
        rows = [rng.choice(members[c], size=min(class_batch_size, len(members[c])), replace=False) for c in chosen]
        out.append((chosen, rows))
    return out


def adapt(cfg: Config, output: Path, resume: Path | None, mode: int, world: int) -> "TrainResult":
    """The adaptation run (called by :func:`.loop.train` inside its seeded, mode-setting context; ``.loop``
    imports this module, so its names are imported here)."""
    from .loop import TrainResult, build_model, model_seed
    if world > 1:
        raise ConfigError("SFDA-DE adaptation (sfda.adapt) runs in one process: its clustering sees the whole "
                          "target set; start it without msrun")
    refuse_source_data(cfg)
    k = cfg.sfda
    model_cfg = get_model_cfg(cfg.model.name)
    read = read_train_checkpoint(resume) if resume is not None else None
    state = read[1] if read is not None else TrainState()
    ms.set_seed(model_seed(cfg.seed, 0, state.global_step))
    model = build_model(cfg)
    try:
        classifier = classifier_of(model)
    except ValueError as exc:
        raise ConfigError(f"config key 'model.name': {exc}") from None
    for p in classifier.get_parameters():
        p.requires_grad = False
    anchors = classifier.weight.asnumpy().copy()
    lr = lr_per_step(cfg.schedule, scaled_lr(cfg.optimizer, k.num_selected_classes * k.class_batch_size),
                     cfg.train.epochs, k.iters_per_loop)
    optimizer = create_optimizer(model, cfg.optimizer, lr, bn_lr_mult(model, k.bn_lr_mult))
    cdd = CDD(cfg.model.num_classes, 2, k.kernel_num, k.kernel_mul, k.intra_only)
    step = AdaptStep(AdaptLoss(model, cdd, k.cdd_weight), optimizer)
    if read is not None:
        state, _ = restore_train_checkpoint(resume, step, model, cfg, read)
    log = RunLog(output, start_epoch=state.epoch)
    try:
        for stale in output.glob(".*.partial*"):
            stale.unlink()
        save_config(cfg, output / "config.yaml")
        val = create_loader(cfg, "val", model_cfg)
        classes = dataset_classes(cfg)
        log.info(f"{cfg.model.name}: SFDA-DE adaptation of {cfg.model.pretrained} to {cfg.data.dir} "
                 f"({len(classes)} classes, {val.num_samples} val images), {cfg.train.epochs} loops of "
                 f"{k.iters_per_loop} steps, {'GRAPH_MODE' if mode == ms.GRAPH_MODE else 'PYNATIVE_MODE'}"
                 + (f"; resumed from {resume} after loop {state.epoch}" if resume else ""))
        run = _Run(cfg, model_cfg, model, step, anchors, lr, log)
        t = cfg.train
        for loop in range(state.epoch, t.epochs):
            last = loop + 1 == t.epochs
            record = run.loop(loop, val if (loop + 1) % t.eval_interval == 0 or last else None)
            state.next_epoch(step.nonfinite_count())
            state.global_step += k.iters_per_loop
            if record["val_top1"] is not None:
                state.best_top1, state.best_epoch = record["val_top1"], loop      # the last scored loop's
            log.epoch(record)
            if state.epoch % t.save_interval == 0 or last:
                save_train_checkpoint(output / LAST, step, model, state, cfg)
        log.info(f"val top-1 {state.best_top1:.2f} after loop {state.best_epoch + 1}")
        return TrainResult(output, state.best_top1, state.best_epoch, list(log.records))
    finally:
        log.close()


class _Run:
    """The state one adaptation loop reads: the model, its step and feature extractor, the anchors, the lr."""

    def __init__(self, cfg: Config, model_cfg: ModelCfg, model: nn.Cell, step: AdaptStep, anchors: np.ndarray,
                 lr: np.ndarray, log: RunLog) -> None:
        self.cfg, self.model_cfg, self.model, self.step = cfg, model_cfg, model, step
        self.features_net = _Features(model)
        self.anchors, self.lr, self.log = anchors, lr, log

    def _bar(self, loader: Loader, desc: str):
        shown = self.log.enabled and sys.stdout.isatty()
        return tqdm(loader, total=loader.steps, desc=desc, unit="batch", leave=False, disable=not shown)

    def features(self, rows: np.ndarray, rng: np.random.Generator, desc: str) -> tuple[np.ndarray, np.ndarray]:
        """Pooled features (eval mode, train transforms) of train rows ``rows``, and their folder labels. Every
        batch has ``sfda.cluster_batch_size`` images (the last filled up with the first rows, whose extra features
        are dropped), so one graph serves every pass."""
        size = self.cfg.sfda.cluster_batch_size
        padded = np.resize(rows, -(-len(rows) // size) * size)
        loader = create_rows_loader(self.cfg, "train", self.model_cfg, padded, _sample_seeds(rng, len(padded)),
                                    [size] * (len(padded) // size))
        self.model.set_train(False)
        feats, labels = [], []
        for images, targets in self._bar(loader, desc):
            feats.append(self.features_net(Tensor(images)).asnumpy())
            labels.append(targets)
        return np.concatenate(feats)[:len(rows)], np.concatenate(labels)[:len(rows)]

    def loop(self, loop: int, val: Loader | None) -> dict[str, Any]:
        """One loop (module docstring, steps 1-6; no validation when ``val`` is None); its metrics record."""
        cfg, k = self.cfg, self.cfg.sfda
        start = time.perf_counter()
        loops = f"loop {loop + 1}/{cfg.train.epochs}"
        feats, truth = self.features(np.arange(num_images(cfg, "train")), _rng(cfg.seed, loop, _FEATURES), f"{loops} features")
        labels, dist2center, _ = spherical_kmeans(feats, self.anchors, k.eps)
        labels = labels.asnumpy()
        keep, classes = filter_samples(labels, dist2center, k.filtering_threshold, k.min_per_class,
                                       cfg.model.num_classes)
        keep = keep.asnumpy()
        kept = np.flatnonzero(keep)
        record: dict[str, Any] = {"epoch": loop, "lr": float(self.lr[min(loop * k.iters_per_loop, len(self.lr) - 1)]),
                                  "pseudo_top1": 100.0 * float((labels == truth).mean()),
                                  "kept": float(keep.mean()), "classes": len(classes)}
        kept_rows = kept[np.isin(labels[kept], classes)]
        if kept_rows.size:
            stats, _ = self.features(kept_rows, _rng(cfg.seed, loop, _STATISTICS), f"{loops} statistics")
            mean, std, valid = estimate_source_distribution(stats, labels[kept_rows], self.anchors, classes,
                                                            k.variance_mult)
            mean, std, valid = mean.asnumpy(), std.asnumpy(), valid.asnumpy()
            drawable = [c for c in classes if valid[c]]
        else:
            drawable = []
        if drawable:
            losses, intras = self.train(loop, drawable, kept_rows, labels, mean, std)
        else:
            self.log.info(f"{loops}: no class kept {k.min_per_class} samples under the filtering threshold "
                          f"{k.filtering_threshold}; no update this loop")
            losses, intras = [], []
        record.update(train_loss=float(np.mean(losses)) if losses else None,
                      cdd_intra=float(np.mean(intras)) if intras else None)
        record.update(_score(self.model, val, k.mean_class_accuracy) if val is not None else
                      {"val_loss": None, "val_top1": None, "val_top5": None})
        record["seconds"] = time.perf_counter() - start
        return record

    def train(self, loop: int, drawable: list[int], rows: np.ndarray, labels: np.ndarray, mean: np.ndarray,
              std: np.ndarray) -> tuple[list[float], list[float]]:
        """The loop's ``iters_per_loop`` class-aware steps; returns their losses and intra-class terms."""
        cfg, k = self.cfg, self.cfg.sfda
        rng = _rng(cfg.seed, loop, _STEPS)
        members = {c: rows[labels[rows] == c] for c in drawable}
        batches = class_aware_batches(rng, members, drawable, k.num_selected_classes, k.class_batch_size,
                                      k.iters_per_loop)
        order = np.concatenate([np.concatenate(r) for _, r in batches])
        loader = create_rows_loader(cfg, "train", self.model_cfg, order, _sample_seeds(rng, len(order)),
                                    [sum(len(x) for x in r) for _, r in batches])
        self.model.set_train(True)
        known = self.step.nonfinite_count()
        progress = self.log.progress(loader, loader.steps, loop, cfg.train.epochs, cfg.train.log_interval)
        losses, intras = [], []
        for i, ((images, _), (chosen, picked)) in enumerate(zip(progress, batches)):
            counts = tuple(len(x) for x in picked)
            surrogate = np.concatenate([rng.normal(mean[c], std[c], size=(n, mean.shape[1]))
                                        for c, n in zip(chosen, counts)]).astype(np.float32)
            loss, intra = self.step(Tensor(images), Tensor(surrogate), counts)
            loss, intra = float(loss.asnumpy()), float(intra.asnumpy())
            t = loop * k.iters_per_loop + i
            if self.step.nonfinite_count() > known:
                where = f"loop {loop + 1} step {i + 1}/{k.iters_per_loop}"
                if not cfg.train.skip_nonfinite:
                    raise NonFiniteError(f"{cfg.model.name}: adaptation loss {loss} or its gradients not finite at "
                                         f"{where}; the update was not applied: lower optimizer.lr, or resume with "
                                         f"train.skip_nonfinite=true")
                self.log.info(f"{where}: non-finite loss ({loss:.4g}) or gradients, update skipped")
                known = self.step.nonfinite_count()
            else:
                losses.append(loss)
                intras.append(intra)
            progress.update(loss, float(self.lr[min(t, len(self.lr) - 1)]), len(images))
        return losses, intras


def _score(model: nn.Cell, val: Loader, mean_class: bool) -> dict[str, float]:
    """Target val metrics: top-1 (overall, or the mean of the per-class top-1 with ``mean_class``: upstream
    ``mean_accu``), top-5 and cross-entropy; the model in eval mode."""
    meter = Meter()
    hits = np.zeros(len(val.classes))
    counts = np.zeros(len(val.classes))
    model.set_train(False)
    for images, labels in val:
        logits = model(Tensor(images)).asnumpy()
        meter.update(logits, labels)
        np.add.at(hits, labels, logits.argmax(1) == labels)
        np.add.at(counts, labels, 1)
    result = meter.result()
    top1 = 100.0 * float(np.mean(hits[counts > 0] / counts[counts > 0])) if mean_class else result["top1"]
    return {"val_loss": result["loss"], "val_top1": top1, "val_top5": result["top5"]}
