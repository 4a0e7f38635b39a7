"""MindSpore implementations (graph mode and PyNative), parameter names mirroring the official PyTorch keys.

``models/`` holds the families (one file each), ``layers/`` the shared layers, ``methods/`` the training and
compression methods; ``torch_ref`` mirrors the tree. Importing, building, loading MindSpore-named checkpoints
and training need no torch (``tests/test_torch_free.py``)."""
from __future__ import annotations

import os
from typing import Any

from mindspore import nn

from specs import get_model_cfg

from . import mim, models  # noqa: F401  (register the families)
from ._registry import registry
from .context import execution_mode

__all__ = ["create_model", "list_models", "get_model_cfg", "load_checkpoint", "execution_mode"]


def list_models(pattern: str = "*", task: str | None = "classification") -> list[str]:
    """Registered model names matching a shell-style ``pattern``: the classification models, or those of
    ``task`` (``'mim_pretrain'``, ``'mim_finetune'``; None: all; :attr:`specs.ModelCfg.task`)."""
    return registry.names(pattern, task)


def load_checkpoint(model: nn.Cell, path: str | os.PathLike, key: str | None = None) -> nn.Cell:
    """Load any supported checkpoint file (MindSpore or torch naming) into ``model`` strictly: all keys and
    shapes, one-line :class:`specs.CheckpointError`/:class:`specs.KeyMismatchError` otherwise. A ``.ckpt`` or
    ``.safetensors`` file in MindSpore names needs no torch; torch names are mapped through torch."""
    from convert.state import load_into_ms
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
