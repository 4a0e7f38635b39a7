"""MindSpore implementations (graph mode and PyNative), parameter names mirroring the official PyTorch keys."""
from __future__ import annotations

import importlib.util
import os
from typing import Any

if importlib.util.find_spec("torch") is not None:
    import torch  # noqa: F401  (torch must load before mindspore in one process: libgomp clash otherwise)

from mindspore import nn  # noqa: E402

from specs import get_model_cfg  # noqa: E402

from . import adabin, addernet, bimlp, ghostnetv2, vanillanet, vig  # noqa: E402,F401  (registers the families)
from ._registry import registry  # noqa: E402

__all__ = ["create_model", "list_models", "get_model_cfg", "load_checkpoint"]


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style ``pattern``."""
    return registry.names(pattern)


def load_checkpoint(model: nn.Cell, path: str | os.PathLike, key: str | None = None) -> nn.Cell:
    """Load any supported checkpoint file (MindSpore or torch naming) into ``model`` strictly."""
    from convert.api import load_into_ms
    return load_into_ms(model, path, key=key)


def create_model(name: str, num_classes: int | None = None, checkpoint: str | os.PathLike | None = None,
                 **kwargs: Any) -> nn.Cell:
    """Build a registered model; with ``checkpoint``, load it strictly (any supported format).

    Raises :class:`specs.UnknownModelError` (a ``ValueError``) with close matches for an unknown name.
    """
    if checkpoint is None:
        return registry.build(name, num_classes=num_classes, **kwargs)
    from mindspore.nn.utils import no_init_parameters
    with no_init_parameters():          # every weight comes from the checkpoint: skip the random init
        model = registry.build(name, num_classes=num_classes, **kwargs)
    return load_checkpoint(model, checkpoint)
