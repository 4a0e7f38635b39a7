"""What is special to Swin: the official code's outputs and parameter counts on a reduced config of the same classes
(the registered models are heavy at 224 px: the registry tests only build them), the shifted-window mask, the
persistent buffers through the converter, the bias-table resize when loading a checkpoint of another window
(FastMIM's fine-tune loading), microsoft / timm training layouts, parameter groups and ONNX.

``swin_official_tiny.safetensors`` was made by running ggjy/FastMIM.pytorch@d4eea0d ``mim_swin_finetune.py``
(``SwinTransformer``; timm 0.3.2's ``DropPath``/``to_2tuple``/``trunc_normal_``/``register_model`` replaced by an
import stand-in, weights overwritten, so only the forward matters) on ``SwinTransformer(img_size=32, patch_size=4,
embed_dim=24, depths=(2, 2), num_heads=(2, 4), window_size=4, num_classes=10)``: 8x8 tokens in 4 windows of 4x4,
block 1 shifted by 2 with a real mask, patch merging to 4x4 where the window clamps to the grid (no shift, no
mask); random weights (bias tables N(0, 1)), its state (buffers included), a 2x3x32x32 input, its eval logits and
``fc_norm`` tokens; then the same model at window 2 (``w2.*``, 3x3 tables, both stages shifted) passed through
FastMIM's ``util/pos_embed.py`` ``remap_pretrained_keys_swin(mode='interpolate')`` into the window-4 model
(``w2to4.*`` tables, ``logits_w2to4`` after ``load_state_dict(strict=False)``, the deleted buffers re-made by the
model). ``swin_official_simmim_remap.safetensors``: the same function in its default mode 'simmim' (SimMIM's
geometric resampling with ``scipy.interpolate.interp2d``, run with SciPy 1.13.1, the last release that has it) on
the window-2 tables of that file and on random tables of windows 2 -> 4, 4 -> 7 and 7 -> 12. ``swin_official_keys.json``: the state_dict shapes (buffers included) and parameter counts of that file's
``SwinTransformer`` with the Swin-T/S/B arguments.
"""
from __future__ import annotations

import argparse
import json

import mindspore as ms
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mindspore.nn.utils import no_init_parameters
from safetensors.numpy import load_file

import ms_models
import torch_ref
from convert.api import convert_file
from convert.io import read_checkpoint
from convert.mapping import build_name_map, ms_to_torch, torch_to_ms
from convert.onnx import export_onnx, ort_run
from helpers import DATA, ProjectedSum, load_torch_state, ms_with_weights_of, official_record, prefixed, rel_err
from ms_models.context import execution_mode
from ms_models.models.swin import SwinTransformer as MsSwin, roll_hw
from ms_models.train.optim import param_groups
from specs import swin as spec
from specs.errors import CheckpointError, KeyMismatchError, InputSizeError
from torch_ref.models.swin import SwinTransformer

NAME = "swin_tiny_patch4_window7_224"
TOL = 1e-4        # float32, relative to the output scale (observed ~5e-7 in both modes)
# bias tables resized in float64 here, in float32 by torch's bicubic kernel: a few float32 ulps of the table's scale
# (observed 7e-7); the logits through them: observed 4e-7
RESIZE_TOL = 2e-6
OFFICIAL = "swin_official_tiny.safetensors"   # the official code's tiny model: kwargs, state, inputs, outputs


def _load_file(path, kwargs: dict):
    """Both frameworks' models of the reduced config loaded strictly from ``path`` by
    ``create_model(NAME, checkpoint=path, **kwargs)`` (format, key, ``checkpoint_filter`` into the model, strict
    load; MindSpore through the converter's name map of the same overrides)."""
    tm = torch_ref.create_model(NAME, checkpoint=path, **kwargs).eval()
    mm = ms_models.create_model(NAME, checkpoint=path, **kwargs)
    mm.set_train(False)
    return tm, mm


def _official_torch():
    kwargs, state, a = official_record(OFFICIAL)
    return load_torch_state(SwinTransformer(**kwargs), state).eval(), kwargs, a


@pytest.mark.parametrize("name", sorted(spec.VARIANTS))
def test_parameter_counts_equal_official(name):
    """28.29 M / 49.61 M / 87.77 M: the official counts in both frameworks (MindSpore: the trainable parameters; the
    buffers are frozen Parameters); ``infer_kwargs`` reads a headless state's architecture back (224 px from the
    stage-0 mask)."""
    manifest = json.loads((DATA / "swin_official_keys.json").read_text())["models"][name]
    with torch.device("meta"):
        tm, headless = torch_ref.create_model(name), torch_ref.create_model(name, num_classes=0)
    assert sum(p.numel() for p in tm.parameters()) == manifest["params"]
    with no_init_parameters():
        mm = ms_models.create_model(name)
    assert sum(int(np.prod(p.shape)) for p in mm.trainable_params()) == manifest["params"]
    shapes = {k: tuple(v.shape) for k, v in headless.state_dict().items()}
    dim, depths, heads = spec.VARIANTS[name]
    assert spec.infer_kwargs(shapes) == dict(num_classes=0, embed_dim=dim, patch_size=4, depths=depths,
                                             num_heads=heads, window_size=7, img_size=224)


def test_buffers_are_the_official_ones():
    """The state holds the official persistent buffers, bit for bit and in their dtypes: ``relative_position_index``
    int64 in every block, ``attn_mask`` float32 in the shifted block of stage 0 only (stage 1's 4x4 grid equals the
    window: clamped, unshifted, no mask); the mask has -100 across regions and 0 inside them."""
    kwargs, state, _ = official_record(OFFICIAL)
    tm = SwinTransformer(**kwargs)
    got = tm.state_dict()
    masks = [k for k in got if k.endswith("attn_mask")]
    assert masks == ["layers.0.blocks.1.attn_mask"] and got[masks[0]].shape == (4, 16, 16)
    for k, v in got.items():
        if k.endswith(("relative_position_index", "attn_mask")):
            assert v.dtype == torch.from_numpy(state[k]).dtype and np.array_equal(v.numpy(), state[k]), k
    assert got["layers.0.blocks.0.attn.relative_position_index"].dtype == torch.int64
    assert set(np.unique(state["layers.0.blocks.1.attn_mask"])) == {-100.0, 0.0}
    assert not state["layers.0.blocks.1.attn_mask"][0].any()      # the top-left window is one region


def test_torch_matches_official_code():
    tm, _, a = _official_torch()
    x = torch.from_numpy(a["input"])
    with torch.no_grad():
        assert rel_err(a["logits"], tm(x).numpy()) <= 1e-6          # observed 0 (same ops)
        assert rel_err(a["tokens"], tm.forward_features(x).numpy()) <= 1e-6


@pytest.mark.parametrize("mode", [ms.GRAPH_MODE, ms.PYNATIVE_MODE], ids=["graph", "pynative"])
def test_mindspore_matches_official_code(mode):
    """MindSpore on the official weights (through the converter) gives the official logits and tokens."""
    tm, kwargs, a = _official_torch()
    with execution_mode(mode):
        mm = ms_with_weights_of(tm, MsSwin(**kwargs))
        x = ms.Tensor(a["input"])
        assert rel_err(a["logits"], mm(x).asnumpy()) <= TOL
        assert rel_err(a["tokens"], mm.forward_features(x).asnumpy()) <= TOL


def test_shifted_window_mask_and_roll():
    """The mask against a direct statement of section 3.2: tokens attend across the wrap-around only within one of
    the 3 x 3 regions (label by coordinate bands ``< H - window``, ``< H - shift``, else); MindSpore's slice roll is
    ``torch.roll`` / ``np.roll``; the window clamp."""
    h, w, win, s = 8, 12, 4, 2
    mask = spec.shifted_window_mask((h, w), win, s)
    band = lambda i, n: 0 if i < n - win else (1 if i < n - s else 2)      # noqa: E731
    labels = np.array([[3 * band(i, h) + band(j, w) for j in range(w)] for i in range(h)])
    wins = labels.reshape(h // win, win, w // win, win).transpose(0, 2, 1, 3).reshape(-1, win * win)
    assert np.array_equal(mask == 0, wins[:, :, None] == wins[:, None, :]) and mask.shape == (6, 16, 16)
    x = np.random.RandomState(0).randn(2, h, w, 3).astype(np.float32)
    for shift in (-s, s, 5):
        assert np.array_equal(roll_hw(ms.Tensor(x), shift).asnumpy(), np.roll(x, (shift, shift), axis=(1, 2)))
    assert spec.block_window((7, 7), 7, 3) == (7, 0) and spec.block_window((4, 4), 7, 3) == (4, 0)
    assert spec.block_window((14, 14), 7, 3) == (7, 3)


def _torch_bicubic_table(table: np.ndarray, rows: int) -> np.ndarray:
    """FastMIM's ``interpolate`` remap of one table with torch in float64."""
    src, dst, heads = int(round(table.shape[0] ** 0.5)), int(round(rows ** 0.5)), table.shape[1]
    t = torch.from_numpy(table.astype(np.float64)).reshape(1, src, src, heads).permute(0, 3, 1, 2)
    return F.interpolate(t, size=[dst, dst], mode="bicubic").reshape(heads, rows).transpose(0, 1).numpy()


def test_resize_bias_table_interpolate_equals_torch_bicubic():
    """``resize_bias_table(mode='interpolate')`` is torch's bicubic ``interpolate`` (float64: 1e-12), up (window
    4 -> 7, FastMIM's 128-px pre-training into the 224 fine-tune) and down; a non-square table or an unknown mode
    is a one-line error."""
    rs = np.random.RandomState(0)
    for src, dst in ((7, 13), (3, 7), (13, 7), (5, 27)):
        table = rs.randn(src * src, 3)
        got = spec.resize_bias_table(table, dst * dst, "interpolate")
        assert np.abs(got - _torch_bicubic_table(table, dst * dst)).max() <= 1e-12
    assert spec.resize_bias_table(table.astype(np.float32), 49, "interpolate").dtype == np.float32
    with pytest.raises(CheckpointError, match="not square grids"):
        spec.resize_bias_table(rs.randn(10, 3), 49)
    with pytest.raises(CheckpointError, match="remap mode must be one of"):
        spec.resize_bias_table(table, 49, "bilinear")


def test_resize_bias_table_simmim_equals_fastmim_bit_for_bit():
    """The default mode is FastMIM's default (SimMIM's geometric resampling through ``scipy.interpolate.interp2d``):
    equal bit for bit to the official function's output recorded with SciPy 1.13 (``swin_official_simmim_remap``:
    random float32 tables of windows 2 -> 4 (interp2d 'linear': 3x3 source), 4 -> 7 and 7 -> 12 (cubic)); the
    geometric source offsets as the official bisection finds them (window 4 -> 7: 1, 1 + q, 1 + q + q^2 = 6)."""
    d = load_file(str(DATA / "swin_official_simmim_remap.safetensors"))
    for case in ("w2_to_w4", "w4_to_w7", "w7_to_w12"):
        got = spec.resize_bias_table(d[f"{case}.source"], d[f"{case}.target"].shape[0])
        assert got.dtype == np.float32 and np.array_equal(got, d[f"{case}.target"]), case
    x, dx = spec._geometric_positions(7, 13)
    q = x[-2] - 1.0
    assert x[3] == 0 and np.allclose(x[4:], [1, 1 + q, 1 + q + q * q]) and abs(x[-1] - 6) < 1e-5
    assert np.array_equal(dx, np.arange(-6, 7))


def test_checkpoint_of_another_window_loads_like_fastmim(tmp_path, pynative_mode):
    """A window-2 checkpoint into the window-4 model: the filter gives FastMIM's resized tables (default 'simmim':
    bit for bit; 'interpolate': within float32 rounding of torch's kernel), the model's own index and mask replace
    the file's (FastMIM re-makes them). Through the loaders' path the torch model loads strictly with exactly that
    state, MindSpore loads the same file through the converter and agrees; with the 'interpolate' tables torch
    gives the official logits; a table of another head count is a one-line error."""
    kwargs, _, a = official_record(OFFICIAL)
    w2 = prefixed(a, "w2.")
    tm = SwinTransformer(**kwargs).eval()
    simmim = prefixed(load_file(str(DATA / "swin_official_simmim_remap.safetensors")), "w2to4.")
    filtered = spec.checkpoint_filter(w2, tm)
    assert simmim and all(np.array_equal(filtered[k], v) for k, v in simmim.items())
    assert filtered["layers.0.blocks.1.attn_mask"].shape == (4, 16, 16)
    assert "layers.1.blocks.1.attn_mask" not in filtered          # window 2 shifted stage 1; window 4 does not
    own = tm.state_dict()
    for k, v in own.items():
        if k.endswith(("relative_position_index", "attn_mask")):
            assert np.array_equal(filtered[k], v.numpy()), k
    torch.save({"model": {k: torch.from_numpy(v) for k, v in w2.items()}}, tmp_path / "w2.pth")
    tm, mm = _load_file(tmp_path / "w2.pth", kwargs)
    assert all(np.array_equal(v.numpy(), filtered[k]) for k, v in tm.state_dict().items())
    x = a["input"]
    with torch.no_grad():
        got = tm(torch.from_numpy(x)).numpy()
    assert rel_err(got, mm(ms.Tensor(x)).asnumpy()) <= TOL
    interp = spec.checkpoint_filter(w2, tm, remap_mode="interpolate")
    for k, ref in prefixed(a, "w2to4.").items():
        assert interp[k].shape == ref.shape == (49, ref.shape[1]) and rel_err(ref, interp[k]) <= RESIZE_TOL, k
    load_torch_state(tm, interp)
    with torch.no_grad():
        assert rel_err(a["logits_w2to4"], tm(torch.from_numpy(x)).numpy()) <= RESIZE_TOL
    bad = dict(w2, **{"layers.0.blocks.0.attn.relative_position_bias_table": np.zeros((9, 3), np.float32)})
    with pytest.raises(CheckpointError, match="3 heads in the checkpoint, 2 in the model"):
        spec.checkpoint_filter(bad, tm)


def test_converter_round_trip_keeps_buffers_bit_exact(tmp_path):
    """torch -> MindSpore -> torch through the converter's files: every entry bit-exact, the index int64 on both
    sides, the frozen Parameters out of MindSpore's trainable ones; a window-4 file converts as it is (the model it
    implies: ``infer_kwargs`` window 4)."""
    kwargs, state, _ = official_record(OFFICIAL)
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, tmp_path / "swin.pth")
    convert_file(NAME, tmp_path / "swin.pth", tmp_path / "swin.ckpt", "torch2ms")
    ms_state = read_checkpoint(tmp_path / "swin.ckpt")
    assert ms_state["layers.0.blocks.0.attn.relative_position_index"].dtype == np.int64
    assert "fc_norm.gamma" in ms_state
    convert_file(NAME, tmp_path / "swin.ckpt", tmp_path / "back.pth", "ms2torch")
    back = read_checkpoint(tmp_path / "back.pth")
    assert set(back) == set(state)
    for k, v in state.items():
        assert back[k].dtype == v.dtype and np.array_equal(back[k], v), k
    mm = MsSwin(**kwargs)
    frozen = {n for n, p in mm.parameters_and_names() if not p.requires_grad}
    assert frozen == {k for k in state if k.endswith(("relative_position_index", "attn_mask"))}
    assert not frozen & {p.name for p in mm.trainable_params()}
    nm = build_name_map(SwinTransformer(**kwargs), mm)
    assert all(np.array_equal(ms_to_torch(torch_to_ms(state, nm), nm)[k], v) for k, v in state.items())


def test_official_layouts_load_strictly(tmp_path):
    """Plain state dict, FastMIM's ``{'model': ...}`` (with ``optimizer``, ``epoch``, ``args``), microsoft's file
    (final norm ``norm``), a timm ``CheckpointSaver`` file (EMA first): strict in torch, through the converter in
    MindSpore; a missing buffer is a key error."""
    kwargs, state, a = official_record(OFFICIAL)
    tens = {k: torch.from_numpy(v) for k, v in state.items()}
    microsoft = {("norm." + k[8:] if k.startswith("fc_norm.") else k): v for k, v in tens.items()}
    ema = {k: v if k.endswith(("attn_mask", "relative_position_index")) else v * 0.5 for k, v in tens.items()}
    files = {"plain.pth": tens, "fastmim.pth": {"model": tens, "optimizer": {}, "epoch": 99,
                                                "args": argparse.Namespace(model="swin_base_patch4_window7_224")},
             "microsoft.pth": {"model": microsoft},
             "timm.pth.tar": {"state_dict": tens, "state_dict_ema": ema, "epoch": 3}}
    for fname, obj in files.items():
        torch.save(obj, tmp_path / fname)
        tm, mm = _load_file(tmp_path / fname, kwargs)
        want = ema if fname.startswith("timm") else tens
        assert all(torch.equal(tm.state_dict()[k], v) for k, v in want.items()), fname
        params = dict(mm.parameters_and_names())
        assert np.array_equal(params["fc_norm.gamma"].asnumpy(), want["fc_norm.weight"].numpy()), fname
        assert np.array_equal(params["layers.0.blocks.1.attn_mask"].asnumpy(), state["layers.0.blocks.1.attn_mask"])
    torch.save({k: v for k, v in tens.items() if not k.endswith("attn_mask")}, tmp_path / "nomask.pth")
    with pytest.raises(KeyMismatchError, match="1 missing key.*layers.0.blocks.1.attn_mask"):
        _load_file(tmp_path / "nomask.pth", kwargs)


def test_gradients_match(pynative_mode):
    """Gradients of a projected sum w.r.t. the input and the bias tables (through the gather, the mask and the
    roll) agree between the frameworks (1e-4 of the largest; observed ~1e-6), in train mode without dropout."""
    tm, kwargs, a = _official_torch()
    mm = ms_with_weights_of(tm, MsSwin(**kwargs))
    tm.train(), mm.set_train(True)
    proj = np.random.RandomState(1).randn(2, 10).astype(np.float32)
    x = torch.from_numpy(a["input"]).requires_grad_()
    (tm(x) * torch.from_numpy(proj)).sum().backward()
    key = "layers.0.blocks.1.attn.relative_position_bias_table"
    params = dict(mm.parameters_and_names())
    net = ProjectedSum(mm, proj)
    gx, gp = ms.grad(net, grad_position=0, weights=[params[key]])(ms.Tensor(a["input"]))
    assert rel_err(x.grad.numpy(), gx.asnumpy()) <= TOL
    assert rel_err(dict(tm.named_parameters())[key].grad.numpy(), gp[0].asnumpy()) <= TOL
    assert np.abs(gp[0].asnumpy()).max() > 0


@pytest.mark.parametrize("framework", ["torch", "graph"])
def test_input_size_other_than_img_size_is_an_error(framework):
    """The official ``PatchEmbed`` assertion as a one-line :class:`InputSizeError` (MindSpore: at compile time)."""
    kwargs, _, _ = official_record(OFFICIAL)
    x = np.zeros((1, 3, 32, 48), np.float32)
    with pytest.raises(InputSizeError, match="32x48 does not match the model's img_size 32x32"):
        if framework == "torch":
            SwinTransformer(**kwargs)(torch.from_numpy(x))
        else:
            with execution_mode(ms.GRAPH_MODE):
                MsSwin(**kwargs)(ms.Tensor(x))


def test_parameter_groups():
    """No weight decay for every bias table (upstream's keywords), norms and biases; layer decay over FastMIM's
    ``sum(depths) + 2`` layers: stem ``d ** 13`` (Swin-T: 12 blocks), stage 0's merging with its last block,
    ``fc_norm`` with the last block (``d``), head 1."""
    with no_init_parameters():
        mm = ms_models.create_model(NAME)
    groups = param_groups(mm, 0.05, layer_decay=0.8)
    no_decay = {n for g in groups if g["weight_decay"] == 0.0 for n in g["names"]}
    names = [p.name for p in mm.trainable_params()]
    tables = {n for n in names if n.endswith("relative_position_bias_table")}
    assert len(tables) == 12 and no_decay == tables | {n for n in names if n.endswith((".gamma", ".beta", ".bias"))}
    scale = {n: g["lr_scale"] for g in groups for n in g["names"]}
    assert scale["patch_embed.proj.weight"] == pytest.approx(0.8 ** 13)
    assert scale["layers.0.blocks.0.attn.qkv.weight"] == pytest.approx(0.8 ** 12)
    assert scale["layers.0.downsample.reduction.weight"] == scale["layers.0.blocks.1.mlp.fc1.weight"]
    assert scale["layers.1.blocks.0.norm1.gamma"] == pytest.approx(0.8 ** 10)
    assert scale["layers.3.blocks.1.mlp.fc2.weight"] == scale["fc_norm.gamma"] == pytest.approx(0.8)
    assert scale["head.weight"] == 1.0


@pytest.mark.slow
@pytest.mark.parametrize("framework", ["torch", "mindspore"])
def test_onnx_export_matches_framework(tmp_path, framework, graph_mode):
    """The reduced official model exports (gather of the bias, mask, roll, window reshapes, patch merging) and
    onnxruntime agrees with the framework and with the official logits."""
    tm, kwargs, a = _official_torch()
    model = tm if framework == "torch" else ms_with_weights_of(tm, MsSwin(**kwargs))
    result = export_onnx(model, tmp_path / "swin.onnx", framework, (32, 32))
    assert result.max_abs_err <= TOL * result.ref_scale and result.ref_scale > 0.1
    assert rel_err(a["logits"][:1], ort_run(tmp_path / "swin.onnx", a["input"][:1])) <= TOL
