"""Train and eval transforms against their definitions (timm transforms_factory, auto_augment, random_erasing,
mixup): every expected value is computed here with numpy / Pillow, not by the code under test."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from PIL import Image, ImageOps

from ms_models.train import transforms as T
from ms_models.train.config import DataConfig
from specs import get_model_cfg
from specs.errors import DataError

MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
MODEL_CFG = dataclasses.replace(get_model_cfg("vanillanet_5"), mean=MEAN, std=STD, crop_pct=0.875,
                                interpolation="bicubic")


def random_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def normalise(hwc: np.ndarray, mean=MEAN, std=STD) -> np.ndarray:
    x = hwc.astype(np.float64) / 255.0
    return ((x - np.array(mean)) / np.array(std)).transpose(2, 0, 1)


# --- eval ---------------------------------------------------------------------------------------------------------

def test_eval_transform_equals_resize_crop_normalise():
    img = random_image(20, 30)                       # H 20, W 30
    ops = T.create_transforms(DataConfig(image_size=16), MODEL_CFG, is_training=False)
    out = T.apply_transforms(ops, img, seed=0)
    # floor(16 / 0.875) = 18: shorter side 20 -> 18, longer 30 -> int(18 * 30 / 20) = 27; centre crop 16:
    # top = round((18 - 16) / 2) = 1, left = round((27 - 16) / 2) = round(5.5) = 6
    resized = np.asarray(Image.fromarray(img).resize((27, 18), Image.Resampling.BICUBIC))
    expected = normalise(resized[1:17, 6:22])
    assert out.dtype == np.float32 and out.shape == (3, 16, 16)
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_eval_transform_data_cfg_overrides():
    img = random_image(24, 24, seed=1)
    cfg = DataConfig(image_size=12, crop_pct=0.5, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    out = T.apply_transforms(T.create_transforms(cfg, MODEL_CFG, is_training=False), img, seed=0)
    resized = np.asarray(Image.fromarray(img).resize((24, 24), Image.Resampling.BICUBIC))   # floor(12 / 0.5) = 24
    np.testing.assert_allclose(out, normalise(resized[6:18, 6:18], (0.5,) * 3, (0.5,) * 3), atol=1e-5)


# --- crops, flip, colour ------------------------------------------------------------------------------------------

def test_random_resized_crop_bounds_and_pixels():
    img = Image.fromarray(random_image(40, 60))
    op = T.RandomResizedCrop(16, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), interpolation="bilinear")
    for seed in range(200):
        top, left, h, w = op.get_params(60, 40, np.random.default_rng(seed))
        assert 0 <= top and top + h <= 40 and 0 <= left and left + w <= 60 and h > 0 and w > 0
        # rounding of w and h to integers moves area and aspect a little
        assert 0.08 * 2400 * 0.8 <= h * w <= 2400 and 3 / 4 * 0.8 <= w / h <= 4 / 3 * 1.25
        out = op.apply(img, np.random.default_rng(seed))
        expected = img.crop((left, top, left + w, top + h)).resize((16, 16), Image.Resampling.BILINEAR)
        assert out.size == (16, 16)
        np.testing.assert_array_equal(np.asarray(out), np.asarray(expected))


def test_random_resized_crop_fallback_is_clamped_centre_crop():
    # scale > 1 never fits: timm falls back to a centre crop clamped to the ratio range.
    op = T.RandomResizedCrop(8, scale=(1.5, 2.0), ratio=(3 / 4, 4 / 3))
    assert op.get_params(40, 10, np.random.default_rng(0)) == (0, 13, 10, 13)   # w = round(10 * 4/3), left (40-13)//2
    assert op.get_params(10, 40, np.random.default_rng(0)) == (13, 0, 13, 10)   # h = round(10 / (3/4))
    assert op.get_params(20, 20, np.random.default_rng(0)) == (0, 0, 20, 20)


def test_random_resized_crop_random_interpolation_uses_both():
    img = Image.fromarray(random_image(32, 32))
    op = T.RandomResizedCrop(16, interpolation="random")
    seen = set()
    for seed in range(20):
        top, left, h, w = op.get_params(32, 32, np.random.default_rng(seed))
        out = np.asarray(op.apply(img, np.random.default_rng(seed)))
        crop = img.crop((left, top, left + w, top + h))
        for name, mode in (("bilinear", Image.Resampling.BILINEAR), ("bicubic", Image.Resampling.BICUBIC)):
            if np.array_equal(out, np.asarray(crop.resize((16, 16), mode))):
                seen.add(name)
    assert seen == {"bilinear", "bicubic"}


def test_random_crop_with_padding_is_a_window_of_the_padded_image():
    img = random_image(8, 8)
    padded = np.pad(img, ((2, 2), (2, 2), (0, 0)))
    offsets = set()
    for seed in range(40):
        out = np.asarray(T.RandomCropPad(8, 2).apply(Image.fromarray(img), np.random.default_rng(seed)))
        match = [(t, l) for t in range(5) for l in range(5) if np.array_equal(out, padded[t:t + 8, l:l + 8])]
        assert match
        offsets.add(match[0])
    assert len(offsets) > 10


def test_random_crop_with_padding_fits_other_sizes_first():
    """An image smaller (6x10) or larger (20x12) than the crop is first centre-cropped to a square and resized
    (``ImageOps.fit``): the output is a window of that fitted image, padded, never an error."""
    for h, w in ((6, 10), (20, 12)):
        img = Image.fromarray(random_image(h, w))
        fitted = np.pad(np.asarray(ImageOps.fit(img, (8, 8), Image.Resampling.BILINEAR)), ((2, 2), (2, 2), (0, 0)))
        out = np.asarray(T.RandomCropPad(8, 2).apply(img, np.random.default_rng(3)))
        assert out.shape == (8, 8, 3)
        assert any(np.array_equal(out, fitted[t:t + 8, l:l + 8]) for t in range(5) for l in range(5))


def test_train_resize_is_cans_resize_and_crop():
    """``data.train_resize``: a square bilinear resize to r x r, then (train) a uniformly placed image_size window of
    it or (eval) its centre window (CAN's ``resize_and_crop``)."""
    img = random_image(20, 30, seed=2)
    cfg = DataConfig(image_size=12, train_resize=16, hflip=0.0)
    square = np.asarray(Image.fromarray(img).resize((16, 16), Image.Resampling.BILINEAR))
    ev = T.apply_transforms(T.create_transforms(cfg, MODEL_CFG, is_training=False), img, seed=0)
    np.testing.assert_allclose(ev, normalise(square[2:14, 2:14]), atol=1e-5)
    offsets = set()
    for seed in range(30):
        out = T.apply_transforms(T.create_transforms(cfg, MODEL_CFG, is_training=True), img, seed=seed)
        match = [(t, l) for t in range(5) for l in range(5)
                 if np.allclose(out, normalise(square[t:t + 12, l:l + 12]), atol=1e-5)]
        assert match, seed
        offsets.add(match[0])
    assert len(offsets) > 8


def test_hflip_probability():
    img = Image.fromarray(random_image(4, 6))
    flipped = np.asarray(T.RandomHorizontalFlip(1.0).apply(img, np.random.default_rng(0)))
    np.testing.assert_array_equal(flipped, np.asarray(img)[:, ::-1])
    assert np.array_equal(np.asarray(T.RandomHorizontalFlip(0.0).apply(img, np.random.default_rng(0))), img)
    count = sum(not np.array_equal(np.asarray(T.RandomHorizontalFlip(0.5).apply(img, np.random.default_rng(s))),
                                   np.asarray(img)) for s in range(400))
    assert 160 < count < 240


def test_color_jitter_brightness_factor_range():
    img = Image.fromarray(np.full((4, 4, 3), 100, np.uint8))
    values = [np.asarray(T.ColorJitter(0.4, 0, 0).apply(img, np.random.default_rng(s)))[0, 0, 0] for s in range(300)]
    # brightness factor uniform in [0.6, 1.4]: 100 * f
    assert 60 <= min(values) < 65 and 135 < max(values) <= 140
    assert abs(np.mean(values) - 100) < 4


# --- AutoAugment / RandAugment ------------------------------------------------------------------------------------

def test_rand_augment_string_parsing():
    ra = T.auto_augment_transform("rand-m9-mstd0.5-inc1", 224, (0.485, 0.456, 0.406), "bicubic")
    assert isinstance(ra, T.RandAugment) and ra.num_layers == 2 and ra.choice_weights is None
    assert [op.name for op in ra.ops] == ["AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing",
                                          "SolarizeIncreasing", "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing",
                                          "BrightnessIncreasing", "SharpnessIncreasing", "ShearX", "ShearY",
                                          "TranslateXRel", "TranslateYRel"]
    op = ra.ops[0]
    assert (op.prob, op.magnitude, op.mstd, op.fill) == (0.5, 9, 0.5, (124, 116, 104))
    assert op.resample == Image.Resampling.BICUBIC and op.hparams["translate_const"] == 100
    plain = T.auto_augment_transform("rand-m7-n3-p0.3-mstd200", 32, (0.5,) * 3, "random")
    assert plain.num_layers == 3 and plain.ops[4].name == "Posterize" and plain.ops[0].prob == 0.3
    assert plain.ops[0].mstd == float("inf") and plain.ops[0].resample == T._RANDOM_INTERP
    weighted = T.auto_augment_transform("rand-m9-tweights", 32, (0.5,) * 3, "bilinear")
    assert weighted.choice_weights is not None and abs(weighted.choice_weights.sum() - 1) < 1e-12
    aa = T.auto_augment_transform("original-mstd0.5", 32, (0.5,) * 3, "bilinear")
    assert len(aa.policy) == 25 and [(o.name, o.prob, o.magnitude) for o in aa.policy[0]] == [
        ("PosterizeOriginal", 0.4, 8), ("Rotate", 0.6, 9)]
    assert T.auto_augment_transform("originalr", 32, (0.5,) * 3, "bilinear").policy[0][0].name == "PosterizeIncreasing"
    assert isinstance(T.auto_augment_transform("augmix-m5-w4-d2", 32, (0.5,) * 3, "bilinear"), T.AugMix)
    for bad in ("rand-x3", "nope", "rand-tnope", "augmix-q1"):
        with pytest.raises(DataError):
            T.auto_augment_transform(bad, 32, (0.5,) * 3, "bilinear")


def test_level_to_argument_mapping():
    rng = np.random.default_rng(0)
    # timm LEVEL_TO_ARG at magnitude 9 (the non-negated ones)
    assert T._LEVEL["Posterize"](9, rng, {}) == 3 and T._LEVEL["PosterizeIncreasing"](9, rng, {}) == 1
    assert T._LEVEL["PosterizeOriginal"](9, rng, {}) == 7
    assert T._LEVEL["Solarize"](9, rng, {}) == 230 and T._LEVEL["SolarizeIncreasing"](9, rng, {}) == 26
    assert T._LEVEL["SolarizeAdd"](9, rng, {}) == 99
    assert T._LEVEL["Color"](9, rng, {}) == pytest.approx(1.72)
    assert {round(abs(T._LEVEL["Rotate"](9, np.random.default_rng(s), {})), 6) for s in range(10)} == {27.0}
    signs = {np.sign(T._LEVEL["ShearX"](10, np.random.default_rng(s), {})) for s in range(20)}
    assert signs == {-1.0, 1.0}


def test_augment_op_probability_and_magnitude_noise():
    img = Image.fromarray(np.full((2, 2, 3), 100, np.uint8))
    inv = T.AugmentOp("Invert", prob=0.5, magnitude=0, hparams={})
    applied = [np.asarray(inv.apply(img, np.random.default_rng(s)))[0, 0, 0] == 155 for s in range(400)]
    assert 0.42 < np.mean(applied) < 0.58
    # Brightness at magnitude m gives factor m / 10 * 1.8 + 0.1: recover m from the output pixel (100 * factor)
    def magnitudes(hp):
        op = T.AugmentOp("Brightness", prob=1.0, magnitude=5, hparams=hp)
        px = np.array([np.asarray(op.apply(img, np.random.default_rng(s)))[0, 0, 0] for s in range(400)], float)
        return (px / 100 - 0.1) / 1.8 * 10
    fixed = magnitudes({})
    assert np.allclose(fixed, 5, atol=0.03)
    noisy = magnitudes({"magnitude_std": 1.0})
    assert abs(noisy.mean() - 5) < 0.15 and 0.85 < noisy.std() < 1.15
    uniform = magnitudes({"magnitude_std": float("inf")})
    assert uniform.min() < 0.3 and uniform.max() > 4.7 and abs(uniform.std() - 5 / math.sqrt(12)) < 0.15


def test_posterize_and_solarize_ops():
    img = Image.fromarray(random_image(6, 6))
    a = np.asarray(img)
    np.testing.assert_array_equal(np.asarray(T._OPS["Posterize"](img, 3)), a & 0b11100000)
    np.testing.assert_array_equal(np.asarray(T._OPS["Posterize"](img, 0)), np.zeros_like(a))
    np.testing.assert_array_equal(np.asarray(T._OPS["Solarize"](img, 128)), np.where(a < 128, a, 255 - a))
    np.testing.assert_array_equal(np.asarray(T._OPS["SolarizeAdd"](img, 50)),
                                  np.where(a < 128, np.minimum(a.astype(int) + 50, 255), a))


def test_train_transforms_follow_timm_order():
    cfg = DataConfig(image_size=16, auto_augment="rand-m9", color_jitter=0.4, reprob=0.25)
    names = [type(op).__name__ for op in T.create_transforms(cfg, MODEL_CFG, is_training=True)]
    # colour jitter is off under an auto-augment policy (timm transforms_imagenet_train)
    assert names == ["ToPIL", "RandomResizedCrop", "RandomHorizontalFlip", "RandAugment", "ToTensor", "Normalize",
                     "RandomErasing"]
    cfg = DataConfig(image_size=16, random_crop_padding=4, color_jitter=0.4, hflip=0.0)
    names = [type(op).__name__ for op in T.create_transforms(cfg, MODEL_CFG, is_training=True)]
    assert names == ["ToPIL", "RandomCropPad", "ColorJitter", "ToTensor", "Normalize"]
    out = T.apply_transforms(T.create_transforms(DataConfig(image_size=16), MODEL_CFG, True), random_image(30, 20), 3)
    assert out.shape == (3, 16, 16) and out.dtype == np.float32


# --- random erasing -----------------------------------------------------------------------------------------------

def changed_box(before: np.ndarray, after: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.flatnonzero((before != after).any((0, 2))), np.flatnonzero((before != after).any((0, 1)))
    return rows[0], cols[0], rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1


@pytest.mark.parametrize("mode", ["const", "rand", "pixel"])
def test_random_erasing_changes_one_box_only(mode):
    x = np.random.default_rng(0).normal(size=(3, 40, 50)).astype(np.float32) + 10   # no N(0,1) fill equals it
    op = T.RandomErasing(probability=1.0, mode=mode)
    for seed in range(30):
        out = op.apply(x, np.random.default_rng(seed))
        top, left, h, w = changed_box(x, out)
        inside = np.zeros(x.shape[1:], bool)
        inside[top:top + h, left:left + w] = True
        np.testing.assert_array_equal(out[:, ~inside], x[:, ~inside])            # the rest is untouched
        assert (out[:, inside] != x[:, inside]).all()                             # the box is wholly filled
        assert 0.02 * 2000 * 0.7 <= h * w <= 2000 / 3 * 1.3 and 0.3 * 0.7 <= h / w <= 1 / 0.3 * 1.3
        box = out[:, top:top + h, left:left + w]
        if mode == "const":
            assert (box == 0).all()
        elif mode == "rand":
            assert (box == box[:, :1, :1]).all()                                 # one colour per box
        else:
            assert box.std() > 0.5 and len(np.unique(box)) > h * w
    assert x is not op.apply(x, np.random.default_rng(0))


def test_random_erasing_probability_and_count():
    x = np.ones((3, 30, 30), np.float32)
    assert np.array_equal(T.RandomErasing(probability=0.0).apply(x, np.random.default_rng(0)), x)
    hits = sum(not np.array_equal(T.RandomErasing(probability=0.25).apply(x, np.random.default_rng(s)), x)
               for s in range(400))
    assert 70 < hits < 130
    counts = {len(T.RandomErasing(probability=1.0, max_count=3).boxes(x.shape, np.random.default_rng(s)))
              for s in range(60)}
    assert counts == {1, 2, 3}


# --- Mixup / CutMix -------------------------------------------------------------------------------------------------

def one_hots(labels, num_classes, smoothing):
    off = smoothing / num_classes
    y = np.full((len(labels), num_classes), off)
    for i, c in enumerate(labels):
        y[i, c] = 1 - smoothing + off
    return y


def test_mixup_target_is_lambda_weighted_smoothed_one_hots():
    labels = np.array([0, 2, 1, 3])
    t = T.mixup_target(labels, 4, 0.7, smoothing=0.1)
    # row i mixes label i (0.7) with label B-1-i (0.3); on = 1 - 0.1 + 0.025, off = 0.025
    expected = np.array([[0.7 * 0.925 + 0.025 * 0.3, 0.025, 0.025, 0.3 * 0.925 + 0.7 * 0.025],
                         [0.025, 0.3 * 0.925 + 0.7 * 0.025, 0.7 * 0.925 + 0.3 * 0.025, 0.025],
                         [0.025, 0.7 * 0.925 + 0.3 * 0.025, 0.3 * 0.925 + 0.7 * 0.025, 0.025],
                         [0.3 * 0.925 + 0.7 * 0.025, 0.025, 0.025, 0.7 * 0.925 + 0.3 * 0.025]])
    np.testing.assert_allclose(t, expected, atol=1e-7)
    np.testing.assert_allclose(t.sum(1), 1, atol=1e-6)


def batch(n=8, c=3, h=12, w=10, classes=5, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, c, h, w)).astype(np.float32), rng.permutation(np.arange(n) % classes)


def lam_from_target(target_row, label, label_rev, num_classes, smoothing):
    off = smoothing / num_classes
    return (target_row[label] - off) / (1 - smoothing) if label != label_rev else None


def test_mixup_batch_mode():
    x, y = batch(classes=8)
    mix = T.Mixup(mixup_alpha=1.0, cutmix_alpha=0.0, label_smoothing=0.1, num_classes=8, seed=0)
    for _ in range(5):
        out, t = mix(x, y)
        lam = lam_from_target(t[0], y[0], y[-1], 8, 0.1)
        np.testing.assert_allclose(out, lam * x + (1 - lam) * x[::-1], atol=1e-5)
        np.testing.assert_allclose(t, lam * one_hots(y, 8, 0.1) + (1 - lam) * one_hots(y[::-1], 8, 0.1), atol=1e-6)
        np.testing.assert_allclose(t.sum(1), 1, atol=1e-6)
    assert not np.shares_memory(out, x)


def test_cutmix_lambda_equals_pasted_area():
    x, y = batch(classes=8, h=16, w=20)
    mix = T.Mixup(mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.0, num_classes=8, seed=1)
    areas = []
    for _ in range(20):
        out, t = mix(x, y)
        pasted = (out != x).any((0, 1))
        if not pasted.any():
            np.testing.assert_allclose(t, one_hots(y, 8, 0), atol=1e-6)
            continue
        rows, cols = np.flatnonzero(pasted.any(1)), np.flatnonzero(pasted.any(0))
        r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        np.testing.assert_array_equal(out[:, :, r0:r1, c0:c1], x[::-1, :, r0:r1, c0:c1])
        lam = 1 - (r1 - r0) * (c1 - c0) / (16 * 20)
        areas.append(lam)
        np.testing.assert_allclose(t, lam * one_hots(y, 8, 0) + (1 - lam) * one_hots(y[::-1], 8, 0), atol=1e-6)
    assert len(areas) > 10


def test_cutmix_minmax_box_sides():
    x, y = batch(h=20, w=20)
    mix = T.Mixup(mixup_alpha=0.0, cutmix_alpha=0.0, cutmix_minmax=(0.4, 0.6), label_smoothing=0.0, num_classes=5,
                  seed=0)
    for _ in range(10):
        out, _ = mix(x, y)
        pasted = (out != x).any((0, 1))
        h, w = np.flatnonzero(pasted.any(1)), np.flatnonzero(pasted.any(0))
        assert 8 <= len(h) < 12 and 8 <= len(w) < 12                              # int(20 * 0.4) .. int(20 * 0.6)


def test_mixup_switch_prob_and_prob():
    x, y = batch(classes=8)
    always_cut = T.Mixup(mixup_alpha=1.0, cutmix_alpha=1.0, switch_prob=1.0, label_smoothing=0, num_classes=8, seed=0)
    for _ in range(5):
        out, _ = always_cut(x, y)
        same = (out == x) | (out == x[::-1])
        assert same.all()                                                         # pasted, never blended
    never = T.Mixup(mixup_alpha=1.0, prob=0.0, label_smoothing=0.2, num_classes=8, seed=0)
    out, t = never(x, y)
    np.testing.assert_array_equal(out, x)
    np.testing.assert_allclose(t, one_hots(y, 8, 0.2), atol=1e-7)


@pytest.mark.parametrize("mode", ["elem", "pair"])
def test_mixup_elem_and_pair_modes(mode):
    x, y = batch(classes=8)
    mix = T.Mixup(mixup_alpha=1.0, mode=mode, label_smoothing=0.0, num_classes=8, seed=3)
    out, t = mix(x, y)
    lams = np.array([lam_from_target(t[i], y[i], y[-1 - i], 8, 0.0) for i in range(8)])
    for i in range(8):
        np.testing.assert_allclose(out[i], lams[i] * x[i] + (1 - lams[i]) * x[-1 - i], atol=1e-5)
    if mode == "pair":
        np.testing.assert_allclose(lams, lams[::-1], atol=1e-6)
    else:
        assert len(np.unique(np.round(lams, 6))) == 8
    np.testing.assert_allclose(t.sum(1), 1, atol=1e-6)


def test_mixup_bad_arguments():
    with pytest.raises(DataError):
        T.Mixup(mixup_alpha=1.0, num_classes=4)(*batch(n=5))
    with pytest.raises(DataError):
        T.Mixup(mixup_alpha=0.0, cutmix_alpha=0.0)
    with pytest.raises(DataError):
        T.Mixup(mode="nope")
