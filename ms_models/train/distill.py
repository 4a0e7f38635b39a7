"""Logit distillation in the training engine (VanillaKD, arXiv 2305.15781 §3; Hao840/vanillaKD@a27b029
``train-kd.py`` ``train_one_epoch``).

Per batch, as the official loop does: the frozen teacher (eval mode, no gradients, the run's AMP level) sees the
student's augmented and mixed batch, optionally resized (``--teacher-resize``); the student sees it optionally
resized too (``--student-resize``); the loss is ``ori_loss_weight * hard(z_s, targets) + kd_loss_weight *
kd(z_s, z_t, targets)`` with the run's hard loss (:func:`.losses.create_loss`: BCE or soft-target CE on the mixup
targets, as ``train-kd.py`` picks it) and ``kd`` from :func:`ms_models.distill.create_kd_loss`. The teacher runs in
the same compiled step as the student (:class:`.step.TrainStep` ``teacher=``), outside the differentiated function.

The teacher's weights are never trained nor saved in training checkpoints: a run (and its resumption) loads them
strictly from ``distill.teacher.checkpoint`` at start, any format the converter reads.

The teacher cache (``distill.cache_teacher``; not in the official code, in the spirit of FKD, arXiv 2112.01528):
with ``distill.cache_epochs = K`` epoch ``e`` trains on the batches of epoch ``e mod K`` (same images, order,
augmentation and mixing: the loader's ``(seed, epoch)`` rule), so the teacher's logits for each (image,
augmentation) of the first K epochs are recorded once (:class:`TeacherCache`, in host memory, per rank) and
replayed later: the compiled step takes them instead of running the teacher. With ``cache_topk = k`` only the k
largest logits of each image are kept and the others replayed as :data:`TOPK_FILL` below the smallest kept one
(probability 0 in float32 at any temperature below 100): the teacher's distribution renormalised over its top k.
A resumed run starts with an empty cache and records again what it misses.
"""
from __future__ import annotations

import numpy as np

import mindspore as ms
from mindspore import amp, nn, ops

from specs import get_model_cfg
from specs.errors import CheckpointError, ConfigError, DataError, KeyMismatchError

from .. import create_model
from ..distill import create_kd_loss
from .config import Config, DistillConfig

__all__ = ["Teacher", "DistillLoss", "TeacherCache", "build_teacher", "create_distill_loss", "resize_batch",
           "resized_shape", "TOPK_FILL"]

TOPK_FILL = 1e4     # with cache_topk: the replayed logits of the dropped classes, this far below the kept minimum


def resized_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """torchvision ``Resize(size)`` (an int) of an ``height x width`` image: the shorter side becomes ``size``, the
    longer one ``int(size * long / short)`` (torchvision 0.11 ``_compute_resized_output_size``)."""
    if height <= width:
        return size, int(size * width / height)
    return int(size * height / width), size


def resize_batch(images, size: int | None):
    """torchvision 0.11 ``transforms.Resize(size)`` on a float batch, as ``train-kd.py`` applies it on the GPU:
    bilinear, ``align_corners=False``, no antialiasing (tensors were not antialiased before torchvision 0.13)."""
    if size is None:
        return images
    shape = resized_shape(images.shape[2], images.shape[3], size)
    if shape == tuple(images.shape[2:]):
        return images
    return ops.interpolate(images, size=shape, mode="bilinear", align_corners=False)


class Teacher(nn.Cell):
    """The frozen teacher: ``stop_gradient(model(resize(images)))``, built in eval mode (:class:`.step.TrainStep`
    puts it back there whenever it switches its own cells to training). Its Parameters are renamed
    ``teacher.<name>`` (unique beside the student's in one graph) and do not require gradients."""

    def __init__(self, model: nn.Cell, resize: int | None = None):
        super().__init__(auto_prefix=False)
        for param in model.get_parameters():
            param.name = "teacher." + param.name
            param.requires_grad = False
        self.model = model
        self.size = resize
        self.set_train(False)

    def construct(self, images):
        return ops.stop_gradient(self.model(resize_batch(images, self.size)))


class DistillLoss(nn.Cell):
    """``loss(z_s, targets, z_t) = ori_loss_weight * hard(z_s, targets) + kd_loss_weight * kd(z_s, z_t,
    targets)`` (``train-kd.py``: ``loss_ori + loss_kd``), in float32."""

    def __init__(self, hard: nn.Cell, kd: nn.Cell, ori_loss_weight: float = 1.0, kd_loss_weight: float = 1.0):
        super().__init__()
        self.hard = hard
        self.kd = kd
        self.ori_loss_weight = ori_loss_weight
        self.kd_loss_weight = kd_loss_weight

    def construct(self, z_s, targets, z_t):
        hard = self.hard(z_s, targets).astype(ms.float32)
        return self.ori_loss_weight * hard + self.kd_loss_weight * self.kd(z_s, z_t, targets).astype(ms.float32)


def create_distill_loss(k: DistillConfig, hard: nn.Cell) -> DistillLoss:
    """The :class:`DistillLoss` of the ``distill`` section around the run's ``hard`` loss."""
    kd = create_kd_loss(k.method, temperature=k.temperature, dkd_alpha=k.dkd_alpha, dkd_beta=k.dkd_beta,
                        dist_beta=k.dist_beta, dist_gamma=k.dist_gamma)
    return DistillLoss(hard, kd, k.ori_loss_weight, k.kd_loss_weight)


def _class_mismatch(exc: KeyMismatchError, name: str) -> str | None:
    """The one-line reason when only the classifier's shapes differ: a teacher of another number of classes."""
    heads = get_model_cfg(name).classifier
    if exc.missing or exc.unexpected or not exc.mismatched or not heads:
        return None
    if not all(any(key == h or key.startswith(h + ".") for h in heads) for key, _, _ in exc.mismatched):
        return None
    key, found, expected = exc.mismatched[0]
    return f"the teacher checkpoint has {found[0]} classes ({key}), the student {expected[0]} (model.num_classes)"


def build_teacher(cfg: Config) -> Teacher:
    """The :class:`Teacher` of ``cfg.distill``: the registered model with the student's number of classes (as
    ``train-kd.py`` builds it), its checkpoint loaded strictly, the run's AMP level applied. A wrong or corrupt
    file, or a teacher of another number of classes, is a one-line :class:`CheckpointError` naming
    ``distill.teacher.checkpoint``."""
    t = cfg.distill.teacher
    if t.checkpoint is None:
        raise ConfigError("config key 'distill.teacher.checkpoint' is required with distill.method")
    try:
        model = create_model(t.name, num_classes=cfg.model.num_classes, checkpoint=t.checkpoint, **t.kwargs)
    except KeyMismatchError as exc:
        reason = _class_mismatch(exc, t.name) or str(exc)
        raise CheckpointError(f"config key 'distill.teacher.checkpoint' ({t.checkpoint}): {reason}") from None
    except CheckpointError as exc:
        raise CheckpointError(f"config key 'distill.teacher.checkpoint': {exc}") from None
    from .step import check_amp_level
    return Teacher(amp.auto_mixed_precision(model, check_amp_level(cfg.train.amp_level)), t.resize)


class TeacherCache:
    """The teacher's logits per (epoch slot, batch position) of the run's first ``epochs`` epochs (module
    docstring). Each entry also keeps the batch's image checksum: a replay onto other images (the data changed
    under a running job) is a :class:`DataError` instead of a silent mismatch."""

    def __init__(self, epochs: int = 1, topk: int | None = None):
        self.epochs, self.topk = epochs, topk
        self._entries: dict[tuple[int, int], tuple[float, np.ndarray, np.ndarray | None, int]] = {}
        self.hits = self.misses = 0

    def data_epoch(self, epoch: int) -> int:
        """The epoch whose batches epoch ``epoch`` trains on."""
        return epoch % self.epochs

    @staticmethod
    def _checksum(images: np.ndarray) -> float:
        return float(np.asarray(images, np.float64).sum())

    def get(self, epoch: int, batch: int, images: np.ndarray) -> np.ndarray | None:
        """The recorded logits (B, C) float32 for batch ``batch`` of epoch ``epoch``'s data, or None."""
        entry = self._entries.get((self.data_epoch(epoch), batch))
        if entry is None:
            self.misses += 1
            return None
        checksum, values, indices, classes = entry
        if checksum != self._checksum(images):
            raise DataError(f"teacher cache: batch {batch} of epoch {epoch + 1} is not the batch recorded for it "
                            f"(the data changed during the run); rerun without distill.cache_teacher")
        self.hits += 1
        if indices is None:
            return values
        logits = np.empty((values.shape[0], classes), np.float32)
        logits[:] = (values.min(1, keepdims=True) - TOPK_FILL)
        np.put_along_axis(logits, indices, values, 1)
        return logits

    def put(self, epoch: int, batch: int, images: np.ndarray, logits: np.ndarray) -> None:
        """Record the teacher's ``logits`` (B, C) for batch ``batch`` of epoch ``epoch``'s data."""
        logits = np.asarray(logits, np.float32)
        indices = None
        if self.topk is not None and self.topk < logits.shape[1]:
            indices = np.argpartition(-logits, self.topk - 1, axis=1)[:, :self.topk].astype(np.int32)
            logits_kept = np.take_along_axis(logits, indices, 1)
        else:
            logits_kept = logits.copy()
        self._entries[(self.data_epoch(epoch), batch)] = (self._checksum(images), logits_kept, indices,
                                                          logits.shape[1])

    def __len__(self) -> int:
        return len(self._entries)
