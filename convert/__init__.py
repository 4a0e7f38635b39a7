"""Checkpoint conversion torch <-> MindSpore, ONNX export and the layer-by-layer parity tool.

Import order matters: torch is imported before mindspore (libgomp clash otherwise).
"""
import torch  # noqa: F401

from .api import convert_file, load_into_ms, load_into_torch, ms_twin, name_map, torch_model_from  # noqa: E402
from .io import read_checkpoint, write_checkpoint  # noqa: E402

__all__ = ["convert_file", "load_into_ms", "load_into_torch", "ms_twin", "name_map", "torch_model_from",
           "read_checkpoint", "write_checkpoint"]
