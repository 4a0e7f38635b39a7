"""Framework-free model specifications: configs, variant tables, schedules and fusion math."""
from ._registry import (IMAGENET_MEAN, IMAGENET_STD, ModelCfg, ModelRegistry, check_input_size,
                        get_model_cfg, list_cfgs)
from .errors import (CheckpointError, ConfigError, DataError, InputSizeError, KeyMismatchError, UnknownModelError,
                     ZooError)

__all__ = ["ModelCfg", "ModelRegistry", "get_model_cfg", "list_cfgs", "check_input_size", "IMAGENET_MEAN",
           "IMAGENET_STD", "ZooError", "UnknownModelError", "CheckpointError", "KeyMismatchError",
           "InputSizeError", "ConfigError", "DataError"]
