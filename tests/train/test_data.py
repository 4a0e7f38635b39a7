"""Data pipelines (issue 12 section 3): built-in data sets, ImageFolder, every bad-input case, determinism per
(seed, epoch, shard) with several workers, sharding as DistributedSampler / RepeatAugSampler."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image

import builtin_data
import mindspore.dataset as ds
from ms_models.train.config import Config, DataConfig, ModelConfig
from ms_models.train.data import create_loader, create_rows_loader, epoch_order
from ms_models.train.transforms import apply_transforms, create_transforms
from specs import get_model_cfg
from specs.errors import DataError

from helpers import write_tree

MODEL_CFG = dataclasses.replace(get_model_cfg("adder_resnet20"), mean=(0.5,) * 3, std=(0.25,) * 3, crop_pct=1.0)


def make_cfg(num_classes: int = 10, seed: int = 0, **data) -> Config:
    data.setdefault("image_size", 16)
    data.setdefault("workers", 1)
    return Config(model=ModelConfig(name="adder_resnet20", num_classes=num_classes), data=DataConfig(**data),
                  seed=seed)


def one_line_error(fn, *words: str) -> str:
    with pytest.raises(DataError) as info:
        fn()
    msg = str(info.value)
    assert "\n" not in msg and all(w in msg for w in words), msg
    return msg


# --- built-in data sets -------------------------------------------------------------------------------------------

def test_builtin_digits_images():
    from sklearn.datasets import load_digits
    images, labels = builtin_data.digits_images(16)
    ref = load_digits()
    assert images.shape == (1797, 16, 16, 3) and images.dtype == np.uint8 and labels.tolist() == ref.target.tolist()
    expected = np.round(ref.images[5] * 255 / 16).repeat(2, 0).repeat(2, 1)       # 2x pixel repetition
    np.testing.assert_array_equal(images[5, :, :, 1], expected)
    assert (images[..., 0] == images[..., 2]).all() and images.max() == 255 and images.min() == 0
    assert builtin_data.digits_images(12)[0].shape == (1797, 12, 12, 3)              # not a multiple of 8


def test_builtin_shapes_images():
    images, labels = builtin_data.shapes_images()
    assert images.shape == (3000, 64, 64, 3) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [300] * 10 and len(builtin_data.SHAPE_CLASSES) == 10
    assert images.min() == 0 and images.max() == 255
    # variety: colours and backgrounds differ within a class; images are not repeated
    per_class_colour_std = [images[labels == c].reshape(300, -1, 3).mean(1).std(0).mean() for c in range(10)]
    assert min(per_class_colour_std) > 20
    assert len({images[i].tobytes() for i in range(0, 3000, 7)}) == len(range(0, 3000, 7))
    small = builtin_data.shapes_images.__wrapped__(3, seed=0)
    assert np.array_equal(small[0], builtin_data.shapes_images.__wrapped__(3, seed=0)[0])
    assert not np.array_equal(small[0], builtin_data.shapes_images.__wrapped__(3, seed=1)[0])


def test_builtin_digits_shifted_is_the_digits_rendered_otherwise():
    """The SFDA-DE demo's target domain: the same 1797 labels, seeded, coloured (channels differ), and far from the
    source rendering; its ink follows the digit (brighter where the source digit is)."""
    images, labels = builtin_data.digits_shifted_images(16)
    source, source_labels = builtin_data.digits_images(16)
    assert images.shape == (1797, 16, 16, 3) and images.dtype == np.uint8 and labels.tolist() == source_labels.tolist()
    assert np.array_equal(images, builtin_data.digits_shifted_images.__wrapped__(16)[0])      # not the cached one
    assert not np.array_equal(images, builtin_data.digits_shifted_images.__wrapped__(16, seed=1)[0])
    assert (images[..., 0] != images[..., 2]).mean() > 0.5
    grey, ink = source.astype(np.float64).mean(-1), images.astype(np.float64).mean(-1)
    corr = [np.corrcoef(grey[i].ravel(), ink[i].ravel())[0, 1] for i in range(50)]
    assert 0.2 < np.median(corr) < 0.95


def test_rows_loader_yields_the_given_rows_in_batches_of_the_given_sizes():
    """``create_rows_loader``: rows in the given order, the given batch sizes (a last short one kept), the eval
    transform equal to the val loader's for the same images, and bad sizes or rows as one-line errors."""
    cfg = make_cfg(dir="builtin:digits")
    rows = np.array([5, 0, 7, 3, 9, 2, 11])
    loader = create_rows_loader(cfg, "val", MODEL_CFG, rows, np.zeros(len(rows), np.uint64), [3, 3, 1],
                                training=False)
    batches = list(loader)
    assert [len(b[0]) for b in batches] == [3, 3, 1] and loader.steps == 3
    val = list(create_loader(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, batch_size=12)), "val",
                             MODEL_CFG))
    images, labels = np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])
    np.testing.assert_array_equal(images, val[0][0][rows])
    np.testing.assert_array_equal(labels, val[0][1][rows])
    one_line_error(lambda: create_rows_loader(cfg, "val", MODEL_CFG, rows, np.zeros(7, np.uint64), [3, 3]),
                   "batch sizes", "7 rows")
    one_line_error(lambda: create_rows_loader(cfg, "val", MODEL_CFG, np.array([0, 4000]), np.zeros(2, np.uint64),
                                              [2]), "row indices")


def test_stratified_split():
    labels = np.repeat(np.arange(4), [10, 20, 30, 5])
    train, val = builtin_data.stratified_split(labels, 0.2, seed=0)
    assert np.intersect1d(train, val).size == 0 and sorted(np.r_[train, val]) == list(range(65))
    assert np.bincount(labels[val]).tolist() == [2, 4, 6, 1]
    assert np.array_equal(val, builtin_data.stratified_split(labels, 0.2, seed=0)[1])


def test_builtin_val_loader_equals_eval_transform():
    cfg = make_cfg(dir="builtin:digits", batch_size=64, val_batch_size=100)
    loader = create_loader(cfg, "val", MODEL_CFG)
    images, labels = builtin_data.digits_images(16)
    _, val = builtin_data.stratified_split(labels, 0.2, seed=0)
    assert loader.num_samples == len(val) == 359 and loader.steps == 4 and loader.classes == list("0123456789")
    batches = list(loader)
    assert [len(b[1]) for b in batches] == [100, 100, 100, 59]
    got_x = np.concatenate([b[0] for b in batches])
    got_y = np.concatenate([b[1] for b in batches])
    assert got_y.dtype == np.int32 and got_y.tolist() == labels[val].tolist()
    # crop_pct 1 at the stored size: the eval transform is ToTensor + Normalize
    expected = (images[val].astype(np.float64) / 255 - 0.5) / 0.25
    np.testing.assert_allclose(got_x, expected.transpose(0, 3, 1, 2), atol=1e-5)


def test_builtin_shapes_loader_resizes_to_image_size():
    cfg = make_cfg(dir="builtin:shapes", image_size=32, batch_size=50)
    loader = create_loader(cfg, "val", MODEL_CFG)
    x, y = next(iter(loader))
    assert x.shape == (50, 3, 32, 32) and x.dtype == np.float32 and loader.num_samples == 600
    images, labels = builtin_data.shapes_images()
    _, val = builtin_data.stratified_split(labels, 0.2, seed=0)
    first = np.asarray(Image.fromarray(images[val[0]]).resize((32, 32), Image.Resampling.BILINEAR))
    np.testing.assert_allclose(x[0], (first.transpose(2, 0, 1) / 255 - 0.5) / 0.25, atol=1e-5)
    assert (-2.0 <= x).all() and (x <= 2.0).all()


# --- order, sharding, determinism ---------------------------------------------------------------------------------

def test_epoch_order_sharding_is_distributed_sampler():
    full, _ = epoch_order(12, seed=3, epoch=1, training=True)
    assert sorted(full) == list(range(12))
    shards = [epoch_order(12, seed=3, epoch=1, training=True, num_shards=3, shard_id=r)[0] for r in range(3)]
    for r in range(3):
        assert shards[r].tolist() == full[r::3].tolist()                      # rank r takes r, r + 3, ...
    assert sorted(np.concatenate(shards)) == list(range(12))                  # disjoint, union = the epoch
    # 10 images on 4 shards: ceil(10 / 4) = 3 each, padded with the permutation's first 2
    padded = [epoch_order(10, seed=3, epoch=1, training=True, num_shards=4, shard_id=r)[0] for r in range(4)]
    perm = epoch_order(10, seed=3, epoch=1, training=True)[0]
    extended = np.r_[perm, perm[:2]]
    assert [p.tolist() for p in padded] == [extended[r::4].tolist() for r in range(4)]
    other = epoch_order(12, seed=3, epoch=2, training=True)[0]
    assert sorted(other) == list(range(12)) and other.tolist() != full.tolist()
    val = [epoch_order(10, seed=3, epoch=5, training=False, num_shards=3, shard_id=r)[0] for r in range(3)]
    assert [v.tolist() for v in val] == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    with pytest.raises(DataError):
        epoch_order(10, seed=0, epoch=0, training=True, num_shards=2, shard_id=2)


def test_epoch_order_repeated_augmentation_is_ra_sampler():
    n, shards = 600, 2
    perm = epoch_order(n, seed=0, epoch=0, training=True)[0]
    repeated = np.repeat(perm, 3)                                              # [a, a, a, b, b, b, ...]
    parts = [epoch_order(n, seed=0, epoch=0, training=True, repeated_aug=True, num_shards=shards, shard_id=r)
             for r in range(shards)]
    selected = n // 256 * 256 // shards                                        # 256 per shard
    for r, (idx, seeds) in enumerate(parts):
        assert idx.tolist() == repeated[r::shards][:selected].tolist()
        assert len(set(seeds.tolist())) == selected                            # every copy augmented differently
    small = epoch_order(10, seed=0, epoch=0, training=True, repeated_aug=True)[0]
    assert len(small) == 10 and small.tolist() == np.repeat(epoch_order(10, seed=0, epoch=0, training=True)[0],
                                                            3)[:10].tolist()


AUG = dict(auto_augment="rand-m9-mstd0.5-inc1", reprob=0.25, remode="pixel", mixup=0.8, cutmix=1.0, smoothing=0.1,
           interpolation="random")


def test_train_loader_is_deterministic_across_workers_and_leaves_global_seed():
    seed_before = ds.config.get_seed()
    cfg = make_cfg(dir="builtin:digits", batch_size=100, seed=7, **AUG)
    runs = {}
    for workers in (1, 2):
        cfg.data.workers = workers
        loader = create_loader(cfg, "train", MODEL_CFG, epoch=3)
        runs[workers] = list(loader)
    assert loader.steps == 1438 // 100 == len(runs[2])
    for (x1, t1), (x2, t2) in zip(runs[1], runs[2]):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(t1, t2)
    x, t = runs[2][0]
    assert x.shape == (100, 3, 16, 16) and t.shape == (100, 10) and t.dtype == np.float32
    np.testing.assert_allclose(t.sum(1), 1, atol=1e-5)
    assert t.min() >= 0.01 - 1e-6                                                # smoothing 0.1 / 10 classes
    cfg.data.workers = 1
    other = create_loader(cfg, "train", MODEL_CFG, epoch=4)
    assert other.indices.tolist() != loader.indices.tolist()
    assert not np.array_equal(next(iter(other))[0], x)
    assert ds.config.get_seed() == seed_before


def test_train_loader_shards_partition_the_epoch():
    cfg = make_cfg(dir="builtin:digits", batch_size=16)
    shards = [create_loader(cfg, "train", MODEL_CFG, epoch=1, num_shards=2, shard_id=r) for r in range(2)]
    assert [s.num_samples for s in shards] == [719, 719] and shards[0].steps == 719 // 16
    assert np.intersect1d(shards[0].indices, shards[1].indices).size == 0
    assert sorted(np.r_[shards[0].indices, shards[1].indices]) == list(range(1438))
    x, y = next(iter(shards[1]))
    _, labels = builtin_data.digits_images(16)
    train, _ = builtin_data.stratified_split(labels, 0.2, seed=0)
    assert y.dtype == np.int32 and y.tolist() == labels[train][shards[1].indices[:16]].tolist()


def test_plain_train_labels_and_drop_remainder():
    cfg = make_cfg(dir="builtin:digits", batch_size=500, hflip=0.0, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    loader = create_loader(cfg, "train", MODEL_CFG)
    batches = list(loader)
    assert loader.steps == 2 == len(batches) and all(len(b[1]) == 500 for b in batches)
    # full-image crop at the stored size, no flip: the train transform is the identity + normalise
    images, labels = builtin_data.digits_images(16)
    train, _ = builtin_data.stratified_split(labels, 0.2, seed=0)
    first = images[train][loader.indices[0]]
    np.testing.assert_allclose(batches[0][0][0], (first.transpose(2, 0, 1) / 255 - 0.5) / 0.25, atol=1e-5)


# --- ImageFolder and bad input --------------------------------------------------------------------------------------

def test_image_folder_loader(tmp_path):
    root = write_tree(tmp_path, {"train": {"cat": 3, "ant": 5}, "val": {"cat": 2, "ant": 1}})
    (root / "train" / "ant" / "notes.txt").write_text("not an image")
    write_tree(tmp_path, {"train": {"bee": 2}}, fmt="JPEG")
    cfg = make_cfg(num_classes=3, dir=str(root), batch_size=4, val_batch_size=2)
    train = create_loader(cfg, "train", MODEL_CFG)
    assert train.classes == ["ant", "bee", "cat"] and train.num_samples == 10 and train.steps == 2
    x, y = next(iter(train))
    assert x.shape == (4, 3, 16, 16) and set(y.tolist()) <= {0, 1, 2}
    val = create_loader(cfg, "val", MODEL_CFG)
    batches = list(val)
    assert val.classes == ["ant", "bee", "cat"] and val.num_samples == 3
    assert np.concatenate([b[1] for b in batches]).tolist() == [0, 2, 2]       # val has no 'bee': labels from train
    img = np.asarray(Image.open(root / "val" / "ant" / "0.png").convert("RGB"))
    ops = create_transforms(cfg.data, MODEL_CFG, is_training=False)
    np.testing.assert_allclose(batches[0][0][0], apply_transforms(ops, img, 0), atol=1e-6)


def corrupt_tree(tmp_path):
    root = write_tree(tmp_path, {"train": {"a": 4, "b": 4}, "val": {"a": 1, "b": 1}})
    bad = root / "train" / "b" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    good = root / "train" / "a" / "truncated.png"
    data = (root / "train" / "a" / "0.png").read_bytes()
    good.write_bytes(data[:len(data) // 2])
    return root, {str(bad), str(good)}


@pytest.mark.parametrize("workers", [1, 2])
def test_corrupt_image_error_names_the_file(tmp_path, workers):
    root, bad = corrupt_tree(tmp_path)
    cfg = make_cfg(num_classes=2, dir=str(root), batch_size=2, workers=workers)
    loader = create_loader(cfg, "train", MODEL_CFG)
    msg = one_line_error(lambda: list(loader), "cannot read image")
    assert any(path in msg for path in bad), msg


def test_skip_bad_images_counts_them(tmp_path):
    root, bad = corrupt_tree(tmp_path)
    cfg = make_cfg(num_classes=2, dir=str(root), batch_size=2, skip_bad_images=True, workers=2)
    loader = create_loader(cfg, "train", MODEL_CFG)
    assert loader.num_samples == 10 and loader.steps == 5
    batches = list(loader)
    assert sum(len(b[1]) for b in batches) == 8 and loader.bad_images() == 2
    assert set(loader.bad_images.files) == bad


@pytest.mark.parametrize("case", ["empty_class", "unknown_val_class", "num_classes", "missing_root", "missing_val",
                                  "no_dir", "unknown_builtin", "too_few_images", "odd_mixup_batch", "bad_split"])
def test_bad_data_is_a_one_line_error(tmp_path, case):
    root = write_tree(tmp_path, {"train": {"a": 2, "b": 2}, "val": {"a": 1, "b": 1}})
    cfg = make_cfg(num_classes=2, dir=str(root), batch_size=2)
    split, words = "train", ()
    if case == "empty_class":
        (root / "train" / "c").mkdir()
        cfg.model.num_classes, words = 3, ("train/c", "no images")
    elif case == "unknown_val_class":
        write_tree(tmp_path, {"val": {"zebra": 1}})
        split, words = "val", ("classes unknown to train", "zebra")
    elif case == "num_classes":
        cfg.model.num_classes, words = 5, ("model.num_classes is 5", "2 classes")
    elif case == "missing_root":
        cfg.data.dir, words = str(tmp_path / "nowhere"), ("nowhere", "not a folder")
    elif case == "missing_val":
        import shutil
        shutil.rmtree(root / "val")
        split, words = "val", ("val", "not found")
    elif case == "no_dir":
        cfg.data.dir, words = None, ("data.dir is not set",)
    elif case == "unknown_builtin":
        cfg.data.dir, words = "builtin:cifar", ("builtin:cifar", "builtin:digits")
    elif case == "too_few_images":
        cfg.data.batch_size, words = 8, ("4 images per shard", "data.batch_size")
    elif case == "odd_mixup_batch":
        cfg.data.batch_size, cfg.data.mixup, words = 3, 0.8, ("even data.batch_size",)
    else:
        split, words = "test", ("split",)
    one_line_error(lambda: create_loader(cfg, split, MODEL_CFG), *words)
