"""Training parity with torch (issue 13 section 2): K = 3 updates of the engine's own train step
(``ms_models.train``: ``create_loss``, ``create_optimizer``, ``build_train_network``, MindSpore GRAPH_MODE) against
``torch.optim.SGD`` (momentum 0.9) and ``torch.optim.AdamW`` over the same parameter groups, from the same weights
on the same batches, through :mod:`convert.train_parity` (also ``python -m convert parity --train-steps K``).

What is compared (the module's docstring has the reasons): after every update, every weight and BN statistic and
the step's loss, against torch float64 with torch float32's own distance from it as the yardstick
(``max|ms - t64| <= max(4 |t32 - t64|, 1e-4 of the tensor's scale)``). Batch-statistics BN, dropout and drop path
off (the frameworks draw different masks), batch 4 at the cfg's ``test_input_size``. Shared at every step, re-recorded
from torch float32: the kNN graph (ViG), the step-layer outputs (AdaBin, BiMLP), the sides of the gradient kinks
(PReLU, Maxout, BiMLP's clip), and the weights each update starts from (each optimizer keeps its own state). The
differences of MindSpore's own optimizers from torch's (``nn.Momentum``'s Nesterov, ``nn.Adam``'s eps,
``nn.AdamWeightDecay``'s missing bias correction) and the torch-compatible forms the engine uses instead are
tested in ``test_optim.py``; ``docs/training_optim.md`` lists them.

CI time: one (model, optimizer) run compiles the train step in GRAPH_MODE (about 5 to 40 s on 2 cores, by model)
and runs torch float32 and float64 (float64 depthwise and adder convolutions are slow in torch). Every light model
with both optimizers takes SWEEP_MINUTES minutes on 2 cores, far over the suite's budget, so the registry test runs
:data:`CASES`; ``TRAIN_PARITY_ALL=1`` runs every light model with both (the parity table in
``docs/training_optim.md`` is that run).
"""
from __future__ import annotations

import os

import pytest
import torch
from mindspore.nn.utils import no_init_parameters

import torch_ref
from convert import train_parity
from convert.api import name_map
from convert.cli import main
from convert.train_parity import TRAIN_TOL, parity_config, run_train_parity, torch_param_groups
from helpers import is_heavy, smallest_per_family
from ms_models import create_model
from ms_models.train.optim import param_groups
from specs.errors import ConfigError

LIGHT = [n for n in torch_ref.list_models() if not is_heavy(n)]
FAMILIES = smallest_per_family(LIGHT)
# BiMLP-S compiles for about 200 s per case on 2 cores: the suite runs it with AdamW only (its recipe's optimizer,
# configs/bimlp; its step layers and clip kinks are shared alike under either optimizer, and SGD's update is checked
# on every other family). TRAIN_PARITY_ALL runs both.
CASES = [(n, "sgd") for n in FAMILIES if n != "bimlp_s"] + [(n, "adamw") for n in FAMILIES]
if os.environ.get("TRAIN_PARITY_ALL"):
    CASES = [(n, o) for n in LIGHT for o in ("sgd", "adamw")]
# Open defects, not tolerances: on AVX-512 CPUs one case fails at update 2, reproducibly and at commits that passed
# it on CI, and which one depends on the processor (docs/training_optim.md, open items). AMD EPYC with avx512f:
# GhostNetV2-1.0 with AdamW (blocks.9.0.conv.weight row 444: MindSpore moves it by -1.7e-4, torch float32 and
# float64 both by +1.3e-5; 19x its bound). Intel Xeon with AVX-512 and AMX: AdaBin-ResNet20 with SGD (conv1.weight
# 8.5x its bound; one kink side taken 6.3e-4 of the input scale from its kink), passing with ONEDNN_MAX_CPU_ISA=AVX2.
# Every other case passes on both. Causes not found yet.
_AVX512 = "avx512f" in open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else False
_OPEN_AVX512 = {("ghostnetv2_100", "adamw"), ("adabin_resnet20_cifar", "sgd")}
CASES = [pytest.param(n, o, marks=pytest.mark.xfail(_AVX512, reason="open defect on AVX-512 CPUs (see above)"))
         if (n, o) in _OPEN_AVX512 else (n, o) for n, o in CASES]
CLI_MODEL = "adabin_resnet20_cifar"     # the cheapest light model to compile and run (docs/training_optim.md)


@pytest.mark.slow
@pytest.mark.parametrize("name,optimizer", CASES)
def test_train_steps_equal_torch(name, optimizer):
    """Three updates: every weight and BN statistic and every loss within the bound, and the shared decisions
    rare float32 near ties (``report.ok``); the table (printed) has the figures."""
    report = run_train_parity(name, optimizer, steps=3)
    print(report.table())
    assert len(report.rows) == 3
    assert report.ok, report.table()


@pytest.mark.parametrize("name", FAMILIES)
def test_torch_groups_equal_the_engines(name):
    """The torch reference's parameter groups (:func:`torch_param_groups`) equal the engine's
    (``ms_models.train.optim.param_groups``) through the name map: the same tensors decayed, the same layer-wise
    lr scale (layer decay 0.75), with the default rule and with ``filter_bias_and_bn`` off."""
    to_torch = name_map(name).ms_to_torch
    with torch.device("meta"):
        tm = torch_ref.create_model(name)
    with no_init_parameters():
        mm = create_model(name)
    for flag in (True, False):
        ours = {to_torch[n]: (g["weight_decay"], g["lr_scale"]) for g in param_groups(mm, 0.05, 0.75, flag)
                for n in g["names"]}
        ref = {n: (g["weight_decay"], g["lr_scale"]) for g in torch_param_groups(tm, 0.05, 0.75, flag)
               for n in g["names"]}
        assert ours.keys() == ref.keys()
        for key, (wd, scale) in ref.items():
            assert ours[key][0] == wd and ours[key][1] == pytest.approx(scale), key
        assert {wd for wd, _ in ours.values()} == ({0.0, 0.05} if flag else {0.05})


@pytest.mark.slow   # the CLI end to end; the step parity itself runs in --fast
def test_cli_train_steps_prints_the_table(capsys):
    """``python -m convert parity --train-steps 2 --optimizer sgd``: a header, one row per update with both losses
    and the tensor with the largest relative difference, the bound, PASS, exit 0."""
    assert main(["parity", "--model", CLI_MODEL, "--train-steps", "2", "--optimizer", "sgd"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    rows = [line.split() for line in lines if line.split()[0] in ("1", "2")]
    assert [r[0] for r in rows] == ["1", "2"] and lines[-1] == "PASS: 2 updates"
    for r in rows:
        loss_torch, loss_ms = float(r[2]), float(r[3])
        assert abs(loss_torch - loss_ms) <= TRAIN_TOL * loss_torch and r[5] in name_map(CLI_MODEL).torch_to_ms


@pytest.mark.slow   # the CLI end to end, twice
def test_cli_train_steps_fails_on_another_optimizer(monkeypatch, capsys):
    """The check has teeth: a torch reference that decays every parameter (``filter_bias_and_bn=False``: the
    official AdaBin script's plain ``torch.optim.SGD(model.parameters(), weight_decay=wd)``) against the engine's
    default groups moves the BN scales and the activation scalars by ``lr * wd * w`` more per step: FAIL, exit 1,
    a 1-d or 0-d tensor marked."""
    groups = train_parity.torch_param_groups
    monkeypatch.setattr(train_parity, "torch_param_groups",
                        lambda model, wd, layer_decay=None, filter_bias_and_bn=True: groups(model, wd, layer_decay,
                                                                                            False))
    assert main(["parity", "--model", CLI_MODEL, "--train-steps", "2", "--optimizer", "sgd"]) == 1
    out = capsys.readouterr().out
    assert "FAIL: 2 updates" in out
    marked = [line.split("<-- ")[1] for line in out.splitlines() if "<-- " in line]
    state = torch_ref.create_model(CLI_MODEL).state_dict()
    assert marked and all(m == "loss" or state[m].ndim <= 1 for m in marked), marked


@pytest.mark.parametrize("argv, message", [
    (["--train-steps", "0"], "--train-steps must be at least 1"),
    (["--train-steps", "2", "--deploy"], "drop --deploy"),
    (["--optimizer", "sgd"], "--optimizer goes with --train-steps"),
])
def test_cli_bad_input_is_one_line(argv, message, capsys):
    assert main(["parity", "--model", CLI_MODEL, *argv]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("override, key", [
    ({"optimizer": {"name": "lamb"}}, "optimizer.name"),
    ({"train": {"grad_clip": 1.0}}, "train.grad_clip"),
    ({"data": {"mixup": 0.8}}, "data.mixup"),
    ({"train": {"amp_level": "O2"}}, "train.amp_level"),
])
def test_settings_torch_cannot_reproduce_are_config_errors(override, key):
    """Before anything is built: a one-line ConfigError naming the key."""
    from ms_models.train.config import config_from_dict, config_to_dict
    data = config_to_dict(parity_config(CLI_MODEL))
    for section, values in override.items():
        data[section].update(values)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        run_train_parity(CLI_MODEL, cfg=config_from_dict(data))
    with pytest.raises(ConfigError, match="lamb"):
        parity_config(CLI_MODEL, "lamb")


class _States:
    """A stand-in torch model: ``state_dict()`` of fixed tensors."""

    def __init__(self, **tensors):
        self.tensors = {k: torch.tensor(v) for k, v in tensors.items()}

    def state_dict(self):
        return self.tensors


@pytest.mark.parametrize("ms_noise, ok", [(3.0, True), (30.0, False)])
def test_noise_tensors_are_checked_for_size(ms_noise, ok):
    """A tensor whose float64 update is zero (exact gradient 0) is left out of the parity columns and checked for
    size: MindSpore's update within ``NOISE_FACTOR`` (10) times torch float32's rounding-noise update passes, 30
    times fails and is marked; a tensor with a real update is still compared with the parity bound."""
    import numpy as np
    from mindspore import Parameter, Tensor, nn
    start = np.linspace(-0.5, 0.5, 6).astype(np.float32).astype(np.float64)   # as torch float64 starts: float32's
    step = np.linspace(1e-3, 2e-3, 6)                  # the real update of "w"
    noise = np.full(6, 1e-5)                           # torch float32's update of "b" (float64: none)

    class Cell(nn.Cell):
        def __init__(self):
            super().__init__()
            self.w = Parameter(Tensor((start + step).astype(np.float32)), name="w")
            self.b = Parameter(Tensor((start + ms_noise * noise).astype(np.float32)), name="b")

    t32 = _States(w=(start + step).astype(np.float32), b=(start + noise).astype(np.float32))
    t64 = _States(w=start + step, b=start.copy())
    before = {k: torch.tensor(start.astype(np.float32)) for k in ("w", "b")}
    row = train_parity._compare(0, 0.1, (1.0, 1.0, 1.0), Cell(), (before, t32, t64), {"w": "w", "b": "b"}, TRAIN_TOL)
    assert row.noise == 1 and row.worst == "w" and row.ratio <= 1.0
    assert row.ok is ok and (row.noise_ratio > 1.0) is not ok
    report = train_parity.TrainParityReport("m", "sgd", (1,), TRAIN_TOL, 4.0, rows=[row])
    assert ("<-- noise tensor" in report.table()) is not ok and "noise tensors (left out above): 1" in report.table()


def test_a_reference_exactly_at_a_kink_is_a_side_of_its_own():
    """BiMLP's quantiser rounds -0.5 to 0 (half to even) and a hair below it to -1: torch float32 at exactly -0.5
    and MindSpore below it are on different sides (forced), equal values and values on one side are not."""
    import numpy as np
    kinks = (-1.0, 1.0, -0.5, 0.5)
    below = np.nextafter(np.float32(-0.5), np.float32(-1.0))
    x = np.array([below, -0.5, -0.5, 0.2, 1.0, 0.99], np.float32)
    ref = np.array([-0.5, -0.5, below, 0.3, 0.99, 1.0], np.float32)
    assert train_parity._other_side(x, ref, kinks).tolist() == [True, False, True, False, True, True]
