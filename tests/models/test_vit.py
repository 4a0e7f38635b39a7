"""What is special to ViT: timm's outputs and parameter counts, the attention maths, the position-embedding
resampling (timm's ``resample_abs_pos_embed``) on load and in conversion, timm training checkpoints, the input-size
check, stochastic depth, parameter groups, ONNX and the layer-by-layer parity at 224 px. The registry tests cover
forward parity, gradients, keys and the conversion round trip.

``vit_official_tiny.safetensors`` was made by running huggingface/pytorch-image-models@8ef7380 (v1.0.28)
``timm/models/vision_transformer.py`` with ``TIMM_FUSED_ATTN=0`` (its non-fused attention path; torchvision, which
its package imports, replaced by an import stand-in) on a reduced ``VisionTransformer(img_size=24, patch_size=8,
embed_dim=24, depth=2, num_heads=2, num_classes=10)`` with ``torch_ref.testing.deterministic_weights``: its state,
a 2x3x24x24 input, its eval logits and features; then timm's ``checkpoint_filter_fn`` of that state into the same
model built for 32x40 and 16x16 inputs (``pos_embed`` resampled 3x3 -> 4x5 and -> 2x2, antialiased bicubic): the
resampled ``pos_embed`` and the logits on an input of each size. ``vit_official_keys.json``: the state_dict shapes
and parameter counts of timm's ``vit_{tiny,small,base}_patch16_224``.
"""
from __future__ import annotations

import argparse
import json
import math

import mindspore as ms
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mindspore.nn.utils import no_init_parameters

import ms_models
import torch_ref
from convert.api import convert_file, torch_model_from, torch_state_of
from convert.io import read_checkpoint
from convert.mapping import build_name_map, torch_to_ms
from convert.onnx import export_onnx, ort_run
from convert.parity import run_parity
from helpers import (DATA, ProjectedSum, cached_state, load_ms_state, load_torch_state, ms_with_weights_of,
                     official_record, rel_err)
from ms_models.context import execution_mode
from ms_models.layers import GELU, Attention as MsAttention, DropPath as MsDropPath, kernels, refresh_graph
from ms_models.models.vit import VisionTransformer as MsViT
from ms_models.train.optim import param_groups
from specs import vit as spec
from specs.errors import CheckpointError, InputSizeError
from torch_ref.layers import Attention, DropPath
from torch_ref.models.vit import VisionTransformer
from torch_ref.testing import deterministic_weights

NAME = "vit_tiny_patch16_224"
TOL = 1e-4        # float32, relative to the output scale (observed ~1e-6)
# resampled position embeddings: timm computes in float32, specs.vit in float64 rounded once to float32; the two
# agree to a few float32 ulps of the embedding's scale (observed 1.7e-7)
RESAMPLE_TOL = 1e-6
OFFICIAL = "vit_official_tiny.safetensors"   # timm's tiny model: kwargs, state, inputs, outputs


def _torch_interpolate_aa(posemb: np.ndarray, new_size: tuple[int, int]) -> np.ndarray:
    """What timm's ``resample_abs_pos_embed`` computes, with torch here (float64): the class token kept, the square
    grid resampled by ``F.interpolate(bicubic, antialias=True)``."""
    pos = torch.from_numpy(posemb.astype(np.float64))
    side = int(round((pos.shape[1] - 1) ** 0.5))
    grid = pos[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=new_size, mode="bicubic", antialias=True, align_corners=False)
    return torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, -1, pos.shape[-1])], 1).numpy()


@pytest.mark.parametrize("name", sorted(spec.VARIANTS))
def test_parameter_counts_equal_official(name):
    """5.72 M / 22.05 M / 86.57 M: timm's counts, in both frameworks; a headless model has no ``head`` entry and
    ``infer_kwargs`` reads its 0 classes and its 224 input back."""
    manifest = json.loads((DATA / "vit_official_keys.json").read_text())["models"][name]
    with torch.device("meta"):
        tm, headless = torch_ref.create_model(name), torch_ref.create_model(name, num_classes=0)
    assert sum(p.numel() for p in tm.parameters()) == manifest["params"]
    with no_init_parameters():
        mm = ms_models.create_model(name)
    assert sum(int(np.prod(p.shape)) for p in mm.trainable_params()) == manifest["params"]
    shapes = {k: tuple(v.shape) for k, v in headless.state_dict().items()}
    assert not any(k.startswith("head") for k in shapes)
    assert spec.infer_kwargs(shapes) == {"num_classes": 0, "img_size": 224}


def test_torch_matches_official_code():
    kwargs, state, a = official_record(OFFICIAL)
    tm = load_torch_state(VisionTransformer(**kwargs), state).eval()
    x = torch.from_numpy(a["input_24x24"])
    with torch.no_grad():
        assert rel_err(a["logits_24x24"], tm(x).numpy()) <= 1e-6
        assert rel_err(a["features_24x24"], tm.forward_features(x).numpy()) <= 1e-6


@pytest.mark.parametrize("size", [(32, 40), (16, 16)])
def test_checkpoint_filter_resamples_like_timm(size):
    """timm's ``checkpoint_filter_fn`` into a model for another input size (3x3 grid -> 4x5, upsampled; -> 2x2,
    antialiased downsampling): :func:`specs.vit.checkpoint_filter` gives timm's ``pos_embed``, and the torch model
    loaded with it timm's logits; the class token entry is unchanged."""
    kwargs, state, a = official_record(OFFICIAL)
    h, w = size
    model = VisionTransformer(**{**kwargs, "img_size": size}).eval()
    filtered = spec.checkpoint_filter(state, model)
    ref = a[f"pos_embed_{h}x{w}"]
    assert filtered["pos_embed"].shape == ref.shape == (1, 1 + (h // 8) * (w // 8), 24)
    assert rel_err(ref, filtered["pos_embed"]) <= RESAMPLE_TOL
    assert np.array_equal(filtered["pos_embed"][:, 0], state["pos_embed"][:, 0])
    load_torch_state(model, filtered)
    with torch.no_grad():
        assert rel_err(a[f"logits_{h}x{w}"], model(torch.from_numpy(a[f"input_{h}x{w}"])).numpy()) <= RESAMPLE_TOL


@pytest.mark.parametrize("mode", [ms.GRAPH_MODE, ms.PYNATIVE_MODE], ids=["graph", "pynative"])
def test_mindspore_matches_official_code(mode):
    """MindSpore on timm's weights gives timm's logits at 24x24 and, with the resampled state, at 32x40."""
    kwargs, state, a = official_record(OFFICIAL)
    with execution_mode(mode):
        for size, weights in (((24, 24), state), ((32, 40), None)):
            tm = VisionTransformer(**{**kwargs, "img_size": size}).eval()
            load_torch_state(tm, weights or spec.checkpoint_filter(state, tm))
            mm = ms_with_weights_of(tm, MsViT(**{**kwargs, "img_size": size}))
            key = f"{size[0]}x{size[1]}"
            assert rel_err(a[f"logits_{key}"], mm(ms.Tensor(a[f"input_{key}"])).asnumpy()) <= TOL, key


def test_resample_matches_torch_interpolate():
    """:func:`specs.vit.resample_abs_pos_embed` equals torch's antialiased bicubic ``interpolate`` (float64) on
    square and non-square targets, up and down; a square target of the same size is the input itself; a
    non-square source grid is a one-line :class:`CheckpointError`; the class token is kept."""
    pos = np.random.RandomState(0).randn(1, 1 + 14 * 14, 8)
    for size in ((24, 24), (7, 7), (6, 10), (20, 16), (1, 1), (13, 15)):
        got = spec.resample_abs_pos_embed(pos, size)
        assert got.shape == (1, 1 + size[0] * size[1], 8)
        assert np.abs(got - _torch_interpolate_aa(pos, size)).max() <= 1e-12, size
    assert spec.resample_abs_pos_embed(pos, (14, 14)) is pos
    f32 = pos.astype(np.float32)
    assert spec.resample_abs_pos_embed(f32, (6, 6)).dtype == np.float32
    with pytest.raises(CheckpointError, match="not a square grid"):
        spec.resample_abs_pos_embed(pos[:, :-1], (6, 6))


def test_load_into_another_input_size_resamples(tmp_path, pynative_mode):
    """``create_model(name, img_size=..., checkpoint=224-px file)``: both frameworks resample ``pos_embed`` on load
    (torch: as torch's antialiased bicubic does it, within float32 rounding; MindSpore: to the same array, its name
    map built at the model's img_size), and the two give the same logits at the new size (96 px: 14x14 -> 6x6;
    256x320 in torch: -> 16x20)."""
    state = cached_state(NAME)
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, tmp_path / "vit.pth")
    for size in (96, (256, 320)):
        tm = torch_ref.create_model(NAME, img_size=size, checkpoint=tmp_path / "vit.pth").eval()
        grid = spec.grid_size(size)
        ref = _torch_interpolate_aa(state["pos_embed"], grid)
        assert rel_err(ref, tm.pos_embed.detach().numpy()) <= RESAMPLE_TOL
    tm = torch_ref.create_model(NAME, img_size=96, checkpoint=tmp_path / "vit.pth").eval()
    mm = ms_models.create_model(NAME, img_size=96, checkpoint=tmp_path / "vit.pth")
    mm.set_train(False)
    assert np.array_equal(mm.pos_embed.asnumpy(), tm.pos_embed.detach().numpy())
    x = np.random.RandomState(0).randn(2, 3, 96, 96).astype(np.float32)
    with torch.no_grad():
        assert rel_err(tm(torch.from_numpy(x)).numpy(), mm(ms.Tensor(x)).asnumpy()) <= TOL


def test_checkpoint_of_another_grid_converts_as_it_is(tmp_path):
    """Conversion builds the model the file implies (``infer_kwargs``: a 4x4 grid of 16-px patches is a 64-px
    model): ``pos_embed`` is written unchanged, and the MindSpore file loads into ``img_size=64`` without torch
    names."""
    tm = torch_ref.create_model(NAME, img_size=64, num_classes=5)
    torch.save(tm.state_dict(), tmp_path / "vit64.pth")
    assert torch_model_from(NAME, tmp_path / "vit64.pth").img_size == (64, 64)
    convert_file(NAME, tmp_path / "vit64.pth", tmp_path / "vit64.ckpt", "torch2ms")
    out = read_checkpoint(tmp_path / "vit64.ckpt")
    assert np.array_equal(out["pos_embed"], tm.pos_embed.detach().numpy()) and out["pos_embed"].shape == (1, 17, 192)
    mm = ms_models.create_model(NAME, img_size=64, num_classes=5, checkpoint=tmp_path / "vit64.ckpt")
    assert np.array_equal(mm.head.weight.asnumpy(), tm.head.weight.detach().numpy())


def test_timm_training_checkpoint_loads_strictly(tmp_path):
    """A timm ``CheckpointSaver`` file (``state_dict``, ``state_dict_ema``, ``optimizer``, ``args`` as an
    ``argparse.Namespace``, VanillaKD's training output): the EMA weights load by default (timm
    ``use_ema=True``), ``key='state_dict'`` the others, strictly in torch and through the converter in MindSpore;
    a ``pre_logits`` entry (timm's old ImageNet-21k files) is dropped as timm drops it."""
    state = {k: torch.from_numpy(v) for k, v in cached_state(NAME).items()}
    ema = {k: v * 0.5 for k, v in state.items()}
    ckpt = {"epoch": 299, "arch": NAME, "state_dict": {**state, "pre_logits.fc.weight": torch.ones(3)},
            "optimizer": {"state": {}, "param_groups": []}, "version": 2, "state_dict_ema": ema,
            "args": argparse.Namespace(model=NAME, lr=5e-4, drop_path=0.1)}
    torch.save(ckpt, tmp_path / "last.pth.tar")
    tm = torch_ref.create_model(NAME, checkpoint=tmp_path / "last.pth.tar")
    assert all(torch.equal(tm.state_dict()[k], v) for k, v in ema.items())
    raw = torch_ref.load_checkpoint(torch_ref.create_model(NAME), tmp_path / "last.pth.tar", key="state_dict")
    assert all(torch.equal(raw.state_dict()[k], v) for k, v in state.items())
    mm = ms_models.create_model(NAME, checkpoint=tmp_path / "last.pth.tar")
    params = dict(mm.parameters_and_names())
    assert np.array_equal(params["blocks.3.norm1.gamma"].asnumpy(), ema["blocks.3.norm1.weight"].numpy())
    assert np.array_equal(params["pos_embed"].asnumpy(), ema["pos_embed"].numpy())


@pytest.mark.parametrize("framework", ["torch", "graph", "pynative"])
def test_input_size_other_than_img_size_is_an_error(framework):
    """timm's strict ``PatchEmbed``: another input size is a one-line :class:`InputSizeError` in both frameworks
    (MindSpore's graph too: a compile-time check)."""
    x = np.zeros((1, 3, 32, 48), np.float32)
    if framework == "torch":
        with pytest.raises(InputSizeError, match="32x48 does not match the model's img_size 224x224"):
            torch_ref.create_model(NAME, depth=1)(torch.from_numpy(x))
        return
    with execution_mode(ms.GRAPH_MODE if framework == "graph" else ms.PYNATIVE_MODE):
        mm = ms_models.create_model(NAME, depth=1, img_size=(32, 32))
        with pytest.raises(InputSizeError, match="32x48 does not match the model's img_size 32x32"):
            mm(ms.Tensor(x))


def _attention_numpy(x: np.ndarray, w: np.ndarray, b: np.ndarray, pw: np.ndarray, pb: np.ndarray,
                     heads: int) -> np.ndarray:
    """Multi-head self-attention in float64 NumPy (the paper's eq. 5-7 with timm's qkv layout)."""
    bsz, n, c = x.shape
    qkv = (x @ w.T + b).reshape(bsz, n, 3, heads, c // heads).transpose(2, 0, 3, 1, 4)
    logits = qkv[0] @ qkv[1].transpose(0, 1, 3, 2) / np.sqrt(c // heads)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    out = (p / p.sum(-1, keepdims=True)) @ qkv[2]
    return out.transpose(0, 2, 1, 3).reshape(bsz, n, c) @ pw.T + pb


def test_attention_equals_numpy(pynative_mode):
    """timm's attention in both frameworks against float64 NumPy (head_dim 20: a scale that is not a power of two),
    1e-6 of the output scale; the MindSpore layer also under float16 inputs keeps its softmax in float32."""
    rs = np.random.RandomState(0)
    x = rs.randn(2, 7, 60).astype(np.float32)
    ta = Attention(60, 3, qkv_bias=True)
    with torch.no_grad():
        for p in ta.parameters():
            p.copy_(torch.from_numpy(rs.randn(*p.shape).astype(np.float32) * 0.2))
        got_t = ta(torch.from_numpy(x)).numpy()
    ref = _attention_numpy(*(v.astype(np.float64) for v in (x, ta.qkv.weight.detach().numpy(),
                                                             ta.qkv.bias.detach().numpy(),
                                                             ta.proj.weight.detach().numpy(),
                                                             ta.proj.bias.detach().numpy())), heads=3)
    assert rel_err(ref, got_t) <= 1e-6
    ma = MsAttention(60, 3, qkv_bias=True)
    load_ms_state(ma, torch_to_ms(torch_state_of(ta), build_name_map(ta, ma)))
    assert rel_err(ref, ma(ms.Tensor(x)).asnumpy()) <= 1e-6
    half = ma.to_float(ms.float16)(ms.Tensor(x, ms.float16)).asnumpy()
    assert half.dtype == np.float16 and rel_err(ref, half) <= 1e-2


def test_drop_path_rates_in_blocks():
    """timm's ``calculate_drop_path_rates``: block i's two branches get ``torch.linspace(0, rate, depth)[i]`` in both
    frameworks; ``drop_rate`` is the head dropout; no new keys."""
    with torch.device("meta"):
        tm, plain = torch_ref.create_model(NAME, drop_path_rate=0.1, drop_rate=0.3), torch_ref.create_model(NAME)
    with no_init_parameters():
        mm = ms_models.create_model(NAME, drop_path_rate=0.1, drop_rate=0.3)
    want = [v.item() for v in torch.linspace(0, 0.1, 12) for _ in range(2)]
    assert [m.p for m in tm.modules() if isinstance(m, DropPath)] == want
    assert [c.p for _, c in mm.cells_and_names() if isinstance(c, MsDropPath)] == want
    assert tm.head_drop.p == 0.3 and mm.head_drop.p == pytest.approx(0.3)
    assert list(tm.state_dict()) == list(plain.state_dict())


def test_parameter_groups_of_the_engine():
    """The training engine's groups (``ms_models.train.optim.param_groups``, timm's rules): no weight decay for
    ``pos_embed``, ``cls_token`` (``no_weight_decay``), every norm and bias; layer decay over timm's 14 layers
    (stem, 12 blocks with the final norm in the last, head): stem ``0.75 ** 13``, head 1."""
    with no_init_parameters():
        mm = ms_models.create_model(NAME)
    groups = param_groups(mm, 0.05, layer_decay=0.75)
    no_decay = {n for g in groups if g["weight_decay"] == 0.0 for n in g["names"]}
    names = [p.name for p in mm.trainable_params()]
    assert no_decay == {"pos_embed", "cls_token"} | {n for n in names if n.endswith((".gamma", ".beta", ".bias"))}
    scale = {n: g["lr_scale"] for g in groups for n in g["names"]}
    assert scale["cls_token"] == scale["patch_embed.proj.weight"] == pytest.approx(0.75 ** 13)
    assert scale["blocks.0.attn.qkv.weight"] == pytest.approx(0.75 ** 12)
    assert scale["blocks.11.mlp.fc2.bias"] == scale["norm.gamma"] == pytest.approx(0.75)
    assert scale["head.weight"] == 1.0


@pytest.mark.parametrize("framework", ["torch", "mindspore"])
def test_onnx_export_matches_framework(tmp_path, framework, graph_mode):
    """A 2-block ViT-Ti at 32 px exports (attention matmuls, LayerNorm, erf GELU, the class token) and onnxruntime
    agrees with the framework; another input through the file still gives torch's logits."""
    torch.manual_seed(0)
    kwargs = dict(depth=2, img_size=32)
    tm = deterministic_weights(torch_ref.create_model(NAME, **kwargs), input_size=32, batches=1, batch_size=2)
    model = tm if framework == "torch" else ms_with_weights_of(tm, ms_models.create_model(NAME, **kwargs))
    result = export_onnx(model, tmp_path / "vit.onnx", framework, (32, 32))
    assert result.max_abs_err <= TOL * result.ref_scale and result.ref_scale > 0.1
    x = np.random.RandomState(7).randn(1, 3, 32, 32).astype(np.float32)
    with torch.no_grad():
        assert rel_err(tm(torch.from_numpy(x)).numpy(), ort_run(tmp_path / "vit.onnx", x)) <= TOL


@pytest.mark.slow
def test_parity_at_224_layer_by_layer():
    """The parity tool on ViT-Ti at 224 px: every module output (patch conv, LayerNorms, qkv, attention, MLP,
    GELU, blocks, head: all 150 named modules) within TOL of torch in PyNative, and the GRAPH_MODE logits."""
    report = run_parity(NAME, input_size=224, batch=1)
    assert report.ok, report.table()
    compared = {d.name for d in report.layers}
    assert {"patch_embed.proj", "blocks.0.attn.qkv", "blocks.11.mlp.act", "blocks.11", "norm", "head"} <= compared
    assert len(compared) == 6 + 12 * 12 and not report.unmatched      # every named module, none skipped
    assert report.graph_output.max_rel <= TOL


def test_gelu_exact_and_its_export_form(graph_mode):
    """MindSpore's GELU cell (``ms_models.layers.GELU``, in GRAPH_MODE through the compiled erf) is torch's
    exact-erf GELU: values within 2x torch float32's own error against float64 on [-10, 10] (1e-6), gradients
    within 1e-6 of the largest; the compiled erf within 4e-7 (a few float32 ulps of 1) of float64 erf. The ONNX
    export form (erf without ``Erf``) meets the same value bound. MindSpore's default ``nn.GELU`` (tanh) does not."""
    x = np.linspace(-10, 10, 4001).astype(np.float32)
    xt = torch.from_numpy(x).double().requires_grad_()
    ref = F.gelu(xt)
    ref.sum().backward()
    ref, dref = ref.detach().numpy(), xt.grad.numpy()
    bound = 2 * np.abs(F.gelu(torch.from_numpy(x)).numpy() - ref).max()
    gelu = GELU()
    assert gelu.fused is not None, "g++ is part of the set-up: the compiled erf must be available"
    assert np.abs(gelu(ms.Tensor(x)).asnumpy() - ref).max() <= bound
    grad = ms.grad(ProjectedSum(gelu, np.ones_like(x)))(ms.Tensor(x)).asnumpy()
    assert np.abs(grad - dref).max() <= 1e-6 * np.abs(dref).max()
    erf = np.array([math.erf(v) for v in x.astype(np.float64)])
    assert np.abs(kernels.erf()(ms.Tensor(x)).asnumpy() - erf).max() <= 4e-7
    assert np.abs(ms.nn.GELU()(ms.Tensor(x)).asnumpy() - ref).max() > 100 * bound     # the tanh form
    gelu.for_export = True
    refresh_graph(gelu)
    assert np.abs(gelu(ms.Tensor(x)).asnumpy() - ref).max() <= bound
