"""The MindSpore training engine: factories composed by :func:`train` (mindcv's ``train.py`` shape).

- :mod:`.config`: the typed recipe schema, YAML load/save, dotted ``KEY=VALUE`` overrides;
- :mod:`.data`, :mod:`.transforms`: ``mindspore.dataset`` pipelines (ImageFolder, built-in sets), timm-semantics
  augmentation, Mixup/CutMix, sharding, seeded per ``(seed, epoch, shard)``;
- :mod:`.losses`, :mod:`.optim`: timm's losses and ``create_loss``; ``create_optimizer`` (parameter groups,
  layer-wise lr decay, SGD / AdamW / LAMB / RMSpropTF) on :mod:`specs.schedules`' per-step lr;
- :mod:`.step`: the compiled train step (AMP, loss scaling, accumulation, clipping, EMA, data-parallel reduction);
- :mod:`.checkpoint`: complete, atomic training checkpoints and resume;
- :mod:`.loop`, :mod:`.evaluate`, :mod:`.callbacks`: the epoch loop, top-1/top-5, progress, metrics and curves;
- :mod:`.distill`: the frozen teacher, the distillation loss and the teacher cache (VanillaKD);
- :mod:`.sfda`: the SFDA-DE adaptation loop (clustering, estimation, class-aware CDD steps);
- :mod:`.cli`: ``scripts/train.py`` and ``scripts/validate.py``.
"""
from .config import (Config, DataConfig, ModelConfig, OptimizerConfig, ScheduleConfig, TrainConfig,
                     apply_overrides, config_from_dict, config_to_dict, load_config, save_config, validate)
from .loop import TrainResult, train

__all__ = ["Config", "ModelConfig", "DataConfig", "OptimizerConfig", "ScheduleConfig", "TrainConfig",
           "load_config", "save_config", "apply_overrides", "config_from_dict", "config_to_dict", "validate",
           "train", "TrainResult"]
