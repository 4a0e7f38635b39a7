"""BEiT v2 (the VanillaKD teacher). Both registered variants are heavy (86.5 M / 304.4 M parameters: the registry
tests only build them and check keys and shapes), so this file tests a reduced configuration of the same classes
against the official code's recorded outputs: keys, buffers and the relative position index, outputs and
gradients in torch and in MindSpore (GRAPH_MODE and PyNative), the official checkpoint layouts, the converter
round trip (full size, slow), parameter groups, dropout rates and ONNX from both frameworks.

``beit_official_tiny.safetensors`` was made by running Hao840/vanillaKD@a27b029 ``models/beit.py`` (on the timm
0.6.5 wheel its requirements name, torchvision replaced by an import stand-in; torch 2.13 CPU) on a reduced
``Beit(img_size=32, patch_size=8, embed_dim=24, depth=2, num_heads=2, num_classes=10, init_values=1e-5,
use_abs_pos_emb=False, use_rel_pos_bias=True)`` (the registered models' switches) with a NumPy state drawn per
key (layer scales in [0.5, 1], bias tables N(0, 0.5^2), so every branch and the position bias matter): its state
(with the int64 ``relative_position_index`` buffers), a 2x3x32x32 input, its eval logits, features and
pre-logits, the gradients of ``sum(logits * proj)`` for the input and eight parameters, and upstream's
``gen_relative_position_index`` for 3x5 and 7x7 grids. ``beit_official_keys.json``: the state_dict shapes and
parameter counts of upstream's ``beitv2_{base,large}_patch16_224``.
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
from convert.api import convert_file, torch_state_of
from convert.io import read_checkpoint
from convert.mapping import build_name_map, torch_to_ms
from convert.onnx import export_onnx, ort_run
from convert.state import read_state
from helpers import DATA, ProjectedSum, load_torch_state, ms_with_weights_of, official_record, rel_err
from ms_models.context import execution_mode
from ms_models.layers import DropPath as MsDropPath
from ms_models.models.beit import Beit as MsBeit
from ms_models.train.optim import param_groups
from specs import beit as spec
from specs.errors import CheckpointError, InputSizeError, KeyMismatchError
from specs.relpos import relative_position_index
from torch_ref.layers import DropPath
from torch_ref.models.beit import Beit

NAME = "beitv2_base_patch16_224"
TOL = 1e-4        # float32, relative to the output scale (observed: logits 2.4e-7 graph, 4.8e-7 PyNative)
GRAD_TOL = 1e-4   # gradients, relative to each gradient's scale (observed: MindSpore <= 1.2e-6, torch 0)
OFFICIAL = "beit_official_tiny.safetensors"   # the official code's tiny model: kwargs, state, inputs, outputs


def _torch_official() -> tuple[dict, Beit, dict]:
    kwargs, state, a = official_record(OFFICIAL)
    return kwargs, load_torch_state(Beit(**kwargs), state).eval(), a


@pytest.mark.parametrize("name", sorted(spec.VARIANTS))
def test_parameter_counts_equal_official(name):
    """86.53 M / 304.43 M, upstream's counts, in both frameworks (the index buffers are not parameters: not
    trainable in MindSpore); a headless model has no ``head`` entry and ``infer_kwargs`` reads its 0 classes and
    its 224 input (14 x 14 grid, from the bias table) back."""
    manifest = json.loads((DATA / "beit_official_keys.json").read_text())["models"][name]
    with torch.device("meta"):
        tm, headless = torch_ref.create_model(name), torch_ref.create_model(name, num_classes=0)
    assert sum(p.numel() for p in tm.parameters()) == manifest["params"]
    with no_init_parameters():
        mm = ms_models.create_model(name)
    assert sum(int(np.prod(p.shape)) for p in mm.trainable_params()) == manifest["params"]
    shapes = {k: tuple(v.shape) for k, v in headless.state_dict().items()}
    assert not any(k.startswith("head") for k in shapes)
    assert spec.infer_kwargs(shapes) == {"num_classes": 0, "img_size": 224}
    cfg = torch_ref.get_model_cfg(name)
    assert cfg.mean == (0.485, 0.456, 0.406) and cfg.crop_pct == spec.VARIANTS[name][-1]


def test_torch_matches_official_code():
    """torch_ref on upstream's state gives upstream's logits, features and pre-logits (same ops: observed 0)."""
    _, tm, a = _torch_official()
    x = torch.from_numpy(a["input"])
    with torch.no_grad():
        feats = tm.forward_features(x)
        assert rel_err(a["features"], feats.numpy()) <= 1e-6
        assert rel_err(a["pre_logits"], tm.forward_head(feats, pre_logits=True).numpy()) <= 1e-6
        assert rel_err(a["logits"], tm(x).numpy()) <= 1e-6


def test_relative_position_index_is_a_saved_int64_buffer():
    """As upstream: ``relative_position_index`` is a persistent int64 buffer (in the state_dict, equal to upstream's
    for the 4x4 grid), the zero k bias a non-persistent one (not saved); :func:`specs.relpos.relative_position_index`
    equals upstream's ``gen_relative_position_index`` on 3x5 and 7x7 grids too, and a torch model for a 24x40 input
    (3x5 patches) holds that index. In MindSpore the index is a frozen int64 parameter."""
    kwargs, state, a = official_record(OFFICIAL)
    tm = Beit(**kwargs)
    sd = tm.state_dict()
    assert sd["blocks.1.attn.relative_position_index"].dtype == torch.int64
    assert np.array_equal(sd["blocks.1.attn.relative_position_index"].numpy(),
                          state["blocks.1.attn.relative_position_index"])
    assert not any(k.endswith("k_bias") for k in sd) and set(sd) == set(state)
    for h, w in ((3, 5), (7, 7)):
        assert np.array_equal(relative_position_index((h, w), class_token=True), a[f"index_{h}x{w}"])
    wide = Beit(**{**kwargs, "img_size": (24, 40)})
    assert np.array_equal(wide.blocks[0].attn.relative_position_index.numpy(), a["index_3x5"])
    with no_init_parameters():
        mm = MsBeit(**kwargs)
    index = mm.blocks[0].attn.relative_position_index
    assert index.dtype == ms.int64 and not index.requires_grad
    assert "blocks.0.attn.relative_position_index" not in {p.name for p in mm.trainable_params()}


@pytest.mark.parametrize("mode", [ms.GRAPH_MODE, ms.PYNATIVE_MODE], ids=["graph", "pynative"])
def test_mindspore_matches_official_code(mode):
    """MindSpore with upstream's state (through the name map) gives upstream's logits and features."""
    kwargs, tm, a = _torch_official()
    with execution_mode(mode):
        mm = ms_with_weights_of(tm, MsBeit(**kwargs))
        assert rel_err(a["logits"], mm(ms.Tensor(a["input"])).asnumpy()) <= TOL
        assert rel_err(a["features"], mm.forward_features(ms.Tensor(a["input"])).asnumpy()) <= TOL


_GRADS = ("blocks.0.attn.relative_position_bias_table", "blocks.0.attn.q_bias", "blocks.0.attn.v_bias",
          "blocks.0.gamma_1", "blocks.1.gamma_2", "blocks.0.attn.qkv.weight", "cls_token", "fc_norm.weight")
_MS_NAME = {"fc_norm.weight": "fc_norm.gamma"}


@pytest.mark.parametrize("framework", ["torch", "graph", "pynative"])
def test_gradients_match_official_code(framework):
    """The gradients of ``sum(logits * proj)`` for the input, the bias table (through the gather), the q/v
    biases, the layer scales, ``qkv``, the class token and ``fc_norm`` equal upstream's (eval mode)."""
    kwargs, tm, a = _torch_official()
    if framework == "torch":
        x = torch.from_numpy(a["input"]).requires_grad_()
        (tm(x) * torch.from_numpy(a["proj"])).sum().backward()
        params = dict(tm.named_parameters())
        got = {"input": x.grad.numpy(), **{k: params[k].grad.numpy() for k in _GRADS}}
    else:
        with execution_mode(ms.GRAPH_MODE if framework == "graph" else ms.PYNATIVE_MODE):
            mm = ms_with_weights_of(tm, MsBeit(**kwargs))
            params = {p.name: p for p in mm.trainable_params()}
            weights = [params[_MS_NAME.get(k, k)] for k in _GRADS]
            gx, gw = ms.grad(ProjectedSum(mm, a["proj"]), grad_position=0, weights=weights)(ms.Tensor(a["input"]))
        got = {"input": gx.asnumpy(), **{k: g.asnumpy() for k, g in zip(_GRADS, gw)}}
    assert rel_err(a["grad_input"], got["input"]) <= GRAD_TOL
    for k in _GRADS:
        assert rel_err(a[f"grad.{k}"], got[k]) <= GRAD_TOL, k


def test_official_layouts_load_strictly(tmp_path):
    """The reduced official state in every official layout, read as the loaders read files (``read_state``:
    the container unwrapped, then :func:`specs.beit.checkpoint_filter`), loads with ``strict=True`` and gives
    upstream's logits: a plain state_dict, unilm's ``{'model': ...}``, a timm ``CheckpointSaver`` file
    (``state_dict``, ``state_dict_ema``, ``args`` Namespace: the EMA weights by default, as timm) and a timm >= 0.9
    file without the index buffers (the filter adds them, int64); MindSpore through the name map, from the last.
    A file whose index is not its grid's is a one-line :class:`CheckpointError`. Both frameworks load through
    ``create_model(NAME, checkpoint=..., **reduced_kwargs)``."""
    kwargs, state, a = official_record(OFFICIAL)
    tensors = {k: torch.from_numpy(v.copy()) for k, v in state.items()}
    layouts = {"plain.pth": tensors, "unilm.pth": {"model": tensors},
               "last.pth.tar": {"epoch": 3, "state_dict": {k: v * 0 for k, v in tensors.items()},
                                "state_dict_ema": tensors, "optimizer": {}, "args": argparse.Namespace(model=NAME)},
               "timm09.pth": {k: v for k, v in tensors.items() if not k.endswith("relative_position_index")}}
    x = torch.from_numpy(a["input"])
    for file, obj in layouts.items():
        torch.save(obj, tmp_path / file)
        assert read_state(NAME, tmp_path / file, model=Beit(**kwargs))[
            "blocks.0.attn.relative_position_index"].dtype == np.int64
        tm = torch_ref.create_model(NAME, checkpoint=tmp_path / file, **kwargs).eval()
        with torch.no_grad():
            assert rel_err(a["logits"], tm(x).numpy()) <= 1e-6, file
    mm = ms_models.create_model(NAME, checkpoint=tmp_path / "timm09.pth", **kwargs)
    mm.set_train(False)
    assert rel_err(a["logits"], mm(ms.Tensor(a["input"])).asnumpy()) <= TOL
    bad = {**tensors, "blocks.1.attn.relative_position_index": tensors["blocks.1.attn.relative_position_index"].T}
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="blocks.1.attn.relative_position_index is not the relative"):
        read_state(NAME, tmp_path / "bad.pth")


def test_checkpoint_of_another_grid_is_a_key_error():
    """No table resampling (upstream has none): the 4x4-grid state against a 48-px model is a one-line
    :class:`KeyMismatchError` naming the tables; ``infer_kwargs`` reads the 32-px input and 10 classes back."""
    kwargs, state, _ = official_record(OFFICIAL)
    wide = {**kwargs, "img_size": 48}
    with no_init_parameters():
        nm = build_name_map(Beit(**wide), MsBeit(**wide))
    with pytest.raises(KeyMismatchError, match="relative_position"):
        torch_to_ms(state, nm)
    assert spec.infer_kwargs({k: v.shape for k, v in state.items()}) == {"num_classes": 10, "img_size": 32}
    with pytest.raises(CheckpointError, match="not \\(2W-1\\)\\*\\*2 \\+ 3"):
        spec.window_of_table(50)


@pytest.mark.slow
def test_converter_round_trip_full_size(tmp_path):
    """A full-size unilm-layout file (``{'model': ...}``) converts torch -> MindSpore -> torch bit-exactly, the
    index buffers staying int64, and loads in torch with ``create_model(checkpoint=)``; MindSpore loads a timm >= 0.9
    file (no index buffers) through the converter and gives torch's logits."""
    torch.manual_seed(0)
    tm = torch_ref.create_model(NAME, num_classes=10).eval()
    with torch.no_grad():
        for p in tm.parameters():          # upstream's init leaves the biases, tables and head near 0
            p.add_(torch.randn(p.shape) * 0.02)
    torch.save({"model": tm.state_dict()}, tmp_path / "beit.pth")
    convert_file(NAME, tmp_path / "beit.pth", tmp_path / "beit.ckpt", "torch2ms")
    convert_file(NAME, tmp_path / "beit.ckpt", tmp_path / "back.pth", "ms2torch")
    back, ref = read_checkpoint(tmp_path / "back.pth"), torch_state_of(tm)
    assert list(back) == list(ref)
    assert all(np.array_equal(back[k], v) and back[k].dtype == v.dtype for k, v in ref.items())
    assert back["blocks.11.attn.relative_position_index"].dtype == np.int64
    assert torch.equal(torch_ref.create_model(NAME, num_classes=10, checkpoint=tmp_path / "beit.pth").head.weight,
                       tm.head.weight)
    torch.save({k: v for k, v in tm.state_dict().items() if "relative_position_index" not in k},
               tmp_path / "timm09.pth")
    mm = ms_models.create_model(NAME, num_classes=10, checkpoint=tmp_path / "timm09.pth")
    mm.set_train(False)
    x = np.random.RandomState(0).randn(1, 3, 224, 224).astype(np.float32)
    with torch.no_grad():
        assert rel_err(tm(torch.from_numpy(x)).numpy(), mm(ms.Tensor(x)).asnumpy()) <= TOL


def test_input_size_other_than_img_size_is_an_error():
    """Upstream's fixed input size: another size is a one-line :class:`InputSizeError`."""
    kwargs, tm, _ = _torch_official()
    with pytest.raises(InputSizeError, match="32x48 does not match the model's img_size 32x32"):
        tm(torch.zeros(1, 3, 32, 48))


def test_drop_path_and_dropout_rates():
    """Upstream's rules: block i's stochastic depth ``torch.linspace(0, rate, depth)[i]`` (one module for both
    branches), ``drop_rate`` on the tokens, after ``attn.proj`` and in the MLP, ``attn_drop_rate`` on the
    attention weights, in both frameworks; no new keys."""
    kwargs, _, _ = official_record(OFFICIAL)
    tm = Beit(**kwargs, drop_path_rate=0.1, drop_rate=0.2, attn_drop_rate=0.3)
    with no_init_parameters():
        mm = MsBeit(**kwargs, drop_path_rate=0.1, drop_rate=0.2, attn_drop_rate=0.3)
    want = [v.item() for v in torch.linspace(0, 0.1, 2)]
    assert [m.p for m in tm.modules() if isinstance(m, DropPath)] == want
    assert [c.p for _, c in mm.cells_and_names() if isinstance(c, MsDropPath)] == want
    b = tm.blocks[1]
    assert (tm.pos_drop.p, b.attn.proj_drop.p, b.mlp.drop1.p, b.mlp.drop2.p, b.attn.attn_drop.p) == (
        0.2, 0.2, 0.2, 0.2, 0.3)
    mb = mm.blocks[1]
    assert [c.p for c in (mm.pos_drop, mb.attn.proj_drop, mb.mlp.drop1, mb.mlp.drop2, mb.attn.attn_drop)] == \
        pytest.approx([0.2, 0.2, 0.2, 0.2, 0.3])
    assert list(tm.state_dict()) == list(Beit(**kwargs).state_dict())


def test_parameter_groups_of_the_engine():
    """The engine's groups (timm's rules) on BEiTv2-B: no weight decay for ``cls_token`` and the bias tables
    (upstream's ``no_weight_decay``), the layer scales, q/v biases, norms and biases (``ndim <= 1``); layer decay
    over upstream's 14 layers (stem; 12 blocks; ``fc_norm`` and ``head``, unmatched, last): stem
    ``0.75 ** 13``, head and ``fc_norm`` 1."""
    with no_init_parameters():
        mm = ms_models.create_model(NAME)
    groups = param_groups(mm, 0.05, layer_decay=0.75)
    no_decay = {n for g in groups if g["weight_decay"] == 0.0 for n in g["names"]}
    params = {p.name: p for p in mm.trainable_params()}
    assert no_decay == {n for n, p in params.items() if n == "cls_token" or "bias_table" in n or p.ndim <= 1}
    assert {"blocks.3.gamma_1", "blocks.3.attn.q_bias", "blocks.3.attn.relative_position_bias_table"} <= no_decay
    assert "blocks.3.attn.qkv.weight" not in no_decay
    scale = {n: g["lr_scale"] for g in groups for n in g["names"]}
    assert scale["cls_token"] == scale["patch_embed.proj.weight"] == pytest.approx(0.75 ** 13)
    assert scale["blocks.0.attn.relative_position_bias_table"] == pytest.approx(0.75 ** 12)
    assert scale["blocks.11.mlp.fc2.bias"] == pytest.approx(0.75)
    assert scale["fc_norm.gamma"] == scale["head.weight"] == 1.0


@pytest.mark.slow
@pytest.mark.parametrize("framework", ["torch", "mindspore"])
def test_onnx_export_matches_framework(tmp_path, framework, graph_mode):
    """The reduced official model exports (the bias gather, q/v bias, layer scale, mean pooling) and
    onnxruntime agrees with the framework (export check) and gives upstream's logits on the second recorded
    image (the files have a batch of 1)."""
    kwargs, tm, a = _torch_official()
    model = tm if framework == "torch" else ms_with_weights_of(tm, MsBeit(**kwargs))
    result = export_onnx(model, tmp_path / "beit.onnx", framework, (32, 32))
    assert result.max_abs_err <= TOL * result.ref_scale and result.ref_scale > 0.1
    assert rel_err(a["logits"][1:], ort_run(tmp_path / "beit.onnx", a["input"][1:])) <= TOL
