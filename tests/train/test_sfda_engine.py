"""SFDA-DE adaptation in the training engine (ms_models.train.sfda; issue 18 sections 2 and 3): the adaptation loss
and its gradients equal torch_ref's, the class-aware sampler and the BN lr multiplier follow the upstream code
(CvNoob/SFDA-DE@213e138), a run of a few loops lowers the CDD term and raises the target accuracy of a source
model, resumes bit-exactly, and refuses the source data and the settings the method does not have."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import mindspore as ms
import torch_ref
from mindspore import Tensor, ops
from ms_models import create_model
from ms_models import sfda as ms_sfda
from ms_models.train import sfda as engine
from ms_models.train.checkpoint import read_train_checkpoint
from ms_models.train.cli import resolve_config, train_main
from ms_models.train.config import apply_overrides, load_config
from ms_models.train.loop import train
from ms_models.train.optim import create_optimizer
from specs.errors import ConfigError
from torch_ref import sfda as t_sfda
from torch_ref.testing import deterministic_weights

from convert.api import name_map
from helpers import ROOT, ms_with_weights_of, rel_err

SOURCE = ROOT / "configs" / "demo" / "sfda_source_digits.yaml"
ADAPT = ROOT / "configs" / "demo" / "sfda_adapt_digits.yaml"
SMALL = {"layers": [1, 1, 1, 1], "channels": [8, 16, 32, 64]}


def test_adapt_loss_and_gradients_equal_torch(graph_mode):
    """``AdaptLoss`` (CDD over feat and probs of the train-mode target branch and of the surrogate features through
    the frozen classifier) in GRAPH_MODE against torch_ref's, from the same weights: the loss, the intra term and
    the gradient of every trainable tensor within 1e-4 of its scale (float32 parity), the classifier frozen."""
    torch.manual_seed(0)
    tm = deterministic_weights(torch_ref.create_model("resnet18", num_classes=5, **SMALL), seed=0, input_size=32)
    mm = ms_with_weights_of(tm, create_model("resnet18", num_classes=5, **SMALL))
    tm.train()
    mm.set_train(True)
    rng = np.random.default_rng(0)
    counts = (3, 2, 3)
    images = rng.standard_normal((sum(counts), 3, 32, 32)).astype(np.float32)
    surrogate = np.abs(rng.standard_normal((sum(counts), 64))).astype(np.float32)
    t_loss_fn = t_sfda.AdaptLoss(tm, t_sfda.CDD(5), cdd_weight=0.5)
    for p in t_loss_fn.classifier.parameters():
        p.requires_grad_(False)
    t_loss, t_intra = t_loss_fn(torch.from_numpy(images), torch.from_numpy(surrogate), counts)
    t_loss.backward()
    m_loss_fn = ms_sfda.AdaptLoss(mm, ms_sfda.CDD(5), cdd_weight=0.5)
    for p in m_loss_fn.classifier.get_parameters():
        p.requires_grad = False
    weights = mm.trainable_params()
    (m_loss, m_intra), grads = ops.value_and_grad(m_loss_fn, None, weights, has_aux=True)(
        Tensor(images), Tensor(surrogate), counts)
    assert abs(float(m_loss.asnumpy()) - t_loss.item()) <= 1e-4 * abs(t_loss.item())
    assert abs(float(m_intra.asnumpy()) - t_intra.item()) <= 1e-4 * abs(t_intra.item())
    to_torch = name_map("resnet18", num_classes=5, **SMALL).ms_to_torch
    torch_grads = {k: p.grad.numpy() for k, p in tm.named_parameters() if p.requires_grad}
    assert {to_torch[p.name] for p in weights} == set(torch_grads) and not any(k.startswith("fc.") for k in torch_grads)
    for p, g in zip(weights, grads):
        assert rel_err(g.asnumpy(), torch_grads[to_torch[p.name]]) <= 1e-4, p.name


def test_class_aware_batches_follow_the_upstream_sampler():
    """Distinct classes per step, ``min(num_selected, kept classes)`` of them, an order used up before it is
    redrawn (BatchSampler drop_last), ``min(class_batch_size, class size)`` rows per class drawn without replacement
    from that class; the same generator state gives the same batches."""
    members = {0: np.arange(0, 10), 2: np.arange(10, 12), 3: np.arange(12, 30), 5: np.arange(30, 37),
               6: np.arange(37, 45)}
    classes = sorted(members)
    batches = engine.class_aware_batches(np.random.default_rng(3), members, classes, 2, 3, steps=6)
    again = engine.class_aware_batches(np.random.default_rng(3), members, classes, 2, 3, steps=6)
    assert [(c, [r.tolist() for r in rows]) for c, rows in batches] == \
        [(c, [r.tolist() for r in rows]) for c, rows in again]
    assert len(batches) == 6
    for chosen, rows in batches:
        assert len(chosen) == 2 and len(set(chosen)) == 2
        for c, r in zip(chosen, rows):
            assert len(r) == min(3, len(members[c])) and len(set(r.tolist())) == len(r) and set(r) <= set(members[c])
    # 5 classes in groups of 2: each permutation gives 2 steps (the fifth class is dropped), so the classes of
    # steps (0, 1), (2, 3), (4, 5) are 4 distinct classes each
    for first in (0, 2, 4):
        seen = batches[first][0] + batches[first + 1][0]
        assert len(set(seen)) == 4
    one = engine.class_aware_batches(np.random.default_rng(0), {4: np.arange(5)}, [4], 10, 3, steps=2)
    assert [c for c, _ in one] == [[4], [4]]                 # fewer kept classes than num_selected: all of them


def test_bn_lr_mult_is_upstream_rule_on_the_official_names():
    """``sfda.bn_lr_mult`` multiplies exactly the parameters whose official (torch) name holds ``bn``
    (``set_param_groups_bn_mult``; ResNet's ``bn1``-``bn3``, not ``downsample.1``) and the optimizer gives their
    group ``mult`` x the lr at every step."""
    model = create_model("resnet50", num_classes=7, **SMALL)
    for p in ms_sfda.classifier_of(model).get_parameters():
        p.requires_grad = False
    mults = engine.bn_lr_mult(model, 10.0)
    to_torch = name_map("resnet50", num_classes=7, **SMALL).ms_to_torch
    reference = {k for k, _ in torch_ref.create_model("resnet50", num_classes=7, **SMALL).named_parameters()
                 if k.find("bn") != -1 and not k.startswith("fc.")}
    assert {to_torch[n] for n in mults} == reference and set(mults.values()) == {10.0}
    assert any("downsample.1" in k for k in to_torch.values()) and not any("downsample" in k for k in reference)
    assert engine.bn_lr_mult(model, 1.0) == {}
    lr = np.array([1e-3, 5e-4], np.float32)
    opt = create_optimizer(model, load_config(ADAPT).optimizer, lr, mults)
    assert opt.is_group_lr and len(opt.learning_rate) == len(opt.parameters)
    for p, schedule in zip(opt.parameters, opt.learning_rate):     # one lr schedule per parameter, in order
        want = lr * np.float32(10.0) if p.name in mults else lr
        assert np.array_equal(schedule.learning_rate.asnumpy(), want), p.name
    assert not any(p.name.startswith("fc.") for p in opt.parameters)


# --- runs ---------------------------------------------------------------------------------------------------------

def _source(tmp_path_factory, *overrides: str):
    out = tmp_path_factory.mktemp("sfda_source")
    train(resolve_config(str(SOURCE), None, ["data.workers=1", *overrides]), out)
    return out / "best.ckpt"


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A source model: the demo's (8 epochs on builtin:digits, about 98 % on its val split)."""
    return _source(tmp_path_factory)


@pytest.fixture(scope="module")
def one_epoch_source(tmp_path_factory):
    """A training checkpoint of a run on builtin:digits (what it learned does not matter)."""
    return _source(tmp_path_factory, "train.epochs=1", "schedule.warmup_epochs=0")


def _adapt_cfg(source, *extra):
    # one data worker: each of a loop's pipelines would otherwise spend about 1 s stopping its worker processes
    return resolve_config(str(ADAPT), None, [f"model.pretrained={source}", "train.epochs=3", "sfda.iters_per_loop=8",
                                             "data.workers=1", *extra])


@pytest.mark.slow
def test_adaptation_lowers_cdd_raises_target_accuracy_and_resumes_exactly(source, tmp_path, monkeypatch):
    """Three loops of eight steps on builtin:digits_shifted: the intra-class CDD term falls and the target val
    top-1 rises above the source model's; metrics.jsonl holds the loop records; a run stopped after its first
    loop and resumed with ``--resume auto`` ends with every entry of ``last.ckpt`` (weights, BN statistics,
    momentum, step count) equal to the uninterrupted run's, bit for bit."""
    from ms_models.train.cli import validate
    before = validate("resnet18", str(source), "builtin:digits_shifted", config=str(SOURCE), progress=False)["top1"]
    whole = train(_adapt_cfg(source), tmp_path / "whole")
    records = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1, 2] == [r["epoch"] for r in whole.records]
    assert records[-1]["cdd_intra"] < records[0]["cdd_intra"]
    assert records[-1]["val_top1"] > before + 10, (before, [r["val_top1"] for r in records])
    assert all(0 < r["kept"] <= 1 and 1 <= r["classes"] <= 10 for r in records)
    assert (tmp_path / "whole" / "curves.png").is_file() and not (tmp_path / "whole" / "best.ckpt").exists()

    real_loop = engine._Run.loop

    def stop_at_second(self, loop, val):
        if loop == 1:
            raise KeyboardInterrupt
        return real_loop(self, loop, val)
    monkeypatch.setattr(engine._Run, "loop", stop_at_second)
    with pytest.raises(KeyboardInterrupt):
        train(_adapt_cfg(source), tmp_path / "parts")
    assert read_train_checkpoint(tmp_path / "parts" / "last.ckpt")[1].epoch == 1
    monkeypatch.setattr(engine._Run, "loop", real_loop)
    train(_adapt_cfg(source), tmp_path / "parts", resume="auto")
    a, state_a, _ = read_train_checkpoint(tmp_path / "whole" / "last.ckpt")
    b, state_b, _ = read_train_checkpoint(tmp_path / "parts" / "last.ckpt")
    assert a.keys() == b.keys() and state_a == state_b
    for key in a:
        assert np.array_equal(a[key], b[key]), key
    resumed = [json.loads(line) for line in (tmp_path / "parts" / "metrics.jsonl").read_text().splitlines()]
    assert [r["val_top1"] for r in resumed] == [r["val_top1"] for r in records]


def test_the_source_data_is_refused(one_epoch_source, tmp_path, capsys):
    """Adapting on the data the source checkpoint was trained on (recorded in it) is a one-line config error
    before anything runs (found when the checkpoint is read, as the other file checks: ``train.py`` exits 1) and
    nothing is written."""
    source = one_epoch_source
    cfg = _adapt_cfg(source, "data.dir=builtin:digits")
    with pytest.raises(ConfigError, match="source data") as info:
        train(cfg, tmp_path / "run")
    assert "\n" not in str(info.value) and not (tmp_path / "run").exists()
    code = train_main(["--config", str(ADAPT), "--output", str(tmp_path / "cli"), f"model.pretrained={source}",
                       "data.dir=builtin:digits"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.startswith("error: ") and "source-free" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "cli").exists()


@pytest.mark.parametrize("override, key", [
    (["distill.method=kd", "distill.teacher.name=resnet18", "distill.teacher.checkpoint=t.pth"], "distill.method"),
    (["train.ema_decay=0.99"], "train.ema_decay"),
    (["train.accumulate=2"], "train.accumulate"),
    (["data.mixup=0.8"], "data.mixup"),
    (["train.save_every_steps=5"], "train.save_every_steps"),
    (["model.pretrained=null"], "model.pretrained"),
    (["sfda.class_batch_size=0"], "sfda.class_batch_size"),
])
def test_settings_the_method_has_not_are_config_errors(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as info:
        apply_overrides(load_config(ADAPT), override)
    assert "\n" not in str(info.value)


def test_a_model_without_a_linear_classifier_is_refused():
    """SFDA-DE anchors on the classifier's weights: a model without an ``fc`` / ``head`` Dense is a clear error."""
    class Plain(ms.nn.Cell):
        pass
    with pytest.raises(ValueError, match="linear classifier"):
        ms_sfda.classifier_of(Plain())
    with pytest.raises(ValueError, match="linear classifier"):
        t_sfda.classifier_of(torch.nn.Module())
