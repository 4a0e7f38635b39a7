"""FastMIM / LocalMIM ViT and FastMIM Swin pretraining models and the MAE-style fine-tune loading (contract 2.3,
2.4; issue 17 section 2; ``{torch_ref,ms_models}/mim.py``), against the official models run on a small config.

Oracle data: ``tests/data/mim_official_models.npz`` was made by running the official pretraining models (torch 2.13
CPU, float32): ``MaskedAutoencoderViT`` of ggjy/FastMIM.pytorch@d4eea0d ``mim_vit_pretrain.py`` (with its
``util/hog_layer.py`` and ``util/pos_embed.py``) and of Haoqing-Wang/LocalMIM@314a6e5 ``ViT/models_mim.py`` (with
``ViT/util/pos_embed.py``), copied to a scratch directory with three edits: ``HOGLayerC(...).cuda()`` without
``.cuda()``, the ``torch.rand`` noise of the two masking functions replaced by an injected tensor, and numpy's
removed ``np.float`` spelled ``np.float64``; timm 0.3.2's ``Block``/``PatchEmbed`` came from a minimal stand-in
written after timm 0.3.2 (``x + attn(norm1(x))``, ``x + mlp(norm2(x))``, ``(q @ kᵀ) * scale``). Configs:

- ``fastmim`` / ``fastmim_l2``: ``img_size=64, patch_size=16, embed_dim=32, depth=2, num_heads=2, block_size=16,
  decoder_embed_dim=32, decoder_depth=1, norm_pix_loss=True``, ``mim_loss='HOG'`` / ``'l2'``;
- ``localmim``: ``img_size=64, patch_size=16, embed_dim=32, depth=7, num_heads=2, decoder_embed_dim=32,
  decoder_depth=1, decoder_num_heads=2, hog_nbins=9, hog_bias=True`` (taps 1, 3, 4, 6), the four ``conv.bias``
  set to the dyadic ``(0.25 + k/8, -0.125 - k/16)``.

``<m>/fresh_pos_embed`` (and LocalMIM's ``fresh_decoder_pos_embed``) are the freshly built models' tables; then
every other entry was overwritten with seeded normals (LayerNorm weights ``1 + 0.1 N``, the rest ``0.05 N``) and
``<m>/sd/<key>`` is the official ``state_dict()``. ``imgs`` (2, 3, 64, 64) are dyadic ``k/256`` in [−2, 2.5);
``<m>/noise`` the injected noise (distinct values); ``<m>/loss``, ``pred``, ``mask`` the official forward outputs in
eval mode with ``mask_ratio=0.75``; ``localmim/levels`` the four level losses computed by the official
``forward_encoder``, ``decoder``, ``HOG`` and ``recal_mask`` as its ``forward_loss`` sums them.

``tests/data/mim_official_swin.npz``: the same for FastMIM's ``PretrainSwin`` (``mim_swin_pretrain.py`` at the same
commit, the same three edits, timm 0.3.2's ``Block``/``DropPath``/``to_2tuple``/``trunc_normal_`` from the
stand-in, an unused ``einops`` import stubbed) with ``img_size=64, patch_size=32, embed_dim=8, depths=(2, 2, 2, 2),
num_heads=(1, 1, 2, 2), window_size=4, block_size=32, decoder_embed_dim=32, decoder_depth=2, mlp_ratio=4,
qkv_bias=True, norm_layer=None, norm_pix_loss=True`` as ``fastmim_swin`` (HOG) / ``fastmim_swin_l2``, on the same
``imgs``: stages at 16, 8, 4 and 2 tokens a side (shifted windows with masks in the first two, the window clamped
to the grid in the last two), 2 x 2 output tokens of 32 px, 4 blocks of which 3 are masked. Its ``relative_position_index``
and ``attn_mask`` entries are the fresh official buffers; the other entries are seeded normals rounded to
multiples of 1/512 (a smaller file); ``mask`` is the official ``encoder.mim_block_masking`` loss mask.

``tests/data/mim_official_fastmim_128.npz``: the official FastMIM ViT of the ``fastmim`` config *built for 128 px*
(``img_size=128``: its own fresh ``pos_embed``, kept as ``fresh_pos_embed``) with the other ``fastmim/sd`` entries,
run on the 64-px ``imgs`` tiled 2 x 2 with injected noise (2, 64) (8 x 8 blocks of 16 px): ``loss``, ``pred``,
``mask``.

``tests/data/mim_official_sizes.json``: the ``state_dict()`` shapes and the (trainable) parameter counts of the
official constructors of the other registered sizes, built at full size with the same stand-in: LocalMIM's
``MIM_vit_small_patch16``, ``MIM_vit_large_patch16(hog_nbins=18, hog_bias=True)``,
``mim_swin_base_patch4_win14`` and ``mim_swin_large_patch4_win14`` (``target='HOG', hog_nbins=18, hog_bias=True``),
FastMIM's ``mim_swin_large`` with the Swin-B README flags (``img_size=128, window_size=4, block_size=32,
decoder_embed_dim=256, decoder_depth=4, norm_pix_loss=True, mim_loss='HOG'``), and LocalMIM's fine-tune
``Swin/models_swin.py`` ``swin_base_patch4_win7``, ``swin_base_patch4_win14`` and ``swin_large_patch4_win14``
(``num_classes=1000`` and the README's ``--drop_path``).
"""
from __future__ import annotations

import argparse
import json
import pickle

import mindspore as ms
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mindspore import Tensor

import ms_models.mim as ms_mim
import torch_ref.mim as t_mim
from convert.mapping import torch_to_ms
from convert.state import assign_ms_state
from helpers import DATA, rel_err
from ms_models.context import execution_mode
from specs.errors import CheckpointError, ConfigError, KeyMismatchError

D = {**np.load(DATA / "mim_official_models.npz"), **np.load(DATA / "mim_official_swin.npz")}
SIZES = json.loads((DATA / "mim_official_sizes.json").read_text())["models"]
IMGS = D["imgs"]
P128 = np.load(DATA / "mim_official_fastmim_128.npz")
SWIN_ENC = dict(img_size=64, embed_dim=8, depths=(2, 2, 2, 2), num_heads=(1, 1, 2, 2), decoder_embed_dim=32,
                decoder_depth=2)
KW = {
    "fastmim": ("fastmim_vit_base_patch16", dict(img_size=64, embed_dim=32, depth=2, num_heads=2,
                                                 decoder_embed_dim=32, mim_loss="HOG")),
    "fastmim_l2": ("fastmim_vit_base_patch16", dict(img_size=64, embed_dim=32, depth=2, num_heads=2,
                                                    decoder_embed_dim=32, mim_loss="l2")),
    "localmim": ("localmim_vit_base_patch16", dict(img_size=64, embed_dim=32, depth=7, num_heads=2,
                                                   decoder_embed_dim=32, decoder_num_heads=2, hog_bias=True)),
    "fastmim_swin": ("fastmim_swin_base_patch4", dict(SWIN_ENC, mim_loss="HOG")),
    "fastmim_swin_l2": ("fastmim_swin_base_patch4", dict(SWIN_ENC, mim_loss="l2")),
}
SWIN_BUFFERS = ("relative_position_index", "attn_mask")
FT_KW = dict(num_classes=10, img_size=112, embed_dim=32, depth=2, num_heads=2)   # 7x7 grid from the 4x4 one
FT_MISSING = {"head.weight", "head.bias", "fc_norm.weight", "fc_norm.bias"}
TOL = {"torch": 1e-5, "mindspore": 1e-4}          # losses (contract)
PRED_TOL = {"torch": 1e-4, "mindspore": 1e-3}     # model outputs (contract)


def official_state(name: str) -> dict[str, np.ndarray]:
    prefix = f"{name}/sd/"
    return {k[len(prefix):]: v for k, v in D.items() if k.startswith(prefix)}


def build(framework: str, name: str):
    factory, kw = KW[name]
    return getattr(t_mim if framework == "torch" else ms_mim, factory)(**kw)


def save_official(path, state: dict[str, np.ndarray], prefix: str = "") -> None:
    """What the official ``save_model`` writes: ``{'model', 'epoch', 'args': argparse.Namespace}``."""
    torch.save({"model": {prefix + k: torch.from_numpy(v) for k, v in state.items()}, "epoch": 799,
                "args": argparse.Namespace(model="mim_vit_base", mask_ratio=0.75, blr=1.5e-4)}, path)


def run(framework: str, model, name: str, **kw):
    noise = D[f"{name}/noise"]
    if framework == "torch":
        model.eval()
        with torch.no_grad():
            out = model(torch.from_numpy(IMGS), 0.75, torch.from_numpy(noise), **kw)
        return [o.numpy() for o in out] if isinstance(out, tuple) else out.numpy()
    model.set_train(False)
    out = model(Tensor(IMGS), 0.75, Tensor(noise), **kw)
    return [o.asnumpy() for o in out] if isinstance(out, tuple) else out.asnumpy()


def check_outputs(framework: str, name: str, out) -> None:
    tol = TOL[framework]
    if name.startswith("fastmim"):
        loss, pred, mask = out
        assert rel_err(D[f"{name}/loss"], loss) < tol
        assert rel_err(D[f"{name}/pred"], pred) < PRED_TOL[framework]
        np.testing.assert_array_equal(mask, D[f"{name}/mask"])
        blocks = D[f"{name}/noise"].shape[1]       # one loss-mask entry per block: all but int(n/4) masked
        assert mask.sum() == 2 * (blocks - int(blocks * 0.25))
    else:
        loss, levels = out
        assert levels.shape == (4,)
        assert rel_err(D["localmim/loss"], loss) < tol
        assert rel_err(D["localmim/levels"], levels) < tol


@pytest.mark.parametrize("name", list(KW))
def test_keys_shapes_and_fresh_tables_are_official(name):
    official = official_state(name)
    tm = build("torch", name)
    assert {k: tuple(v.shape) for k, v in tm.state_dict().items()} == {k: v.shape for k, v in official.items()}
    mm = build("mindspore", name)
    nm = ms_mim._name_map(mm)       # every torch key pairs with a MindSpore parameter of the same shape
    assert set(nm.torch_to_ms) == set(official) and not nm.ms_only
    if name.startswith("fastmim_swin"):          # the geometry buffers (the npz keeps the fresh official ones)
        ms_state = {n: p for n, p in mm.parameters_and_names()}
        buffers = [k for k in official if k.endswith(SWIN_BUFFERS)]
        assert len(buffers) == 8 + 2      # an index per block; a mask in the shifted blocks of stages 0 and 1
        for k in buffers:
            np.testing.assert_array_equal(tm.state_dict()[k].numpy(), official[k])
            np.testing.assert_array_equal(ms_state[nm.torch_to_ms[k]].asnumpy(), official[k])
            assert not ms_state[nm.torch_to_ms[k]].requires_grad
        return
    assert not tm.pos_embed.requires_grad
    np.testing.assert_array_equal(tm.pos_embed.detach().numpy(), D[f"{name}/fresh_pos_embed"])
    assert not mm.pos_embed.requires_grad
    np.testing.assert_array_equal(mm.pos_embed.asnumpy(), D[f"{name}/fresh_pos_embed"])
    if name == "localmim":
        for k in range(4):
            np.testing.assert_array_equal(tm.decoder[k].pos_embed.detach().numpy(),
                                          D["localmim/fresh_decoder_pos_embed"])
            np.testing.assert_array_equal(mm.decoder[k].pos_embed.asnumpy(), D["localmim/fresh_decoder_pos_embed"])


@pytest.mark.parametrize("name", list(KW))
def test_torch_matches_official(name):
    model = build("torch", name)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in official_state(name).items()}, strict=True)
    check_outputs("torch", name, run("torch", model, name, **({"return_levels": True} if name == "localmim" else {})))
    if name == "localmim":                   # the upstream call style returns the loss alone
        assert rel_err(D["localmim/loss"], run("torch", model, name)) < TOL["torch"]


def test_mindspore_matches_official(any_mode):
    """Both pretraining models in GRAPH_MODE and PyNative, loaded through the converter's name map."""
    for name in KW:
        model = build("mindspore", name)
        assign_ms_state(model, torch_to_ms(official_state(name), ms_mim._name_map(model)))
        model.set_train(False)    # a recursive walk over the cells (the HOG sub-cells included)
        check_outputs("mindspore", name, run("mindspore", model, name,
                                             **({"return_levels": True} if name == "localmim" else {})))


def test_fastmim_p_input_size_is_the_official_model_built_for_it(any_mode):
    """FastMIM-P's resolution switch (``set_input_size``, issue 17 section 3): the 64-px oracle model taking 128-px
    inputs gives, in both frameworks, the outputs of the official model built for 128 px with the same weights (its
    sin-cos table is fixed, so that model differs only in the table and the block grid); the state dict does not
    change; set back to 64 px, the 64-px official outputs again; a side off the block grid is a one-line error."""
    imgs, noise = np.tile(IMGS, (1, 1, 2, 2)), P128["fastmim_128/noise"]
    for framework in ("torch", "mindspore"):
        model = build(framework, "fastmim")
        if framework == "torch":
            model.load_state_dict({k: torch.from_numpy(v) for k, v in official_state("fastmim").items()})
            model.eval()
        else:
            assign_ms_state(model, torch_to_ms(official_state("fastmim"), ms_mim._name_map(model)))
            model.set_train(False)
        model.set_input_size(128)
        table = model.pos_grid.numpy() if framework == "torch" else model.pos_grid.asnumpy()
        np.testing.assert_array_equal(table, P128["fastmim_128/fresh_pos_embed"])
        if framework == "torch":
            assert set(model.state_dict()) == set(official_state("fastmim"))
            with torch.no_grad():
                loss, pred, mask = (o.numpy() for o in model(torch.from_numpy(imgs), 0.75, torch.from_numpy(noise)))
        else:
            loss, pred, mask = (o.asnumpy() for o in model(Tensor(imgs), 0.75, Tensor(noise)))
        assert rel_err(P128["fastmim_128/loss"], loss) < TOL[framework]
        assert rel_err(P128["fastmim_128/pred"], pred) < PRED_TOL[framework]
        np.testing.assert_array_equal(mask, P128["fastmim_128/mask"])
        model.set_input_size(64)
        check_outputs(framework, "fastmim", run(framework, model, "fastmim"))
        with pytest.raises(ConfigError, match="multiple of block_size 16") as err:
            model.set_input_size(100)
        assert "\n" not in str(err.value)


def test_official_checkpoint_file_loads_strictly(tmp_path):
    """The ``{'model', 'epoch', 'args': Namespace}`` file: refused by a plain ``weights_only`` load, read with
    only ``argparse.Namespace`` allow-listed, strict in both frameworks (PyNative)."""
    path = tmp_path / "checkpoint-799.pth"
    save_official(path, official_state("localmim"))
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
    tm = t_mim.load_official(build("torch", "localmim"), path)
    check_outputs("torch", "localmim", run("torch", tm, "localmim", return_levels=True))
    mm = ms_mim.load_official(build("mindspore", "localmim"), path)
    with execution_mode(ms.PYNATIVE_MODE):
        check_outputs("mindspore", "localmim", run("mindspore", mm, "localmim", return_levels=True))
    bad = dict(official_state("localmim"))
    bad.pop("hog_enc.2.conv.bias")
    save_official(tmp_path / "missing.pth", bad)
    for framework, module in (("torch", t_mim), ("mindspore", ms_mim)):
        with pytest.raises(KeyMismatchError, match="hog_enc.2.conv.bias") as err:
            module.load_official(build(framework, "localmim"), tmp_path / "missing.pth")
        assert "\n" not in str(err.value)


class _Foreign:       # a class no checkpoint may rebuild
    pass


def test_foreign_or_corrupt_file_is_a_one_line_error(tmp_path):
    foreign, corrupt = tmp_path / "foreign.pth", tmp_path / "corrupt.pth"
    torch.save({"model": {"pos_embed": torch.zeros(1)}, "args": _Foreign()}, foreign)
    corrupt.write_bytes(b"PK\x03\x04 not a zip archive at all" * 8)
    for path in (foreign, corrupt):
        for framework, module in (("torch", t_mim), ("mindspore", ms_mim)):
            with pytest.raises(CheckpointError) as err:
                module.load_official(build(framework, "fastmim"), path)
            assert "\n" not in str(err.value) and str(path) in str(err.value)
            with pytest.raises(CheckpointError):
                module.load_pretrained(getattr(module, "vit_base_patch16")(**FT_KW), path)


def test_load_pretrained_fastmim_file(tmp_path):
    """128 -> 224 style: the 4x4 FastMIM table into a 7x7 fine-tune model; the contract's key lists, torch's
    bicubic resize, the encoder weights copied; the two frameworks' ``forward_features`` agree."""
    official = official_state("fastmim")
    path = tmp_path / "fastmim.pth"
    save_official(path, official)
    pos = torch.from_numpy(official["pos_embed"])
    grid = pos[:, 1:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(7, 7), mode="bicubic", align_corners=False).permute(0, 2, 3, 1).flatten(1, 2)
    want_pos = torch.cat([pos[:, :1], grid], 1).numpy()
    want_unexpected = {k for k in official if k.startswith(("norm.", "mask_token", "decoder"))}

    tm = t_mim.vit_base_patch16(**FT_KW)
    missing, unexpected = t_mim.load_pretrained(tm, path)
    assert set(missing) == FT_MISSING and set(unexpected) == want_unexpected
    assert rel_err(want_pos, tm.pos_embed.detach().numpy()) < TOL["torch"]
    np.testing.assert_array_equal(tm.blocks[1].mlp.fc2.weight.detach().numpy(), official["blocks.1.mlp.fc2.weight"])

    mm = ms_mim.vit_base_patch16(**FT_KW)
    assert ms_mim.load_pretrained(mm, path) == (missing, unexpected)
    assert rel_err(want_pos, mm.pos_embed.asnumpy()) < TOL["mindspore"]
    np.testing.assert_array_equal(mm.blocks[1].mlp.fc2.weight.asnumpy(), official["blocks.1.mlp.fc2.weight"])

    # the same head and fc_norm on both sides, then the features
    assign_ms_state(mm, torch_to_ms({k: v.detach().numpy() for k, v in tm.state_dict().items()},
                                    ms_mim._name_map(mm)))
    x = np.random.RandomState(0).uniform(-2, 2, (2, 3, 112, 112)).astype(np.float32)
    tm.eval()
    with torch.no_grad():
        tokens = tm.blocks(torch.cat([tm.cls_token.expand(2, -1, -1), tm.patch_embed(torch.from_numpy(x))], 1)
                           + tm.pos_embed)
        want = tm.fc_norm(tokens[:, 1:].mean(1)).numpy()      # global pool of the patch tokens, then fc_norm
        got_t = tm.forward_features(torch.from_numpy(x)).numpy()
    assert got_t.shape == (2, 32) and rel_err(want, got_t) < PRED_TOL["torch"]
    mm.set_train(False)
    with execution_mode(ms.GRAPH_MODE):
        got_m = mm.forward_features(Tensor(x)).asnumpy()
    assert rel_err(want, got_m) < PRED_TOL["mindspore"]


def test_load_pretrained_localmim_file_encoder_prefix_and_head(tmp_path):
    """A LocalMIM file (its pretraining-only ``norm.k``, ``decoder``, ``hog_enc`` keys): with an ``encoder.`` prefix
    (stripped), or with a 5-class ``head`` (dropped before the strip, as upstream: missing, not unexpected). A
    prefixed head of another shape survives the drop, as upstream, and is then a one-line shape error."""
    official = official_state("localmim")
    head = {"head.weight": np.ones((5, 32), np.float32), "head.bias": np.ones(5, np.float32)}
    save_official(tmp_path / "prefixed.pth", official, prefix="encoder.")
    save_official(tmp_path / "head.pth", {**official, **head})
    save_official(tmp_path / "prefixed_head.pth", {**official, **head}, prefix="encoder.")
    kw = {**FT_KW, "img_size": 64, "depth": 7}
    want_unexpected = {k for k in official if k.startswith(("norm.", "decoder.", "hog_enc."))}
    for module in (t_mim, ms_mim):
        for name in ("prefixed.pth", "head.pth"):
            missing, unexpected = module.load_pretrained(module.vit_base_patch16(**kw), tmp_path / name)
            assert set(missing) == FT_MISSING and set(unexpected) == want_unexpected
        with pytest.raises(CheckpointError, match="head.weight has shape") as err:
            module.load_pretrained(module.vit_base_patch16(**kw), tmp_path / "prefixed_head.pth")
        assert "\n" not in str(err.value)
    tm = t_mim.vit_base_patch16(**kw)
    t_mim.load_pretrained(tm, tmp_path / "prefixed.pth")
    np.testing.assert_array_equal(tm.pos_embed.detach().numpy(), official["pos_embed"])   # same grid: kept
    np.testing.assert_array_equal(tm.blocks[6].attn.qkv.weight.detach().numpy(), official["blocks.6.attn.qkv.weight"])


def test_fine_tune_model_defaults():
    model = t_mim.vit_base_patch16()
    assert model.global_pool and not hasattr(model, "norm") and model.head.out_features == 1000
    assert len(model.blocks) == 12 and model.blocks[0].attn.num_heads == 12
    assert model.blocks[-1].drop_path1.p == pytest.approx(0.1)
    assert model.blocks[0].norm1.eps == 1e-6
    pre = t_mim.fastmim_vit_base_patch16()
    assert pre.blocks[0].attn.num_heads == 6 and pre.decoder_blocks[0].attn.num_heads == 8
    assert pre.patch_embed.img_size == (128, 128) and pre.decoder_pred.out_features == 108


@pytest.mark.parametrize("name", sorted(SIZES))
def test_registered_sizes_are_the_official_constructors(name):
    """The other upstream sizes and LocalMIM's fine-tune Swins, registered with their README flags: state-dict shapes (buffers included) and
    parameter counts of the official constructors in torch, the trainable count and the full name map in
    MindSpore (all built without weights). Their numerics are the shared classes' (the window-14 Swin is checked
    against the official code in ``test_localmim_swin.py``)."""
    import ms_models
    import torch_ref
    from mindspore.nn.utils import no_init_parameters
    manifest = SIZES[name]
    with torch.device("meta"):
        tm = torch_ref.create_model(name)
    assert {k: list(v.shape) for k, v in tm.state_dict().items()} == manifest["shapes"]
    assert sum(p.numel() for p in tm.parameters()) == manifest["params"]
    assert sum(p.numel() for p in tm.parameters() if p.requires_grad) == manifest["trainable"]
    with no_init_parameters():
        mm = ms_models.create_model(name)
    assert sum(int(np.prod(p.shape)) for p in mm.trainable_params()) == manifest["trainable"]
    nm = ms_mim._name_map(mm)
    assert set(nm.torch_to_ms) == set(manifest["shapes"]) and not nm.ms_only


def test_registry_builds_and_loads_but_classification_sweeps_skip(tmp_path):
    """``create_model(name, checkpoint=..., **overrides)`` in both frameworks (the official file, strictly); the
    default listings (what the registry-driven sweeps iterate) hold classification models only."""
    import ms_models
    import torch_ref
    from specs import get_model_cfg, list_cfgs
    pretrain = ["fastmim_swin_base_patch4", "fastmim_swin_large_patch4", "fastmim_vit_base_patch16",
                "localmim_swin_base_patch4", "localmim_swin_base_patch4_win14", "localmim_swin_large_patch4_win14",
                "localmim_vit_base_patch16", "localmim_vit_large_patch16", "localmim_vit_small_patch16"]
    assert torch_ref.list_models(task="mim_pretrain") == ms_models.list_models(task="mim_pretrain") == pretrain
    finetune = ["swin_base_patch4_win7", "swin_base_patch4_win14", "swin_large_patch4_win14", "vit_base_patch16"]
    assert torch_ref.list_models(task="mim_finetune") == ms_models.list_models(task="mim_finetune") == finetune
    for name in pretrain + finetune:
        assert name not in torch_ref.list_models() + ms_models.list_models() + list_cfgs()
        assert name in torch_ref.list_models(task=None)
    assert get_model_cfg("fastmim_vit_base_patch16").arch["num_heads"] == 6
    path = tmp_path / "checkpoint.pth"
    save_official(path, official_state("fastmim"))
    _, kw = KW["fastmim"]
    tm = torch_ref.create_model("fastmim_vit_base_patch16", checkpoint=path, **kw)
    check_outputs("torch", "fastmim", run("torch", tm, "fastmim"))
    mm = ms_models.create_model("fastmim_vit_base_patch16", checkpoint=path, **kw)
    with execution_mode(ms.PYNATIVE_MODE):
        check_outputs("mindspore", "fastmim", run("mindspore", mm, "fastmim"))
    vm = ms_models.create_model("vit_base_patch16", **FT_KW)
    assert set(ms_mim.load_pretrained(vm, path)[0]) == FT_MISSING and vm.head.weight.shape == (10, 32)

