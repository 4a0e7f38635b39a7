"""Masked-image-modeling pretraining and fine-tuning in the training engine (ms_models.train.mim; issue 17 section
3): a FastMIM and a LocalMIM pretraining run of a small ViT, and a FastMIM run of a small Swin, on the built-in
digits lowers its masked-modeling loss;
its val loss is the torch twin's loss on the same images and masks, from the run's checkpoint converted to the
official torch layout; the checkpoint fine-tunes through ``load_pretrained`` in both frameworks (upstream's
``--finetune``); and the settings a pretraining step cannot take are one-line config errors."""
from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import torch_ref
from convert.api import convert_file
from convert.io import read_checkpoint, read_checkpoint_raw
from ms_models.train.config import apply_overrides, load_config
from ms_models.train.data import create_loader
from ms_models.train.loop import build_model, train
from ms_models.train.mim import noise_shape
from specs import get_model_cfg
from specs.errors import CheckpointError, ConfigError
from torch_ref import mim as t_mim

from helpers import ROOT, write_tree

DEMO = ROOT / "configs" / "demo"
ENCODER = {"img_size": 64, "patch_size": 16, "embed_dim": 32, "depth": 8, "num_heads": 2}
SWIN = {"embed_dim": 8, "depths": [2, 2, 2, 2], "num_heads": [1, 1, 2, 2]}
PRETRAIN = {
    "fastmim": ("fastmim_pretrain_digits.yaml", {**ENCODER, "block_size": 16, "decoder_embed_dim": 32,
                                                 "decoder_depth": 1}),
    "localmim": ("localmim_pretrain_digits.yaml", {**ENCODER, "decoder_embed_dim": 32, "decoder_depth": 1,
                                                   "decoder_num_heads": 2, "hog_nbins": 9}),
    "fastmim_swin": ("fastmim_pretrain_digits.yaml", {**SWIN, "img_size": 64, "window_size": 4, "block_size": 32,
                                                      "decoder_embed_dim": 32, "decoder_depth": 1}),
}
MODEL = {"fastmim_swin": "fastmim_swin_base_patch4"}     # the other recipes' own model
NOISE = {"fastmim_vit_base_patch16": 16, "localmim_vit_base_patch16": 16,      # one value per 16-px block / patch
         "fastmim_swin_base_patch4": 4,                                          # per 32-px block
         "localmim_swin_base_patch4": 49}                                        # per 32-px unit at 224 px
RUN = ["train.epochs=2", "data.batch_size=128", "data.workers=1"]


def _cfg(recipe: str, overrides: list[str]):
    return apply_overrides(load_config(DEMO / recipe), overrides)


@pytest.fixture(scope="module", params=sorted(PRETRAIN))
def pretrained(request, tmp_path_factory):
    """A two-epoch pretraining run of each method (its config and output folder)."""
    recipe, kwargs = PRETRAIN[request.param]
    name = [f"model.name={MODEL[request.param]}"] if request.param in MODEL else []
    cfg = _cfg(recipe, RUN + name + [f"model.kwargs={json.dumps(kwargs)}"])
    out = tmp_path_factory.mktemp(request.param)
    train(cfg, out)
    return cfg, out


@pytest.mark.slow
def test_pretraining_run_lowers_the_loss_and_writes_no_best(pretrained):
    """Both epochs validated on the masked-modeling loss (no top-1), the loss lower in epoch 2 than in epoch 1 (train
    and val), and the run's files without ``best.ckpt`` (nothing to rank by)."""
    cfg, out = pretrained
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1]
    assert all(r["val_top1"] is None and np.isfinite(r["val_loss"]) for r in records)
    assert records[1]["train_loss"] < records[0]["train_loss"]
    assert records[1]["val_loss"] < records[0]["val_loss"]
    assert {p.name for p in out.iterdir()} >= {"config.yaml", "metrics.jsonl", "train.log", "last.ckpt", "curves.png"}
    assert not (out / "best.ckpt").exists()
    assert Image.open(out / "curves.png").size[0] == 8 * 90     # two panels (no accuracy panel), 8 in at 90 dpi


def _val_loss_is_the_torch_twins(cfg, out, tmp_path) -> None:
    name = cfg.model.name
    dst = convert_file(name, out / "last.ckpt", tmp_path / "pretrain.pth", direction="ms2torch")
    tm = torch_ref.create_model(name, **cfg.model.kwargs)
    t_mim.load_official(tm, dst)
    official = torch.load(dst, weights_only=True)
    assert list(official) == list(tm.state_dict())
    tm.eval()
    (images, _), = list(create_loader(cfg, "val", get_model_cfg(name)))
    noise = np.random.default_rng((cfg.seed, 0, 0)).random((len(images), NOISE[name]), dtype=np.float32)
    with torch.no_grad():
        out_t = tm(torch.from_numpy(images), cfg.mim.mask_ratio, torch.from_numpy(noise))
    loss = float((out_t[0] if isinstance(out_t, tuple) else out_t).item())
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert abs(last["val_loss"] - loss) <= 1e-4 * abs(loss)


@pytest.mark.slow
def test_val_loss_is_the_torch_twins_loss_from_the_converted_checkpoint(pretrained, tmp_path):
    """``last.ckpt`` converted with ``convert ms2torch`` loads strictly into the torch twin under the official keys
    (the layout the official fine-tune scripts read), and that model's loss on the val split, masked with the noise
    the engine's validation draws (``default_rng((seed, rank, batch))``), is the recorded ``val_loss`` within 1e-4
    of its value (float32; the HOG bins are compared through the same noise and images, no tolerance widened)."""
    _val_loss_is_the_torch_twins(*pretrained, tmp_path)


@pytest.mark.slow
def test_localmim_swin_pretrains_in_the_engine(tmp_path):
    """LocalMIM's Swin (224 px only) on a small image folder, two epochs of three steps: the run's train and val
    losses are finite, its checkpoint converts to the official layout, and the torch twin's loss on the val images
    with the validation's noise (whose first row masks the batch) is the recorded ``val_loss``; LocalMIM's fine-tune
    Swin built by the engine with ``model.mim_finetune`` takes the checkpoint's encoder as ``run_finetune.py``."""
    root = write_tree(tmp_path / "data", {"train": {"a": 12, "b": 12}, "val": {"a": 8, "b": 8}}, size=(240, 240))
    kwargs = {**SWIN, "decoder_embed_dim": 32, "decoder_num_heads": 2, "hog_nbins": 9}
    cfg = _cfg("localmim_pretrain_digits.yaml", [
        "train.epochs=2", "data.batch_size=8", "data.val_batch_size=16", "data.workers=1", f"data.dir={root}",
        "data.image_size=224", "model.name=localmim_swin_base_patch4", f"model.kwargs={json.dumps(kwargs)}"])
    out = tmp_path / "run"
    train(cfg, out)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1]
    assert all(np.isfinite(r["train_loss"]) and np.isfinite(r["val_loss"]) for r in records)
    _val_loss_is_the_torch_twins(cfg, out, tmp_path)
    # LocalMIM's fine-tuning (README: run_finetune.py --model swin_base_patch4_win7 --finetune): every encoder tensor
    # of last.ckpt exactly; new are the head, the final norm and the shift masks the pretraining model has not
    ft = _cfg("mim_finetune_digits.yaml", ["model.name=swin_base_patch4_win7", f"model.kwargs={json.dumps(SWIN)}",
                                           "model.mim_finetune=true", f"model.pretrained={out / 'last.ckpt'}",
                                           "data.image_size=224"])
    notes: list[str] = []
    params = {p.name: p.asnumpy() for p in build_model(ft, notes).get_parameters()}
    source = read_checkpoint(out / "last.ckpt")
    new = {"head.weight", "head.bias", "norm.gamma", "norm.beta"} | {k for k in params if k.endswith("attn_mask")}
    assert len(new) == 4 + 3 and "layers.0.blocks.0.attn.relative_position_index" in params
    for k in set(params) - new:
        np.testing.assert_array_equal(params[k], source["encoder." + k], err_msg=k)
    masks = {k for k in new if k.endswith("attn_mask")}
    reported = set(notes[0].split("newly initialised: ")[1].split("; ")[0].split(", "))
    assert reported == {"head.weight", "head.bias", "norm.weight", "norm.bias"} | masks
    assert 0 < params["head.weight"].std() < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("pretrained", ["fastmim", "localmim"], indirect=True)
def test_pretraining_checkpoint_fine_tunes_through_load_pretrained(pretrained, tmp_path):
    """A fine-tune run's ``model.pretrained`` = the pretraining ``last.ckpt``: the engine's model gets every encoder
    tensor of the checkpoint exactly, upstream's missing set (head and fc_norm with global pooling) and a head drawn
    with std 2e-5; torch_ref's ``load_pretrained`` reads the same MindSpore file to the same encoder. A checkpoint of
    another width is a one-line error."""
    cfg, out = pretrained
    ft = _cfg("mim_finetune_digits.yaml", [f"model.kwargs={json.dumps(ENCODER)}", f"model.pretrained={out / 'last.ckpt'}"])
    notes: list[str] = []
    model = build_model(ft, notes)
    source = read_checkpoint(out / "last.ckpt")
    params = {p.name: p.asnumpy() for p in model.get_parameters()}
    shared = [k for k in params if k in source]
    assert len(shared) == len(params) - 4 and "blocks.7.mlp.fc2.weight" in shared
    for k in shared:
        np.testing.assert_array_equal(params[k], source[k], err_msg=k)
    assert "newly initialised: head.weight, head.bias, fc_norm.weight, fc_norm.bias" in notes[0]
    assert 0 < params["head.weight"].std() < 1e-4
    tm = torch_ref.create_model("vit_base_patch16", num_classes=10, **ENCODER)
    missing, unexpected = t_mim.load_pretrained(tm, out / "last.ckpt")
    assert sorted(missing) == ["fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight"]
    assert any(k.startswith("decoder") for k in unexpected)
    np.testing.assert_array_equal(tm.blocks[3].attn.qkv.weight.detach().numpy(), source["blocks.3.attn.qkv.weight"])
    wide = _cfg("mim_finetune_digits.yaml", [f"model.kwargs={json.dumps({**ENCODER, 'embed_dim': 48})}",
                                             f"model.pretrained={out / 'last.ckpt'}"])
    with pytest.raises(CheckpointError, match="has shape"):
        build_model(wide)


@pytest.mark.slow
@pytest.mark.parametrize("pretrained", ["fastmim_swin"], indirect=True)
def test_swin_pretraining_checkpoint_fine_tunes_a_window7_swin(pretrained):
    """FastMIM's Swin fine-tuning (README: ``main_finetune.py --model swin_base_patch4_window7_224 --finetune``) with
    ``model.mim_finetune``: the engine's window-7 Swin at 224 px takes every encoder weight of the window-4
    pretraining ``last.ckpt`` exactly (``encoder.`` stripped), its bias tables resampled by SimMIM's rule
    (``specs.swin.resize_bias_table``, checked bit for bit against the official function in tests/models/test_swin)
    and its own geometry buffers; upstream's missing set (head, fc_norm, the re-initialised buffers) and a head drawn
    with std 2e-5; torch_ref's ``load_pretrained`` reads the same MindSpore file to the same weights."""
    from ms_models import create_model
    from specs.swin import resize_bias_table
    _, out = pretrained
    ft = _cfg("mim_finetune_digits.yaml", ["model.name=swin_tiny_patch4_window7_224", f"model.kwargs={json.dumps(SWIN)}",
                                           "model.mim_finetune=true", f"model.pretrained={out / 'last.ckpt'}",
                                           "data.image_size=224"])
    notes: list[str] = []
    params = {p.name: p.asnumpy() for p in build_model(ft, notes).get_parameters()}
    fresh = {p.name: p.asnumpy() for p in create_model("swin_tiny_patch4_window7_224", num_classes=10,
                                                       **SWIN).get_parameters()}
    source = read_checkpoint(out / "last.ckpt")
    tables = [k for k in params if k.endswith("relative_position_bias_table")]
    geometry = [k for k in params if k.endswith(("relative_position_index", "attn_mask"))]
    new = {"head.weight", "head.bias", "fc_norm.gamma", "fc_norm.beta"}
    copied = set(params) - set(tables) - set(geometry) - new
    # an index per block, a mask in the shifted blocks of stages 0-2 (56, 28, 14 a side; stage 3 is one window)
    assert len(tables) == 8 and len(geometry) == 8 + 3 and "layers.2.downsample.reduction.weight" in copied
    for k in copied:
        np.testing.assert_array_equal(params[k], source["encoder." + k], err_msg=k)
    for k in tables:                          # 49 (stages 0-2, window 4) or 9 (stage 3, 2 x 2) rows -> 169 (window 7)
        np.testing.assert_array_equal(params[k], resize_bias_table(source["encoder." + k], 169), err_msg=k)
    for k in geometry:
        np.testing.assert_array_equal(params[k], fresh[k], err_msg=k)
    reported = set(notes[0].split("newly initialised: ")[1].split("; ")[0].split(", "))
    assert reported == {"head.weight", "head.bias", "fc_norm.weight", "fc_norm.bias"} | set(geometry)
    assert 0 < params["head.weight"].std() < 1e-4
    tm = torch_ref.create_model("swin_tiny_patch4_window7_224", num_classes=10, **SWIN)
    missing, unexpected = t_mim.load_pretrained(tm, out / "last.ckpt")
    assert set(missing) == {"head.weight", "head.bias", "fc_norm.weight", "fc_norm.bias"} | set(geometry)
    assert {"norm.weight", "norm.bias", "mask_token", "decoder_pred.weight"} <= set(unexpected)
    np.testing.assert_array_equal(tm.layers[3].blocks[1].attn.relative_position_bias_table.detach().numpy(),
                                  params["layers.3.blocks.1.attn.relative_position_bias_table"])
    np.testing.assert_array_equal(tm.layers[1].blocks[0].mlp.fc1.weight.detach().numpy(),
                                  source["encoder.layers.1.blocks.0.mlp.fc1.weight"])


def test_noise_shapes_follow_each_masking_rule():
    """FastMIM masks 16-px blocks (64 px: 4 x 4 = 16 values per image), LocalMIM patches (64 / 8 = 8: 64 values),
    FastMIM's Swin 32-px blocks (2 x 2 = 4)."""
    from ms_models import create_model
    assert noise_shape(create_model("fastmim_vit_base_patch16", **PRETRAIN["fastmim"][1]), 5) == (5, 16)
    small = {**PRETRAIN["localmim"][1], "patch_size": 8}
    assert noise_shape(create_model("localmim_vit_base_patch16", **small), 3) == (3, 64)
    assert noise_shape(create_model("fastmim_swin_base_patch4", **PRETRAIN["fastmim_swin"][1]), 2) == (2, 4)
    assert noise_shape(create_model("localmim_swin_base_patch4", **SWIN), 3) == (3, 49)     # 7 x 7 units of 32 px
    fastmim_p = create_model("fastmim_vit_base_patch16", **PRETRAIN["fastmim"][1])
    fastmim_p.set_input_size(128)                               # FastMIM-P: 8 x 8 blocks of 16 px
    assert noise_shape(fastmim_p, 5) == (5, 64)


@pytest.mark.parametrize("override, key", [("data.mixup=0.8", "data.mixup"), ("data.smoothing=0.1", "data.smoothing"),
                                           ("train.ema_decay=0.999", "train.ema_decay"),
                                           ("train.loss=bce", "train.loss"), ("mim.mask_ratio=1.0", "mim.mask_ratio"),
                                           ("data.image_size=32", "model.kwargs.img_size")])
def test_pretraining_config_refusals(override, key):
    """Settings that need labels or logits, a mask ratio outside (0, 1), and an image side other than the one the
    model's position table is built for are one-line errors naming the key."""
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as info:
        _cfg("fastmim_pretrain_digits.yaml", [override])
    assert "\n" not in str(info.value)


PHASES = ["mim.pt_size=[32,64]", "mim.pt_step=[0,1]", "mim.pt_bs=[128,96]", "mim.pt_accum=[1,3]"]


@pytest.mark.parametrize("overrides, key", [
    (PHASES[:1], "mim.pt_step"), (PHASES[:2] + ["mim.pt_bs=[128]", PHASES[3]], "mim.pt_bs"),
    (["mim.pt_step=[1,2]"] + PHASES[:1] + PHASES[2:], "mim.pt_step"),
    (["mim.pt_step=[0,6]"] + PHASES[:1] + PHASES[2:], "mim.pt_step"),        # the recipe has 6 epochs
    (PHASES + ["mim.pt_accum=[1,0]"], "mim.pt_accum"), (PHASES + ["train.accumulate=2"], "train.accumulate"),
    (PHASES + ["model.name=fastmim_swin_base_patch4", f"model.kwargs={json.dumps(PRETRAIN['fastmim_swin'][1])}"],
     "model.name")])
def test_fastmim_p_config_refusals(overrides, key):
    """FastMIM-P's phase keys: all four together, one entry each per phase, the first phase from epoch 0 and the
    others inside the run, positive batches and accumulations, no second accumulation setting, a FastMIM ViT."""
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as info:
        _cfg("fastmim_pretrain_digits.yaml", overrides)
    assert "\n" not in str(info.value)


@pytest.fixture(scope="module")
def phased(tmp_path_factory):
    """FastMIM-P on a small ViT (depth 2): epoch 0 at 32 px in batches of 128, epoch 1 at 64 px in batches of 96,
    3 per update; and the same run cut after epoch 0 (the checkpoint before the phase change) and resumed."""
    from ms_models.train import loop
    kwargs = {**PRETRAIN["fastmim"][1], "depth": 2}
    cfg = _cfg("fastmim_pretrain_digits.yaml", PHASES + [
        "train.epochs=2", "data.workers=1", f"model.kwargs={json.dumps(kwargs)}", "optimizer.lr_base_size=256",
        "schedule.min_lr=1e-5"])
    whole, cut = tmp_path_factory.mktemp("phased"), tmp_path_factory.mktemp("phased_cut")
    real_save = loop.save_train_checkpoint

    def save_and_copy(path, step, model, state, cfg):
        written = real_save(path, step, model, state, cfg)
        if state.epoch == 1:
            shutil.copytree(path.parent, cut, dirs_exist_ok=True)
        return written
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loop, "save_train_checkpoint", save_and_copy)
        result = train(cfg, whole)
    resumed = train(cfg, cut, resume="auto")
    return cfg, whole, result, cut, resumed


@pytest.mark.slow
def test_fastmim_p_phases_set_size_batch_accumulation_and_lr(phased):
    """Across the phase change: the log names each phase's size, batch and accumulation; the optimizer made
    11 + 4 updates (1438 // 128 batches one by one, then 1438 // 96 = 14 batches three by three, the last two
    dropped as MAE's engine does at an epoch's start); each update's lr is upstream's ``blr * eff_bs / 256``
    (min lr alike) at the fractional epoch ``e + j * accum / batches``, worked here from MAE's formula; the val
    loss (always at 64 px) falls across the change."""
    cfg, whole, result, *_ = phased
    samples = create_loader(cfg, "train", get_model_cfg(cfg.model.name)).num_samples
    log = (whole / "train.log").read_text()
    assert "phase 1/2, 32 px, batch 128 x 1 accumulated" in log and "phase 2/2, 64 px, batch 96 x 3 accumulated" in log
    expected = []
    for epoch, (bs, accum) in enumerate([(128, 1), (96, 3)]):
        base, low, batches = 1e-3 * bs * accum / 256, 1e-5 * bs * accum / 256, samples // bs
        for j in range(batches // accum):
            t = epoch + j * accum / batches
            expected.append(base * t if t < 1 else low + (base - low) * 0.5 * (1 + math.cos(math.pi * (t - 1))))
    arrays = read_checkpoint_raw(whole / "last.ckpt")
    assert len(expected) == 11 + 4 and int(arrays["train_state.global_step"][0]) == len(expected)
    np.testing.assert_allclose(arrays["train_state.learning_rate"], expected, rtol=1e-6)
    records = result.records
    assert all(math.isfinite(r["train_loss"]) for r in records)
    assert records[1]["val_loss"] < records[0]["val_loss"]


@pytest.mark.slow
def test_fastmim_p_resumes_across_the_phase_change(phased):
    """Resumed from the checkpoint of phase 1's last epoch, the run enters phase 2 where the uncut run did: the
    same updates (15) and lr per update, the same lr logged. Its losses are close but not equal: the masks are
    drawn in the graph, and a resumed process seeds them from (seed, rank, global step) instead of repeating the
    uncut process's stream (``loop.model_seed``): 0.5 %, about 10x the 0.05 % that gives here."""
    _, whole, result, cut, resumed = phased
    a, b = (read_checkpoint_raw(folder / "last.ckpt") for folder in (whole, cut))
    assert [r["epoch"] for r in resumed.records] == [0, 1]
    after = (cut / "train.log").read_text().split("resumed from")[-1]
    assert "at epoch 2 step 0/14" in after and "epoch 2: FastMIM-P phase 2/2, 64 px, batch 96 x 3" in after
    assert int(b["train_state.global_step"][0]) == int(a["train_state.global_step"][0]) == 15
    np.testing.assert_array_equal(b["train_state.learning_rate"], a["train_state.learning_rate"])
    ra, rb = result.records[1], resumed.records[1]
    assert rb["lr"] == ra["lr"]
    for key in ("train_loss", "val_loss"):
        assert rb[key] == pytest.approx(ra[key], rel=5e-3), key


def test_validating_a_pretraining_model_is_a_one_line_error(tmp_path, capsys):
    """``validate.py`` scores classifiers: a pretraining model is refused (exit 2) before any file is read."""
    from ms_models.train.cli import validate_main
    code = validate_main(["--model", "fastmim_vit_base_patch16", "--checkpoint", str(tmp_path / "absent.ckpt"),
                          "--data-dir", "builtin:digits"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "pretraining model" in err


def test_mim_demo_stops_with_one_line_on_a_bad_override(tmp_path, capsys):
    """``scripts/mim_demo.py`` runs ``scripts/train.py`` per step: a bad override stops it at the first run (exit 1,
    one line naming the recipe), with no ``summary.json``."""
    import runpy
    demo = runpy.run_path(str(ROOT / "scripts" / "mim_demo.py"))
    code = demo["main"](["--output", str(tmp_path), "--set", "train.epochs=0"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 1 and err.startswith("error: ") and "fastmim_pretrain_digits.yaml" in err
    assert not (tmp_path / "summary.json").exists()


def test_fine_tune_side_follows_the_models_img_size():
    """The fine-tune ViT's registry minimum is its 224-px default; built for 64 px (``model.kwargs.img_size``) it
    takes 64-px data, and any other side is refused."""
    assert _cfg("mim_finetune_digits.yaml", []).data.image_size == 64
    with pytest.raises(ConfigError, match=r"model\.kwargs\.img_size"):
        _cfg("mim_finetune_digits.yaml", ["data.image_size=96"])
