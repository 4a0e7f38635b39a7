"""Framework-free model configs and the name registry both frameworks build from.

A :class:`ModelCfg` is the analogue of timm's pretrained cfg: everything about a model that is not
framework code (architecture arguments, preprocessing, head names, paper, official sources).
``ms_models`` and ``torch_ref`` each keep a :class:`ModelRegistry` that maps the same names to their
own model classes, so a name means the same network in both frameworks.
"""
from __future__ import annotations

import difflib
import fnmatch
import inspect
import re
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Sequence

from .errors import ConfigError, InputSizeError, UnknownModelError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


_RULE_FUNCTIONS = ("infer_kwargs", "checkpoint_filter", "official_ms_entry")    # not plain data: not in to_dict


@dataclass(frozen=True)
class ModelCfg:
    """What a user needs to know about one registered model, besides its code."""

    name: str
    family: str
    arch: Mapping[str, Any]                      # constructor kwargs of the family's model class
    paper: str                                   # arXiv id
    official_code: str                           # repository and file the implementation follows
    urls: tuple[str, ...] = ()                   # official checkpoint URLs (not downloaded here)
    input_size: tuple[int, int, int] = (3, 224, 224)
    test_input_size: tuple[int, int, int] = (3, 64, 64)   # the small size the test suite uses
    min_input_size: tuple[int, int, int] = (3, 32, 32)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    num_classes: int = 1000
    first_conv: str = ""
    classifier: tuple[str, ...] = ()
    notes: str = ""
    # Checkpoint rules of the family, beside its cfg (timm's ``checkpoint_filter_fn`` pattern); framework-free
    # functions over {name: ndarray} that ``convert`` and ``ms_models.load_checkpoint`` apply:
    # (state-dict key -> shape) -> model kwargs the checkpoint implies (num_classes, deploy form, ...)
    infer_kwargs: Callable[[Mapping[str, tuple]], dict] | None = field(default=None, compare=False)
    # (state, model or None) -> state: every state read for this model passes through it (drops the extra entries
    # of an official layout; fits it to the model it is loaded into, if any: timm's ``checkpoint_filter_fn``)
    checkpoint_filter: Callable[[Mapping[str, Any], Any], dict[str, Any]] | None = field(default=None, compare=False)
    # one entry of an official mindspore-ai/models checkpoint -> (our MindSpore name, value); None: not declared
    official_ms_entry: Callable[[str, Any], tuple[str, Any] | None] | None = field(default=None, compare=False)
    # MindSpore parameters without a torch state-dict counterpart (schedule state: torch keeps it as Python
    # attributes or non-persistent buffers), as fnmatch patterns: optional in a MindSpore-named checkpoint
    # (left as they are when absent)
    ms_only_params: tuple[str, ...] = ()
    # what the model computes: "classification" (images -> logits; every registry-driven sweep of the test suite,
    # the README tables and the benchmark cover these), or "mim_pretrain" (FastMIM / LocalMIM pretraining models:
    # images -> a loss, built without ``num_classes``) and "mim_finetune" (the MAE-style fine-tune ViT, whose
    # checkpoints are pretraining files loaded by ``mim.load_pretrained``): those two are listed only on request
    # (``list_models(task=...)``) and tested by ``tests/methods/test_mim_models.py``
    task: str = "classification"

    def to_dict(self) -> dict:
        """Plain-data view (for printing and JSON), without the checkpoint-rule callables."""
        out = {k: v for k, v in self.__dict__.items() if k not in _RULE_FUNCTIONS}
        out["arch"] = dict(self.arch)
        return out


_CFGS: dict[str, ModelCfg] = {}


def register_cfgs(cfgs: Sequence[ModelCfg]) -> None:
    for cfg in cfgs:
        if cfg.name in _CFGS:
            raise ValueError(f"model {cfg.name!r} registered twice")
        _CFGS[cfg.name] = cfg


def _unknown(name: str, known: Sequence[str]) -> UnknownModelError:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; known models: {', '.join(sorted(known)[:8])} ..."
    return UnknownModelError(f"unknown model {name!r}{hint}")


def get_model_cfg(name: str) -> ModelCfg:
    """The cfg of a registered model; an unknown name raises :class:`UnknownModelError` with close matches."""
    _load_families()
    if name not in _CFGS:
        raise _unknown(name, list(_CFGS))
    return _CFGS[name]


def _natural(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


DEFAULT_TASK = "classification"   # what the listings return unless asked (the sweeps build logits from images)


def _task_ok(cfg: ModelCfg, task: str | None) -> bool:
    return task is None or cfg.task == task


def list_cfgs(pattern: str = "*", task: str | None = DEFAULT_TASK) -> list[str]:
    """Names matching ``pattern`` of the models of ``task`` (default: the classification models; None: all)."""
    _load_families()
    return sorted((n for n in _CFGS if fnmatch.fnmatch(n, pattern) and _task_ok(_CFGS[n], task)), key=_natural)


def check_input_size(cfg: ModelCfg, size: int | Sequence[int]) -> tuple[int, int]:
    """Validate an image size (int or (H, W)) against ``cfg.min_input_size``; returns (H, W)."""
    h, w = (size, size) if isinstance(size, int) else tuple(size)[-2:]
    mh, mw = cfg.min_input_size[-2:]
    if h < mh or w < mw:
        raise InputSizeError(f"{cfg.name} needs an input of at least {mh}x{mw}, got {h}x{w}")
    return h, w


def _load_families() -> None:
    from . import adabin, addernet, beit, bimlp, convnextv2, ghostnetv2, mim, resnet, swin, vanillanet, vig, vit  # noqa: F401  (each family module registers its cfgs on import)


class ModelRegistry:
    """Name -> model class for one framework; the cfgs come from :mod:`specs`."""

    def __init__(self, framework: str):
        self.framework = framework
        self._classes: dict[str, type] = {}

    def register_family(self, family: str, model_cls: type) -> type:
        _load_families()
        names = [n for n, c in _CFGS.items() if c.family == family]
        if not names:
            raise ValueError(f"no cfgs for family {family!r}")
        for n in names:
            self._classes[n] = model_cls
        return model_cls

    def names(self, pattern: str = "*", task: str | None = DEFAULT_TASK) -> list[str]:
        """Registered names matching ``pattern`` of ``task``'s models (default classification; None: all)."""
        return sorted((n for n in self._classes if fnmatch.fnmatch(n, pattern) and _task_ok(_CFGS[n], task)),
                      key=_natural)

    def model_class(self, name: str) -> type:
        """The class ``name`` builds (e.g. to ask whether the family has ``switch_to_deploy``)."""
        if name not in self._classes:
            raise _unknown(name, list(self._classes))
        return self._classes[name]

    def check_kwargs(self, name: str, kwargs: Mapping[str, Any]) -> None:
        """A constructor argument ``name``'s class does not take is a one-line :class:`ConfigError` naming it
        (with close matches), not a ``TypeError`` from inside the constructor."""
        params = inspect.signature(self.model_class(name)).parameters
        if any(p.kind is p.VAR_KEYWORD for p in params.values()):
            return
        for key in kwargs:
            if key not in params:
                close = difflib.get_close_matches(key, list(params), n=3)
                hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
                raise ConfigError(f"model {name!r} takes no argument {key!r}{hint}")

    def build(self, name: str, num_classes: int | None = None, **kwargs: Any):
        """Instantiate ``name`` with the cfg's architecture; kwargs override it (``deploy=True``, ...).
        ``num_classes`` defaults to the cfg's (1000 for ImageNet models, 10 for CIFAR ones)."""
        if name not in self._classes:
            raise _unknown(name, list(self._classes))
        cfg = get_model_cfg(name)
        num_classes = cfg.num_classes if num_classes is None else num_classes
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        self.check_kwargs(name, kwargs)
        if cfg.task == "mim_pretrain":     # a pretraining model has no classifier: num_classes does not apply
            model = self._classes[name](**{**cfg.arch, **kwargs})
        else:
            model = self._classes[name](**{**cfg.arch, **kwargs}, num_classes=num_classes)
        model.pretrained_cfg = replace(cfg, num_classes=num_classes)
        model.build_kwargs = dict(kwargs)      # the overrides: the converter rebuilds this layout from them
        return model
