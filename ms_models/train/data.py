"""Training and validation data as ``mindspore.dataset`` pipelines (issue 12 section 3).

:func:`create_loader` reads ``cfg.data.dir``: an ImageFolder root with ``train/`` and ``val/`` (one sub-folder per
class, classes sorted by name as torchvision's ``ImageFolder``), or ``builtin:digits`` / ``builtin:shapes``
(:mod:`builtin_data`, at ``data.image_size``, a fixed seeded stratified 80/20 train/val split).

Order and augmentation are a function of ``(cfg.seed, epoch, shard)`` only, whatever the number of workers:

- train order as torch's ``DistributedSampler`` (a permutation seeded by ``(seed, epoch)``, padded by repeating its
  start to a multiple of ``num_shards``, shard ``r`` taking positions ``r, r + num_shards, ...``) or, with
  ``data.repeated_aug``, timm's ``RepeatAugSampler`` (each image 3 times in a row before striding, each shard keeping
  ``floor(N // 256 * 256 / num_shards)`` samples; ``ceil(N / num_shards)`` when N < 256);
- val order: the images in order, shard ``r`` taking ``r, r + num_shards, ...`` (no padding: metrics count every
  image once);
- every sample carries a seed drawn from ``(seed, epoch, position in the epoch)``; the random transforms draw from a
  generator seeded by it (:func:`~.transforms.apply_transforms`), Mixup from one seeded by the batch's seeds.

So a loader started ``start`` rows into its shard's epoch (``create_loader(..., start=k)``: resuming mid-epoch) yields
exactly the batches the whole epoch yields after those rows, with the same augmentation; :attr:`Loader.consumed`
counts the rows behind the batches yielded so far (unreadable images skipped included), the position to resume at.

The global ``mindspore.dataset`` seed is neither read nor changed.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np
from PIL import Image

import builtin_data
import mindspore.dataset as ds
from specs import ModelCfg
from specs.errors import DataError
from specs.mim import is_pretraining

from .config import BUILTIN_PREFIX, Config, mixup_active
from .transforms import apply_transforms, create_mixup, create_transforms

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")   # torchvision's
BUILTIN = ("digits", "digits_shifted", "shapes")
VAL_FRACTION = 0.2
SPLIT_SEED = 0                 # the built-in train/val split never changes with cfg.seed
REPEATS = 3                    # timm RepeatAugSampler num_repeats (DeiT)
_SELECTED_ROUND = 256
_ERROR = re.compile(r"DataError: ([^\n]*)")


class BadImages:
    """The unreadable images a loader skipped (``data.skip_bad_images``): calling it gives their number, ``files``
    their paths (counted in the main process as the pipeline runs)."""

    def __init__(self, paths: Sequence[str]):
        self._paths = paths
        self.files: list[str] = []

    def __call__(self) -> int:
        return len(self.files)

    def keep(self, index: np.ndarray) -> bool:
        """The dataset ``filter`` predicate: a negative index marks an image that could not be read."""
        if int(index) < 0:
            self.files.append(self._paths[-int(index) - 1])
            return False
        return True


@dataclass
class Loader:
    """One epoch of one shard. ``dataset`` yields ``(images float32 (B,3,S,S), targets, positions)`` from
    ``create_tuple_iterator(num_epochs=1, output_numpy=True)``; iterating the loader itself yields
    ``(images, targets)``, keeps :attr:`consumed` and turns an error raised inside the pipeline (an unreadable
    image) back into a one-line :class:`DataError`."""

    dataset: ds.Dataset              # yields (images, targets, positions in the shard's epoch order)
    num_samples: int                 # images in this shard this epoch (before skipping unreadable ones)
    steps: int                       # batches of this loader (train: full batches only; after ``start``)
    classes: list[str]
    bad_images: BadImages = field(default_factory=lambda: BadImages([]))
    indices: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))   # source images, in order
    consumed: int = 0                # rows of ``indices`` behind the batches yielded so far (``start`` at first)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        it = self.dataset.create_tuple_iterator(num_epochs=1, output_numpy=True)
        try:
            while True:
                try:
                    batch = next(it)
                except StopIteration:
                    return
                except RuntimeError as exc:
                    # MindSpore re-raises a worker's exception as a RuntimeError holding its traceback(s)
                    found = [m for m in _ERROR.findall(str(exc)) if not m.startswith("Traceback")]
                    if not found:
                        raise
                    raise DataError(found[-1].strip()) from None
                self.consumed = int(batch[2][-1]) + 1
                yield batch[0], batch[1]
        finally:
            # stop the pipeline here: left to the garbage collector, a failed iterator's release can run inside
            # the next pipeline's forked worker and crash it (seen as a worker segfault on MindSpore 2.8)
            it.stop()


# --- sources ------------------------------------------------------------------------------------------------------

class _Files:
    """ImageFolder images, decoded with Pillow to RGB uint8 HWC (as torchvision's ``default_loader``)."""

    def __init__(self, paths: Sequence[str]):
        self.paths = list(paths)

    def __call__(self, i: int) -> np.ndarray:
        path = self.paths[i]
        try:
            with Image.open(path) as img:
                return np.asarray(img.convert("RGB"))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise DataError(f"cannot read image {path!r}: {' '.join(str(exc).split()) or type(exc).__name__}") \
                from None


class _Arrays:
    """Built-in images (uint8 HWC), resized with Pillow (bilinear, anti-aliased) when stored at another size."""

    def __init__(self, images: np.ndarray, size: int):
        self.images, self.size = images, size

    def __call__(self, i: int) -> np.ndarray:
        img = self.images[i]
        if img.shape[0] != self.size:
            img = np.asarray(Image.fromarray(img).resize((self.size, self.size), Image.Resampling.BILINEAR))
        return img


def _scan_split(root: str, split: str, allowed_classes: Sequence[str] | None) -> tuple[list[str], list[str], list[int]]:
    """(classes, file paths, labels) of ``root/split``; one-line DataErrors for a missing or empty folder."""
    folder = os.path.join(root, split)
    if not os.path.isdir(folder):
        raise DataError(f"data folder {folder!r} not found (data.dir must hold train/ and val/ class folders)")
    classes = sorted(e.name for e in os.scandir(folder) if e.is_dir())
    if not classes:
        raise DataError(f"{folder!r} has no class folders")
    if allowed_classes is not None:
        unknown = sorted(set(classes) - set(allowed_classes))
        if unknown:
            raise DataError(f"{folder!r} has classes unknown to train: {', '.join(unknown[:5])}"
                            f"{' ...' if len(unknown) > 5 else ''}")
    index = {c: i for i, c in enumerate(allowed_classes if allowed_classes is not None else classes)}
    paths, labels = [], []
    for c in classes:
        files = sorted(os.path.join(dp, f) for dp, _, fs in os.walk(os.path.join(folder, c), followlinks=True)
                       for f in fs if f.lower().endswith(IMG_EXTENSIONS))
        if not files:
            raise DataError(f"class folder {os.path.join(folder, c)!r} has no images ({', '.join(IMG_EXTENSIONS)})")
        paths += files
        labels += [index[c]] * len(files)
    return classes, paths, labels


def _source(cfg: Config, split: str) -> tuple[Any, np.ndarray, list[str], list[str]]:
    """(reader i -> uint8 HWC, labels, classes, names of the images for messages)."""
    d = cfg.data
    if not d.dir:
        raise DataError("data.dir is not set: give an ImageFolder root (train/, val/) or builtin:<name>")
    if d.dir.startswith(BUILTIN_PREFIX):
        name = d.dir[len(BUILTIN_PREFIX):]
        if name == "digits":
            images, labels = builtin_data.digits_images(d.image_size)
            classes = list(builtin_data.DIGIT_CLASSES)
        elif name == "digits_shifted":
            images, labels = builtin_data.digits_shifted_images(d.image_size)
            classes = list(builtin_data.DIGIT_CLASSES)
        elif name == "shapes":
            images, labels = builtin_data.shapes_images()
            classes = list(builtin_data.SHAPE_CLASSES)
        else:
            known = ", ".join(BUILTIN_PREFIX + b for b in BUILTIN)
            raise DataError(f"unknown built-in data set {d.dir!r}; use {known}")
        train, val = builtin_data.stratified_split(labels, VAL_FRACTION, SPLIT_SEED)
        keep = train if split == "train" else val
        names = [f"{d.dir}[{i}]" for i in keep]
        return _Arrays(images[keep], d.image_size), labels[keep], classes, names
    if not os.path.isdir(d.dir):
        raise DataError(f"data.dir {d.dir!r} is not a folder")
    if split == "train":
        classes, paths, labels = _scan_split(d.dir, "train", None)
    else:
        train_folder = os.path.join(d.dir, "train")
        if not os.path.isdir(train_folder):
            raise DataError(f"data folder {train_folder!r} not found (its class folders name the classes)")
        classes = sorted(e.name for e in os.scandir(train_folder) if e.is_dir())
        _, paths, labels = _scan_split(d.dir, "val", classes)
    return _Files(paths), np.asarray(labels, np.int64), classes, paths


def num_images(cfg: Config, split: str) -> int:
    """The number of images in ``split`` of ``cfg.data.dir``."""
    return len(_source(cfg, split)[1])


def dataset_classes(cfg: Config) -> list[str]:
    """The class names of ``cfg.data.dir`` (train's class folders, or the built-in set's), in label order."""
    return _source(cfg, "val")[2]


# --- order ----------------------------------------------------------------------------------------------------------

def epoch_order(num_images: int, *, seed: int, epoch: int, training: bool, repeated_aug: bool = False,
                num_shards: int = 1, shard_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(image indices, sample seeds) of one shard for one epoch (module docstring: DistributedSampler /
    RepeatAugSampler / ordered val). Seeds are uint64, a function of (seed, epoch, position in the epoch)."""
    if not 0 <= shard_id < num_shards:
        raise DataError(f"shard_id must be in [0, {num_shards}), got {shard_id}")
    if not training:
        order = np.arange(num_images)
        positions = np.arange(shard_id, num_images, num_shards)
    else:
        order = np.random.default_rng([seed, epoch]).permutation(num_images)
        if repeated_aug:
            order = np.repeat(order, REPEATS)
        per_shard = math.ceil(len(order) / num_shards)
        total = per_shard * num_shards
        order = np.resize(order, total) if total > len(order) else order     # pad by repeating the start
        positions = np.arange(shard_id, total, num_shards)
        if repeated_aug:
            selected = (num_images // _SELECTED_ROUND * _SELECTED_ROUND // num_shards if num_images >= _SELECTED_ROUND
                        else math.ceil(num_images / num_shards))
            positions = positions[:selected]
    seeds = np.random.default_rng([seed, epoch, 0x5EED]).integers(0, 2 ** 63, size=len(order), dtype=np.uint64)
    return order[positions].astype(np.int64), seeds[positions]


# --- the pipeline ---------------------------------------------------------------------------------------------------

class _Rows:
    """GeneratorDataset source: (image index, label, sample seed, position) of this shard in order, from ``start``."""

    def __init__(self, indices: np.ndarray, labels: np.ndarray, seeds: np.ndarray, start: int):
        self.indices, self.labels, self.seeds, self.start = indices, labels, seeds, start

    def __len__(self) -> int:
        return len(self.indices) - self.start

    def __getitem__(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        k += self.start
        i = self.indices[k]
        return np.int64(i), np.int32(self.labels[i]), np.uint64(self.seeds[k]), np.int64(k)


class _Sample:
    """Map op: (index, seed) -> (image CHW float32, index or -1 - index when unreadable and skipped, seed)."""

    def __init__(self, read: Any, ops: list, size: int, skip_bad: bool):
        self.read, self.ops, self.size, self.skip_bad = read, ops, size, skip_bad

    def __call__(self, index: np.ndarray, seed: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        i = int(index)
        try:
            image = self.read(i)
        except DataError:
            if not self.skip_bad:
                raise
            return np.zeros((3, self.size, self.size), np.float32), np.int64(-1 - i), seed
        out = apply_transforms(self.ops, image, int(seed))
        return np.ascontiguousarray(out, dtype=np.float32), np.int64(i), seed


class _MixBatch:
    """Batch map: Mixup/CutMix with a generator seeded by the batch's sample seeds."""

    def __init__(self, mixup: Any):
        self.mixup = mixup

    def __call__(self, images: list, labels: list, seeds: list, positions: list,
                 _info: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rng = np.random.default_rng([int(s) for s in seeds])
        return (*self.mixup(np.stack(images), np.asarray(labels, np.int64), rng), np.asarray(positions, np.int64))


def _checked_source(cfg: Config, split: str) -> tuple[Any, np.ndarray, list[str], list[str]]:
    """:func:`_source` of a known split whose classes number ``model.num_classes`` (any number for a pretraining
    model, which reads no labels)."""
    if split not in ("train", "val"):
        raise DataError(f"split must be 'train' or 'val', got {split!r}")
    read, labels, classes, names = _source(cfg, split)
    if cfg.model.num_classes != len(classes) and not is_pretraining(cfg.model.name):
        raise DataError(f"model.num_classes is {cfg.model.num_classes} but {cfg.data.dir!r} has {len(classes)} "
                        f"classes ({', '.join(classes[:5])}{' ...' if len(classes) > 5 else ''})")
    return read, labels, classes, names


def _images(cfg: Config, model_cfg: ModelCfg, read: Any, labels: np.ndarray, indices: np.ndarray,
            seeds: np.ndarray, start: int, training: bool, bad: BadImages) -> ds.Dataset:
    """The per-image pipeline: rows ``indices[start:]`` read and transformed (train or eval ops) with their
    sample seeds, in ``data.workers`` processes; columns image, label, pos (and index, seed)."""
    d = cfg.data
    ops = create_transforms(d, model_cfg, is_training=training)
    workers = max(1, min(d.workers, os.cpu_count() or 1))
    data = ds.GeneratorDataset(_Rows(indices, labels, seeds, start), ["index", "label", "seed", "pos"], shuffle=False)
    data = data.map(_Sample(read, ops, d.image_size, d.skip_bad_images), input_columns=["index", "seed"],
                    output_columns=["image", "index", "seed"], num_parallel_workers=workers,
                    python_multiprocessing=workers > 1)
    if d.skip_bad_images:
        data = data.filter(bad.keep, input_columns=["index"], num_parallel_workers=1)
    return data


def create_rows_loader(cfg: Config, split: str, model_cfg: ModelCfg, indices: np.ndarray, seeds: np.ndarray,
                       batch_sizes: Sequence[int], *, training: bool = True) -> Loader:
    """Given images of ``split`` in a given order: ``indices`` (rows of the split) with their sample ``seeds``,
    batched by ``batch_sizes`` (one size per batch, summing to ``len(indices)``), with the train (``training``) or
    eval transforms and integer labels. For samplers other than :func:`epoch_order`'s (SFDA-DE's class-aware
    batches, a pass over every image with train augmentation)."""
    read, labels, classes, names = _checked_source(cfg, split)
    indices = np.asarray(indices, np.int64)
    sizes = [int(b) for b in batch_sizes]
    if sum(sizes) != len(indices) or min(sizes, default=1) < 1 or len(indices) == 0:
        raise DataError(f"batch sizes {sizes[:5]}{' ...' if len(sizes) > 5 else ''} do not split {len(indices)} rows")
    if indices.min() < 0 or indices.max() >= len(labels):
        raise DataError(f"row indices must lie in [0, {len(labels)}) for the {split} split of {cfg.data.dir!r}")
    bad = BadImages(names)
    data = _images(cfg, model_cfg, read, labels, indices, np.asarray(seeds, np.uint64), 0, training, bad)
    data = data.project(["image", "label", "pos"]).batch(lambda info: sizes[info.get_batch_num()])
    return Loader(dataset=data, num_samples=len(indices), steps=len(sizes), classes=list(classes), bad_images=bad,
                  indices=indices, consumed=0)


def create_loader(cfg: Config, split: str, model_cfg: ModelCfg, *, epoch: int = 0, num_shards: int = 1,
                  shard_id: int = 0, start: int = 0) -> Loader:
    """The ``split`` ("train" or "val") of ``cfg.data`` for one epoch of one shard (module docstring), from row
    ``start`` of the shard's order on (a resumed epoch: :attr:`Loader.consumed` of the interrupted one). Train:
    :func:`~.transforms.create_transforms` train ops, full batches only, int32 labels or, when Mixup/CutMix is
    active, float32 soft targets (B, model.num_classes) with label smoothing folded in. Val: eval transforms, every
    image once, int32 labels. ``data.workers`` > 1 runs the per-image work in that many processes (at most the
    machine's CPU count, MindSpore's limit: a recipe's 8 workers also run on a 2-core machine)."""
    d = cfg.data
    training = split == "train"
    read, labels, classes, names = _checked_source(cfg, split)
    indices, seeds = epoch_order(len(labels), seed=cfg.seed, epoch=epoch, training=training,
                                 repeated_aug=training and d.repeated_aug, num_shards=num_shards, shard_id=shard_id)
    if not 0 <= start <= len(indices):
        raise DataError(f"start row {start} is outside this shard's {len(indices)} rows")
    batch_size = d.batch_size if training else (d.val_batch_size or d.batch_size)
    mix = training and mixup_active(d)
    if training and len(indices) < batch_size:
        raise DataError(f"the train split has {len(indices)} images per shard, fewer than data.batch_size "
                        f"({batch_size})")
    if mix and batch_size % 2:
        raise DataError(f"Mixup/CutMix needs an even data.batch_size, got {batch_size}")
    bad = BadImages(names)
    data = _images(cfg, model_cfg, read, labels, indices, seeds, start, training, bad)
    if mix:
        data = data.project(["image", "label", "seed", "pos"])
        data = data.batch(batch_size, drop_remainder=True, input_columns=["image", "label", "seed", "pos"],
                          output_columns=["image", "label", "pos"],
                          per_batch_map=_MixBatch(create_mixup(d, cfg.model.num_classes)))
    else:
        data = data.project(["image", "label", "pos"]).batch(batch_size, drop_remainder=training)
    rows = len(indices) - start
    steps = rows // batch_size if training else math.ceil(rows / batch_size)
    return Loader(dataset=data, num_samples=len(indices), steps=steps, classes=list(classes), bad_images=bad,
                  indices=indices, consumed=start)
