"""Crash-safe, exact resume and non-finite steps (issue 13 section 3; docs/training_resume.md).

- A run killed with SIGKILL in the middle of an epoch and restarted with ``--resume auto`` ends with a ``last.ckpt``
  identical, entry for entry and bit for bit, to an uninterrupted run's: weights, EMA, optimizer moments and step,
  the lr position, VanillaNet's ``set_epoch`` slope, the data position and augmentation, the epoch's running loss.
  The model draws no random numbers there: MindSpore's dropout / drop-path kernels keep their state inside the
  compiled graph (shown on ``DropPath``); with dropout on, a resumed run is valid but draws fresh masks.
- A non-finite loss stops the run naming the step, with the last checkpoint untouched; with
  ``train.skip_nonfinite`` the step is skipped (weights, optimizer, EMA and batch-norm statistics as if the batch had
  not been there) and counted.
- A corrupt, foreign or mismatched checkpoint given to ``--resume`` is a one-line error, exit 1.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import mindspore as ms
from convert.io import read_checkpoint, read_checkpoint_raw, write_checkpoint
from ms_models.layers.drop import DropPath
from ms_models.train import loop
from ms_models.train.checkpoint import TrainState, read_train_checkpoint, save_train_checkpoint
from ms_models.train.cli import resolve_config, train_main
from ms_models.train.losses import create_loss
from ms_models.train.optim import create_optimizer
from ms_models.train.step import build_train_network
from specs import get_model_cfg

from helpers import ROOT, write_tree

SCRIPT = str(ROOT / "scripts" / "train.py")
DEMO = str(ROOT / "configs" / "demo" / "adabin_resnet20_digits.yaml")
# A tiny VanillaNet-5 (0.05 M parameters, 32 px): batch norm, the deep-training slope that set_epoch moves
# (decay_epochs 2 of 3), RandomResizedCrop + flip per sample, AdamW with a warmup, EMA, a step checkpoint every 4
# of the 18 batches of an epoch.
TINY = ["model.name=vanillanet_5", "model.kwargs={dims: [8, 16, 32, 64], decay_epochs: 2}", "model.num_classes=3",
        "data.image_size=32", "data.workers=1", "data.random_crop_padding=null", "data.hflip=0.5", "data.batch_size=2",
        "data.val_batch_size=16",
        "train.epochs=3", "train.ema_decay=0.9", "train.eval_interval=3", "optimizer.name=adamw", "optimizer.lr=0.01",
        "optimizer.weight_decay=0.05", "schedule.warmup_epochs=1", "train.save_every_steps=4", "train.log_interval=1"]
ENV = {**os.environ, "GLOG_v": "3"}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """36 train images (18 batches of 2), 10 val images, 3 classes."""
    return str(write_tree(tmp_path_factory.mktemp("data"), {"train": {"a": 12, "b": 12, "c": 12},
                                                            "val": {"a": 3, "b": 3, "c": 4}}, size=(40, 36)))


def _train(images, out, *extra):
    return subprocess.Popen([sys.executable, SCRIPT, "--config", DEMO, "--data-dir", images, "--output", str(out),
                             *TINY, *extra], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV)


def _records(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_auto_is_bit_exact(images, tmp_path):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    reference, victim = _train(images, whole), _train(images, cut)
    deadline = time.monotonic() + 300
    # epoch 2, batch 7 logged: the step checkpoint of batch 6 (or a later one) is on disk; SIGKILL, no clean-up
    while "epoch 2/3 step 7/18" not in ((cut / "train.log").read_text() if (cut / "train.log").exists() else ""):
        assert victim.poll() is None and time.monotonic() < deadline, victim.stderr.read()[-2000:]
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL
    _, state, _ = read_train_checkpoint(cut / "last.ckpt")
    assert state.epoch == 1 and 0 < state.batch < 18 and state.position == 2 * state.batch   # mid-epoch 2
    (cut / ".last.ckpt.999.partial").write_bytes(b"half")       # what a kill during a write leaves
    resumed = _train(images, cut, "--resume", "auto")
    assert resumed.wait() == 0, resumed.stderr.read()[-2000:]
    assert reference.wait() == 0, reference.stderr.read()[-2000:]
    a, b = read_checkpoint_raw(whole / "last.ckpt"), read_checkpoint_raw(cut / "last.ckpt")
    assert a.keys() == b.keys()
    assert [k for k in a if not np.array_equal(a[k], b[k])] == []           # bit for bit, meta data included
    assert {"act_learn", "train_state.global_step", "train_state.exp_avg.stem1.0.weight",
            "ema.stem1.0.weight", "ema.stem1.1.moving_mean"} <= set(a)
    assert _records(cut) == [{**r, "images_per_s": s["images_per_s"], "seconds": s["seconds"]}
                             for r, s in zip(_records(whole), _records(cut))]
    log = (cut / "train.log").read_text()
    assert f"resumed from {cut / 'last.ckpt'} at epoch 2 step {state.batch}/18" in log
    assert not list(cut.glob(".*partial*"))


def test_drop_path_masks_restart_with_the_compiled_graph(graph_mode):
    """Which random state a checkpoint cannot hold: ``DropPath`` (and dropout) draw from a generator inside the
    compiled kernel, seeded from the global seed when the graph compiles; a new process compiling under the same
    seed replays the first masks. So a resumed run compiles under :func:`loop.model_seed` of the step it resumes at
    and draws fresh masks (exact resume needs a model without random operators)."""
    ones = ms.Tensor(np.ones((64, 1, 1, 1), np.float32))

    def masks(seed, n):
        ms.set_seed(seed)
        cell = DropPath(0.5)
        cell.set_train(True)
        return [cell(ones).asnumpy().ravel() > 0 for _ in range(n)]
    first = masks(loop.model_seed(0, 0, 0), 3)
    assert not np.array_equal(first[0], first[1]) and not np.array_equal(first[1], first[2])
    again = masks(loop.model_seed(0, 0, 0), 1)[0]
    np.testing.assert_array_equal(again, first[0])                  # recompiled: the sequence starts over
    resumed = masks(loop.model_seed(0, 0, 2), 1)[0]
    assert not any(np.array_equal(resumed, m) for m in first)       # a resumed run's masks are new ones
    assert loop.model_seed(0, 1, 0) != loop.model_seed(0, 0, 0)     # each rank its own


@pytest.mark.slow   # two training runs
def test_resume_with_dropout_is_valid(images, tmp_path):
    """With random operators (VanillaNet's head dropout) a mid-epoch resume reproduces everything up to the
    checkpoint and trains on from it with fresh masks: one record per epoch, finite losses and weights."""
    cfg = resolve_config(DEMO, images, TINY + ["model.drop_rate=0.5", "train.epochs=2", "train.eval_interval=1",
                                               "data.batch_size=4", "train.ema_decay=null"])      # 9 batches
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    real_save = loop.save_train_checkpoint

    def save_and_copy(path, step, model, state, cfg):
        written = real_save(path, step, model, state, cfg)
        if state.global_step == 9 + 3:            # the step checkpoint of epoch 2, batch 3
            shutil.copytree(whole, cut, dirs_exist_ok=True)
        return written
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loop, "save_train_checkpoint", save_and_copy)
        loop.train(cfg, whole)
    loop.train(cfg, cut, resume="auto")
    a, b = _records(whole), _records(cut)
    assert [r["epoch"] for r in b] == [0, 1]
    assert b[0] == a[0]                                         # epoch 1 came from the checkpoint's history
    assert np.isfinite(b[1]["train_loss"]) and np.isfinite(b[1]["val_loss"]) and b[1]["lr"] == a[1]["lr"]
    assert "at epoch 2 step 3/9" in (cut / "train.log").read_text()
    weights = read_checkpoint(cut / "last.ckpt")
    assert all(np.isfinite(v).all() for v in weights.values())
    assert any(not np.array_equal(v, read_checkpoint(whole / "last.ckpt")[k]) for k, v in weights.items())


def test_loader_started_at_the_saved_position_yields_the_rest_of_the_epoch(tmp_path):
    """The data position: after k batches the loader's ``consumed`` rows (unreadable images skipped included) start
    a loader that yields exactly the remaining batches, augmentation and Mixup/CutMix included."""
    root = write_tree(tmp_path / "data", {"train": {"a": 9, "b": 9}, "val": {"a": 1, "b": 1}}, size=(20, 18))
    (root / "train" / "a" / "1.png").write_bytes(b"not a png")            # position-dependent: skipped
    cfg = resolve_config(DEMO, str(root), ["model.num_classes=2", "data.batch_size=2", "data.workers=1",
                                           "data.skip_bad_images=true", "data.mixup=0.8", "data.cutmix=1.0",
                                           "data.random_crop_padding=null", "data.hflip=0.5"])
    model_cfg = get_model_cfg(cfg.model.name)
    batches = list(loop.create_loader(cfg, "train", model_cfg, epoch=1, num_shards=2, shard_id=0))
    first = loop.create_loader(cfg, "train", model_cfg, epoch=1, num_shards=2, shard_id=0)
    it = iter(first)
    for _ in range(2):
        next(it)
    it.close()
    assert first.consumed == 5            # 4 images and the unreadable one (4th of this shard's order in epoch 2)
    rest = list(loop.create_loader(cfg, "train", model_cfg, epoch=1, num_shards=2, shard_id=0, start=first.consumed))
    assert len(rest) == len(batches) - 2 > 0
    for (x, y), (rx, ry) in zip(batches[2:], rest):
        np.testing.assert_array_equal(rx, x)
        np.testing.assert_array_equal(ry, y)


# --- non-finite steps ---------------------------------------------------------------------------------------------

class _Poisoned:
    """A train loader whose ``at``-th batch of epoch 1 is NaN (or, ``drop``, left out)."""

    def __init__(self, loader, at: int, drop: bool):
        self.loader, self.at, self.drop = loader, at, drop

    def __getattr__(self, name):
        return getattr(self.loader, name)

    def __iter__(self):
        for i, (images, targets) in enumerate(self.loader):
            if i == self.at:
                if self.drop:
                    continue
                images = np.full_like(images, np.nan)
            yield images, targets


def _poison(monkeypatch, at: int, drop: bool = False):
    real = loop.create_loader

    def create(cfg, split, model_cfg, *, epoch=0, **kwargs):
        loader = real(cfg, split, model_cfg, epoch=epoch, **kwargs)
        return _Poisoned(loader, at, drop) if split == "train" and epoch == 0 else loader
    monkeypatch.setattr(loop, "create_loader", create)


NONFINITE = ["train.epochs=1", "schedule.warmup_epochs=0", "data.batch_size=4", "train.eval_interval=1"]   # 9 batches


@pytest.mark.slow   # a training run
def test_nonfinite_loss_stops_naming_the_step_and_keeps_the_last_checkpoint(images, tmp_path, monkeypatch, capsys):
    _poison(monkeypatch, at=5)                   # the 6th batch
    out = tmp_path / "run"
    args = ["--config", DEMO, "--data-dir", images, "--output", str(out), *TINY, *NONFINITE]
    assert train_main(args) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "not finite at epoch 1 step 6/9 (global step 6)" in err and "skip_nonfinite" in err
    _, state, _ = read_train_checkpoint(out / "last.ckpt")
    assert state.global_step == 4                                # the step-4 checkpoint, nothing after it
    assert all(np.isfinite(v).all() for v in read_checkpoint(out / "last.ckpt").values())
    assert not (out / "best.ckpt").exists() and not (out / "metrics.jsonl").exists()     # no epoch completed


@pytest.mark.slow
def test_skip_nonfinite_leaves_no_trace_but_the_count(images, tmp_path, monkeypatch):
    """The skipped update changes nothing: the run ends with the weights, EMA, batch-norm statistics and optimizer
    state (moments and step, hence the lr position) of a run on the same batches without the poisoned one."""
    cfg = resolve_config(DEMO, images, TINY + NONFINITE + ["train.skip_nonfinite=true"])
    _poison(monkeypatch, at=5)
    loop.train(cfg, tmp_path / "skipped")
    _poison(monkeypatch, at=5, drop=True)
    loop.train(cfg, tmp_path / "without")
    skipped, without = (read_checkpoint_raw(tmp_path / name / "last.ckpt") for name in ("skipped", "without"))
    state = {k for k in skipped if k.startswith("train_state.meta.")}
    differ = sorted(k for k in skipped if k not in state and not np.array_equal(skipped[k], without[k]))
    assert differ == ["train_state.nonfinite_steps"]
    assert int(skipped["train_state.nonfinite_steps"]) == 1 and int(without["train_state.nonfinite_steps"]) == 0
    assert int(skipped["train_state.meta.global_step"]) == 9 and int(without["train_state.meta.global_step"]) == 8
    record = _records(tmp_path / "skipped")[0]
    assert record["skipped_steps"] == 1 and np.isfinite(record["train_loss"])
    assert "epoch 1 step 6/9 (global step 6): non-finite loss" in (tmp_path / "skipped" / "train.log").read_text()


# --- bad checkpoints given to --resume ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def written(images, tmp_path_factory):
    """A training checkpoint of the TINY run (written without training a step) and the run's arguments."""
    cfg = resolve_config(DEMO, images, TINY)
    model = loop.build_model(cfg)
    step = build_train_network(model, create_loss(cfg), create_optimizer(model, cfg.optimizer, np.full(54, 0.01)),
                               cfg.train)
    path = tmp_path_factory.mktemp("ckpt") / "last.ckpt"
    save_train_checkpoint(path, step, model, TrainState(1, 20, 40.0, 0, batch=2, position=4), cfg)
    return path, ["--config", DEMO, "--data-dir", images, *TINY]


@pytest.mark.parametrize("case, words", [
    ("junk", ["junk.ckpt", "not a readable"]),
    ("truncated", ["truncated.ckpt", "not a readable"]),
    ("weights", ["weights.ckpt", "not a training checkpoint"]),
    ("settings", ["other settings", "optimizer.lr (0.01 -> 0.02)", "train.ema_decay (0.9 -> 0.5)"]),
    ("world", ["written by a run of 2 process(es), this run has 1"]),
])
def test_bad_resume_checkpoint_is_one_line(written, tmp_path, capsys, case, words):
    path, args = written
    extra = []
    target = tmp_path / f"{case}.ckpt"
    if case == "junk":
        target.write_bytes(b"\x00 not a checkpoint" * 40)
    elif case == "truncated":
        target.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
    elif case == "weights":
        write_checkpoint(read_checkpoint(path), target)
    elif case == "settings":
        target = path
        extra = ["optimizer.lr=0.02", "train.ema_decay=0.5"]
    else:
        arrays = read_checkpoint_raw(path)
        arrays["train_state.meta.world"] = np.array(2, np.int64)
        write_checkpoint(arrays, target)
    out = tmp_path / "run"
    assert train_main([*args, *extra, "--output", str(out), "--resume", str(target)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and all(w in err for w in words), err
    assert not (out / "last.ckpt").exists()
