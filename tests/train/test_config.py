"""The training config (issue 12 section 2): every recipe loads, defaults, typed overrides, one-line errors that
name the key, and the atomic save / load round trip."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import yaml

from ms_models.train import config as config_module
from ms_models.train.config import (Config, apply_overrides, config_from_dict, config_to_dict, load_config,
                                    save_config)
from specs import list_cfgs
from specs.errors import ConfigError, UnknownModelError

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted((ROOT / "configs").rglob("*.yaml"))
FAMILIES = ("vanillanet", "ghostnetv2", "vig", "adabin", "bimlp", "addernet")


def one_line_error(cls: type, fn, *words: str) -> str:
    with pytest.raises(cls) as info:
        fn()
    msg = str(info.value)
    assert "\n" not in msg and all(w in msg for w in words), msg
    return msg


@pytest.mark.parametrize("path", RECIPES, ids=[str(p.relative_to(ROOT / "configs")) for p in RECIPES])
def test_every_recipe_loads_validates_and_round_trips(path, tmp_path):
    cfg = load_config(path)
    assert cfg.model.name in list_cfgs(task=None)     # every task: the MIM recipes train pretraining models
    assert load_config(save_config(cfg, tmp_path / "config.yaml")) == cfg


def test_every_family_has_a_cited_recipe_and_there_is_a_demo():
    for family in FAMILIES:
        recipes = list((ROOT / "configs" / family).glob("*.yaml"))
        assert recipes, family
        for path in recipes:
            head = path.read_text().split("\n", 12)
            assert any(line.startswith("#") and ("huawei-noah/" in line or "mindspore-ai/" in line)
                       for line in head), f"{path} cites no official source in its first lines"
    demos = [load_config(p) for p in (ROOT / "configs" / "demo").glob("*.yaml")]
    assert any(c.data.dir == "builtin:digits" and c.train.device_target == "CPU" and c.train.amp_level == "O0"
               for c in demos)


def test_defaults():
    cfg = Config()
    assert config_from_dict({}) == cfg
    assert (cfg.model.name, cfg.model.num_classes, cfg.data.image_size, cfg.data.batch_size) == \
        ("vanillanet_5", 1000, 224, 128)
    assert (cfg.optimizer.name, cfg.optimizer.lr, cfg.optimizer.weight_decay, cfg.train.epochs, cfg.seed) == \
        ("adamw", 1e-3, 0.05, 300, 0)
    assert (cfg.train.amp_level, cfg.train.mode, cfg.train.device_target) == ("O0", "graph", "CPU")
    assert cfg.model.drop_rate is None and cfg.model.drop_path_rate is None     # None: the model's own default
    # the required keys are all in the schema
    keys = set(config_module._all_keys())
    assert {"model.name", "model.num_classes", "data.image_size", "data.batch_size", "train.epochs",
            "optimizer.name", "optimizer.lr", "optimizer.weight_decay", "seed"} <= keys


def _write(path: Path, text: str = "") -> Path:
    path.write_text(text)
    return path


def test_a_partial_file_keeps_the_other_defaults(tmp_path):
    cfg = load_config(_write(tmp_path / "c.yaml", "optimizer:\n  lr: 1e-3\ndata: {batch_size: 16}\n"))
    assert cfg.optimizer.lr == 1e-3 and isinstance(cfg.optimizer.lr, float)    # PyYAML reads 1e-3 as a string
    assert cfg.data.batch_size == 16 and cfg.data.image_size == 224
    assert load_config(_write(tmp_path / "empty.yaml")) == Config()


def test_overrides_of_each_type():
    cfg = apply_overrides(Config(), [
        "data.batch_size=32",               # int
        "optimizer.lr=0.01",                # float
        "optimizer.weight_decay=0",         # float field given an int
        "optimizer.eps=1e-6",               # float written without a dot (a YAML string)
        "optimizer.nesterov=true",          # bool
        "optimizer.name=sgd",               # str
        "data.auto_augment=rand-m9-mstd0.5-inc1",
        "model.pretrained=null",            # Optional -> None
        "data.crop_pct=0.9",                # Optional given a value
        "model.drop_path_rate=0",           # Optional float given an int
        "optimizer.betas=[0.9, 0.95]",      # tuple from a YAML list
        "model.kwargs.decay_epochs=3",      # free model kwargs
        "seed=7",
    ])
    assert cfg.data.batch_size == 32 and type(cfg.data.batch_size) is int
    assert cfg.optimizer.lr == 0.01 and type(cfg.optimizer.weight_decay) is float and cfg.optimizer.eps == 1e-6
    assert cfg.optimizer.nesterov is True and cfg.optimizer.name == "sgd"
    assert cfg.data.auto_augment == "rand-m9-mstd0.5-inc1"
    assert cfg.model.pretrained is None and cfg.data.crop_pct == 0.9
    assert cfg.model.drop_path_rate == 0.0 and type(cfg.model.drop_path_rate) is float
    assert cfg.optimizer.betas == (0.9, 0.95)
    assert cfg.model.kwargs == {"decay_epochs": 3} and cfg.seed == 7
    assert apply_overrides(cfg, ["data.crop_pct=null"]).data.crop_pct is None
    assert Config().data.batch_size == 128                                    # the input is not changed
    assert apply_overrides(cfg, ["optimizer.lr=0.5", "optimizer.lr=0.25"]).optimizer.lr == 0.25   # in order


@pytest.mark.parametrize("item, words", [
    ("optimizer.weight_decy=0.1", ["'optimizer.weight_decy'", "did you mean", "optimizer.weight_decay"]),
    ("optimzer.lr=0.1", ["'optimzer.lr'", "optimizer.lr"]),
    ("data.lr=0.1", ["'data.lr'", "optimizer.lr"]),
    ("sed=1", ["'sed'", "seed"]),
    ("data.batch_size=abc", ["'data.batch_size'", "must be an int", "'abc'"]),
    ("data.batch_size=3.5", ["'data.batch_size'", "must be an int"]),
    ("data.batch_size=true", ["'data.batch_size'", "must be an int"]),
    ("optimizer.lr=fast", ["'optimizer.lr'", "must be a float"]),
    ("optimizer.nesterov=1", ["'optimizer.nesterov'", "must be a bool"]),
    ("model.name=5", ["'model.name'", "must be a str"]),
    ("data.batch_size=null", ["'data.batch_size'", "must be an int"]),
    ("optimizer.betas=[0.9]", ["'optimizer.betas'", "list of 2"]),
    ("optimizer.betas=[0.9, x]", ["'optimizer.betas[1]'", "float"]),
    ("seed.value=1", ["'seed'", "not a section"]),
    ("optimizer=sgd", ["'optimizer'", "mapping"]),
    ("data.batch_size=0", ["'data.batch_size'", "positive"]),
    ("train.epochs=-1", ["'train.epochs'", "positive"]),
    ("data.image_size=0", ["'data.image_size'", "positive"]),
    ("data.image_size=8", ["'data.image_size'", "at least 32x32"]),
    ("optimizer.name=adam", ["'optimizer.name'", "sgd, adamw, lamb, rmsprop", "did you mean 'adamw'"]),
    ("schedule.name=poly", ["'schedule.name'", "cosine"]),
    ("train.amp_level=O4", ["'train.amp_level'", "O0"]),
    ("train.mode=eager", ["'train.mode'", "graph"]),
    ("data.reprob=1.5", ["'data.reprob'", "[0, 1]"]),
    ("data.auto_augment=randaug9", ["'data.auto_augment'", "timm policy"]),
    ("model.kwargs.decay_epoch=3", ["'model.kwargs'", "'decay_epoch'", "did you mean 'decay_epochs'"]),
])
def test_bad_override_is_a_one_line_config_error_naming_the_key(item, words):
    one_line_error(ConfigError, lambda: apply_overrides(Config(), [item]), *words)


@pytest.mark.parametrize("item", ["optimizer.lr", "=0.1", "optimizer..lr=1", "optimizer.lr=[0.1", ".lr=1"])
def test_malformed_override(item):
    msg = one_line_error(ConfigError, lambda: apply_overrides(Config(), [item]), "override")
    assert "KEY=VALUE" in msg or "optimizer.lr" in msg


def test_unknown_model_is_an_unknown_model_error_naming_the_key_and_close_matches():
    one_line_error(UnknownModelError, lambda: apply_overrides(Config(), ["model.name=vanillanet5"]),
                   "model.name", "vanillanet_5")
    assert issubclass(UnknownModelError, ValueError) and issubclass(ConfigError, ValueError)


def test_bad_files(tmp_path):
    one_line_error(ConfigError, lambda: load_config(_write(tmp_path / "a.yaml", "optimizer:\n  lrr: 0.1\n")),
                   "'optimizer.lrr'", "optimizer.lr")
    one_line_error(ConfigError, lambda: load_config(_write(tmp_path / "b.yaml", "data:\n  batch_size: '16'\n")),
                   "'data.batch_size'", "int")
    one_line_error(ConfigError, lambda: load_config(_write(tmp_path / "c.yaml", "data:\n  batch_size: -4\n")),
                   "'data.batch_size'", "positive")
    one_line_error(ConfigError, lambda: load_config(_write(tmp_path / "d.yaml", "optimizer:\n  name: adagrad\n")),
                   "'optimizer.name'")
    one_line_error(ConfigError, lambda: load_config(_write(tmp_path / "e.yaml", "- 1\n- 2\n")), "mapping")
    one_line_error(ConfigError, lambda: load_config(_write(tmp_path / "f.yaml", "data: [1\n")), "f.yaml", "line")
    one_line_error(ConfigError, lambda: load_config(tmp_path / "missing.yaml"), "missing.yaml")
    one_line_error(UnknownModelError, lambda: load_config(_write(tmp_path / "g.yaml", "model: {name: resnet}\n")),
                   "model.name")


def test_save_load_round_trip(tmp_path):
    cfg = apply_overrides(Config(), ["data.mean=[0.5, 0.5, 0.5]", "model.kwargs.decay_epochs=7", "seed=3",
                                     "train.ema_decay=0.999", "data.dir=builtin:digits"])
    path = save_config(cfg, tmp_path / "config.yaml")
    assert path == str(tmp_path / "config.yaml")
    loaded = load_config(path)
    assert loaded == cfg and loaded.data.mean == (0.5, 0.5, 0.5)
    assert yaml.safe_load(Path(path).read_text()) == config_to_dict(cfg)
    assert os.listdir(tmp_path) == ["config.yaml"]                 # no temporary file left behind
    assert dataclasses.is_dataclass(loaded) and config_from_dict(config_to_dict(loaded)) == cfg


def test_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "config.yaml"
    save_config(Config(), path)
    before = path.read_text()

    def half_write(data, stream, **kwargs):
        stream.write("model:\n  name: vanil")
        raise OSError("disk full")

    monkeypatch.setattr(config_module.yaml, "safe_dump", half_write)
    with pytest.raises(OSError, match="disk full"):
        save_config(apply_overrides(Config(), ["seed=1"]), path)
    assert path.read_text() == before and load_config(path) == Config()   # the old file is intact
    assert os.listdir(tmp_path) == ["config.yaml"]                         # and the partial temp file is gone


def test_base_recipe_chain(tmp_path):
    """``base: FILE`` (relative to the recipe) lays the recipe over its base section by section, through a chain;
    a cycle or a base that is not a path is a one-line error."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.yaml").write_text("model: {name: resnet18, num_classes: 10, kwargs: {layers: [1, 1, 1, 1]}}\n"
                                     "data: {image_size: 64, batch_size: 8}\noptimizer: {lr: 0.5}\n")
    (tmp_path / "sub" / "b.yaml").write_text("base: ../a.yaml\ndata: {batch_size: 16}\n"
                                             "model: {kwargs: {zero_init_last: false}}\n")
    (tmp_path / "c.yaml").write_text("base: sub/b.yaml\noptimizer: {lr: 0.25}\n")
    cfg = load_config(tmp_path / "c.yaml")
    assert (cfg.model.name, cfg.model.num_classes, cfg.data.image_size, cfg.data.batch_size, cfg.optimizer.lr) == \
        ("resnet18", 10, 64, 16, 0.25)
    assert cfg.model.kwargs == {"layers": [1, 1, 1, 1], "zero_init_last": False}
    (tmp_path / "a.yaml").write_text("base: c.yaml\n")
    one_line_error(ConfigError, lambda: load_config(tmp_path / "c.yaml"), "'base' chain comes back to itself")
    (tmp_path / "d.yaml").write_text("base: [a.yaml]\n")
    one_line_error(ConfigError, lambda: load_config(tmp_path / "d.yaml"), "'base' must be a recipe path")
    (tmp_path / "e.yaml").write_text("base: missing.yaml\n")
    one_line_error(ConfigError, lambda: load_config(tmp_path / "e.yaml"), "cannot read config", "missing.yaml")


def test_distill_recipes_cite_the_official_commands():
    """The VanillaKD recipes: A2 is the ResNet-50 A2 recipe plus the teacher; A1, DKD and DIST change what the
    readme commands change."""
    a2, a1, dkd, dist = (load_config(ROOT / "configs" / "distill" / f"resnet50_beitv2_{v}.yaml")
                         for v in ("kd_a2", "kd_a1", "dkd_a2", "dist_a2"))
    base = load_config(ROOT / "configs" / "resnet" / "resnet50_a2.yaml")
    assert dataclasses.replace(a2, distill=base.distill) == base
    assert (a2.distill.method, a2.distill.teacher.name, a2.distill.temperature) == ("kd", "beitv2_base_patch16_224", 1)
    assert (a1.train.epochs, a1.optimizer.weight_decay, a1.data.smoothing, a1.data.mixup, a1.data.cutmix) == \
        (600, 0.01, 0.1, 0.2, 1.0)
    assert (dkd.distill.method, dkd.distill.dkd_alpha, dkd.distill.dkd_beta) == ("dkd", 1.0, 2.0)
    assert dist.distill.method == "dist" and dataclasses.replace(dist, distill=a2.distill) == a2
    for path in (ROOT / "configs" / "distill").glob("*.yaml"):
        assert "Hao840/vanillaKD@a27b029" in "".join(path.read_text().splitlines()[:4]), path
