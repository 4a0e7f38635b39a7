"""The training config: a typed schema with defaults, read from YAML, overridden by dotted ``KEY=VALUE`` items,
checked, and saved (atomically) so that a run's resolved config re-loads to an equal :class:`Config`.

Sections: ``model``, ``data``, ``optimizer``, ``schedule``, ``train``, ``distill`` (off unless ``distill.method``
is set), ``sfda`` (off unless ``sfda.adapt``), ``mim`` (read for a ``mim_pretrain`` model), and the top-level
``seed``. Every bad input raises a one-line :class:`specs.ConfigError` naming the dotted key (with close matches
for an unknown key); an unregistered ``model.name`` raises :class:`specs.UnknownModelError` (also a ``ValueError``).

Types: an ``int`` field takes only ints; a ``float`` field takes ints and numeric strings (PyYAML reads ``1e-3``,
without a dot, as a string); a ``bool`` field takes only ``true``/``false``; ``X | None`` takes ``null``;
a tuple field takes a YAML list (or tuple) of the right length; ``model.kwargs`` is a free mapping passed
to the model's constructor. Framework-free: no torch, no MindSpore (only :mod:`specs`, PyYAML, stdlib).
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import re
import tempfile
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import yaml

from specs import check_input_size, get_model_cfg
from specs.errors import ConfigError, InputSizeError, UnknownModelError
from specs.mim import is_pretraining

OPTIMIZERS = ("sgd", "adamw", "lamb", "rmsprop")
SCHEDULES = ("cosine", "mae_cosine", "step", "linear", "inv")
AMP_LEVELS = ("O0", "O1", "O2", "O3")
MODES = ("graph", "pynative")
DEVICE_TARGETS = ("CPU", "Ascend", "GPU")
LOSS_SCALES = ("none", "static", "dynamic")
LOSSES = ("ce", "bce")
INTERPOLATIONS = ("random", "bilinear", "bicubic", "nearest")
MIXUP_MODES = ("batch", "pair", "elem")
ERASE_MODES = ("pixel", "rand", "const")
AUTO_AUGMENT_POLICIES = ("rand", "augmix", "original", "originalr", "v0", "v0r", "3a")
BUILTIN_PREFIX = "builtin:"
KD_METHODS = ("kd", "dkd", "dist", "bkd")
# what an extra student (distill.students) may set: everything but the shared batches, schedule length and teacher
STUDENT_SECTIONS = ("model.", "optimizer.", "schedule.")
STUDENT_KEYS = ("train.loss", "train.bce_target_thresh", "train.amp_level", "train.loss_scale",
                "train.loss_scale_value", "train.grad_clip", "train.ema_decay", "train.export_torch",
                "train.skip_nonfinite", "distill.method", "distill.ori_loss_weight", "distill.kd_loss_weight",
                "distill.temperature", "distill.dkd_alpha", "distill.dkd_beta", "distill.dist_beta",
                "distill.dist_gamma", "distill.student_resize")


@dataclass
class ModelConfig:
    """What to build: a registered name, its head size, an optional starting checkpoint, regularisation."""

    name: str = "vanillanet_5"
    num_classes: int = 1000
    pretrained: str | None = None            # checkpoint file (any format the converter reads) to start from
    # load `pretrained` as the MIM fine-tune scripts' --finetune: a pretraining checkpoint's encoder, non-strictly,
    # head redrawn (always so for the mim_finetune models; set it for a Swin fine-tuned from FastMIM)
    mim_finetune: bool = False
    drop_rate: float | None = None           # dropout before the classifier; None: the model's default
    drop_path_rate: float | None = None      # stochastic depth (families that have it); None: the model's default
    kwargs: dict[str, Any] = field(default_factory=dict)   # extra constructor kwargs (e.g. VanillaNet decay_epochs)


@dataclass
class DataConfig:
    """Where the images come from and how training augments them (timm argument names and semantics)."""

    dir: str | None = None                   # ImageFolder root with train/ and val/, or "builtin:<name>"
    image_size: int = 224
    batch_size: int = 128                    # per device
    val_batch_size: int | None = None        # None: batch_size
    workers: int = 4                         # dataset workers per device
    skip_bad_images: bool = False            # skip (and count) unreadable images instead of failing
    mean: tuple[float, float, float] | None = None   # None: the model cfg's
    std: tuple[float, float, float] | None = None
    crop_pct: float | None = None            # eval resize = image_size / crop_pct; None: the model cfg's
    interpolation: str = "bicubic"           # train resize interpolation (timm's "random" picks per image)
    scale: tuple[float, float] = (0.08, 1.0)            # RandomResizedCrop
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    random_crop_padding: int | None = None   # CIFAR style: RandomCrop(image_size, padding) instead of RRC
    train_resize: int | None = None          # CAN / SFDA-DE resize_and_crop: Resize((r, r)) then RandomCrop
                                             # (train) or CenterCrop (eval) of image_size, instead of RRC / crop_pct
    hflip: float = 0.5
    color_jitter: float = 0.0
    auto_augment: str | None = None          # timm string: "rand-m9-mstd0.5-inc1", "original", "augmix", ...
    reprob: float = 0.0                      # random erasing
    remode: str = "pixel"
    recount: int = 1
    mixup: float = 0.0                       # alphas; 0 disables
    cutmix: float = 0.0
    cutmix_minmax: tuple[float, float] | None = None
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    mixup_mode: str = "batch"
    smoothing: float = 0.0                   # label smoothing (inside the mixup targets when mixup is on)
    repeated_aug: bool = False


@dataclass
class OptimizerConfig:
    """The optimizer; weight decay skips norms, biases and ``model.no_weight_decay()``."""

    name: str = "adamw"
    lr: float = 1e-3
    lr_base_size: int | None = None          # set: lr is for this global batch, scaled by global_batch / it
    weight_decay: float = 0.05
    momentum: float = 0.9                    # sgd, rmsprop
    nesterov: bool = False                   # sgd
    eps: float = 1e-8
    betas: tuple[float, float] = (0.9, 0.999)   # adamw, lamb
    alpha: float = 0.9                       # rmsprop squared-gradient decay (TF style, timm's rmsproptf)
    layer_decay: float | None = None         # layer-wise lr decay through model.group_matcher()
    filter_bias_and_bn: bool = True          # timm's rule: no weight decay for ndim <= 1 and no_weight_decay();
                                             # false: decay on every parameter (torch.optim over model.parameters())


@dataclass
class ScheduleConfig:
    """The learning-rate schedule: warmup from ``warmup_lr``, then cosine / mae_cosine / step / linear / inv down to
    ``min_lr`` (:mod:`specs.schedules`)."""

    name: str = "cosine"
    warmup_epochs: float = 0.0
    warmup_lr: float = 0.0
    min_lr: float = 0.0
    decay_epochs: float = 30.0               # step: decay every decay_epochs by decay_rate
    decay_rate: float = 0.1
    cooldown_epochs: int = 0                 # epochs at min_lr after the schedule (timm; counted in train.epochs)
    per_epoch: bool = False                  # update the lr once per epoch instead of every step
    inv_alpha: float = 1e-3                  # inv: lr / (1 + inv_alpha * t) ** inv_beta (CAN / SFDA-DE defaults)
    inv_beta: float = 0.75


@dataclass
class TrainConfig:
    """How a step runs (precision, mode, device) and what the run keeps."""

    epochs: int = 300
    loss: str = "ce"                         # ce (soft-target CE under mixup) or bce (timm BinaryCrossEntropy)
    bce_target_thresh: float | None = None
    amp_level: str = "O0"                    # O0 on CPU; O1/O2/O3 on Ascend
    loss_scale: str = "none"                 # none / static / dynamic
    loss_scale_value: float = 65536.0        # static value, or the dynamic scale's start
    grad_clip: float | None = None           # global-norm clipping
    accumulate: int = 1                      # gradient accumulation steps
    ema_decay: float | None = None           # EMA of weights (timm ModelEmaV2); None: off
    mode: str = "graph"                      # MindSpore GRAPH_MODE or PYNATIVE_MODE
    device_target: str = "CPU"
    export_torch: bool = False               # also write the best weights as a torch .pth
    log_interval: int = 50                   # steps between log lines
    eval_interval: int = 1                   # epochs between validations
    save_interval: int = 1                   # epochs between last.ckpt writes
    save_every_steps: int = 0                # also write last.ckpt every N batches (mid-epoch resume); 0: off
    skip_nonfinite: bool = False             # skip (and count) an update with a non-finite loss or gradients
                                             # instead of stopping the run


@dataclass
class TeacherConfig:
    """The frozen teacher of a distillation run (VanillaKD ``train-kd.py`` ``--teacher``, ``--teacher-pretrained``,
    ``--teacher-resize``): a registered model, its weights (required; any format the converter reads, loaded
    strictly at start) and the side its input is resized to (None: the student's batch as it is)."""

    name: str = "beitv2_base_patch16_224"
    checkpoint: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)   # extra constructor kwargs of a reduced teacher
    resize: int | None = None


@dataclass
class DistillConfig:
    """Logit distillation (VanillaKD ``train-kd.py``; argparse defaults): ``loss = ori_loss_weight * hard +
    kd_loss_weight * kd(z_s, z_t)`` with ``method`` one of kd, dkd, dist, bkd (None: no distillation).
    ``temperature`` is ``--temperature`` (KD's and DKD's T, DIST's tau)."""

    method: str | None = None
    ori_loss_weight: float = 1.0
    kd_loss_weight: float = 1.0
    temperature: float = 1.0
    dkd_alpha: float = 1.0
    dkd_beta: float = 2.0
    dist_beta: float = 1.0
    dist_gamma: float = 1.0
    student_resize: int | None = None        # --student-resize
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    cache_teacher: bool = False              # record the teacher's logits and replay them (not in train-kd.py)
    cache_epochs: int = 1                    # with the cache: epoch e trains on epoch (e mod cache_epochs)'s
                                             # batches (images, order, augmentation, mixing); the teacher runs
                                             # in the first cache_epochs epochs only
    cache_topk: int | None = None            # keep the k largest logits per image (None: all, an exact replay)
    students: tuple[dict[str, Any], ...] = ()   # more students against the same teacher forward (train-kd.py's
                                             # lists of --model, --lr, --kd-loss ...): each a mapping of dotted
                                             # keys laid over this config (STUDENT_KEYS)


@dataclass
class SfdaConfig:
    """SFDA-DE adaptation of a source model to the unlabelled target ``data.dir`` (CvNoob/SFDA-DE
    ``config/config.py`` defaults; :mod:`ms_models.train.sfda`). Off unless ``adapt``. A loop is an epoch of the
    run (``train.epochs`` = ``TRAIN.MAX_LOOP``): cluster, filter and estimate over the whole target train split,
    then ``iters_per_loop`` steps. The source model comes from ``model.pretrained``; no source image is read."""

    adapt: bool = False
    iters_per_loop: int = 50                 # TRAIN.ITER_PER_LOOP
    num_selected_classes: int = 10           # TRAIN.NUM_SELECTED_CLASSES: classes per step
    class_batch_size: int = 3                # TRAIN.TARGET_CLASS_BATCH_SIZE: target images (and surrogate
                                             # features) per selected class
    cluster_batch_size: int = 100            # CLUSTERING.TARGET_BATCH_SIZE: the feature pass's batch
    eps: float = 1e-3                        # CLUSTERING.EPS: k-means stop
    filtering_threshold: float = 1.0         # CLUSTERING.FILTERING_THRESHOLD (VisDA 0.078, Office-31 0.5)
    min_per_class: int = 5                   # TRAIN.MIN_SN_PER_CLASS
    variance_mult: float = 1.0               # TRAIN.VARIANCE_MULT (VisDA 2.0)
    bn_lr_mult: float = 1.0                  # TRAIN.TRAIN_BN_MULT: 10.0 for parameters with "bn" in their
                                             # official name (VisDA); 1.0 off
    cdd_weight: float = 1.0                  # LOSS.CDD_WEIGHT
    kernel_num: tuple[int, int] = (5, 5)     # CDD.KERNEL_NUM, per aligned layer (feat, probs)
    kernel_mul: tuple[float, float] = (2.0, 2.0)   # CDD.KERNEL_MUL
    intra_only: bool = False                 # CDD.INTRA_ONLY
    mean_class_accuracy: bool = False        # EVAL_METRIC mean_accu (VisDA): val_top1 is the mean of the
                                             # per-class accuracies; false: overall accuracy (Office-31)


@dataclass
class MimConfig:
    """Masked-image-modeling pretraining (FastMIM ``mim_vit_pretrain.py``, LocalMIM ``ViT/run_pretrain.py``
    ``--mask_ratio``; :mod:`ms_models.train.mim`): read when ``model.name`` is a ``mim_pretrain`` model."""

    mask_ratio: float = 0.75
    # FastMIM-P's progressive resolution (FastMIM main_pretrain.py --mim_pt_size/_step/_bs/_accum), one entry per
    # phase: from epoch pt_step[i] on, train crops of pt_size[i] px in batches of pt_bs[i], pt_accum[i] per update
    # (replacing data.image_size, data.batch_size and train.accumulate in training; validation stays at
    # data.image_size); the lr is optimizer.lr scaled by the phase's global batch (optimizer.lr_base_size)
    pt_size: tuple[int, ...] | None = None
    pt_step: tuple[int, ...] | None = None
    pt_bs: tuple[int, ...] | None = None
    pt_accum: tuple[int, ...] | None = None


@dataclass
class Config:
    """A whole run. ``config_to_dict``/``config_from_dict`` convert it; ``load_config``/``save_config`` persist it."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    sfda: SfdaConfig = field(default_factory=SfdaConfig)
    mim: MimConfig = field(default_factory=MimConfig)
    seed: int = 0


def mixup_active(data: DataConfig) -> bool:
    """Whether Mixup/CutMix is on (timm train.py ``mixup_active``): the loader then yields soft targets."""
    return data.mixup > 0 or data.cutmix > 0 or data.cutmix_minmax is not None


# --- schema walking ---------------------------------------------------------------------------------------------

def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _all_keys(cls: type = Config, prefix: str = "") -> list[str]:
    keys = []
    for name, tp in _hints(cls).items():
        keys += _all_keys(tp, f"{prefix}{name}.") if dataclasses.is_dataclass(tp) else [prefix + name]
    return keys


def _unknown_key(key: str) -> ConfigError:
    known = _all_keys() if "." in key else [f.name for f in dataclasses.fields(Config)] + _all_keys()
    leaf = key.rsplit(".", 1)[-1]
    scores = {}
    for k in known:
        leaf_score = difflib.SequenceMatcher(None, leaf, k.rsplit(".", 1)[-1]).ratio()
        scores[k] = max(difflib.SequenceMatcher(None, key, k).ratio(), 0.95 * leaf_score)
    close = sorted((k for k, s in scores.items() if s >= 0.7), key=lambda k: -scores[k])[:3]
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return ConfigError(f"unknown config key {key!r}{hint}")


_NAMES = {int: "int", float: "float", bool: "bool (true/false)", str: "str", type(None): "null"}


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        args = typing.get_args(tp)
        return "a list" if Ellipsis in args else f"a list of {len(args)} {_NAMES.get(args[0], args[0])}s"
    if origin is dict:
        return "a mapping"
    name = _NAMES.get(tp, str(tp))
    return name if tp is type(None) else ("an " if name[0] == "i" else "a ") + name


def _bad_type(key: str, tp: Any, value: Any) -> ConfigError:
    return ConfigError(f"config key {key!r} must be {_type_name(tp)}, got {type(value).__name__} {value!r}")


_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """``value`` checked against the field type ``tp`` (and converted where the module docstring says)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            try:
                return _coerce(value, inner[0], key)
            except ConfigError:
                raise _bad_type(key, tp, value) from None
        raise TypeError(f"unsupported field type {tp}")
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or (Ellipsis not in args and len(value) != len(args)):
            raise _bad_type(key, tp, value)
        elem = [args[0]] * len(value) if Ellipsis in args else args
        return tuple(_coerce(v, t, f"{key}[{i}]") for i, (v, t) in enumerate(zip(value, elem)))
    if origin is dict:
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            raise _bad_type(key, tp, value)
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise _bad_type(key, tp, value)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _bad_type(key, tp, value)
        return value
    if tp is float:
        if isinstance(value, str) and _NUMBER.match(value.strip()):
            return float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _bad_type(key, tp, value)
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise _bad_type(key, tp, value)
        return value
    raise TypeError(f"unsupported field type {tp}")


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, Mapping):
        where = f"config key {prefix[:-1]!r}" if prefix else "a config"
        raise ConfigError(f"{where} must be a mapping, got {type(data).__name__} {data!r}")
    hints = _hints(cls)
    unknown = [k for k in data if k not in hints]
    if unknown:
        raise _unknown_key(f"{prefix}{unknown[0]}")
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        kwargs[name] = (_build(tp, value, f"{prefix}{name}.") if dataclasses.is_dataclass(tp)
                        else _coerce(value, tp, prefix + name))
    return cls(**kwargs)


# --- value checks -----------------------------------------------------------------------------------------------

def _choice(key: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        close = difflib.get_close_matches(value, choices, n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"config key {key!r} must be one of {', '.join(choices)}, got {value!r}{hint}")


def _check(ok: bool, key: str, what: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"config key {key!r} must be {what}, got {value!r}")


def validate(cfg: Config) -> Config:
    """Check the values (names among the supported ones, sizes positive, probabilities in [0, 1], the model
    registered and able to take ``data.image_size``); returns ``cfg``."""
    m, d, o, s, t = cfg.model, cfg.data, cfg.optimizer, cfg.schedule, cfg.train
    try:
        model_cfg = get_model_cfg(m.name)
    except UnknownModelError as exc:
        raise UnknownModelError(f"config key 'model.name': {exc}") from None
    from .. import registry         # the MindSpore classes (importing the package registered them)
    try:
        registry.check_kwargs(m.name, m.kwargs)
    except ConfigError as exc:
        raise ConfigError(f"config key 'model.kwargs': {exc}") from None
    positive = {"model.num_classes": m.num_classes, "data.image_size": d.image_size,
                "data.batch_size": d.batch_size, "data.val_batch_size": d.val_batch_size or 1,
                "data.recount": d.recount, "optimizer.lr": o.lr, "optimizer.lr_base_size": o.lr_base_size or 1,
                "schedule.decay_epochs": s.decay_epochs, "train.epochs": t.epochs,
                "train.accumulate": t.accumulate, "train.loss_scale_value": t.loss_scale_value,
                "train.grad_clip": 1 if t.grad_clip is None else t.grad_clip, "train.log_interval": t.log_interval,
                "train.eval_interval": t.eval_interval, "train.save_interval": t.save_interval}
    for key, value in positive.items():
        _check(value > 0, key, "positive", value)
    non_negative = {"data.workers": d.workers, "data.color_jitter": d.color_jitter, "data.mixup": d.mixup,
                    "data.cutmix": d.cutmix, "data.random_crop_padding": d.random_crop_padding or 0,
                    "optimizer.weight_decay": o.weight_decay, "optimizer.eps": o.eps,
                    "schedule.warmup_epochs": s.warmup_epochs, "schedule.warmup_lr": s.warmup_lr,
                    "schedule.min_lr": s.min_lr, "schedule.cooldown_epochs": s.cooldown_epochs,
                    "schedule.decay_rate": s.decay_rate, "train.save_every_steps": t.save_every_steps}
    for key, value in non_negative.items():
        _check(value >= 0, key, ">= 0", value)
    unit = {"data.hflip": d.hflip, "data.reprob": d.reprob, "data.mixup_prob": d.mixup_prob,
            "data.mixup_switch_prob": d.mixup_switch_prob, "data.smoothing": d.smoothing,
            "optimizer.momentum": o.momentum, "optimizer.alpha": o.alpha, "model.drop_rate": m.drop_rate or 0,
            "model.drop_path_rate": m.drop_path_rate or 0, "optimizer.layer_decay": o.layer_decay or 1,
            "data.crop_pct": d.crop_pct or 1, "train.ema_decay": t.ema_decay or 0,
            "optimizer.betas[0]": o.betas[0], "optimizer.betas[1]": o.betas[1]}
    for key, value in unit.items():
        _check(0 <= value <= 1, key, "in [0, 1]", value)
    _check(d.crop_pct is None or d.crop_pct > 0, "data.crop_pct", "positive", d.crop_pct)
    _check(d.train_resize is None or d.train_resize >= d.image_size, "data.train_resize",
           f"at least data.image_size ({d.image_size})", d.train_resize)
    _check(d.smoothing < 1, "data.smoothing", "below 1", d.smoothing)
    _check(o.layer_decay is None or o.layer_decay > 0, "optimizer.layer_decay", "positive", o.layer_decay)
    _check(s.min_lr <= o.lr, "schedule.min_lr", f"<= optimizer.lr ({o.lr})", s.min_lr)
    _check(s.warmup_epochs + s.cooldown_epochs < t.epochs, "schedule.warmup_epochs",
           f"shorter than train.epochs ({t.epochs}) with the cooldown", s.warmup_epochs)
    for key, lo_hi in (("data.scale", d.scale), ("data.ratio", d.ratio), ("data.cutmix_minmax", d.cutmix_minmax)):
        _check(lo_hi is None or 0 < lo_hi[0] <= lo_hi[1], key, "an increasing positive pair", lo_hi)
    _check(d.dir is None or d.dir != BUILTIN_PREFIX, "data.dir", f"a folder or {BUILTIN_PREFIX}<name>", d.dir)
    for key, value, choices in (("optimizer.name", o.name, OPTIMIZERS), ("schedule.name", s.name, SCHEDULES),
                                ("train.amp_level", t.amp_level, AMP_LEVELS), ("train.mode", t.mode, MODES),
                                ("train.device_target", t.device_target, DEVICE_TARGETS),
                                ("train.loss_scale", t.loss_scale, LOSS_SCALES), ("train.loss", t.loss, LOSSES),
                                ("data.interpolation", d.interpolation, INTERPOLATIONS),
                                ("data.mixup_mode", d.mixup_mode, MIXUP_MODES), ("data.remode", d.remode, ERASE_MODES)):
        _choice(key, value, choices)
    if d.auto_augment is not None:
        parts = d.auto_augment.split("-")
        _check(parts[0] in AUTO_AUGMENT_POLICIES and all(re.fullmatch(r"[a-z]+[0-9.]*", p) for p in parts[1:]),
               "data.auto_augment", f"a timm policy string ({'/'.join(AUTO_AUGMENT_POLICIES)}[-m9-mstd0.5...])",
               d.auto_augment)
    student_resize = cfg.distill.student_resize if cfg.distill.method is not None else None
    side_key = "distill.student_resize" if student_resize else "data.image_size"
    if "img_size" in m.kwargs:           # a model built for one input side (ViT-style position tables)
        _check(m.kwargs["img_size"] == (student_resize or d.image_size), "model.kwargs.img_size",
               f"equal to {side_key} ({student_resize or d.image_size})", m.kwargs["img_size"])
    else:
        try:
            check_input_size(model_cfg, student_resize or d.image_size)
        except InputSizeError as exc:
            raise ConfigError(f"config key {side_key!r}: {exc}") from None
    if cfg.distill.method is not None:
        _validate_distill(cfg.distill, d.image_size, m.num_classes)
    if cfg.distill.students:
        student_configs(cfg)
    if cfg.sfda.adapt:
        _validate_sfda(cfg)
    _check(0 < cfg.mim.mask_ratio < 1, "mim.mask_ratio", "in (0, 1)", cfg.mim.mask_ratio)
    if is_pretraining(m.name):
        _validate_pretraining(cfg)
    _validate_phases(cfg)
    return cfg


_PHASE_KEYS = ("pt_size", "pt_step", "pt_bs", "pt_accum")


def _validate_phases(cfg: Config) -> None:
    """FastMIM-P's phase keys (``mim.pt_*``): all or none, one entry each per phase, the first phase from epoch 0
    (upstream has no phase before it), later ones in increasing epochs of the run."""
    k = cfg.mim
    given = [key for key in _PHASE_KEYS if getattr(k, key) is not None]
    if not given:
        return
    if len(given) < len(_PHASE_KEYS):
        missing = next(key for key in _PHASE_KEYS if key not in given)
        raise ConfigError(f"config key 'mim.{missing}' is needed with 'mim.{given[0]}': FastMIM-P's phases need "
                          f"mim.pt_size, mim.pt_step, mim.pt_bs and mim.pt_accum")
    _check(get_model_cfg(cfg.model.name).family == "fastmim", "model.name", "a FastMIM ViT pretraining model for "
           "FastMIM-P's phases (mim.pt_*)", cfg.model.name)
    n = len(k.pt_size)
    for key in _PHASE_KEYS:
        values = getattr(k, key)
        _check(len(values) == n, f"mim.{key}", f"a list of {n} values, one per phase like mim.pt_size", list(values))
        _check(all(v >= (0 if key == "pt_step" else 1) for v in values), f"mim.{key}",
               "non-negative" if key == "pt_step" else "positive", list(values))
    _check(k.pt_step[0] == 0 and all(a < b for a, b in zip(k.pt_step, k.pt_step[1:]))
           and k.pt_step[-1] < cfg.train.epochs, "mim.pt_step",
           f"increasing first epochs of the phases, from 0 and below train.epochs ({cfg.train.epochs})",
           list(k.pt_step))
    _check(cfg.train.accumulate == 1, "train.accumulate", "1 with FastMIM-P's phases (mim.pt_accum sets it per "
           "phase)", cfg.train.accumulate)


# what a masked-image-modeling pretraining step (a model that returns its own loss, no labels) cannot take
_MIM_UNSUPPORTED = (("distill.method", lambda c: c.distill.method is not None), ("sfda.adapt", lambda c: c.sfda.adapt),
                    ("data.mixup", lambda c: mixup_active(c.data)), ("data.smoothing", lambda c: c.data.smoothing > 0),
                    ("train.loss", lambda c: c.train.loss != "ce"),
                    ("train.ema_decay", lambda c: c.train.ema_decay is not None))


def _validate_pretraining(cfg: Config) -> None:
    """The settings that need labels or logits, refused for a ``mim_pretrain`` model."""
    for key, bad in _MIM_UNSUPPORTED:
        if bad(cfg):
            raise ConfigError(f"config key {key!r}: {cfg.model.name} is a masked-image-modeling pretraining model "
                              f"(it returns its own loss, no labels or logits); leave it at its default")


# what SFDA-DE's adaptation step does not have (CvNoob/SFDA-DE solver/anchor_solver.py: a plain SGD step)
_SFDA_UNSUPPORTED = (("distill.method", lambda c: c.distill.method is not None), ("train.ema_decay",
                     lambda c: c.train.ema_decay is not None), ("train.accumulate", lambda c: c.train.accumulate != 1),
                     ("train.amp_level", lambda c: c.train.amp_level != "O0"),
                     ("train.loss_scale", lambda c: c.train.loss_scale != "none"),
                     ("train.grad_clip", lambda c: c.train.grad_clip is not None),
                     ("data.mixup", lambda c: mixup_active(c.data)), ("data.repeated_aug", lambda c: c.data.repeated_aug),
                     ("train.save_every_steps", lambda c: c.train.save_every_steps != 0))


def _validate_sfda(cfg: Config) -> None:
    """The ``sfda`` section's values, and the settings an adaptation run cannot take, when ``sfda.adapt``."""
    k = cfg.sfda
    for key, value in (("sfda.iters_per_loop", k.iters_per_loop), ("sfda.num_selected_classes",
                       k.num_selected_classes), ("sfda.class_batch_size", k.class_batch_size),
                       ("sfda.cluster_batch_size", k.cluster_batch_size), ("sfda.eps", k.eps),
                       ("sfda.filtering_threshold", k.filtering_threshold), ("sfda.min_per_class", k.min_per_class),
                       ("sfda.variance_mult", k.variance_mult), ("sfda.bn_lr_mult", k.bn_lr_mult),
                       ("sfda.cdd_weight", k.cdd_weight), ("sfda.kernel_num[0]", k.kernel_num[0]),
                       ("sfda.kernel_num[1]", k.kernel_num[1]), ("sfda.kernel_mul[0]", k.kernel_mul[0]),
                       ("sfda.kernel_mul[1]", k.kernel_mul[1])):
        _check(value > 0, key, "positive", value)
    for key, bad in _SFDA_UNSUPPORTED:
        if bad(cfg):
            raise ConfigError(f"config key {key!r}: SFDA-DE adaptation (sfda.adapt) trains with a plain step and "
                              f"checkpoints after whole loops; leave it at its default")
    if not cfg.model.pretrained:
        raise ConfigError("config key 'model.pretrained' is required with sfda.adapt: the source model to adapt "
                          "(a checkpoint of a run on the source data)")


def _validate_distill(k: DistillConfig, image_size: int, num_classes: int) -> None:
    """The ``distill`` section's values, when distillation is on."""
    _choice("distill.method", k.method, KD_METHODS)
    for key, value in (("distill.ori_loss_weight", k.ori_loss_weight), ("distill.kd_loss_weight", k.kd_loss_weight),
                       ("distill.dkd_alpha", k.dkd_alpha), ("distill.dkd_beta", k.dkd_beta),
                       ("distill.dist_beta", k.dist_beta), ("distill.dist_gamma", k.dist_gamma)):
        _check(value >= 0, key, ">= 0", value)
    for key, value in (("distill.temperature", k.temperature), ("distill.student_resize", k.student_resize or 1),
                       ("distill.teacher.resize", k.teacher.resize or 1), ("distill.cache_epochs", k.cache_epochs),
                       ("distill.cache_topk", k.cache_topk or 1)):
        _check(value > 0, key, "positive", value)
    _check((k.cache_topk or 0) <= num_classes, "distill.cache_topk", f"at most model.num_classes ({num_classes})",
           k.cache_topk)
    try:
        teacher_cfg = get_model_cfg(k.teacher.name)
    except UnknownModelError as exc:
        raise UnknownModelError(f"config key 'distill.teacher.name': {exc}") from None
    from .. import registry
    try:
        registry.check_kwargs(k.teacher.name, k.teacher.kwargs)
    except ConfigError as exc:
        raise ConfigError(f"config key 'distill.teacher.kwargs': {exc}") from None
    if k.teacher.checkpoint is None:
        raise ConfigError("config key 'distill.teacher.checkpoint' is required with distill.method: the teacher's "
                          "weights (any format the converter reads)")
    try:
        check_input_size(teacher_cfg, k.teacher.resize or image_size)
    except InputSizeError as exc:
        key = "distill.teacher.resize" if k.teacher.resize else "data.image_size"
        raise ConfigError(f"config key {key!r} (teacher {k.teacher.name}): {exc}") from None


def student_configs(cfg: Config) -> list[Config]:
    """The validated configs of ``distill.students`` (the extra students trained beside ``cfg``'s): each is
    ``cfg`` with the student's dotted keys laid over it and no students of its own. Batches (``data.*``), the
    epochs, the seed and the teacher are shared, and so is ``model.num_classes`` (the teacher's)."""
    if cfg.distill.students and cfg.distill.method is None:
        raise ConfigError("config key 'distill.students' needs distill.method: the students share a teacher")
    out = []
    for i, keys in enumerate(cfg.distill.students):
        where = f"distill.students[{i}]"
        data = config_to_dict(cfg)
        data["distill"]["students"] = []
        try:
            for key, value in keys.items():
                if key == "model.num_classes" or not (key.startswith(STUDENT_SECTIONS) or key in STUDENT_KEYS):
                    raise ConfigError(f"config key {key!r} is shared by all students (a student may set "
                                      f"{', '.join(s + '*' for s in STUDENT_SECTIONS)} but model.num_classes, "
                                      f"and {', '.join(STUDENT_KEYS)})")
                _set(data, key.split("."), value)
            if data["distill"]["method"] is None:
                raise ConfigError("config key 'distill.method': a student needs a distillation method")
            out.append(config_from_dict(data))
        except (ConfigError, UnknownModelError) as exc:
            raise type(exc)(f"{where}: {exc}") from None
    return out


# --- public API -------------------------------------------------------------------------------------------------

def config_from_dict(data: Mapping[str, Any]) -> Config:
    """A validated :class:`Config` from nested plain data; missing keys keep their defaults."""
    return validate(_build(Config, data, ""))


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """Nested plain data (lists for tuples) that ``yaml.safe_dump`` and :func:`config_from_dict` take."""
    return _plain(dataclasses.asdict(cfg))


BASE_KEY = "base"


def _merged(base: Mapping[str, Any], data: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``data`` laid over it, section by section (a mapping merges into a mapping; anything else
    replaces; ``model.kwargs`` and ``distill.teacher.kwargs`` merge too)."""
    out = dict(base)
    for key, value in data.items():
        out[key] = _merged(out[key], value) if isinstance(value, Mapping) and isinstance(out.get(key), Mapping) \
            else value
    return out


def _read_yaml(path: str | os.PathLike, chain: tuple[str, ...] = ()) -> dict[str, Any]:
    """A recipe as plain data, its ``base:`` recipes (a path relative to the file) merged underneath."""
    where = os.path.abspath(path)
    if where in chain:
        raise ConfigError(f"config {os.fspath(path)!r}: its 'base' chain comes back to itself")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read config {os.fspath(path)!r}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where_line = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise ConfigError(f"config {os.fspath(path)!r}{where_line}: {problem}") from None
    data = {} if data is None else data
    if not isinstance(data, Mapping):
        raise ConfigError(f"config {os.fspath(path)!r} must be a mapping, got {type(data).__name__}")
    if BASE_KEY not in data:
        return dict(data)
    base = data[BASE_KEY]
    if not isinstance(base, str):
        raise ConfigError(f"config {os.fspath(path)!r}: 'base' must be a recipe path, got {base!r}")
    rest = {k: v for k, v in data.items() if k != BASE_KEY}
    return _merged(_read_yaml(os.path.join(os.path.dirname(where), base), chain + (where,)), rest)


def load_config(path: str | os.PathLike) -> Config:
    """Read a YAML recipe (an empty file gives the defaults) and validate it. A top-level ``base: FILE`` (relative
    to the recipe) starts from that recipe: the keys given here replace or extend its values."""
    return config_from_dict(_read_yaml(path))


def save_config(cfg: Config, path: str | os.PathLike) -> str:
    """Write ``cfg`` as YAML atomically (a temporary file in the same folder, then ``os.replace``): an existing
    file is replaced only by a complete one. Returns the path."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            yaml.safe_dump(config_to_dict(cfg), f, sort_keys=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path


def _parse_override(item: str) -> tuple[list[str], Any]:
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r} is not KEY=VALUE with a dotted key (e.g. optimizer.lr=0.01)")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        raise ConfigError(f"override {key!r}: value {text!r} is not a YAML scalar or list") from None
    return key.split("."), value


def _free(parts: list[str]) -> bool:
    """Whether the dotted key ``parts`` lies under a free mapping (``model.kwargs``, ``distill.teacher.kwargs``)."""
    return (len(parts) > 2 and parts[:2] == ["model", "kwargs"]) or \
        (len(parts) > 3 and parts[:3] == ["distill", "teacher", "kwargs"])


def apply_overrides(cfg: Config, items: Sequence[str]) -> Config:
    """A new validated :class:`Config`: ``cfg`` with each ``"dotted.key=value"`` applied in order. Values are
    YAML (``32``, ``0.01``, ``true``, ``null``, ``[0.9, 0.95]``, ``rand-m9-mstd0.5``), type-checked against
    the field; keys under ``model.kwargs`` and ``distill.teacher.kwargs`` are free."""
    data = config_to_dict(cfg)
    for item in items:
        _set(data, *_parse_override(item))
    return config_from_dict(data)


def _set(data: dict[str, Any], parts: list[str], value: Any) -> None:
    """Set the dotted key ``parts`` of the plain config ``data`` to ``value`` (an unknown key is an error)."""
    node = data
    for depth, part in enumerate(parts[:-1]):
        if part not in node:
            raise _unknown_key(".".join(parts))
        if not isinstance(node[part], dict):
            raise ConfigError(f"config key {'.'.join(parts[:depth + 1])!r} is not a section; "
                              f"cannot set {'.'.join(parts)!r}")
        node = node[part]
    if parts[-1] not in node and not _free(parts):
        raise _unknown_key(".".join(parts))
    node[parts[-1]] = value
