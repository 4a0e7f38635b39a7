"""PyTorch reference implementations whose state_dict keys equal the official repositories'."""
from __future__ import annotations

import os
from typing import Any

from torch import nn

from specs import get_model_cfg

from . import mim, models  # noqa: F401  (register the families)
from ._registry import registry

__all__ = ["create_model", "list_models", "get_model_cfg", "load_checkpoint"]


def list_models(pattern: str = "*", task: str | None = "classification") -> list[str]:
    """Registered model names matching a shell-style ``pattern``: the classification models, or those of
    ``task`` (``'mim_pretrain'``, ``'mim_finetune'``; None: all; :attr:`specs.ModelCfg.task`)."""
    return registry.names(pattern, task)


def load_checkpoint(model: nn.Module, path: str | os.PathLike, key: str | None = None) -> nn.Module:
    """Load any supported checkpoint file (torch or MindSpore naming) into ``model`` strictly."""
    from convert.api import load_into_torch
    return load_into_torch(model, path, key=key)


def create_model(name: str, num_classes: int | None = None, checkpoint: str | os.PathLike | None = None,
                 **kwargs: Any) -> nn.Module:
    """Build a registered model; with ``checkpoint``, load it strictly (any supported format).

    Raises :class:`specs.UnknownModelError` (a ``ValueError``) with close matches for an unknown name.
    """
    model = registry.build(name, num_classes=num_classes, **kwargs)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    return model
