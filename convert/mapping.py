"""The torch <-> MindSpore name map, computed from the two instantiated models.

Walks the torch module tree; each module's own parameters and persistent buffers are renamed by the
module's *type* (BatchNorm ``weight -> gamma``, ``running_var -> moving_variance``, ...) under the same
structural prefix, and the result must be a parameter of the MindSpore model with the same shape. Nothing
is guessed from strings: a model pair that does not mirror itself fails loudly here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
from torch import nn

from specs.errors import KeyMismatchError

from .state import check_keys

_NORM = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}
_RENAMES: dict[type, dict[str, str]] = {
    nn.BatchNorm1d: _NORM, nn.BatchNorm2d: _NORM,
    nn.LayerNorm: {"weight": "gamma", "bias": "beta"},
    nn.GroupNorm: {"weight": "gamma", "bias": "beta"},
    nn.PReLU: {"weight": "w"},
}
_TORCH_ONLY = {"num_batches_tracked"}   # BatchNorm's step counter: no MindSpore counterpart


@dataclass
class NameMap:
    """torch key <-> MindSpore name for one model pair, with the shapes and the one-sided entries."""

    model: str
    torch_to_ms: dict[str, str]
    torch_shapes: dict[str, tuple]
    ms_shapes: dict[str, tuple]
    torch_only: dict[str, np.ndarray] = field(default_factory=dict)   # restored with these values
    ms_only: dict[str, np.ndarray] = field(default_factory=dict)      # filled with these values

    @property
    def ms_to_torch(self) -> dict[str, str]:
        return {m: t for t, m in self.torch_to_ms.items()}


def _torch_entries(model: nn.Module):
    for prefix, module in model.named_modules():
        local = dict(module._parameters)
        local.update({k: v for k, v in module._buffers.items() if k not in module._non_persistent_buffers_set})
        renames = next((r for t, r in _RENAMES.items() if isinstance(module, t)), {})
        for name, tensor in local.items():
            if tensor is None:
                continue
            key = f"{prefix}.{name}" if prefix else name
            yield key, (f"{prefix}.{renames.get(name, name)}" if prefix else renames.get(name, name)), tensor


def build_name_map(torch_model: nn.Module, ms_model, model: str = "model") -> NameMap:
    """Pair every torch state-dict entry with its MindSpore parameter (see module docstring)."""
    ms_params = dict(ms_model.parameters_and_names())
    ms_shapes = {k: tuple(p.shape) for k, p in ms_params.items()}
    pairs, torch_shapes, torch_only, unpaired = {}, {}, {}, []
    for key, ms_key, tensor in _torch_entries(torch_model):
        torch_shapes[key] = tuple(tensor.shape)
        if key.rsplit(".", 1)[-1] in _TORCH_ONLY:
            torch_only[key] = np.zeros(tuple(tensor.shape), dtype=np.int64)
        elif ms_key in ms_params and ms_shapes[ms_key] == torch_shapes[key]:
            pairs[key] = ms_key
        else:
            unpaired.append(key)
    rest = set(ms_params) - set(pairs.values())
    trainable = [k for k in rest if ms_params[k].requires_grad]
    if unpaired or trainable:
        raise KeyMismatchError(f"{model} (torch vs MindSpore definitions)", missing=trainable, unexpected=unpaired)
    ms_only = {k: ms_params[k].asnumpy().copy() for k in rest}
    return NameMap(model, pairs, torch_shapes, ms_shapes, torch_only, ms_only)


def torch_to_ms(state: Mapping[str, np.ndarray], nm: NameMap) -> dict[str, np.ndarray]:
    """Rename a torch state dict to MindSpore names; strict: any missing/extra/mis-shaped key raises."""
    check_keys(state, nm.torch_shapes, set(nm.torch_only), nm.model)
    out = {nm.torch_to_ms[k]: v for k, v in state.items() if k in nm.torch_to_ms}
    out.update(nm.ms_only)
    return out


def ms_to_torch(state: Mapping[str, np.ndarray], nm: NameMap) -> dict[str, np.ndarray]:
    """Rename a MindSpore state to torch keys (in the torch state-dict order); strict like :func:`torch_to_ms`."""
    check_keys(state, nm.ms_shapes, set(nm.ms_only), nm.model)
    return {k: nm.torch_only[k] if k in nm.torch_only else state[nm.torch_to_ms[k]] for k in nm.torch_shapes}


def naming_of(state: Mapping[str, np.ndarray], nm: NameMap) -> str:
    """'torch' or 'mindspore': which side's names a state dict uses (the side sharing more keys)."""
    t = len(set(state) & set(nm.torch_shapes))
    m = len(set(state) & set(nm.ms_shapes))
    return "torch" if t >= m else "mindspore"
