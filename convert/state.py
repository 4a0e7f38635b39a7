"""Checkpoint states of a registered model, without torch: reading under the family's checkpoint rules, the
strict key/shape check, and loading a MindSpore-named state into an ms_models model.

``ms_models.load_checkpoint`` and ``ms_models.create_model(checkpoint=...)`` come through here, so a ``.ckpt``
or ``.safetensors`` file in our MindSpore names loads without torch installed. Only a state holding names the
model does not have (torch names) goes to the torch name map of :mod:`convert.api`, which imports torch.
"""
from __future__ import annotations

import fnmatch
import os
from typing import Collection, Mapping

import numpy as np

from specs import get_model_cfg
from specs.errors import CheckpointError, KeyMismatchError

from .io import read_checkpoint


def read_state(name: str, path: str | os.PathLike, key: str | None = None, model=None) -> dict[str, np.ndarray]:
    """:func:`convert.io.read_checkpoint`, then model ``name``'s ``checkpoint_filter`` (its cfg's rule for the
    extra entries of official layouts, e.g. :func:`specs.addernet.checkpoint_filter`, or for fitting the state to
    ``model``, the model it is read for: :func:`specs.vit.checkpoint_filter` resamples the position embedding)."""
    state = read_checkpoint(path, key)
    rule = get_model_cfg(name).checkpoint_filter
    return rule(state, model) if rule else state


def check_keys(state: Mapping[str, np.ndarray], expected: Mapping[str, tuple], optional: Collection[str],
               model: str) -> None:
    """Strict: every ``expected`` key but the ``optional`` ones present, no other key, same shapes; anything
    else raises :class:`KeyMismatchError` (one line; the lists stay on the exception)."""
    missing = [k for k in expected if k not in state and k not in optional]
    unexpected = [k for k in state if k not in expected]
    mismatched = [(k, tuple(state[k].shape), expected[k]) for k in state
                  if k in expected and tuple(state[k].shape) != tuple(expected[k])]
    if missing or unexpected or mismatched:
        raise KeyMismatchError(model, missing, unexpected, mismatched)


def ms_only_names(model) -> set[str]:
    """The parameters of ``model`` its cfg declares MindSpore-only (``ModelCfg.ms_only_params``)."""
    patterns = model.pretrained_cfg.ms_only_params
    return {k for k, _ in model.parameters_and_names() if any(fnmatch.fnmatchcase(k, p) for p in patterns)}


def assign_ms_state(model, state: Mapping[str, np.ndarray], source: str = "state"):
    """Copy a checked MindSpore-named state into ``model``'s parameters (every parameter must be covered)."""
    import mindspore as ms
    params = {k: ms.Parameter(ms.Tensor(np.array(v)), name=k) for k, v in state.items()}
    not_loaded, unused = ms.load_param_into_net(model, params, strict_load=True)
    if not_loaded or unused:
        raise CheckpointError(f"{source}: MindSpore refused {len(not_loaded)} parameter(s), ignored {len(unused)}")
    return model


def load_ms_state(model, state: Mapping[str, np.ndarray], source: str = "state"):
    """Strictly load ``state`` into the ms_models ``model``.

    A state in the model's own parameter names is checked against the model itself (all keys, shapes; the
    cfg's MindSpore-only parameters may be absent and are then left as they are): no torch. A state with
    names the model lacks is mapped by the torch name map (:mod:`convert.api`), which needs torch.
    """
    params = dict(model.parameters_and_names())
    name = model.pretrained_cfg.name
    foreign = [k for k in state if k not in params]
    if foreign:
        try:
            import torch  # noqa: F401  (the name map is built from the torch twin)
        except ImportError:
            raise CheckpointError(f"{source}: {len(foreign)} name(s) {name} has no MindSpore parameter for "
                                  f"(e.g. {foreign[0]}); mapping torch names needs torch, which is not "
                                  f"installed") from None
        from .api import _load_ms_state, model_name_map
        return _load_ms_state(model, state, model_name_map(model), source)
    optional = ms_only_names(model)
    check_keys(state, {k: tuple(p.shape) for k, p in params.items()}, optional, name)
    kept = {k: params[k].asnumpy() for k in optional if k not in state}
    return assign_ms_state(model, {**kept, **state}, source)


def load_into_ms(model, path: str | os.PathLike, key: str | None = None):
    """Strictly load a checkpoint of either naming into an ms_models model (torch only for torch names)."""
    return load_ms_state(model, read_state(model.pretrained_cfg.name, path, key, model), str(path))
