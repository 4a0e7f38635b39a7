"""What is special to GhostNetV2: rounding, official outputs, the DFC module, thop buffers, the official
MindSpore checkpoint layout, ONNX. Its resizes and conv + BN fast paths: ``tests/layers``.

``ghostnetv2_official_w025.safetensors`` was made by running the official huawei-noah/Efficient-AI-Backbones
@f90e129 ``ghostnetv2_pytorch/model/ghostnetv2_torch.py`` at width 0.25 with 10 classes and
``torch_ref.testing.deterministic_weights``: its state, two non-square inputs (112x80, 99x67) and its eval
logits. ``ghostnetv2_official_ms_keys.json`` lists the parameter names and shapes of mindspore-ai/models
@eab643f ``research/cv/ghostnetv2/src/ghostnetv2.py`` ``ghostnetv2_1x`` (the ``ghostnetv2_1x.ckpt`` layout).
"""
from __future__ import annotations

import json

import mindspore as ms
import numpy as np
import pytest
import torch

import ms_models
import torch_ref
from convert.api import ms_state_of, ms_twin, name_map, torch_state_of
from convert.cli import main as cli
from convert.io import read_checkpoint, write_checkpoint
from convert.mapping import build_name_map, torch_to_ms
from convert.official_ms import official_ms_to_ours
from convert.onnx import export_onnx, ort_run
from convert.parity import run_parity
from helpers import (DATA, ProjectedSum, cached_state, load_ms_state, load_torch_state, ms_with_weights_of,
                     official_record, rel_err, run_eval, torch_with_state)
from ms_models.context import execution_mode
from ms_models.models.ghostnetv2 import GhostModuleV2 as MsGhostModule, GhostNetV2 as MsGhostNetV2
from specs import check_input_size, get_model_cfg
from specs.errors import CheckpointError, InputSizeError
from specs.ghostnetv2 import block_plan, make_divisible, min_input_size
from torch_ref.models.ghostnetv2 import GhostModuleV2, GhostNetV2

TOL = 1e-4   # float32, relative to the output scale (observed ~2e-6 to 2e-5)
OFFICIAL = "ghostnetv2_official_w025.safetensors"   # the official code at width 0.25: kwargs, state, inputs, outputs
OFFICIAL_PARAMS = {"ghostnetv2_100": 6156908, "ghostnetv2_130": 8960404, "ghostnetv2_160": 12392698}


def _torch_copy(state, **kwargs):
    return load_torch_state(GhostNetV2(**kwargs), state)


def test_rounding_and_plan():
    """Official ``_make_divisible`` (nearest multiple of 4, +4 if below 90%) and the layer_id rule."""
    assert [make_divisible(v) for v in (20.8, 62.4, 93.6, 25.6, 1.0, 10.0, 5.9)] == [20, 64, 92, 24, 4, 12, 8]
    assert [block_plan(w).stem for w in (1.0, 1.3, 1.6)] == [16, 20, 24]
    assert [block_plan(w).final for w in (1.0, 1.3, 1.6)] == [960, 1248, 1536]
    blocks = [b for stage in block_plan(1.0).blocks for b in stage]
    assert [b.dfc for b in blocks] == [False, False] + [True] * 14
    keys = torch_ref.create_model("ghostnetv2_100").state_dict()
    assert not any(k.startswith(("blocks.0.0.ghost1.short_conv", "blocks.1.0.ghost1.short_conv")) for k in keys)
    assert "blocks.2.0.ghost1.short_conv.5.running_var" in keys
    assert not any("ghost2.short_conv" in k for k in keys)
    assert min_input_size() == 33 and get_model_cfg("ghostnetv2_100").min_input_size == (3, 33, 33)
    with pytest.raises(InputSizeError):
        check_input_size(get_model_cfg("ghostnetv2_100"), 32)


@pytest.mark.parametrize("name", sorted(OFFICIAL_PARAMS))
def test_parameter_counts_equal_official(name):
    """6.16 M / 8.96 M / 12.39 M: the official code's exact counts, in both frameworks."""
    manifest = json.loads((DATA / "ghostnetv2_official_keys.json").read_text())["models"][name]
    assert manifest["params"] == OFFICIAL_PARAMS[name]
    with torch.device("meta"):
        assert sum(p.numel() for p in torch_ref.create_model(name).parameters()) == OFFICIAL_PARAMS[name]
    from mindspore.nn.utils import no_init_parameters
    with no_init_parameters():
        mm = ms_models.create_model(name)
    assert sum(int(np.prod(p.shape)) for p in mm.trainable_params()) == OFFICIAL_PARAMS[name]


def test_torch_matches_official_code():
    kwargs, state, a = official_record(OFFICIAL)
    model = _torch_copy(state, **kwargs)
    model.eval()
    for size in ("112x80", "99x67"):
        with torch.no_grad():
            assert rel_err(a[f"logits_{size}"], model(torch.from_numpy(a[f"input_{size}"])).numpy()) <= 1e-6


@pytest.mark.slow
@pytest.mark.parametrize("mode", [ms.GRAPH_MODE, ms.PYNATIVE_MODE], ids=["graph", "pynative"])
def test_mindspore_matches_official_code(mode):
    kwargs, state, a = official_record(OFFICIAL)
    tm = _torch_copy(state, **kwargs)
    with execution_mode(mode):
        mm = ms_with_weights_of(tm, MsGhostNetV2(**kwargs))
        for size in ("112x80", "99x67"):
            got = mm(ms.Tensor(a[f"input_{size}"])).asnumpy()
            assert rel_err(a[f"logits_{size}"], got) <= TOL, size


@pytest.mark.slow
def test_graph_mode_gradients_equal_torch(graph_mode):
    """GRAPH_MODE runs the fast paths (compiled depthwise kernel, the eval-mode BN folded into the convs,
    broadcast DFC gate, MatMul means); the registry gradient test runs PyNative, which runs the plain cells.
    Every parameter gradient of ``sum(logits * proj)`` (eval mode) on the width-0.25 official-code model at
    112x80 must be as close to torch float64 as torch float32 is (4x, or 1e-5 of the tensor's scale), plus
    1e-6 of the largest gradient. Train mode differs only by real BatchNorm after the kernel, whose gradients
    ``test_conv_bn.py`` checks in both modes (one more compile here would cost 18 s of CI time)."""
    kwargs, state, a = official_record(OFFICIAL)
    x = a["input_112x80"]
    proj = np.random.RandomState(5).randn(len(x), kwargs["num_classes"]).astype(np.float32)
    grads_t = {}
    for dtype in (torch.float64, torch.float32):
        tm = _torch_copy(state, **kwargs, drop_rate=0.0)
        tm.eval().to(dtype)
        (tm(torch.from_numpy(x).to(dtype)) * torch.from_numpy(proj).to(dtype)).sum().backward()
        grads_t[dtype] = {k: p.grad.double().numpy() for k, p in tm.named_parameters()}
    mm = ms_with_weights_of(tm.float(), MsGhostNetV2(**kwargs, drop_rate=0.0))
    params = mm.trainable_params()
    names = [p.name for p in params]
    _, grads = ms.value_and_grad(ProjectedSum(mm, ms.Tensor(proj)), None, params)(ms.Tensor(x))
    to_torch = name_map("ghostnetv2_100").ms_to_torch
    floor = 1e-6 * max(np.abs(g).max() for g in grads_t[torch.float64].values())
    assert len(grads) == len(grads_t[torch.float64])
    for name, g in zip(names, grads):
        ref, t32 = grads_t[torch.float64][to_torch[name]], grads_t[torch.float32][to_torch[name]]
        bound = max(4 * np.abs(t32 - ref).max(), 1e-5 * np.abs(ref).max()) + floor
        assert np.abs(g.asnumpy() - ref).max() <= bound, name


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ghostnetv2_100"])
def test_parity_at_224_layer_by_layer(name):
    """(GhostNetV2-1.0: the wider variants have the same layers, 3-6 minutes each on 2 cores.) The parity tool at
    224 px (BN statistics from 224 px images, the stage sizes 112..7 and the 3 -> 7 DFC
    gate of real use): every conv, BN, activation and module output within TOL of torch in PyNative (run
    cell by cell), the GRAPH_MODE logits (folded BN, compiled kernels, broadcast gate) too. Only containers
    whose output is their last child's are not hooked."""
    report = run_parity(name, input_size=224, batch=1)
    assert report.ok, report.table()
    compared = [d.name for d in report.layers]
    assert len(compared) > 400
    assert all(any(c.startswith(u + ".") for c in compared) for u in report.unmatched), report.unmatched
    assert report.graph_output.max_rel <= TOL


@pytest.mark.parametrize("upsample", ["nearest", "bilinear"])
def test_dfc_module_on_a_7x7_map(upsample, graph_mode):
    """One DFC ghost module on the 7x7 last-stage map (pool 3x3, non-integer upsample), torch vs MindSpore."""
    torch.manual_seed(0)
    tm = GhostModuleV2(24, 40, attn=True, dfc_upsample=upsample)
    with torch.no_grad():
        for bn in (m for m in tm.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            bn.weight.uniform_(0.5, 1.5), bn.bias.normal_(0, 0.5), bn.running_mean.normal_(0, 0.1)
            bn.running_var.uniform_(0.5, 1.5)
    mm = MsGhostModule(24, 40, attn=True, dfc_upsample=upsample)
    load_ms_state(mm, torch_to_ms(torch_state_of(tm), build_name_map(tm, mm)))
    mm.set_train(False)
    x = np.abs(np.random.RandomState(0).randn(2, 24, 7, 7)).astype(np.float32)
    with torch.no_grad():
        ref = tm.eval()(torch.from_numpy(x)).numpy()
        plain = torch.cat([tm.primary_conv(torch.from_numpy(x)), tm.cheap_operation(tm.primary_conv(
            torch.from_numpy(x)))], 1).numpy()
    assert rel_err(ref, mm(ms.Tensor(x)).asnumpy()) <= TOL
    assert rel_err(plain, ref) > 0.05          # the gate does act


def _with_thop_buffers(state: dict) -> dict:
    """What the official .pth.tar files hold: the state plus thop's per-module float64 counters."""
    out = {k: torch.from_numpy(v) for k, v in state.items()}
    for module in {k.rsplit(".", 1)[0] for k in state} | {"blocks.0.0.ghost1.gate_fn", "act1"}:
        out[f"{module}.total_ops"] = torch.zeros(1, dtype=torch.float64)
        out[f"{module}.total_params"] = torch.zeros(1, dtype=torch.float64)
    return out


@pytest.mark.slow
def test_official_pth_tar_with_thop_buffers_loads_strictly(tmp_path, graph_mode):
    name = "ghostnetv2_100"
    state = cached_state(name)
    torch.save(_with_thop_buffers(state), tmp_path / "ck_ghostnetv2_10.pth.tar")
    assert any(k.endswith("total_ops") for k in torch.load(tmp_path / "ck_ghostnetv2_10.pth.tar", weights_only=True))
    tm = torch_ref.create_model(name, checkpoint=tmp_path / "ck_ghostnetv2_10.pth.tar").eval()
    assert all(torch.equal(tm.state_dict()[k], torch.from_numpy(v)) for k, v in state.items())
    assert cli(["torch2ms", "--model", name, str(tmp_path / "ck_ghostnetv2_10.pth.tar"), str(tmp_path / "g.ckpt")]) == 0
    mm = ms_models.create_model(name, checkpoint=tmp_path / "g.ckpt")
    mm.set_train(False)
    x = np.random.RandomState(0).randn(1, 3, 96, 72).astype(np.float32)
    with torch.no_grad():
        assert rel_err(tm(torch.from_numpy(x)).numpy(), mm(ms.Tensor(x)).asnumpy()) <= TOL


def _official_ms_names() -> dict[str, list]:
    return json.loads((DATA / "ghostnetv2_official_ms_keys.json").read_text())["shapes"]


def test_official_mindspore_layout_maps_one_to_one():
    """Every ghostnetv2_1x.ckpt name maps to a distinct parameter of ours with the same shape, covering all."""
    official = _official_ms_names()
    ours = official_ms_to_ours("ghostnetv2_100", {k: np.zeros(s, np.float32) for k, s in official.items()})
    nm = name_map("ghostnetv2_100")
    assert len(ours) == len(official) and set(ours) == set(nm.ms_shapes)
    assert all(tuple(v.shape) == nm.ms_shapes[k] for k, v in ours.items())
    assert list(official_ms_to_ours("ghostnetv2_100", {"blocks.16.bn.gamma": np.ones(960), "global_step": np.zeros(1),
                                                        "moments.conv_stem.weight": np.ones(1)})) == ["blocks.9.0.bn1.gamma"]
    with pytest.raises(CheckpointError, match="blocks.3.dw.conv2"):
        official_ms_to_ours("ghostnetv2_100", {"blocks.3.dw.conv2.weight": np.ones(1)})


@pytest.mark.slow
def test_official_mindspore_checkpoint_converts_and_runs_bilinear(tmp_path, graph_mode):
    """A checkpoint in the official MindSpore layout (with optimizer state) -> ms2ms and ms2torch; both load
    strictly, and with ``dfc_upsample='bilinear'`` MindSpore equals torch on the same weights."""
    name = "ghostnetv2_100"
    official = _official_ms_names()
    ours_of = official_ms_to_ours(name, {k: np.zeros(s, np.float32) for k, s in official.items()})
    to_official = dict(zip(ours_of, official))          # insertion order: official name -> our name, inverted
    ms_state = torch_to_ms(cached_state(name), name_map(name))
    off_state = {to_official[k]: v for k, v in ms_state.items()}
    off_state.update({"global_step": np.array([1000], np.int32), "moments.conv_stem.weight": ms_state["conv_stem.weight"]})
    write_checkpoint(off_state, tmp_path / "ghostnetv2_1x.ckpt")
    assert cli(["ms2ms", "--model", name, str(tmp_path / "ghostnetv2_1x.ckpt"), str(tmp_path / "ours.ckpt")]) == 0
    assert cli(["ms2torch", "--model", name, "--source", "mindspore-official", str(tmp_path / "ghostnetv2_1x.ckpt"),
                str(tmp_path / "ours.pth")]) == 0
    assert cli(["torch2ms", "--model", name, str(tmp_path / "ghostnetv2_1x.ckpt"), str(tmp_path / "x.ckpt")]) == 1
    back = read_checkpoint(tmp_path / "ours.pth")
    assert all(np.array_equal(back[k], v) for k, v in cached_state(name).items() if "num_batches" not in k)
    mm = ms_models.create_model(name, dfc_upsample="bilinear", checkpoint=tmp_path / "ours.ckpt")
    mm.set_train(False)
    tm = torch_ref.create_model(name, dfc_upsample="bilinear", checkpoint=tmp_path / "ours.pth").eval()
    x = np.random.RandomState(0).randn(1, 3, 112, 112).astype(np.float32)
    with torch.no_grad():
        ref = tm(torch.from_numpy(x)).numpy()
        nearest = torch_with_state(name)(torch.from_numpy(x)).numpy()
    assert rel_err(ref, mm(ms.Tensor(x)).asnumpy()) <= TOL
    assert rel_err(ref, nearest) > 1e-3          # the option changes the network


@pytest.mark.slow
@pytest.mark.parametrize("framework", ["torch", "mindspore"])
def test_onnx_export_matches_framework(tmp_path, framework, graph_mode):
    """Exported graphs (nearest gather upsampling, non-square input) agree with onnxruntime; another input
    through the file still gives torch's logits, so a drifting graph fails here."""
    name = "ghostnetv2_100"
    tm = torch_with_state(name)
    model = tm if framework == "torch" else ms_twin(tm, ms.GRAPH_MODE)
    result = export_onnx(model, tmp_path / "g.onnx", framework, (112, 80))
    assert result.max_abs_err <= TOL * result.ref_scale and result.ref_scale > 0.1
    x = np.random.RandomState(7).randn(1, 3, 112, 80).astype(np.float32)
    with torch.no_grad():
        assert rel_err(tm(torch.from_numpy(x)).numpy(), ort_run(tmp_path / "g.onnx", x)) <= TOL


@pytest.mark.parametrize("framework", ["torch", pytest.param("mindspore", marks=pytest.mark.slow)])
def test_reset_classifier_and_headless(framework, graph_mode):
    create = torch_ref.create_model if framework == "torch" else ms_models.create_model
    x = np.random.RandomState(0).randn(2, 3, 64, 48).astype(np.float32)

    def run(model):
        return run_eval(framework, model, x)

    model = create("ghostnetv2_100", num_classes=10)
    assert run(model).shape == (2, 10)
    model.reset_classifier(0)                 # the compiled graph must be dropped (two compiles in MindSpore)
    assert run(model).shape == (2, model.head_hidden_size) == (2, 1280)
    model.reset_classifier(5)
    assert model.classifier.weight.shape[0] == 5
    assert model.num_features == 960
    headless = create("ghostnetv2_100", num_classes=0)
    assert "classifier.weight" not in (headless.state_dict() if framework == "torch" else ms_state_of(headless))
    with pytest.raises(ValueError, match="dfc_upsample"):
        create("ghostnetv2_100", dfc_upsample="bicubic")
