"""Complete training checkpoints (ms_models.train.checkpoint): every Parameter of the train step and the run's
position (mid-epoch included) round-trip exactly; the file reads as model weights (or EMA weights) everywhere a
model checkpoint is read; a checkpoint of another run, a plain weights file or a corrupt file is a one-line error;
an interrupted write leaves the previous file intact."""
from __future__ import annotations

import numpy as np
import pytest

import mindspore as ms
import ms_models
from convert import io as cio
from ms_models.train.checkpoint import (TrainState, read_train_checkpoint, restore_train_checkpoint,
                                        save_train_checkpoint)
from ms_models.train.config import apply_overrides, config_from_dict
from ms_models.train.optim import create_optimizer
from ms_models.train.step import build_train_network
from specs.errors import CheckpointError

NAME = "adabin_resnet20_cifar"       # 0.27 M parameters: small files, and schedule Parameters (t, k) of its own


def _cfg(*overrides: str):
    base = config_from_dict({"model": {"name": NAME, "num_classes": 4},
                             "data": {"dir": "builtin:digits", "image_size": 32},
                             "optimizer": {"name": "adamw"},
                             "train": {"epochs": 3, "ema_decay": 0.99, "loss_scale": "dynamic"}})
    return apply_overrides(base, list(overrides))


def _step(cfg):
    model = ms_models.create_model(NAME, num_classes=4)
    optimizer = create_optimizer(model, cfg.optimizer, np.linspace(1e-3, 1e-4, 30))
    loss = ms.nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")
    return build_train_network(model, loss, optimizer, cfg.train), model


def _randomise(step, seed):
    r = np.random.RandomState(seed)
    for p in step.get_parameters():
        value = r.randn(*p.shape) if p.dtype in (ms.float32, ms.float16) else r.randint(0, 50, p.shape)
        p.set_data(ms.Tensor(np.asarray(value), p.dtype))


def _values(step):
    return {p.name: p.asnumpy().copy() for p in step.get_parameters()}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    cfg = _cfg()
    step, model = _step(cfg)
    _randomise(step, 0)
    path = tmp_path_factory.mktemp("ckpt") / "last.ckpt"
    save_train_checkpoint(path, step, model, POSITION, cfg)
    return path, cfg, step, model


# epoch 3 of the run, 7 batches (14 rows of the shard) into it, 3 skipped updates before it, of a 2-process run
POSITION = TrainState(2, 40, 55.5, 1, batch=7, position=14, loss_sum=12.25, loss_images=14, nonfinite_before=3,
                      world=2)


def test_round_trip_restores_every_parameter_and_the_position(saved):
    path, cfg, step, _ = saved
    expected = _values(step)
    fresh, model = _step(cfg)
    _randomise(fresh, 1)
    state, config = restore_train_checkpoint(path, fresh, model, cfg)
    assert state == POSITION
    assert config == cfg
    got = _values(fresh)
    assert got.keys() == expected.keys()
    kinds = {"ema": 0, "optimizer": 0}
    for name, value in expected.items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)
        kinds["ema"] += name.startswith("ema.")
        kinds["optimizer"] += "moment" in name or "global_step" in name
    assert kinds["ema"] > 0 and kinds["optimizer"] > 0 and "nonfinite_steps" in got


def test_sgd_momentum_and_accumulation_buffers_are_kept_apart(tmp_path):
    """nn.SGD names its momentum ``accum.<param>``; the step's accumulation buffers are ``grad_accum.<param>``, so
    both are saved and restored (one name for two Parameters would keep only one of them)."""
    cfg = _cfg("optimizer.name=sgd", "train.accumulate=2")
    step, model = _step(cfg)
    _randomise(step, 2)
    names = [p.name for p in step.get_parameters()]
    assert len(names) == len(set(names)) and "accum.conv1.weight" in names and "grad_accum.conv1.weight" in names
    save_train_checkpoint(tmp_path / "sgd.ckpt", step, model, TrainState(), cfg)
    fresh, model = _step(cfg)
    restore_train_checkpoint(tmp_path / "sgd.ckpt", fresh, model, cfg)
    expected, got = _values(step), _values(fresh)
    for name in ("accum.conv1.weight", "grad_accum.conv1.weight", "grad_accum.micro_step", "grad_accum.finite"):
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
    assert not np.array_equal(expected["accum.conv1.weight"], expected["grad_accum.conv1.weight"])


def test_reads_as_model_or_ema_weights(saved):
    path, _, step, model = saved
    own = {p.name: p.asnumpy() for p in model.get_parameters()}
    weights = cio.read_checkpoint(path)
    assert weights.keys() == own.keys()
    for k, v in own.items():
        np.testing.assert_array_equal(weights[k], v)
    ema = cio.read_checkpoint(path, key="ema")
    assert ema.keys() == own.keys()
    by_name = {p.name: p.asnumpy() for p in step.ema_parameters()}
    for k in ema:
        np.testing.assert_array_equal(ema[k], by_name["ema." + k])
    loaded = ms_models.create_model(NAME, num_classes=4, checkpoint=path)
    for p in loaded.get_parameters():
        np.testing.assert_array_equal(p.asnumpy(), own[p.name])
    raw, state, config = read_train_checkpoint(path)
    assert state == POSITION and config["model"]["name"] == NAME
    assert any(k.startswith("train_state.") for k in raw)


def test_a_checkpoint_of_other_settings_is_named(saved):
    path, cfg, *_ = saved
    step, model = _step(cfg)
    with pytest.raises(CheckpointError, match=r"optimizer\.lr .*data\.image_size|data\.image_size.*optimizer\.lr"):
        restore_train_checkpoint(path, step, model, _cfg("optimizer.lr=0.5", "data.image_size=40"))
    state, _ = restore_train_checkpoint(path, step, model, _cfg("train.log_interval=7", "data.workers=1"))
    assert state.epoch == 2
    other = _cfg("model.num_classes=5")
    big = ms_models.create_model(NAME, num_classes=5)
    optimizer = create_optimizer(big, other.optimizer, np.linspace(1e-3, 1e-4, 30))
    big_step = build_train_network(big, ms.nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean"),
                                   optimizer, other.train)
    with pytest.raises(CheckpointError, match="shape"):
        restore_train_checkpoint(path, big_step, big)


def test_foreign_and_corrupt_files(saved, tmp_path):
    path, cfg, step, model = saved
    plain = cio.write_checkpoint(cio.read_checkpoint(path), tmp_path / "weights.ckpt")
    with pytest.raises(CheckpointError, match="not a training checkpoint") as info:
        restore_train_checkpoint(plain, step, model)
    assert "\n" not in str(info.value)
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="junk.ckpt"):
        restore_train_checkpoint(junk, step, model)
    with pytest.raises(CheckpointError, match="no such file"):
        restore_train_checkpoint(tmp_path / "none.ckpt", step, model)


def test_interrupted_write_keeps_the_previous_file(saved, tmp_path, monkeypatch):
    path, cfg, step, model = saved
    target = tmp_path / "last.ckpt"
    target.write_bytes(path.read_bytes())
    before = target.read_bytes()

    def dies(state, dst):
        dst.write_bytes(b"half")
        raise KeyboardInterrupt
    monkeypatch.setattr(cio, "_write_ms_ckpt", dies)
    with pytest.raises(KeyboardInterrupt):
        save_train_checkpoint(target, step, model, TrainState(3, 60), cfg)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
