"""The MindSpore training engine (issue 12). So far: the typed config schema, YAML recipes and ``KEY=VALUE``
overrides (:mod:`.config`); the data pipeline, optimizers, schedules and the train loop build on it."""
from .config import (Config, DataConfig, ModelConfig, OptimizerConfig, ScheduleConfig, TrainConfig,
                     apply_overrides, config_from_dict, config_to_dict, load_config, save_config, validate)

__all__ = ["Config", "ModelConfig", "DataConfig", "OptimizerConfig", "ScheduleConfig", "TrainConfig",
           "load_config", "save_config", "apply_overrides", "config_from_dict", "config_to_dict", "validate"]
