"""What is special to ResNet: timm's outputs, parameter counts, zero-init-last and drop-path rates as timm builds
them, where drop path acts, training-mode BN in GRAPH_MODE, timm training checkpoints, ONNX, the 224 px parity tool.

``resnet_official_tiny_{basic,bottleneck}.safetensors`` were made by running huggingface/pytorch-image-models
@aa4b5850c154 ``timm/models/resnet.py`` (loaded alone, with stand-ins for the layer factories it calls:
ReLU, BatchNorm2d, no attention or anti-aliasing; its ``create_classifier`` and ``DropPath`` are timm's own files)
as ``ResNet(block, layers=[2, 2, 1, 1], channels=[8, 16, 24, 32], num_classes=10)`` with
``torch_ref.testing.deterministic_weights``: its state, two inputs (64x48, 57x41) and its eval features and
logits. ``resnet_official_keys.json``: timm's ``resnet18..152(drop_path_rate=0.1)`` as built: keys and shapes,
parameter counts, the BN weights ``zero_init_last`` leaves at zero and each block's ``DropPath`` rate.
"""
from __future__ import annotations

import argparse
import datetime
import json

import mindspore as ms
import numpy as np
import pytest
import torch
from mindspore.nn.utils import no_init_parameters

import ms_models
import torch_ref
from convert.api import ms_state_of, ms_twin, name_map, torch_model_from, torch_state_of
from convert.cli import main as cli
from convert.io import read_checkpoint
from convert.mapping import build_name_map, torch_to_ms
from convert.onnx import export_onnx, ort_run
from convert.parity import run_parity
from helpers import DATA, load_torch_state, ms_with_weights_of, official_record, rel_err, torch_with_state
from ms_models.context import execution_mode
from ms_models.models.resnet import ResNet as MsResNet
from specs.errors import CheckpointError
from specs.resnet import VARIANTS, block_plan
from torch_ref.models.resnet import ResNet

TOL = 1e-4   # float32, relative to the output scale (observed 2e-6 to 1.4e-5 against timm's logits)
NAMES = list(VARIANTS)
CASES = ["basic", "bottleneck"]
SIZES = ("64x48", "57x41")


def _timm(name: str) -> dict:
    return json.loads((DATA / "resnet_official_keys.json").read_text())["models"][name]


def _official(case: str):
    """timm's tiny ``case`` model: kwargs, state, inputs and outputs (:func:`helpers.official_record`)."""
    return official_record(f"resnet_official_tiny_{case}.safetensors")


def _blocks(model, framework: str) -> dict:
    items = model.named_modules() if framework == "torch" else model.cells_and_names()
    return {n: m for n, m in items if type(m).__name__ in ("BasicBlock", "Bottleneck")}


@pytest.mark.parametrize("name", NAMES)
def test_parameter_counts_and_drop_path_rates_equal_timm(name):
    """timm's exact parameter counts (11.69 M ... 60.19 M) in both frameworks, and with ``drop_path_rate=0.1``
    each block's stochastic-depth rate as timm's ``make_blocks`` sets it (0.1 * i / (n - 1) over the net's n
    blocks; timm has no DropPath where that is 0)."""
    timm = _timm(name)
    with torch.device("meta"):
        tm = torch_ref.create_model(name, drop_path_rate=0.1)
    with no_init_parameters():
        mm = ms_models.create_model(name, drop_path_rate=0.1)
    assert sum(p.numel() for p in tm.parameters()) == timm["params"]
    assert sum(int(np.prod(p.shape)) for p in mm.trainable_params()) == timm["params"]
    expected = timm["drop_path_rate_0.1"]
    for framework, model in (("torch", tm), ("mindspore", mm)):
        rates = {n: b.drop_path.p for n, b in _blocks(model, framework).items()}
        assert len(rates) == sum(VARIANTS[name][1])
        assert rates == {n: expected.get(n, 0.0) for n in rates}, framework


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_init_zeroes_the_last_bn_and_is_kaiming_fan_out(name):
    """``zero_init_last`` (default True): exactly the BN weights timm leaves at zero (``bn2`` of a basic block,
    ``bn3`` of a bottleneck), in both frameworks; none with ``zero_init_last=False``. Convs: kaiming normal,
    fan-out, ReLU gain (std sqrt(2 / (out * k * k)); 9408 stem weights estimate it to ~1 %)."""
    expected = _timm(name)["zero_init_last"]
    torch.manual_seed(0)
    ms.set_seed(0)
    tm, mm = torch_ref.create_model(name), ms_models.create_model(name)
    t_zero = sorted(k for k, v in tm.state_dict().items() if k.endswith(".weight") and v.dim() == 1 and not v.any())
    m_zero = sorted(name_map(name).ms_to_torch[k] for k, v in ms_state_of(mm).items()
                    if k.endswith(".gamma") and not v.any())
    assert t_zero == m_zero == expected
    plain = torch_ref.create_model(name, zero_init_last=False)
    assert all(v.any() for k, v in plain.state_dict().items() if k.endswith(".weight") and v.dim() == 1)
    std = (2 / (64 * 7 * 7)) ** 0.5
    assert abs(tm.conv1.weight.std().item() / std - 1) < 0.03
    assert abs(mm.conv1.weight.asnumpy().std() / std - 1) < 0.03


@pytest.mark.parametrize("case", CASES)
def test_torch_matches_official_code(case):
    """Features and logits of timm's file: bit-identical here (the same ops in the same order); 1e-6 leaves room
    for another CPU's float32 kernels."""
    kwargs, state, a = _official(case)
    model = load_torch_state(ResNet(**kwargs), state).eval()
    for size in SIZES:
        with torch.no_grad():
            x = torch.from_numpy(a[f"input_{size}"])
            assert rel_err(a[f"features_{size}"], model.forward_features(x).numpy()) <= 1e-6
            assert rel_err(a[f"logits_{size}"], model(x).numpy()) <= 1e-6


@pytest.mark.parametrize("mode", [ms.GRAPH_MODE, ms.PYNATIVE_MODE], ids=["graph", "pynative"])
@pytest.mark.parametrize("case", CASES)
def test_mindspore_matches_official_code(case, mode):
    """GRAPH_MODE folds the eval BNs into the convs; PyNative runs conv then BN. Odd sizes (57x41) check the
    max pool's and the stride-2 convs' padding."""
    kwargs, state, a = _official(case)
    with execution_mode(mode):
        mm = ms_with_weights_of(load_torch_state(ResNet(**kwargs), state), MsResNet(**kwargs))
        for size in SIZES:
            assert rel_err(a[f"logits_{size}"], mm(ms.Tensor(a[f"input_{size}"])).asnumpy()) <= TOL, size


def test_training_mode_and_bn_momentum_equal_torch(graph_mode):
    """One GRAPH_MODE training-mode forward (batch statistics) gives torch's output, and updates every BN's
    running mean and variance as torch's momentum 0.1 does (MindSpore momentum 0.9)."""
    kwargs, state, a = _official("bottleneck")
    tm = load_torch_state(ResNet(**kwargs), state)
    mm = ms_with_weights_of(tm, MsResNet(**kwargs))
    nm = build_name_map(tm, mm)
    before = torch_to_ms(state, nm)
    x = a["input_64x48"]
    mm.set_train(True)
    got = mm(ms.Tensor(x)).asnumpy()
    with torch.no_grad():
        ref = tm.train()(torch.from_numpy(x)).numpy()
    assert rel_err(ref, got) <= TOL
    after = torch_to_ms(torch_state_of(tm), nm)
    moving = {k: v for k, v in ms_state_of(mm).items() if ".moving_" in k}
    assert len(moving) == 2 * sum(k.endswith(".running_mean") for k in state)
    for k, v in moving.items():
        assert not np.array_equal(v, before[k]) and rel_err(after[k], v) <= TOL, k


@pytest.mark.parametrize("framework", ["torch", "mindspore"])
def test_drop_path_drops_the_residual_branch_only(framework, pynative_mode):
    """With every block's drop path at 1 (timm: Bernoulli(0) mask, no rescaling) a training-mode block outputs
    ReLU(shortcut): in torch that is the net run without the branches, in MindSpore torch's output."""
    kwargs, state, a = _official("basic")
    tm = load_torch_state(ResNet(**kwargs), state).train()
    for b in _blocks(tm, "torch").values():
        b.drop_path.p = 1.0
    x = torch.from_numpy(a["input_64x48"])
    with torch.no_grad():
        ref = tm(x).numpy()
        if framework == "torch":
            h = tm.maxpool(tm.act1(tm.bn1(tm.conv1(x))))
            for b in _blocks(tm, "torch").values():
                h = torch.relu(h if b.downsample is None else b.downsample(h))
            assert rel_err(tm.forward_head(h).numpy(), ref) <= 1e-6
            return
    mm = ms_with_weights_of(load_torch_state(ResNet(**kwargs), state), MsResNet(**kwargs))
    for b in _blocks(mm, "mindspore").values():
        b.drop_path.p, b.drop_path.keep = 1.0, 0.0
    mm.set_train(True)
    assert rel_err(ref, mm(ms.Tensor(a["input_64x48"])).asnumpy()) <= TOL


def _timm_checkpoint(state: dict, ema: dict, args: object) -> dict:
    """What timm's ``CheckpointSaver.save_checkpoint`` writes (train.py with --model-ema and --amp)."""
    return {"epoch": 7, "arch": "resnet18", "state_dict": state, "version": 2, "args": args,
            "optimizer": {"state": {}, "param_groups": [{"lr": 5e-3, "weight_decay": 0.02, "params": [0, 1]}]},
            "amp_scaler": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                           "_growth_tracker": 0},
            "state_dict_ema": ema, "metric": 71.3}


def test_timm_training_checkpoint_loads_strictly(tmp_path, graph_mode):
    """A timm training checkpoint (``args`` as an ``argparse.Namespace``, which plain ``torch.load(weights_only=
    True)`` refuses) loads strictly: the EMA weights by default (timm's ``use_ema``), the trained ones with
    ``key='state_dict'``, the class count from ``fc``; it converts to MindSpore. Any other class is still refused."""
    torch.manual_seed(0)
    model = torch_ref.create_model("resnet18", num_classes=10)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    ema = {k: v * 0.5 if v.is_floating_point() else v for k, v in state.items()}
    args = argparse.Namespace(model="resnet18", lr=[5e-3], opt="lamb", drop_path=0.05, img_size=None,
                              aa="rand-m7-mstd0.5", mean=None, amp=True, scale=[0.08, 1.0])
    path = tmp_path / "checkpoint-7.pth.tar"
    torch.save(_timm_checkpoint(state, ema, args), path)
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(path, weights_only=True)

    loaded = torch_ref.create_model("resnet18", num_classes=10, checkpoint=path)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in ema.items())
    torch_ref.load_checkpoint(loaded, path, key="state_dict")
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items())
    assert torch_model_from("resnet18", path).num_classes == 10

    assert cli(["torch2ms", "--model", "resnet18", str(path), str(tmp_path / "r.ckpt")]) == 0
    mm = ms_models.create_model("resnet18", num_classes=10, checkpoint=tmp_path / "r.ckpt")
    expected = torch_to_ms({k: v.numpy() for k, v in ema.items()}, name_map("resnet18", num_classes=10))
    assert all(np.array_equal(v, expected[k]) for k, v in ms_state_of(mm).items())

    headless = {k: v for k, v in state.items() if not k.startswith("fc.")}
    torch.save(_timm_checkpoint(headless, headless, args), tmp_path / "headless.pth.tar")
    assert torch_model_from("resnet18", tmp_path / "headless.pth.tar").num_classes == 0

    torch.save(_timm_checkpoint(state, ema, datetime.date(2024, 1, 1)), tmp_path / "other.pth.tar")
    with pytest.raises(CheckpointError, match="not a readable torch checkpoint") as info:
        read_checkpoint(tmp_path / "other.pth.tar")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("framework", ["torch", "mindspore"])
def test_onnx_export_matches_framework(tmp_path, framework, graph_mode):
    """ResNet-18 at 64x48 through onnxruntime (the MindSpore graph unfolded: ``export_mode``); another input
    through the file still gives torch's logits."""
    tm = torch_with_state("resnet18")
    model = tm if framework == "torch" else ms_twin(tm, ms.GRAPH_MODE)
    result = export_onnx(model, tmp_path / "r.onnx", framework, (64, 48))
    assert result.max_abs_err <= TOL * result.ref_scale and result.ref_scale > 0.1
    x = np.random.RandomState(7).randn(1, 3, 64, 48).astype(np.float32)
    with torch.no_grad():
        assert rel_err(tm(torch.from_numpy(x)).numpy(), ort_run(tmp_path / "r.onnx", x)) <= TOL


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_parity_at_224_layer_by_layer(name):
    """The parity tool at 224 px (BN statistics from 224 px images, stages 56..7): every conv, BN, ReLU, pool,
    block and stage within TOL of torch in PyNative (cell by cell), the GRAPH_MODE logits (folded BN) too."""
    report = run_parity(name, input_size=224, batch=1)
    assert report.ok, report.table()
    with torch.device("meta"):
        modules = {n for n, _ in torch_ref.create_model(name).named_modules() if n}
    assert {d.name for d in report.layers} == modules and not report.unmatched
    assert len(modules) == {"resnet18": 84, "resnet50": 199}[name]   # stem 4, blocks 8 / 11 each, head 3, ...
    assert report.graph_output.max_rel <= TOL


def test_bad_architecture_is_a_one_line_error():
    for kwargs, word in ((dict(block="bottle"), "block"), (dict(layers=(2, 2, 2)), "4 stages"),
                         (dict(layers=(2, 0, 2, 2)), "4 stages")):
        with pytest.raises(ValueError, match=word):
            torch_ref.create_model("resnet50", **kwargs)
        with pytest.raises(ValueError, match=word), no_init_parameters():
            ms_models.create_model("resnet50", **kwargs)
    plan = block_plan("basic", (2, 2, 2, 2))
    assert [(b.stride, b.downsample) for b in plan[0] + plan[1]] == [(1, False), (1, False), (2, True), (1, False)]
