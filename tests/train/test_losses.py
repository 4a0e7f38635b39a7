"""Training losses (issue 12 section 4): values and gradients against torch.nn.functional (timm's losses written
with torch's own ops), in GRAPH_MODE and PyNative, and the timm ``train.py`` selection of ``create_loss``."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import mindspore as ms
from mindspore import nn

from ms_models.train.config import Config, DataConfig, TrainConfig
from ms_models.train.losses import (BinaryCrossEntropy, CrossEntropy, LabelSmoothingCrossEntropy,
                                    SoftTargetCrossEntropy, create_loss, eval_loss)

B, C = 6, 5


def _inputs(soft: bool):
    rng = np.random.default_rng(7)
    logits = (3 * rng.standard_normal((B, C))).astype(np.float32)
    if soft:
        target = rng.dirichlet(np.ones(C), size=B).astype(np.float32)
    else:
        target = rng.integers(0, C, size=B).astype(np.int32)
    return logits, target


def _torch_dense(target: np.ndarray, smoothing: float) -> torch.Tensor:
    """timm BinaryCrossEntropy's dense targets, built with torch: off = s/C, on = 1 - s + off."""
    off = smoothing / C
    return torch.full((B, C), off).scatter_(1, torch.tensor(target, dtype=torch.long).view(-1, 1), 1 - smoothing + off)


CASES = {
    "ce": (lambda: CrossEntropy(), False,
           lambda x, t: F.cross_entropy(x, torch.tensor(t, dtype=torch.long))),
    "label_smoothing": (lambda: LabelSmoothingCrossEntropy(0.2), False,
                        lambda x, t: F.cross_entropy(x, torch.tensor(t, dtype=torch.long), label_smoothing=0.2)),
    "soft_target": (lambda: SoftTargetCrossEntropy(), True,
                    lambda x, t: F.cross_entropy(x, torch.tensor(t))),
    "bce_int_smoothing": (lambda: BinaryCrossEntropy(smoothing=0.1), False,
                          lambda x, t: F.binary_cross_entropy_with_logits(x, _torch_dense(t, 0.1))),
    "bce_int_threshold": (lambda: BinaryCrossEntropy(smoothing=0.3, target_threshold=0.2), False,
                          lambda x, t: F.binary_cross_entropy_with_logits(x, (_torch_dense(t, 0.3) > 0.2).float())),
    "bce_soft": (lambda: BinaryCrossEntropy(smoothing=0.1), True,
                 lambda x, t: F.binary_cross_entropy_with_logits(x, torch.tensor(t))),
    "bce_soft_threshold": (lambda: BinaryCrossEntropy(target_threshold=0.25), True,
                           lambda x, t: F.binary_cross_entropy_with_logits(x, (torch.tensor(t) > 0.25).float())),
}


@pytest.mark.parametrize("case", list(CASES))
def test_loss_and_gradient_match_torch(case, any_mode):
    """Each loss (compiled in GRAPH_MODE, eager in PyNative) equals the torch formula, and so does its gradient
    with respect to the logits; soft targets are used as given (smoothing upstream), int labels densified."""
    make, soft, reference = CASES[case]
    logits, target = _inputs(soft)
    loss = make()
    fn = ms.value_and_grad(loss)
    value, grad = (ms.jit(fn) if any_mode == ms.GRAPH_MODE else fn)(ms.Tensor(logits), ms.Tensor(target))
    x = torch.tensor(logits, requires_grad=True)
    expected = reference(x, target)
    expected.backward()
    assert value.shape == ()
    np.testing.assert_allclose(value.asnumpy(), expected.item(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grad.asnumpy(), x.grad.numpy(), rtol=1e-4, atol=1e-7)


def test_bce_threshold_changes_the_value():
    """The threshold really binarises the smoothed targets (guards against a threshold that is ignored)."""
    logits, target = _inputs(False)
    args = ms.Tensor(logits), ms.Tensor(target)
    assert abs(BinaryCrossEntropy(0.3, 0.2)(*args).asnumpy() - BinaryCrossEntropy(0.3)(*args).asnumpy()) > 1e-3


def test_smoothing_out_of_range_is_an_error():
    with pytest.raises(ValueError, match="smoothing"):
        LabelSmoothingCrossEntropy(1.0)
    with pytest.raises(ValueError, match="smoothing"):
        BinaryCrossEntropy(-0.1)


@pytest.mark.parametrize("data, train, cls, attrs", [
    (DataConfig(), TrainConfig(), CrossEntropy, {}),
    (DataConfig(smoothing=0.1), TrainConfig(), LabelSmoothingCrossEntropy, {"smoothing": 0.1}),
    (DataConfig(mixup=0.8, smoothing=0.1), TrainConfig(), SoftTargetCrossEntropy, {}),
    (DataConfig(cutmix=1.0), TrainConfig(), SoftTargetCrossEntropy, {}),
    (DataConfig(cutmix_minmax=(0.2, 0.8)), TrainConfig(), SoftTargetCrossEntropy, {}),
    (DataConfig(mixup=0.8, smoothing=0.1), TrainConfig(loss="bce", bce_target_thresh=0.2), BinaryCrossEntropy,
     {"target_threshold": 0.2}),
    (DataConfig(smoothing=0.1), TrainConfig(loss="bce", bce_target_thresh=0.3), BinaryCrossEntropy,
     {"smoothing": 0.1, "target_threshold": 0.3}),
    (DataConfig(), TrainConfig(loss="bce"), BinaryCrossEntropy, {"smoothing": 0.0, "target_threshold": None}),
], ids=["ce", "smoothing", "mixup", "cutmix", "cutmix_minmax", "mixup_bce", "smoothing_bce", "bce"])
def test_create_loss_selects_like_timm_train(data, train, cls, attrs):
    """timm train.py: Mixup/CutMix on -> soft-target CE (or BCE with the threshold); else smoothing -> label
    smoothing CE (or BCE with smoothing); else plain CE (or BCE without smoothing)."""
    loss = create_loss(Config(data=data, train=train))
    assert type(loss) is cls
    for name, value in attrs.items():
        assert getattr(loss, name) == value


def test_eval_loss_is_plain_cross_entropy(graph_mode):
    logits, target = _inputs(False)
    loss = eval_loss()
    assert isinstance(loss, nn.Cell)
    expected = F.cross_entropy(torch.tensor(logits), torch.tensor(target, dtype=torch.long)).item()
    np.testing.assert_allclose(loss(ms.Tensor(logits), ms.Tensor(target)).asnumpy(), expected, rtol=1e-5)
