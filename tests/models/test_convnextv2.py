"""What is special to ConvNeXt V2: the official code's outputs and parameter counts, GRN and the two LayerNorm
forms against NumPy, the official checkpoint layouts, the input-size check, stochastic depth and the head init
scale, the official fine-tuning parameter groups, the compiled depthwise kernel, ONNX and the layer-by-layer parity.
The registry tests cover forward parity, gradients, keys and the conversion round trip of every variant.

``convnextv2_official_tiny.safetensors`` was made by running Hao840/vanillaKD@a27b029 ``models/convnextv2.py``
(unchanged since be6a1a9; facebookresearch/ConvNeXt-V2@2553895 ``models/convnextv2.py`` + ``models/utils.py``) with
timm 0.6.5 (torchvision, which its package imports, replaced by an import stand-in) on a reduced
``ConvNeXtV2(depths=[1, 1, 2, 1], dims=[8, 16, 24, 32], num_classes=10)`` with random weights of a trained
model's scales (GRN gamma ~ 0.5 N(0, 1), LayerNorm weights 1 + 0.2 N(0, 1), fan-in scaled convs): its state, two
inputs (2x3x64x64 and 2x3x45x61, sizes that do and do not divide by 32) and its eval logits, pooled features
(the official ``forward_features``) and last-stage map. ``convnextv2_official_keys.json``: the state_dict shapes
and parameter counts of the registered ``convnextv2_{atto,nano,tiny,base}``. ``convnextv2_official_param_groups
.json``: ConvNeXt-V2@2553895 ``optim_factory.get_parameter_groups`` with ``LayerDecayValueAssigner`` (as
``main_finetune.py`` builds them; layer decay 0.9, weight decay 0.05) on the official tiny and base models, per
parameter: weight decay, lr scale, layer id, for ``--layer_decay_type single`` and ``group``.
"""
from __future__ import annotations

import argparse
import json

import mindspore as ms
import numpy as np
import pytest
import torch
from mindspore.nn.utils import no_init_parameters

import ms_models
import torch_ref
from convert.api import convert_file
from convert.io import read_checkpoint
from convert.mapping import build_name_map
from convert.onnx import export_onnx, ort_run
from convert.parity import run_parity
from helpers import DATA, cached_state, load_ms_state, load_torch_state, ms_with_weights_of, official_record, rel_err
from ms_models.context import execution_mode
from ms_models.layers import DropPath as MsDropPath
from ms_models.models.convnextv2 import GRN as MsGRN, ConvNeXtV2 as MsConvNeXtV2, LayerNorm as MsLayerNorm
from ms_models.train.optim import param_groups
from specs import convnextv2 as spec
from specs.errors import InputSizeError, KeyMismatchError
from specs.param_groups import group_with_matcher
from torch_ref.layers import DropPath
from torch_ref.models.convnextv2 import GRN, ConvNeXtV2, LayerNorm
from torch_ref.testing import deterministic_weights

NAME = "convnextv2_atto"
SMALL = dict(depths=(1, 1, 1, 1))      # the atto widths, one block per stage: every cell, little time
TOL = 1e-4        # float32, relative to the output scale (observed 3e-7 to 7e-7 against the official code)
SIZES = ("64x64", "45x61")
OFFICIAL = "convnextv2_official_tiny.safetensors"   # the official code's tiny model: kwargs, state, inputs, outputs


def _small_torch() -> torch.nn.Module:
    torch.manual_seed(0)
    return deterministic_weights(torch_ref.create_model(NAME, **SMALL), input_size=64, batches=1, batch_size=2)


@pytest.mark.parametrize("name", sorted(spec.VARIANTS))
def test_parameter_counts_equal_official(name):
    """3.71 M / 15.62 M / 28.64 M / 88.72 M: the official counts, in both frameworks; a headless model has no
    ``head`` entry and ``infer_kwargs`` reads its 0 classes back."""
    manifest = json.loads((DATA / "convnextv2_official_keys.json").read_text())["models"][name]
    with torch.device("meta"):
        tm, headless = torch_ref.create_model(name), torch_ref.create_model(name, num_classes=0)
    assert sum(p.numel() for p in tm.parameters()) == manifest["params"]
    with no_init_parameters():
        mm = ms_models.create_model(name)
    assert sum(int(np.prod(p.shape)) for p in mm.trainable_params()) == manifest["params"]
    shapes = {k: tuple(v.shape) for k, v in headless.state_dict().items()}
    assert not any(k.startswith("head") for k in shapes)
    assert spec.infer_kwargs(shapes) == {"num_classes": 0}


def test_torch_matches_official_code():
    """torch_ref on the official weights gives the official logits, pooled features and last-stage map (same ops
    in the same order: the channels-first LayerNorm written out, GRN's ``vector_norm``). To 1e-6 of the output
    scale, not bit for bit: torch's float32 CPU convolutions choose their kernel and summation order by the
    processor, so the same ops differ by a few ulp between machines (equal on the machine that recorded the file;
    3e-7 to 6e-7 on an Intel Xeon with AVX-512, whichever ATEN_CPU_CAPABILITY or thread count)."""
    kwargs, state, a = official_record(OFFICIAL)
    tm = load_torch_state(ConvNeXtV2(**kwargs), state).eval()
    with torch.no_grad():
        for size in SIZES:
            x = torch.from_numpy(a[f"input_{size}"])
            feats = tm.forward_features(x)
            assert rel_err(a[f"map_{size}"], feats.numpy()) <= 1e-6, size
            assert rel_err(a[f"pooled_{size}"], tm.forward_head(feats, pre_logits=True).numpy()) <= 1e-6, size
            assert rel_err(a[f"logits_{size}"], tm(x).numpy()) <= 1e-6, size


@pytest.mark.parametrize("mode", [ms.GRAPH_MODE, ms.PYNATIVE_MODE], ids=["graph", "pynative"])
def test_mindspore_matches_official_code(mode):
    """MindSpore on the official weights gives the official logits and pooled features (PyNative at both sizes,
    through MindSpore's conv; GRAPH_MODE, through the compiled depthwise kernel, at 45x61, one compile)."""
    kwargs, state, a = official_record(OFFICIAL)
    tm = load_torch_state(ConvNeXtV2(**kwargs), state).eval()
    with execution_mode(mode):
        mm = ms_with_weights_of(tm, MsConvNeXtV2(**kwargs))
        assert mm.stages[0][0].fused is not None, "g++ is part of the set-up: the compiled kernel must be available"
        for size in SIZES if mode == ms.PYNATIVE_MODE else SIZES[1:]:     # one compile: the size 32 does not divide
            x = ms.Tensor(a[f"input_{size}"])
            assert rel_err(a[f"logits_{size}"], mm(x).asnumpy()) <= TOL, size
            pooled = mm.forward_head(mm.forward_features(x), pre_logits=True).asnumpy()
            assert rel_err(a[f"pooled_{size}"], pooled) <= TOL, size


def _grn_numpy(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """GRN (paper eq. 1-3 as the official code computes them) in float64 NumPy on channels-last input."""
    gx = np.sqrt((x * x).sum(axis=(1, 2), keepdims=True))
    nx = gx / (gx.mean(axis=-1, keepdims=True) + spec.GRN_EPS)
    return gamma * (x * nx) + beta + x


def _ln_numpy(x: np.ndarray, w: np.ndarray, b: np.ndarray, axis: int) -> np.ndarray:
    mean = x.mean(axis, keepdims=True)
    var = ((x - mean) ** 2).mean(axis, keepdims=True)
    shape = [1] * x.ndim
    shape[axis] = -1
    return (x - mean) / np.sqrt(var + spec.LN_EPS) * w.reshape(shape) + b.reshape(shape)


def test_grn_and_layer_norms_equal_numpy(pynative_mode):
    """GRN (norm over H and W, divided by its channel mean + 1e-6), the channels-last and the channels-first
    LayerNorm (eps 1e-6) in both frameworks against float64 NumPy, 1e-6 of the output scale (float32 rounding;
    observed <= 3e-7); with the initial zeros GRN is the identity."""
    rs = np.random.RandomState(0)
    x = (rs.randn(2, 5, 6, 12) * 3 + 1).astype(np.float32)
    gamma, beta = rs.randn(1, 1, 1, 12).astype(np.float32), rs.randn(1, 1, 1, 12).astype(np.float32)
    w, b = (rs.rand(12) + 0.5).astype(np.float32), rs.randn(12).astype(np.float32)
    grn, mgrn = GRN(12), MsGRN(12)
    assert np.array_equal(grn(torch.from_numpy(x)).detach().numpy(), x)
    assert np.array_equal(mgrn(ms.Tensor(x)).asnumpy(), x)
    ref = _grn_numpy(*(v.astype(np.float64) for v in (x, gamma, beta)))
    with torch.no_grad():
        grn.gamma.copy_(torch.from_numpy(gamma))
        grn.beta.copy_(torch.from_numpy(beta))
        assert rel_err(ref, grn(torch.from_numpy(x)).numpy()) <= 1e-6
    load_ms_state(mgrn, {"gamma": gamma, "beta": beta})
    assert rel_err(ref, mgrn(ms.Tensor(x)).asnumpy()) <= 1e-6
    nchw = x.transpose(0, 3, 1, 2).copy()
    for data_format, inp, axis in (("channels_last", x, -1), ("channels_first", nchw, 1)):
        ref = _ln_numpy(inp.astype(np.float64), w.astype(np.float64), b.astype(np.float64), axis)
        tln, mln = LayerNorm(12, data_format=data_format), MsLayerNorm(12, data_format=data_format)
        with torch.no_grad():
            tln.weight.copy_(torch.from_numpy(w))
            tln.bias.copy_(torch.from_numpy(b))
            assert rel_err(ref, tln(torch.from_numpy(inp)).numpy()) <= 1e-6, data_format
        load_ms_state(mln, {"gamma": w, "beta": b})
        assert rel_err(ref, mln(ms.Tensor(inp)).asnumpy()) <= 1e-6, data_format


def test_official_checkpoint_layouts_load_strictly(tmp_path):
    """The official files: a plain state dict, ConvNeXt-V2's ``{'model': ...}`` (its ``*_ema.pt`` releases) and a
    timm 0.6.5 ``CheckpointSaver`` file (VanillaKD's training output: ``state_dict``, ``state_dict_ema``,
    ``optimizer``, ``args``; the EMA weights by default, as timm's ``use_ema``) load strictly in torch and through
    the converter in MindSpore; a file of another variant is a one-line :class:`KeyMismatchError`; a headless
    file converts to a headless MindSpore checkpoint."""
    state = {k: torch.from_numpy(v) for k, v in cached_state(NAME).items()}
    ema = {k: v * 0.5 for k, v in state.items()}
    torch.save(state, tmp_path / "plain.pth")
    torch.save({"model": state}, tmp_path / "fb_ema.pt")
    torch.save({"epoch": 299, "arch": NAME, "state_dict": state, "state_dict_ema": ema, "version": 2,
                "optimizer": {"state": {}, "param_groups": []},
                "args": argparse.Namespace(model=NAME, lr=5e-3, drop_path=0.05)}, tmp_path / "last.pth.tar")
    for file, want in (("plain.pth", state), ("fb_ema.pt", state), ("last.pth.tar", ema)):
        tm = torch_ref.create_model(NAME, checkpoint=tmp_path / file)
        assert all(torch.equal(tm.state_dict()[k], v) for k, v in want.items()), file
        if file == "plain.pth":
            continue                   # MindSpore reads it as it reads the other two (convert.io.unwrap)
        mm = ms_models.create_model(NAME, checkpoint=tmp_path / file)
        params = dict(mm.parameters_and_names())
        assert np.array_equal(params["stages.2.0.grn.gamma"].asnumpy(), want["stages.2.0.grn.gamma"].numpy())
        assert np.array_equal(params["downsample_layers.1.0.gamma"].asnumpy(),
                              want["downsample_layers.1.0.weight"].numpy())
    for create in (torch_ref.create_model, ms_models.create_model):
        with pytest.raises(KeyMismatchError, match="does not fit convnextv2_nano: .*missing key"):
            create("convnextv2_nano", checkpoint=tmp_path / "plain.pth")
    torch.save({k: v for k, v in state.items() if not k.startswith("head")}, tmp_path / "headless.pth")
    convert_file(NAME, tmp_path / "headless.pth", tmp_path / "headless.ckpt", "torch2ms")
    out = read_checkpoint(tmp_path / "headless.ckpt")
    assert not any(k.startswith("head") for k in out) and "norm.gamma" in out


@pytest.mark.parametrize("framework", ["torch", "graph", "pynative"])
def test_input_below_32_pixels_is_an_error(framework):
    """The last stage needs a 32-px input: 31 px is a one-line :class:`InputSizeError` in both frameworks
    (MindSpore's graph too: a compile-time check); 32 px runs to a 1x1 map."""
    x = np.zeros((1, 3, 31, 48), np.float32)
    msg = "ConvNeXtV2 needs an input of at least 32x32, got 31x48"
    if framework == "torch":
        tm = torch_ref.create_model(NAME, **SMALL).eval()
        with pytest.raises(InputSizeError, match=msg):
            tm(torch.from_numpy(x))
        assert tm.forward_features(torch.zeros(1, 3, 32, 32)).shape == (1, 320, 1, 1)
        return
    with execution_mode(ms.GRAPH_MODE if framework == "graph" else ms.PYNATIVE_MODE):
        mm = ms_models.create_model(NAME, **SMALL)
        with pytest.raises(InputSizeError, match=msg):
            mm(ms.Tensor(x))


def test_drop_path_rates_and_head_init_scale():
    """The official schedule ``torch.linspace(0, rate, sum(depths))`` over all blocks in both frameworks, no new
    keys; ``head_init_scale`` multiplies the initial head weight and bias (torch: the same draw, scaled; MindSpore:
    a trunc-normal of std 0.02 * scale, its 320 000 draws within 5 % of it)."""
    with torch.device("meta"):
        tm, plain = torch_ref.create_model(NAME, drop_path_rate=0.1), torch_ref.create_model(NAME)
    with no_init_parameters():
        mm = ms_models.create_model(NAME, drop_path_rate=0.1)
    want = [v.item() for v in torch.linspace(0, 0.1, 12)]
    assert [m.p for m in tm.modules() if isinstance(m, DropPath)] == want
    assert [c.p for _, c in mm.cells_and_names() if isinstance(c, MsDropPath)] == want
    assert list(tm.state_dict()) == list(plain.state_dict())
    torch.manual_seed(0)
    one = torch_ref.create_model(NAME, **SMALL)
    torch.manual_seed(0)
    small = torch_ref.create_model(NAME, head_init_scale=0.001, **SMALL)
    assert torch.equal(small.head.weight, one.head.weight * 0.001)
    assert torch.equal(small.downsample_layers[0][0].weight, one.downsample_layers[0][0].weight)
    head = ms_models.create_model(NAME, head_init_scale=0.001, **SMALL).head
    assert 0.95 * 2e-5 <= head.weight.asnumpy().std() <= 1.05 * 2e-5 and not head.bias.asnumpy().any()


def _official_groups(key: str) -> dict[str, list]:
    return json.loads((DATA / "convnextv2_official_param_groups.json").read_text())["groups"][key]


def test_parameter_groups_equal_official():
    """The engine's groups (``ms_models.train.optim.param_groups``: ``no_weight_decay`` plus ``ndim <= 1``, layer
    decay over ``group_matcher()``) on MindSpore's tiny equal the official fine-tuning groups (``--layer_decay_type
    single``, layer decay 0.9): the same weight decay (0 for the GRN gammas and betas, norms and biases) and lr
    scale for every parameter. The coarse matcher groups the parameters of base as the official ``group`` type."""
    official = _official_groups("convnextv2_tiny/single")
    with torch.device("meta"):
        tm = torch_ref.create_model("convnextv2_tiny")
    with no_init_parameters():
        mm = ms_models.create_model("convnextv2_tiny")
    to_torch = build_name_map(tm, mm).ms_to_torch
    got = {to_torch[n]: [g["weight_decay"], g["lr_scale"]] for g in param_groups(mm, 0.05, layer_decay=0.9)
           for n in g["names"]}
    assert got.keys() == official.keys()
    for name, (wd, scale, _) in official.items():
        assert got[name][0] == wd and got[name][1] == pytest.approx(scale, rel=1e-12), name
    for model in ("convnextv2_tiny", "convnextv2_base"):
        for kind, coarse in (("single", False), ("group", True)):
            layer = {n: v[2] for n, v in _official_groups(f"{model}/{kind}").items()}
            want = [sorted(n for n in layer if layer[n] == i) for i in sorted(set(layer.values()))]
            with torch.device("meta"):
                names = [n for n, _ in torch_ref.create_model(model).named_parameters()]
            got = [sorted(g) for g in group_with_matcher(names, spec.group_matcher(spec.VARIANTS[model][0], coarse))]
            assert got == want, (model, kind)


def test_depthwise_kernel_equals_native_conv(graph_mode):
    """GRAPH_MODE: a block through the compiled 7x7 depthwise kernel (with its bias) equals the same block on
    MindSpore's conv (``fused`` cleared) within float32 rounding (observed ~1e-7), forward and input gradient."""
    tm = _small_torch()
    fused, native = (ms_with_weights_of(tm, ms_models.create_model(NAME, **SMALL)).stages[1][0] for _ in range(2))
    native.fused = None             # before its first compile: MindSpore's conv
    assert fused.fused is not None
    x = ms.Tensor(np.random.RandomState(1).randn(2, 80, 9, 11).astype(np.float32))
    fused_out, fused_grad = fused(x).asnumpy(), ms.grad(fused)(x).asnumpy()
    native_out, native_grad = native(x).asnumpy(), ms.grad(native)(x).asnumpy()
    assert rel_err(native_out, fused_out) <= 1e-6 and rel_err(native_grad, fused_grad) <= 1e-6


@pytest.mark.slow
@pytest.mark.parametrize("framework", ["torch", "mindspore"])
def test_onnx_export_matches_framework(tmp_path, framework, graph_mode):
    """The one-block-per-stage atto at 64 px exports (depthwise conv, both LayerNorm forms, erf GELU, GRN) and
    onnxruntime agrees with the framework; another input through the file still gives torch's logits."""
    tm = _small_torch()
    model = tm if framework == "torch" else ms_with_weights_of(tm, ms_models.create_model(NAME, **SMALL))
    result = export_onnx(model, tmp_path / "convnextv2.onnx", framework, (64, 64))
    assert result.max_abs_err <= TOL * result.ref_scale and result.ref_scale > 0.1
    x = np.random.RandomState(7).randn(1, 3, 64, 64).astype(np.float32)
    with torch.no_grad():
        assert rel_err(tm(torch.from_numpy(x)).numpy(), ort_run(tmp_path / "convnextv2.onnx", x)) <= TOL


@pytest.mark.slow
def test_parity_layer_by_layer():
    """The parity tool on atto at 64 px: every named module output (convs, both LayerNorm forms, pwconvs, GELU,
    GRN, blocks, head) within TOL of torch in PyNative, none skipped, and the GRAPH_MODE logits."""
    report = run_parity(NAME, input_size=64, batch=1)
    assert report.ok, report.table()
    compared = {d.name for d in report.layers}
    assert {"downsample_layers.0.1", "stages.0.0.dwconv", "stages.2.5.grn", "stages.3.1.act", "norm",
            "head"} <= compared
    assert not report.unmatched
    assert report.graph_output.max_rel <= TOL
