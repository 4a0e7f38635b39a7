"""LocalMIM's Swin pretraining model (issue 17 section 2; ``{torch_ref,ms_models}/mim.py::LocalMIMSwin``, ``specs.mim``)
against the official model run on a small config.

Oracle data: ``tests/data/mim_official_localmim_swin.npz`` was made by running Haoqing-Wang/LocalMIM@314a6e5
``Swin/models_mim.py::MaskedAutoencoderSwin`` (with ``Swin/util/pos_embed.py``; torch 2.13 CPU, float32) unmodified
but for numpy's removed ``np.float`` spelled ``np.float64``; timm 0.3.2's ``Block``, ``DropPath``, ``to_2tuple`` and
``trunc_normal_`` came from a minimal stand-in written after timm 0.3.2, and ``torch.randperm`` was patched to
return the ranks of the injected ``noise`` (49,) (distinct values). Config: ``img_size=224, patch_size=4,
embed_dim=8, depths=[2, 2, 2, 2], num_heads=[1, 1, 2, 2], window_size=7, mlp_ratio=4, drop_path_rate=0,
norm_layer=LayerNorm(eps=1e-6), decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2``, as ``hog``
(``target='HOG', hog_nbins=9, hog_bias=True``, the four ``conv.bias`` set to ``(0.25 + k/8, -0.125 - k/16)``) and
``pixel`` (``target='Pixel', norm_pix_loss=True``). Stages 0 and 1 (768 and 192 visible tokens, above
``2 * 7²``) ran upstream's knapsack 'grouping' attention, stages 2 and 3 its 'masking' form; stages 0-2 have shifted
blocks. ``<t>/sd/<key>`` is the official ``state_dict()``: the ``relative_position_index`` buffers, the decoders'
``pos_embed`` and the Sobel weights fresh, every other entry seeded normals (per key, so the two models share them;
LayerNorm weights ``1 + 0.1 N``, the rest ``0.05 N``, rounded to multiples of 1/512); the pixel model stores only
its own ``decoder.k.pred`` entries. ``imgs`` (2, 3, 224, 224) are dyadic ``k/256`` in [-2, 2.5); ``<t>/loss`` and
``<t>/levels`` (the four level losses as ``forward_loss`` sums them) the official eval-mode outputs at
``mask_ratio=0.75``; ``<t>/mask`` the 7 x 7 mask; ``latent{k}`` the encoder's four outputs (shared by both).

``tests/data/mim_official_localmim_swin_win14.npz``: the same official class, stand-in and patch with
``window_size=14`` (``mim_swin_base_patch4_win14``'s window; the rest of the small HOG config as above), loaded with
the HOG state above but for the bias tables (27² rows in stages 0-2, 13² in stage 3, where the block clamps the
window to the 7 x 7 grid; seeded normals ``0.05 N`` rounded to 1/512, ``default_rng(14)``) and the fresh index
buffers, all stored as ``sd/<key>``; ``loss``, ``levels``, ``mask`` and ``latent{k}`` as above. Stage 2 (14 x 14)
is one unshifted window there, where the window-7 model shifts.

``tests/data/mim_official_localmim_swin_finetune.npz``: LocalMIM's fine-tune ``Swin/models_swin.py``
``SwinTransformer`` as ``swin_base_patch4_win7`` builds it (LayerNorm eps 1e-6) but for ``embed_dim=8,
depths=[2, 2, 2, 2], num_heads=[1, 1, 2, 2], num_classes=10, drop_path_rate=0``, initialised from the HOG state
above by ``Swin/run_finetune.py``'s ``--finetune`` lines (``missing`` / ``unexpected``: its
``load_state_dict(strict=False)`` message), then ``norm`` and ``head`` set to seeded values (``sd/<key>``, in place of
upstream's random head); ``features`` / ``logits`` its eval-mode ``forward_features`` / ``forward`` on ``imgs``;
``group_*``: ``Swin/util/lr_decay.py::param_groups_lrd(model, 1.0, 0.05, layer_decay=0.9,
model.no_weight_decay())`` as ``run_finetune.py`` calls it, per parameter (lr scale and weight decay).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from mindspore import Tensor

import ms_models.mim as ms_mim
import torch_ref.mim as t_mim
from convert.mapping import torch_to_ms
from convert.state import assign_ms_state
from helpers import DATA, rel_err
from ms_models.train.optim import param_groups
from specs import mim as spec
from specs.errors import ConfigError

D = np.load(DATA / "mim_official_localmim_swin.npz")
IMGS = D["imgs"].astype(np.float32)
NOISE = np.stack([D["noise"], D["noise"][::-1]])       # row 0 masks the batch; row 1 must not matter
SMALL = dict(embed_dim=8, depths=(2, 2, 2, 2), num_heads=(1, 1, 2, 2), decoder_embed_dim=32, decoder_num_heads=2)
TARGETS = {"hog": dict(target="HOG", hog_nbins=9, hog_bias=True), "pixel": dict(target="Pixel", norm_pix_loss=True)}
TOL = {"torch": 1e-5, "mindspore": 1e-4}       # losses (contract)
LATENT_TOL = {"torch": 1e-5, "mindspore": 1e-4}  # of the latents' scale (|x| up to 3.9)
# upstream's rule, stated here: randperm(49) <= int(0.75 * 49) masks the units of rank 0..36
VISIBLE = np.flatnonzero(np.argsort(np.argsort(D["noise"])) > int(0.75 * 49))


def official_state(target: str) -> dict[str, np.ndarray]:
    state = {k[len("hog/sd/"):]: v for k, v in D.items() if k.startswith("hog/sd/")}
    if target == "pixel":
        state = {k: v for k, v in state.items() if not k.startswith("hog_enc.")}
        state.update({k[len("pixel/sd/"):]: v for k, v in D.items() if k.startswith("pixel/sd/")})
    return state


FT = np.load(DATA / "mim_official_localmim_swin_finetune.npz")
FT_KW = dict(num_classes=10, embed_dim=8, depths=(2, 2, 2, 2), num_heads=(1, 1, 2, 2), drop_path_rate=0.0)
W14 = np.load(DATA / "mim_official_localmim_swin_win14.npz")
W14_STATE = {**official_state("hog"), **{k[len("sd/"):]: v for k, v in W14.items() if k.startswith("sd/")}}


def build(framework: str, target: str, load: bool = True, factory: str = "localmim_swin_base_patch4",
          state: dict[str, np.ndarray] | None = None):
    module = t_mim if framework == "torch" else ms_mim
    model = getattr(module, factory)(**SMALL, **TARGETS[target])
    if not load:
        return model
    state = official_state(target) if state is None else state
    if framework == "torch":
        model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
        return model.eval()
    assign_ms_state(model, torch_to_ms(state, ms_mim._name_map(model)))
    model.set_train(False)
    return model


def run_torch(model, noise=NOISE):
    with torch.no_grad():
        loss, levels = model(torch.from_numpy(IMGS), 0.75, torch.from_numpy(noise), return_levels=True)
    return loss.item(), levels.numpy()


def test_the_oracle_masks_37_of_49_units():
    assert D["hog/mask"].sum() == 37 == spec.localmim_swin_masked(0.75)
    np.testing.assert_array_equal(np.flatnonzero(D["hog/mask"] == 0), VISIBLE)


@pytest.mark.parametrize("target", list(TARGETS))
def test_keys_shapes_and_fresh_tables_are_official(target):
    official = official_state(target)
    tm = build("torch", target, load=False)
    assert {k: tuple(v.shape) for k, v in tm.state_dict().items()} == {k: v.shape for k, v in official.items()}
    fresh = [k for k in official if k.endswith(("relative_position_index", "pos_embed"))]
    assert len(fresh) == 8 + 4
    for k in fresh:
        np.testing.assert_array_equal(tm.state_dict()[k].numpy(), official[k])
    mm = build("mindspore", target, load=False)
    nm = ms_mim._name_map(mm)
    assert set(nm.torch_to_ms) == set(official) and not nm.ms_only
    ms_state = dict(mm.parameters_and_names())
    for k in fresh:
        np.testing.assert_array_equal(ms_state[nm.torch_to_ms[k]].asnumpy(), official[k])
        assert not ms_state[nm.torch_to_ms[k]].requires_grad
    assert spec.infer_localmim_swin_kwargs({k: v.shape for k, v in official.items()}) == {
        "embed_dim": 8, "depths": (2, 2, 2, 2), "num_heads": (1, 1, 2, 2), "window_size": 7,
        "decoder_embed_dim": 32, "decoder_num_heads": 4, "decoder_depth": 1,
        **({"target": "HOG", "hog_bias": True, "hog_nbins": 9, "norm_pix_loss": False} if target == "hog"
           else {"target": "Pixel", "hog_bias": False, "norm_pix_loss": True})}


@pytest.mark.parametrize("target", list(TARGETS))
def test_torch_matches_official(target):
    """Loss and the four level losses; the batch's mask comes from the first noise row only."""
    model = build("torch", target)
    loss, levels = run_torch(model)
    assert rel_err(D[f"{target}/loss"], loss) < TOL["torch"]
    assert rel_err(D[f"{target}/levels"], levels) < TOL["torch"]
    assert rel_err(loss, run_torch(model, NOISE[::-1].copy())[0]) > 10 * TOL["torch"]     # row 0 does matter
    with torch.no_grad():
        latent = model.encoder(torch.from_numpy(IMGS), torch.from_numpy(VISIBLE))
    for k in range(4):
        assert rel_err(D[f"latent{k}"], latent[k].numpy()) < LATENT_TOL["torch"]


def test_mindspore_matches_official(any_mode):
    for target in TARGETS:
        model = build("mindspore", target)
        loss, levels = model(Tensor(IMGS), 0.75, Tensor(NOISE), True)
        assert rel_err(D[f"{target}/loss"], loss.asnumpy()) < TOL["mindspore"]
        assert rel_err(D[f"{target}/levels"], levels.asnumpy()) < TOL["mindspore"]
    latent = model.encoder(Tensor(IMGS), Tensor(VISIBLE.astype(np.int32)))
    for k in range(4):
        assert rel_err(D[f"latent{k}"], latent[k].asnumpy()) < LATENT_TOL["mindspore"]


@pytest.mark.slow            # make test-fast keeps the window-7 comparisons of the same classes
def test_window_14_matches_official(any_mode):
    """``localmim_swin_base_patch4_win14`` on the small config: fresh index buffers of the clamped windows (27 x 27
    tables in stages 0-2, 13 x 13 in stage 3), then the official loss, levels and latents in torch and MindSpore."""
    tm = build("torch", "hog", factory="localmim_swin_base_patch4_win14", state=W14_STATE)
    mm = build("mindspore", "hog", factory="localmim_swin_base_patch4_win14", state=W14_STATE)
    ms_state, nm = dict(mm.parameters_and_names()), ms_mim._name_map(mm)
    fresh = t_mim.localmim_swin_base_patch4_win14(**SMALL, **TARGETS["hog"]).state_dict()
    for k in (k for k in W14_STATE if k.endswith("relative_position_index")):
        assert W14_STATE[k].shape == ((14 * 14,) * 2 if ".layers.3." not in k else (49, 49))
        np.testing.assert_array_equal(fresh[k].numpy(), W14_STATE[k])
        np.testing.assert_array_equal(ms_state[nm.torch_to_ms[k]].asnumpy(), W14_STATE[k])
    loss, levels = run_torch(tm)
    assert rel_err(W14["loss"], loss) < TOL["torch"] and rel_err(W14["levels"], levels) < TOL["torch"]
    loss, levels = mm(Tensor(IMGS), 0.75, Tensor(NOISE), True)
    assert rel_err(W14["loss"], loss.asnumpy()) < TOL["mindspore"]
    assert rel_err(W14["levels"], levels.asnumpy()) < TOL["mindspore"]
    np.testing.assert_array_equal(W14["mask"], D["hog/mask"])
    with torch.no_grad():
        t_latent = tm.encoder(torch.from_numpy(IMGS), torch.from_numpy(VISIBLE))
    m_latent = mm.encoder(Tensor(IMGS), Tensor(VISIBLE.astype(np.int32)))
    for k in range(4):
        assert rel_err(W14[f"latent{k}"], t_latent[k].numpy()) < LATENT_TOL["torch"]
        assert rel_err(W14[f"latent{k}"], m_latent[k].asnumpy()) < LATENT_TOL["mindspore"]
        # the window matters: window 7's latents are 0.7 % (stage 0) to 14 % away here (observed)
        assert rel_err(D[f"latent{k}"], t_latent[k].numpy()) > 100 * LATENT_TOL["torch"]


def test_upstream_coordinates_after_merging_are_reproduced():
    """After a patch merging upstream attaches the merged grid's row-major coordinates to the unit-ordered tokens.
    Hand-worked: unit 1 (units row 0, column 1) starts at patch (0, 8) of stage 0 (8-px units of 56) and at
    (0, 4) of stage 1, where upstream gives it ``divmod(1 * 16, 28) = (0, 16)``; stage 3's 1-token units are
    row-major, so there the coordinates are the positions. With the true positions the official latents of stages
    1-3 are not reproduced (the quirk changes the windows and the biases)."""
    gather, coords = spec.localmim_swin_geometry(56, 4)
    assert tuple(coords[0][1, 0]) == (0, 8) and gather[1, 0] == 8 and gather[1, 9] == 56 + 9
    assert tuple(coords[1][1, 0]) == (0, 16) and tuple(coords[1][8, 5]) == divmod(8 * 16 + 5, 28)
    np.testing.assert_array_equal(coords[3][:, 0], np.stack(divmod(np.arange(49), 7), -1))
    model = build("torch", "hog")
    for s in (1, 2):
        w = (56 >> s) // 7
        u, t = np.arange(49)[:, None], np.arange(w * w)[None]
        true = np.stack([(u // 7) * w + t // w, (u % 7) * w + t % w], -1)
        setattr(model.encoder, f"coords{s}", torch.from_numpy(true).long())
    with torch.no_grad():
        latent = model.encoder(torch.from_numpy(IMGS), torch.from_numpy(VISIBLE))
    assert rel_err(D["latent0"], latent[0].numpy()) < LATENT_TOL["torch"]
    assert all(rel_err(D[f"latent{k}"], latent[k].numpy()) > 0.05 for k in (1, 2, 3))


def test_no_weight_decay_is_upstreams_skip_list():
    """The bias tables (one per block) and the decoders' mask tokens, which upstream's ``skip_list`` exempts
    (they would decay otherwise: they are not 1-D); the MindSpore optimizer groups them without decay."""
    tm = build("torch", "hog", load=False)
    names = tm.no_weight_decay()
    assert len(names) == 8 + 4
    assert all(n.endswith("attn.relative_position_bias_table") or n.endswith(".mask_token") for n in names)
    mm = build("mindspore", "hog", load=False)
    assert mm.no_weight_decay() == names
    undecayed = {n for g in param_groups(mm, 0.05) if g["weight_decay"] == 0 for n in g["names"]}
    assert names <= undecayed
    assert "encoder.layers.0.blocks.0.attn.qkv.weight" not in undecayed


@pytest.mark.parametrize("kwargs, match", [
    (dict(img_size=192), "224 px"), (dict(patch_size=2), "4-px patches"),
    (dict(depths=(2, 2, 2), num_heads=(1, 1, 2)), "4 stages"), (dict(target="Feature"), "'HOG' or 'Pixel'")])
def test_unsupported_geometry_or_target_is_a_one_line_error(kwargs, match):
    for module in (t_mim, ms_mim):
        with pytest.raises(ConfigError, match=match) as err:
            module.localmim_swin_base_patch4(**{**SMALL, **kwargs})
        assert "\n" not in str(err.value)


def test_official_file_fine_tunes_a_swin_through_load_pretrained(tmp_path):
    """Upstream's ``Swin/run_finetune.py`` keeps the ``encoder.`` keys without the prefix and loads them non-strictly
    into a window-7 Swin. Through ``load_pretrained`` the registered Swin takes every encoder weight exactly (the
    bias tables are the same size), rebuilds its geometry buffers, and reports upstream's missing set (head,
    ``fc_norm``, the buffers) and the pretraining-only keys as unexpected; both frameworks alike."""
    import ms_models
    import torch_ref
    official = official_state("hog")
    path = tmp_path / "checkpoint-399.pth"
    torch.save({"model": {k: torch.from_numpy(v) for k, v in official.items()}, "epoch": 399}, path)
    kw = dict(num_classes=10, embed_dim=8, depths=(2, 2, 2, 2), num_heads=(1, 1, 2, 2))
    tm = torch_ref.create_model("swin_tiny_patch4_window7_224", **kw)
    missing, unexpected = t_mim.load_pretrained(tm, path)
    geometry = {k for k in tm.state_dict() if k.endswith(("relative_position_index", "attn_mask"))}
    assert set(missing) == {"head.weight", "head.bias", "fc_norm.weight", "fc_norm.bias"} | geometry
    assert set(unexpected) == ({k[len("encoder."):] for k in official if k.startswith("encoder.norm.")}
                               | {k for k in official if k.startswith(("decoder.", "hog_enc."))})
    for k, v in tm.state_dict().items():
        if k not in missing:
            np.testing.assert_array_equal(v.numpy(), official["encoder." + k], err_msg=k)
    mm = ms_models.create_model("swin_tiny_patch4_window7_224", **kw)
    assert ms_mim.load_pretrained(mm, path) == (missing, unexpected)
    np.testing.assert_array_equal(mm.layers[1].downsample.reduction.weight.asnumpy(),
                                  official["encoder.layers.1.downsample.reduction.weight"])


def test_finetune_swin_loads_like_run_finetune_and_matches_official(tmp_path, any_mode):
    """LocalMIM's fine-tune Swin (``swin_base_patch4_win7``) from the official pretraining file through
    ``load_pretrained``: upstream's missing (head, ``norm``, the shift masks the pretraining model lacks) and
    unexpected (the four ``norm.k``) lists, the encoder loaded; with the oracle's ``norm`` and head, the official
    pooled features and logits in both frameworks."""
    path = tmp_path / "checkpoint-399.pth"
    torch.save({"model": {k: torch.from_numpy(v) for k, v in official_state("hog").items()}, "epoch": 399}, path)
    head = {k[len("sd/"):]: v for k, v in FT.items() if k.startswith("sd/")}
    tm = t_mim.swin_base_patch4_win7(**FT_KW)
    missing, unexpected = t_mim.load_pretrained(tm, path)
    assert sorted(missing) == list(FT["missing"]) and sorted(unexpected) == list(FT["unexpected"])
    tm.load_state_dict({k: torch.from_numpy(v) for k, v in head.items()}, strict=False)
    with torch.no_grad():
        x = torch.from_numpy(IMGS)
        assert rel_err(FT["features"], tm.eval().forward_features(x).numpy()) < LATENT_TOL["torch"]
        assert rel_err(FT["logits"], tm(x).numpy()) < LATENT_TOL["torch"]
    mm = ms_mim.swin_base_patch4_win7(**FT_KW)
    assert ms_mim.load_pretrained(mm, path) == (missing, unexpected)
    ms_state, nm = dict(mm.parameters_and_names()), ms_mim._name_map(mm)
    for k, v in head.items():
        ms_state[nm.torch_to_ms[k]].set_data(Tensor(v))
    mm.set_train(False)
    assert rel_err(FT["features"], mm.forward_features(Tensor(IMGS)).asnumpy()) < LATENT_TOL["mindspore"]
    assert rel_err(FT["logits"], mm(Tensor(IMGS)).asnumpy()) < LATENT_TOL["mindspore"]


def test_finetune_swin_param_groups_are_upstreams():
    """The engine's groups with ``layer_decay`` 0.9 give every parameter the lr scale and weight decay of upstream's
    ``param_groups_lrd`` run on the official model: ``norm`` with the head (scale 1), each ``downsample`` with its
    stage's last block, the bias tables decayed (upstream's list names only ``absolute_pos_embed``)."""
    mm = ms_mim.swin_base_patch4_win7(**FT_KW)
    to_torch = ms_mim._name_map(mm).ms_to_torch
    ours = {to_torch[n]: (g["lr_scale"], g["weight_decay"]) for g in param_groups(mm, 0.05, 0.9) for n in g["names"]}
    theirs = {n: (s, w) for n, s, w in zip(FT["group_names"], FT["group_lr_scale"], FT["group_weight_decay"])}
    assert ours.keys() == theirs.keys()
    for n, (scale, wd) in theirs.items():
        assert ours[n][0] == pytest.approx(scale, rel=1e-12) and ours[n][1] == wd, n
    assert theirs["norm.weight"][0] == 1.0 and theirs["layers.0.blocks.0.attn.relative_position_bias_table"][1] > 0
