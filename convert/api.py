"""The converter's importable API; the CLI (``python -m convert``) is a thin layer over these functions.

This is the torch bridge: it imports torch (before mindspore). Loading MindSpore-named files into ms_models
needs none of it (:mod:`convert.state`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

import ms_models
import torch_ref
from ms_models.context import execution_mode
from specs import get_model_cfg, list_cfgs
from specs.errors import CheckpointError

from .io import read_checkpoint, write_checkpoint
from .mapping import NameMap, build_name_map, ms_to_torch, naming_of, torch_to_ms
from .state import assign_ms_state, load_into_ms, read_state  # noqa: F401  (load_into_ms: public here too)


def model_kwargs_for(name: str, state: Mapping[str, np.ndarray]) -> dict:
    """Constructor kwargs a state dict implies (num_classes, deploy form), by the family's cfg rule."""
    cfg = get_model_cfg(name)
    return cfg.infer_kwargs({k: tuple(v.shape) for k, v in state.items()}) if cfg.infer_kwargs else {}


def mim_torch_state(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A masked-image-modeling checkpoint's model state in the official torch names: a torch-named file as it is;
    a MindSpore-named one (an engine pretraining or fine-tuning checkpoint) renamed through the name map of the
    registered MIM model whose layout it has (constructor kwargs from its shapes), strictly."""
    state = read_checkpoint(path)
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    for name in list_cfgs(task="mim_pretrain") + list_cfgs(task="mim_finetune"):
        try:
            kwargs = get_model_cfg(name).infer_kwargs(shapes)
        except KeyError:                    # another model's layout
            continue
        nm = name_map(name, **kwargs)
        if len(set(state) & set(nm.ms_shapes)) > len(set(state) & set(nm.torch_shapes)):
            return ms_to_torch(state, nm)
    return state


def name_map(name: str, **kwargs: Any) -> NameMap:
    """The name map of ``name`` built with ``kwargs``; both models are built without allocating weights."""
    from mindspore.nn.utils import no_init_parameters
    with torch.device("meta"):
        tm = torch_ref.create_model(name, **kwargs)
    with no_init_parameters():
        mm = ms_models.create_model(name, **kwargs)
    return build_name_map(tm, mm, name)


def model_name_map(model) -> NameMap:
    """The name map of a model built by ``create_model``, in the layout it has now (:func:`_form_kwargs`)."""
    cfg = model.pretrained_cfg
    return name_map(cfg.name, num_classes=cfg.num_classes, **_form_kwargs(model))


def _form_kwargs(model) -> dict:
    """The kwargs that rebuild ``model``'s parameter layout: the overrides it was built with
    (``create_model(name, depths=..., window_size=...)``), then the form it is in now (deploy, quantized, ViT's
    ``img_size``)."""
    out = dict(getattr(model, "build_kwargs", {}))
    if getattr(model, "deploy", False):
        out["deploy"] = True
    if getattr(model, "quant_groups", 0):          # a post-training-quantized AdderNet
        out.update(quant_groups=model.quant_groups, quant_bits=model.quant_bits)
    if getattr(model, "img_size", None) is not None:   # a ViT: its position embedding's grid follows img_size
        out["img_size"] = model.img_size
    return out


def _load_torch_state(model: torch.nn.Module, state: Mapping[str, np.ndarray], nm: NameMap) -> torch.nn.Module:
    if naming_of(state, nm) == "mindspore":
        state = ms_to_torch(state, nm)
    else:
        torch_to_ms(state, nm)          # the strict key/shape check, with the one-line error
        state = {**nm.torch_only, **state}
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()}, strict=True)
    return model


def load_into_torch(model: torch.nn.Module, path: str | os.PathLike, key: str | None = None) -> torch.nn.Module:
    """Strictly load a checkpoint of either naming into a torch_ref model."""
    return _load_torch_state(model, read_state(model.pretrained_cfg.name, path, key, model), model_name_map(model))


def _load_ms_state(model, state: Mapping[str, np.ndarray], nm: NameMap, source: str = "state"):
    """Strictly load a state of either naming into an ms_models model through the name map ``nm``."""
    state = torch_to_ms(state, nm) if naming_of(state, nm) == "torch" else ms_to_torch_check(state, nm)
    return assign_ms_state(model, state, source)


def torch_model_from(name: str, checkpoint: str | os.PathLike, key: str | None = None, **kwargs: Any):
    """A torch_ref model in the form and head size the checkpoint implies, loaded strictly."""
    state = read_state(name, checkpoint, key)
    kwargs = {**model_kwargs_for(name, state), **kwargs}
    return _load_torch_state(torch_ref.create_model(name, **kwargs), state, name_map(name, **kwargs))


def ms_twin(torch_model: torch.nn.Module, mode: int | None = None, **model_kwargs: Any):
    """The ms_models model with ``torch_model``'s name, form and weights, built in ``mode`` (default: current);
    ``model_kwargs`` that leave the parameters alone (``drop_rate``, ...) go to the MindSpore constructor."""
    from mindspore.nn.utils import no_init_parameters
    cfg = torch_model.pretrained_cfg
    kwargs = {"num_classes": cfg.num_classes, **_form_kwargs(torch_model)}
    with execution_mode(mode), no_init_parameters():    # every weight is overwritten below: skip the random init
        model = ms_models.create_model(cfg.name, **{**kwargs, **model_kwargs})
    return _load_ms_state(model, torch_state_of(torch_model), name_map(cfg.name, **kwargs))


def ms_to_torch_check(state: Mapping[str, np.ndarray], nm: NameMap) -> dict[str, np.ndarray]:
    """A MindSpore-named state, strictly checked, with MindSpore-only entries filled where absent."""
    ms_to_torch(state, nm)
    return {**nm.ms_only, **state}


def torch_state_of(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}


def ms_state_of(model) -> dict[str, np.ndarray]:
    return {k: p.asnumpy() for k, p in model.parameters_and_names()}


def _deploy_torch_state(name: str, state: dict[str, np.ndarray], kwargs: dict) -> tuple[dict, dict]:
    """Fuse a torch-named train-form state through the torch model's ``switch_to_deploy``."""
    if kwargs.get("deploy"):
        return state, kwargs
    model = torch_ref.create_model(name, **kwargs)
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()}, strict=True)
    model.eval().switch_to_deploy()
    return torch_state_of(model), {**kwargs, "deploy": True}


SOURCES = ("ours", "mindspore-official")


def convert_file(name: str, src: str | os.PathLike, dst: str | os.PathLike, direction: str = "torch2ms",
                 deploy: bool = False, key: str | None = None, container: str | None = None,
                 source: str = "ours") -> Path:
    """Convert ``src`` to ``dst`` (format by extension) for model ``name``.

    ``direction`` is 'torch2ms', 'ms2torch' or 'ms2ms' (MindSpore names in and out). The source naming must
    match the direction; keys and shapes are checked strictly and nothing is written on error. ``deploy``
    also fuses a train-form checkpoint. ``source='mindspore-official'`` first renames an official
    mindspore-ai/models checkpoint by its declared map (:mod:`convert.official_ms`; MindSpore directions).
    """
    if direction not in ("torch2ms", "ms2torch", "ms2ms"):
        raise ValueError(f"direction must be torch2ms, ms2torch or ms2ms, not {direction!r}")
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, not {source!r}")
    get_model_cfg(name)
    state = read_state(name, src, key)
    if source == "mindspore-official":
        if direction == "torch2ms":
            raise CheckpointError("an official MindSpore checkpoint converts with ms2torch or ms2ms, not torch2ms")
        from .official_ms import official_ms_to_ours
        state = official_ms_to_ours(name, state)
        kwargs = get_model_cfg(name).infer_kwargs(
            {t: tuple(state[m].shape) for t, m in name_map(name).torch_to_ms.items() if m in state}) \
            if get_model_cfg(name).infer_kwargs else {}
    else:
        kwargs = model_kwargs_for(name, state)
    nm = name_map(name, **kwargs)
    want = "torch" if direction == "torch2ms" else "mindspore"
    if naming_of(state, nm) != want:
        raise CheckpointError(f"{src}: holds {naming_of(state, nm)} parameter names, {direction} needs {want} ones")
    torch_state = state if want == "torch" else ms_to_torch(state, nm)
    if want == "torch":
        torch_to_ms(state, nm)                      # strict check before any work
    if deploy:
        torch_state, kwargs = _deploy_torch_state(name, torch_state, kwargs)
        nm = name_map(name, **kwargs)
    out = torch_state if direction == "ms2torch" else torch_to_ms(torch_state, nm)
    return write_checkpoint(out, dst, container=container)
