"""Checkpoint conversion torch <-> MindSpore, ONNX export and the layer-by-layer parity tool.

Importing the package imports neither framework: each public name below is loaded on first use from its
module (:mod:`convert.api`, the torch bridge, imports torch before mindspore; :mod:`convert.io` and
:mod:`convert.state` need torch only to read a torch file or map torch names).
"""
from __future__ import annotations

import importlib

_HOMES = {"convert_file": "api", "ms_twin": "api", "name_map": "api", "torch_model_from": "api",
          "load_into_torch": "api", "load_into_ms": "state", "read_checkpoint": "io", "write_checkpoint": "io"}

__all__ = list(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
