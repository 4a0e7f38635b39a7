"""Official MindSpore checkpoints (mindspore-ai/models ports) renamed to our MindSpore names.

Pure functions over ``{name: array}``: nothing is built or loaded. Each family declares its layout beside its
cfg (``ModelCfg.official_ms_entry``: :func:`specs.ghostnetv2.official_ms_entry`,
:func:`specs.adabin.official_ms_entry`); this module only drops training state and applies that rule.
"""
from __future__ import annotations

import re
from typing import Mapping

import numpy as np

from specs import get_model_cfg
from specs.errors import CheckpointError

# Training state a MindSpore checkpoint may carry besides the network (optimizer moments, step counters).
TRAINING_STATE = re.compile(r"^(moments\.|accum\.|mean_square\.|ema\.|global_step$|learning_rate$|momentum$|"
                            r"beta1_power$|beta2_power$|scale_sense$|current_iterator_step$|"
                            r"last_overflow_iterator_step$|epoch_num$|step_num$)")


def official_ms_to_ours(name: str, state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Rename an official MindSpore checkpoint of model ``name`` to our MindSpore parameter names.

    Training state (optimizer moments, step counters) is dropped; any other name the declared map does not
    cover raises :class:`CheckpointError` (the strict key/shape check against the model comes after).
    """
    cfg = get_model_cfg(name)
    if cfg.official_ms_entry is None:
        raise CheckpointError(f"{name}: no official MindSpore checkpoint layout is declared for {cfg.family}")
    out, unknown = {}, []
    for key, value in state.items():
        if TRAINING_STATE.match(key):
            continue
        entry = cfg.official_ms_entry(key, value)
        if entry is None:
            unknown.append(key)
        else:
            out[entry[0]] = entry[1]
    if unknown:
        more = f" (+{len(unknown) - 3} more)" if len(unknown) > 3 else ""
        raise CheckpointError(f"{name}: not an official MindSpore {cfg.family} checkpoint: unknown name(s) "
                              f"{', '.join(sorted(unknown)[:3])}{more}")
    return out
