"""Distillation in the training engine (ms_models.train.distill; issue 16 section 2): the compiled step's loss and
student gradients equal VanillaKD's ``train-kd.py`` step written in torch (torch_ref student, teacher and losses);
training lowers the loss and never touches the teacher; the teacher loads from a torch checkpoint; the batch resize
is torchvision's; the config section, checkpoints and the bad-input errors."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import mindspore as ms
import torch_ref
from ms_models.train.checkpoint import restore_train_checkpoint, save_train_checkpoint, TrainState
from ms_models.train.cli import train_main
from ms_models.train.config import config_from_dict, apply_overrides
from ms_models.train import loop
from ms_models.train.distill import (TOPK_FILL, TeacherCache, build_teacher, create_distill_loss, resize_batch,
                                     resized_shape)
from ms_models.train.losses import create_loss
from ms_models.train.optim import create_optimizer
from ms_models.train.step import build_train_network
from specs.errors import CheckpointError, ConfigError, DataError, UnknownModelError
from torch_ref.distill import KLDiv

import ms_models
from convert.api import name_map
from helpers import ROOT, deterministic_weights, rel_err

# Reduced ResNets (one block per stage, narrow): a bottleneck teacher and a basic-block student.
SMALL = {"layers": [1, 1, 1, 1], "channels": [8, 16, 32, 64]}
TEACHER, STUDENT, CLASSES, SIZE = "resnet50", "resnet18", 10, 36


def _torch(name: str, seed: int) -> torch.nn.Module:
    model = torch_ref.create_model(name, num_classes=CLASSES, **SMALL)
    with torch.no_grad():
        return deterministic_weights(model, seed=seed, input_size=SIZE)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The teacher and the student's starting weights as official torch files (plain state_dicts)."""
    root = tmp_path_factory.mktemp("distill")
    paths = {}
    for role, name, seed in (("teacher", TEACHER, 1), ("student", STUDENT, 2)):
        paths[role] = root / f"{role}.pth"
        torch.save(_torch(name, seed).state_dict(), paths[role])
    return paths


def _cfg(files, **distill) -> object:
    section = {"method": "kd", "teacher": {"name": TEACHER, "checkpoint": str(files["teacher"]), "kwargs": SMALL}}
    section.update(distill)
    return config_from_dict({
        "model": {"name": STUDENT, "num_classes": CLASSES, "kwargs": SMALL, "pretrained": str(files["student"])},
        "data": {"image_size": SIZE, "batch_size": 4, "mixup": 0.5},
        "optimizer": {"name": "sgd", "lr": 1.0, "momentum": 0.0, "weight_decay": 0.0},
        "train": {"loss": "bce", "epochs": 2}, "distill": section})


def _step(cfg):
    model = ms_models.create_model(STUDENT, num_classes=CLASSES, checkpoint=cfg.model.pretrained, **SMALL)
    teacher = build_teacher(cfg)
    step = build_train_network(model, create_distill_loss(cfg.distill, create_loss(cfg)),
                               create_optimizer(model, cfg.optimizer, cfg.optimizer.lr), cfg.train,
                               teacher=teacher, student_resize=cfg.distill.student_resize)
    return model, teacher, step


def _batch(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((4, 3, SIZE, SIZE)).astype(np.float32)
    soft = rng.dirichlet(np.ones(CLASSES), 4).astype(np.float32)       # mixup-like soft targets
    return images, soft


def test_step_equals_the_official_step_in_torch(files, graph_mode):
    """One compiled step (GRAPH_MODE): ``ori_loss_weight * BCE(z_s, mixed targets) + kd_loss_weight * KLDiv_T(z_s,
    z_t)`` with the teacher on the batch resized to 44 px (eval mode) and the student on it resized to 32 px
    (train mode), as train-kd.py computes it; SGD with lr 1 and no momentum makes the weight change the gradient.
    Tolerance 1e-4 relative (float32, both frameworks, a few hundred accumulations per value)."""
    cfg = _cfg(files, ori_loss_weight=0.5, kd_loss_weight=2.0, temperature=2.0, student_resize=32,
               teacher={"name": TEACHER, "checkpoint": str(files["teacher"]), "kwargs": SMALL, "resize": 44})
    model, _, step = _step(cfg)
    before = {p.name: p.asnumpy().copy() for p in model.trainable_params()}
    images, soft = _batch()
    loss = float(step(ms.Tensor(images), ms.Tensor(soft)).asnumpy())

    teacher_t, student_t = _torch(TEACHER, 1).eval(), _torch(STUDENT, 2).train()
    x = torch.from_numpy(images)
    with torch.no_grad():
        z_t = teacher_t(F.interpolate(x, size=(44, 44), mode="bilinear", align_corners=False))
    z_s = student_t(F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False))
    expected = 0.5 * F.binary_cross_entropy_with_logits(z_s, torch.from_numpy(soft)) + 2.0 * KLDiv(2.0)(z_s, z_t)
    expected.backward()
    assert loss == pytest.approx(float(expected), rel=1e-4)
    to_ms = name_map(STUDENT, num_classes=CLASSES, **SMALL).torch_to_ms
    grads = {to_ms[k]: p.grad.numpy() for k, p in student_t.named_parameters()}
    assert set(grads) == set(before)
    for p in model.trainable_params():
        change = before[p.name] - p.asnumpy()          # = lr * grad
        assert rel_err(change, grads[p.name]) < 1e-4, p.name


@pytest.mark.slow   # a training run
def test_training_lowers_the_loss_and_never_touches_the_teacher(files, graph_mode, tmp_path):
    """Eight compiled DKD steps on one batch: the loss falls; every teacher Parameter (BN statistics included)
    stays bit for bit; a training checkpoint holds the student's state and not the teacher's, and restores."""
    cfg = apply_overrides(_cfg(files), ["distill.method=dkd", "optimizer.lr=0.05"])
    model, teacher, step = _step(cfg)
    frozen = {p.name: p.asnumpy().copy() for p in teacher.get_parameters()}
    assert frozen and all(name.startswith("teacher.") for name in frozen)
    images, soft = (ms.Tensor(a) for a in _batch(1))
    losses = [float(step(images, soft).asnumpy()) for _ in range(8)]
    assert losses[-1] < 0.9 * losses[0], losses
    assert not teacher.training
    for p in teacher.get_parameters():
        np.testing.assert_array_equal(p.asnumpy(), frozen[p.name], err_msg=p.name)

    path = save_train_checkpoint(tmp_path / "last.ckpt", step, model, TrainState(global_step=8), cfg)
    entries = ms.load_checkpoint(str(path))
    assert not any("teacher" in name for name in entries)
    assert {p.name for p in model.get_parameters()} <= set(entries)
    model2, _, step2 = _step(cfg)
    state, _ = restore_train_checkpoint(path, step2, model2, cfg)
    assert state.global_step == 8
    for a, b in zip(model.get_parameters(), model2.get_parameters()):
        np.testing.assert_array_equal(a.asnumpy(), b.asnumpy(), err_msg=a.name)


def test_teacher_from_a_torch_checkpoint_gives_torch_refs_logits(files, pynative_mode):
    """The teacher (strictly loaded from the official torch file) in eval mode equals torch_ref's to 1e-5 of scale
    (float32, BN folded identically)."""
    teacher = build_teacher(_cfg(files))
    x = np.random.default_rng(3).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)
    with torch.no_grad():
        expected = _torch(TEACHER, 1).eval()(torch.from_numpy(x)).numpy()
    assert rel_err(teacher(ms.Tensor(x)).asnumpy(), expected) < 1e-5


@pytest.mark.parametrize("size", [(32, 32), (20, 28)])
def test_resize_is_torchvisions_tensor_resize(pynative_mode, size):
    """``resize_batch`` = torchvision 0.11 ``Resize(24)`` on a tensor: shorter side 24, bilinear, half-pixel
    (``align_corners=False``), no antialias; to 1e-6 of the output scale (float32 weights computed in another
    order: a few ulp)."""
    assert resized_shape(20, 28, 24) == (24, 33) and resized_shape(28, 20, 24) == (33, 24)
    x = np.random.default_rng(4).standard_normal((2, 3) + size).astype(np.float32)
    out = resize_batch(ms.Tensor(x), 24).asnumpy()
    shape = resized_shape(*size, 24)
    expected = F.interpolate(torch.from_numpy(x), size=shape, mode="bilinear", align_corners=False).numpy()
    assert out.shape == expected.shape
    assert rel_err(out, expected) < 1e-6


def test_config_section(files):
    cfg = _cfg(files)
    assert cfg.distill.ori_loss_weight == 1.0 and cfg.distill.kd_loss_weight == 1.0      # train-kd.py defaults
    assert (cfg.distill.temperature, cfg.distill.dkd_alpha, cfg.distill.dkd_beta) == (1.0, 1.0, 2.0)
    assert apply_overrides(cfg, ["distill.teacher.kwargs.zero_init_last=false"]).distill.teacher.kwargs == \
        {**SMALL, "zero_init_last": False}
    with pytest.raises(ConfigError, match=r"'distill.method' must be one of kd, dkd, dist, bkd, got 'dk'"):
        apply_overrides(cfg, ["distill.method=dk"])
    with pytest.raises(ConfigError, match=r"'distill.teacher.checkpoint' is required"):
        apply_overrides(cfg, ["distill.teacher.checkpoint=null"])
    with pytest.raises(UnknownModelError, match=r"'distill.teacher.name'"):
        apply_overrides(cfg, ["distill.teacher.name=resnet5"])
    with pytest.raises(ConfigError, match=r"'distill.temperature' must be positive"):
        apply_overrides(cfg, ["distill.temperature=0"])
    with pytest.raises(ConfigError, match=r"unknown config key 'distill.temprature'; did you mean distill.temperature"):
        apply_overrides(cfg, ["distill.temprature=2"])
    assert apply_overrides(cfg, ["distill.method=null", "distill.teacher.checkpoint=null"]).distill.method is None


def test_bad_teacher_checkpoints_are_one_line_errors(files, tmp_path, pynative_mode):
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint")
    other_classes = tmp_path / "teacher7.pth"
    t7 = torch_ref.create_model(TEACHER, num_classes=7, **SMALL)
    torch.save(t7.state_dict(), other_classes)
    wrong_model = files["student"]
    cases = [(corrupt, r"distill.teacher.checkpoint"), (tmp_path / "missing.pth", r"distill.teacher.checkpoint"),
             (other_classes, r"the teacher checkpoint has 7 classes \(fc\.(bias|weight)\), the student 10"),
             (wrong_model, r"distill.teacher.checkpoint.*missing key")]
    for path, message in cases:
        cfg = apply_overrides(_cfg(files), [f"distill.teacher.checkpoint={path}"])
        with pytest.raises(CheckpointError, match=message) as err:
            build_teacher(cfg)
        assert "\n" not in str(err.value)


def test_train_cli_stops_on_a_bad_teacher_before_training(files, tmp_path, capsys):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"\0" * 64)
    config = tmp_path / "kd.yaml"
    config.write_text(f"model: {{name: {STUDENT}, num_classes: 10, kwargs: {SMALL}}}\n"
                      f"data: {{dir: 'builtin:digits', image_size: {SIZE}, batch_size: 32, workers: 1}}\n"
                      f"distill: {{method: kd, teacher: {{name: {TEACHER}, checkpoint: '{bad}', kwargs: {SMALL}}}}}\n")
    assert train_main(["--config", str(config), "--output", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "distill.teacher.checkpoint" in err[0]
    assert not (tmp_path / "run" / "last.ckpt").exists()


def test_teacher_cache_replays_what_it_recorded():
    """Epoch e replays epoch (e mod epochs)'s record bit for bit; top-k keeps the k largest logits and puts the
    others TOPK_FILL below the smallest kept one; a replay onto other images is a DataError."""
    rng = np.random.default_rng(5)
    images, logits = rng.standard_normal((3, 3, 8, 8)).astype(np.float32), rng.standard_normal((3, 6)).astype(np.float32)
    cache = TeacherCache(epochs=2)
    assert cache.get(0, 4, images) is None
    cache.put(0, 4, images, logits)
    np.testing.assert_array_equal(cache.get(2, 4, images), logits)
    assert cache.get(1, 4, images) is None and cache.get(2, 5, images) is None
    assert (cache.hits, cache.misses, len(cache)) == (1, 3, 1)
    with pytest.raises(DataError, match=r"teacher cache: batch 4 of epoch 5 is not the batch recorded for it"):
        cache.get(4, 4, images + 1)

    top = TeacherCache(topk=2)
    top.put(0, 0, images, logits)
    got = top.get(1, 0, images)
    for row, out in zip(logits, got):
        keep = np.sort(np.argsort(row)[-2:])
        np.testing.assert_array_equal(out[keep], row[keep])
        rest = np.setdiff1d(np.arange(6), keep)
        np.testing.assert_array_equal(out[rest], np.float32(row[keep].min() - TOPK_FILL))


def _digits_run(files, output, cache: bool, resume: str | None = None, **overrides):
    cfg = apply_overrides(_cfg(files), [
        "data.dir=builtin:digits", "data.workers=1", "data.batch_size=128", "data.val_batch_size=360",
        "data.mixup=0", "data.mean=[0.5,0.5,0.5]", "data.std=[0.5,0.5,0.5]", "data.hflip=0",
        "data.random_crop_padding=2", "train.loss=ce", "optimizer.name=adamw", "optimizer.lr=0.003",
        "train.log_interval=100", f"distill.cache_teacher={str(cache).lower()}", "distill.temperature=4"]
        + [f"{k}={v}" for k, v in overrides.items()])
    return loop.train(cfg, output, resume)


@pytest.mark.slow
def test_cached_teacher_run_equals_the_live_teacher_run(files, tmp_path, monkeypatch):
    """Two epochs of distillation on the digits with distill.cache_teacher (epoch 2 replays epoch 1's batches and
    teacher logits): the same weights, bit for bit, as the run whose teacher runs live on every batch of the same
    schedule (the cache's lookup disabled), and metrics.jsonl says which epoch replayed."""
    cached = _digits_run(files, tmp_path / "cached", True)
    assert [r["teacher_replayed"] for r in cached.records] == [0.0, 1.0]
    assert cached.records[1]["train_loss"] < cached.records[0]["train_loss"]
    monkeypatch.setattr(TeacherCache, "get", lambda self, epoch, batch, images: None)
    live = _digits_run(files, tmp_path / "live", True)
    assert [r["teacher_replayed"] for r in live.records] == [0.0, 0.0]
    a, b = (ms.load_checkpoint(str(run.output / "last.ckpt")) for run in (cached, live))
    names = [p.name for p in ms_models.create_model(STUDENT, num_classes=CLASSES, **SMALL).get_parameters()]
    for name in names:
        np.testing.assert_array_equal(a[name].asnumpy(), b[name].asnumpy(), err_msg=name)
    assert "kd distillation from resnet50" in (cached.output / "train.log").read_text()


@pytest.mark.slow
def test_students_share_one_teacher_forward(files, tmp_path, monkeypatch):
    """distill.students: a second student (DIST, its own lr) trained beside the first on the same batches and the
    same teacher forward (here replayed from the cache in epoch 2) ends with the weights, bit for bit, and the
    records of the same student trained alone with a live teacher; it has its own folder, and resumes with the
    first one."""
    student = "[{distill.method: dist, optimizer.lr: 0.001, model.kwargs.channels: [8, 16, 32, 48]}]"
    both = _digits_run(files, tmp_path / "both", True, **{"distill.students": student, "model.pretrained": "null"})
    assert len(both.students) == 1
    second = both.students[0]
    assert second.output == tmp_path / "both" / "student1"
    assert {"config.yaml", "metrics.jsonl", "train.log", "curves.png", "last.ckpt", "best.ckpt"} <= \
        {p.name for p in second.output.iterdir()}
    assert [r["teacher_replayed"] for r in second.records] == [0.0, 1.0]
    monkeypatch.setattr(TeacherCache, "get", lambda self, epoch, batch, images: None)
    alone = _digits_run(files, tmp_path / "alone", True, **{"distill.method": "dist", "optimizer.lr": 0.001,
                                                            "model.kwargs.channels": "[8,16,32,48]",
                                                            "model.pretrained": "null"})
    a, b = (ms.load_checkpoint(str(path / "last.ckpt")) for path in (second.output, alone.output))
    assert set(a) == set(b)
    for name in a:
        np.testing.assert_array_equal(a[name].asnumpy(), b[name].asnumpy(), err_msg=name)
    for mine, its in zip(second.records, alone.records):
        assert (mine["train_loss"], mine["val_top1"]) == (its["train_loss"], its["val_top1"])
    assert both.records[0]["train_loss"] != second.records[0]["train_loss"]
    assert "student 1: resnet18, dist distillation" in (tmp_path / "both" / "train.log").read_text()

    monkeypatch.undo()
    again = _digits_run(files, tmp_path / "both", True, resume="auto",       # a finished run resumes to its end
                        **{"distill.students": student, "model.pretrained": "null"})
    assert [len(run.records) for run in (again, again.students[0])] == [2, 2]
    assert again.students[0].best_top1 == second.best_top1
    (second.output / "last.ckpt").unlink()
    with pytest.raises(CheckpointError, match=r"student1/last.ckpt: no checkpoint of student 1 to resume with"):
        _digits_run(files, tmp_path / "both", True, resume="auto",
                    **{"distill.students": student, "model.pretrained": "null"})


def test_student_list_errors(files):
    cfg = _cfg(files)
    ok = apply_overrides(cfg, ["distill.students=[{optimizer.lr: 0.5, model.name: resnet34}]"])
    assert ok.distill.students == ({"optimizer.lr": 0.5, "model.name": "resnet34"},)
    cases = [("[{data.batch_size: 8}]", ConfigError, r"students\[0\]: config key 'data.batch_size' is shared by all"),
             ("[{model.num_classes: 5}]", ConfigError, r"students\[0\]: config key 'model.num_classes' is shared"),
             ("[{}, {optimizer.lr: -1}]", ConfigError, r"distill.students\[1\]: config key 'optimizer.lr' must be "
                                                       r"positive"),
             ("[{model.name: resnet5}]", UnknownModelError, r"distill.students\[0\]: config key 'model.name'"),
             ("[{optimizer.lrr: 1}]", ConfigError, r"distill.students\[0\]: unknown config key 'optimizer.lrr'"),
             ("[{distill.method: null}]", ConfigError, r"students\[0\]: config key 'distill.method': a student needs"),
             ("[3]", ConfigError, r"'distill.students\[0\]' must be a mapping")]
    for value, error, message in cases:
        with pytest.raises(error, match=message) as err:
            apply_overrides(cfg, [f"distill.students={value}"])
        assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=r"'distill.students' needs distill.method"):
        apply_overrides(ok, ["distill.method=null", "distill.teacher.checkpoint=null"])


@pytest.mark.slow
def test_distill_demo_script(tmp_path, capsys):
    """scripts/distill_demo.py end to end, shortened to one epoch of a reduced teacher and both students: three
    runs, the summary table and summary.json, the KD run distilled from the teacher run's best.ckpt."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import distill_demo
    small = ["model.kwargs.layers=[1,1,1,1]", "model.kwargs.channels=[8,16,32,64]"]
    teacher_small = [k.replace("model.", "distill.teacher.") for k in small]
    assert distill_demo.main(["--output", str(tmp_path), "--set", "train.epochs=1", "schedule.warmup_epochs=0",
                              *small, *teacher_small]) == 0
    rows = json.loads((tmp_path / "summary.json").read_text())
    assert [r["run"] for r in rows] == ["teacher", "student", "student + KD"]
    assert all(0 <= r["best_top1"] <= 100 and r["seconds"] > 0 for r in rows)
    log = (tmp_path / "student_kd" / "train.log").read_text()
    assert "kd distillation from resnet18" in log and "distillation" not in (tmp_path / "student" / "train.log").read_text()
    assert "student + KD" in capsys.readouterr().out


@pytest.mark.slow
def test_benchmark_distillation_row():
    """scripts/benchmark.py --train --teacher: one row (live teacher step, cached replay step, both frameworks) runs
    to the end on a small ResNet pair and reports positive times."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import benchmark
    row = benchmark.bench_train("resnet18", 2, 32, repeats=2, warmup=1, teacher="resnet18")
    for key in ("torch", "torch_alone", "torch_cached", "ms_graph", "ms_graph_cached", "ms_compile"):
        assert row[key] > 0, key
    assert {k: len(v) for k, v in row["times"].items()} == dict.fromkeys(
        ("torch", "torch_cached", "ms_graph", "ms_graph_cached"), 2)        # interleaved, 2 rounds
    ratios = [m / t for m, t in zip(row["times"]["ms_graph"], row["times"]["torch"])]
    assert row["ms_over_torch"] == pytest.approx(sum(ratios) / 2)          # the median of two per-round ratios
