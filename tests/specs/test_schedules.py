"""Per-step learning-rate schedules (issue 12 section 4), against values computed by hand from timm's formulas
(``timm/scheduler``: warmup from ``warmup_lr_init``, cosine / step / poly(1) decay counted from update 0,
cooldown at ``min_lr``), and the ``lr * global_batch / lr_base_size`` rule."""
from __future__ import annotations

import math

import numpy as np
import pytest

from ms_models.train.config import OptimizerConfig, ScheduleConfig
from specs.errors import ConfigError
from specs.schedules import lr_per_step, lr_per_varying_step, scaled_lr


def _cos(t: float, total: float, lo: float = 0.0, hi: float = 1.0) -> float:
    return lo + 0.5 * (hi - lo) * (1 + math.cos(math.pi * t / total))


def test_cosine_with_warmup_per_step():
    """4 epochs x 2 updates: warmup over 2 updates from 0.1 (0.1, 0.55), then the cosine of t/8 from t=2 on."""
    lr = lr_per_step(ScheduleConfig(name="cosine", warmup_epochs=1, warmup_lr=0.1), 1.0, 4, 2)
    s = math.sqrt(2) / 2
    c3 = math.cos(3 * math.pi / 8)
    expected = [0.1, 0.55, 0.5 * (1 + s), 0.5 * (1 + c3), 0.5, 0.5 * (1 - c3), 0.5 * (1 - s), 0.5 * (1 - math.cos(math.pi / 8))]
    np.testing.assert_allclose(lr, expected, rtol=1e-12)


def test_cosine_min_lr_and_cooldown():
    """5 epochs with 1 epoch of cooldown: the cosine spans the first 4 epochs (T = 8 updates) from 2.0 down
    towards min_lr 0.5, the last epoch's 2 updates sit at min_lr."""
    lr = lr_per_step(ScheduleConfig(name="cosine", min_lr=0.5, cooldown_epochs=1), 2.0, 5, 2)
    expected = [_cos(t, 8, 0.5, 2.0) for t in range(8)] + [0.5, 0.5]
    np.testing.assert_allclose(lr, expected, rtol=1e-12)
    assert lr[0] == 2.0 and lr[4] == pytest.approx(1.25)


def test_step_decay_floored_at_min_lr():
    """decay every 2 epochs by 0.5 (per step, 1 update per epoch): 1, 1, .5, .5, .25, then min_lr 0.2 floors."""
    sched = ScheduleConfig(name="step", decay_epochs=2, decay_rate=0.5)
    np.testing.assert_allclose(lr_per_step(sched, 1.0, 6, 1), [1, 1, 0.5, 0.5, 0.25, 0.25])
    sched.min_lr = 0.3
    np.testing.assert_allclose(lr_per_step(sched, 1.0, 6, 1), [1, 1, 0.5, 0.5, 0.3, 0.3])


def test_step_counts_updates_with_fractional_epochs():
    """decay_epochs 1.5 with 2 updates per epoch: decay every 3 updates."""
    lr = lr_per_step(ScheduleConfig(name="step", decay_epochs=1.5, decay_rate=0.1), 1.0, 3, 2)
    np.testing.assert_allclose(lr, [1, 1, 1, 0.1, 0.1, 0.1])


def test_linear_with_fractional_warmup():
    """5 epochs x 2 updates, warmup over 1 update (0.5 epoch) from 0: lr 0 at t=0, then the line
    1 - 0.8 * t / 10 from base 1 to min_lr 0.2."""
    lr = lr_per_step(ScheduleConfig(name="linear", warmup_epochs=0.5, min_lr=0.2), 1.0, 5, 2)
    np.testing.assert_allclose(lr, [0.0] + [1 - 0.8 * t / 10 for t in range(1, 10)], rtol=1e-12)


def test_per_epoch_holds_the_lr_within_an_epoch():
    """per_epoch: t is the epoch (timm t_in_epochs): 4 epochs, warmup 1 epoch from 0, cosine over 4 epochs."""
    lr = lr_per_step(ScheduleConfig(name="cosine", warmup_epochs=1, per_epoch=True), 1.0, 4, 3)
    per_epoch = [0.0, _cos(1, 4), 0.5, _cos(3, 4)]
    np.testing.assert_allclose(lr, np.repeat(per_epoch, 3), rtol=1e-12)
    assert lr.shape == (12,)


def test_inv_is_cans_inverse_decay_per_update():
    """``inv`` (CAN / SFDA-DE ``adjust_learning_rate_inv``): ``base / (1 + alpha t) ** beta`` per update from t = 0;
    VisDA's alpha 5e-4, beta 2.25 over 2 loops x 3 updates, and the floor at min_lr."""
    lr = lr_per_step(ScheduleConfig(name="inv", inv_alpha=5e-4, inv_beta=2.25), 1e-4, 2, 3)
    np.testing.assert_allclose(lr, [1e-4 / (1 + 5e-4 * t) ** 2.25 for t in range(6)], rtol=1e-12)
    assert lr[0] == 1e-4
    lr = lr_per_step(ScheduleConfig(name="inv", inv_alpha=1.0, inv_beta=1.0, min_lr=0.3), 1.0, 1, 4)
    np.testing.assert_allclose(lr, [1.0, 0.5, 1 / 3, 0.3], rtol=1e-12)


def test_mae_cosine_starts_its_half_cycle_after_the_warmup():
    """``mae_cosine`` = MAE ``util/lr_sched.py::adjust_learning_rate`` at the fractional epoch ``t / steps``: ``lr *
    epoch / warmup`` then ``min + (lr - min) (1 + cos(pi (epoch - warmup) / (epochs - warmup))) / 2``. Base 1, min
    0.1, warmup 1 of 3 epochs, 2 updates per epoch; values worked by hand (cos(pi/4) = 0.70711)."""
    lr = lr_per_step(ScheduleConfig(name="mae_cosine", warmup_epochs=1, min_lr=0.1), 1.0, 3, 2)
    np.testing.assert_allclose(lr, [0.0, 0.5, 1.0, 0.1 + 0.45 * (1 + 0.5 ** 0.5), 0.55, 0.1 + 0.45 * (1 - 0.5 ** 0.5)],
                               rtol=1e-12, atol=1e-15)
    timm = lr_per_step(ScheduleConfig(name="cosine", warmup_epochs=1, min_lr=0.1), 1.0, 3, 2)
    assert timm[2] < 1.0                    # timm's cosine runs from t = 0 under the warmup: not the same rule


def test_varying_epochs_follow_maes_fractional_epochs():
    """FastMIM-P's epochs of their own (``lr_per_varying_step``): epoch 0 of 4 batches, one update each, base 1;
    epoch 1 of 5 batches, 2 per update (2 updates, the fifth batch dropped), base 2, min 0.2; warmup 1 of 2 epochs.
    Update j of epoch e at epoch e + j k / n: 0, 0.25, 0.5, 0.75 (warmup: t x 1), then 1 and 1.4 on the cosine
    0.2 + 0.9 (1 + cos(pi (t - 1))): 2 and 0.2 + 0.9 (1 + cos(0.4 pi)) = 1.37812. Per epoch, the epoch's start."""
    sched = ScheduleConfig(name="mae_cosine", warmup_epochs=1)
    lr = lr_per_varying_step(sched, [1.0, 2.0], [0.0, 0.2], [4, 5], [1, 2])
    np.testing.assert_allclose(lr, [0.0, 0.25, 0.5, 0.75, 2.0, 0.2 + 0.9 * (1 + math.cos(0.4 * math.pi))],
                               rtol=1e-12, atol=1e-15)
    per_epoch = lr_per_varying_step(ScheduleConfig(name="mae_cosine", warmup_epochs=1, per_epoch=True),
                                    [1.0, 2.0], [0.0, 0.2], [4, 5], [1, 2])
    np.testing.assert_allclose(per_epoch, [0.0] * 4 + [2.0] * 2, rtol=1e-12, atol=1e-15)
    with pytest.raises(ConfigError, match="fewer than its accumulation"):
        lr_per_varying_step(sched, [1.0], [0.0], [2], [3])


def test_schedule_errors_are_one_line_config_errors():
    with pytest.raises(ConfigError, match="cooldown"):
        lr_per_step(ScheduleConfig(cooldown_epochs=3), 1.0, 3, 2)
    with pytest.raises(ConfigError, match="steps per epoch"):
        lr_per_step(ScheduleConfig(), 1.0, 3, 0)
    with pytest.raises(ConfigError, match="unknown schedule 'poly'"):
        lr_per_step(ScheduleConfig(name="poly"), 1.0, 3, 2)


def test_scaled_lr_linear_rule():
    """lr 4e-3 for a base size of 256 at global batch 1024 (e.g. 8 devices x 64 x 2 accumulation) gives 1.6e-2;
    without lr_base_size the lr is used as given."""
    assert scaled_lr(OptimizerConfig(lr=4e-3, lr_base_size=256), 1024) == pytest.approx(1.6e-2)
    assert scaled_lr(OptimizerConfig(lr=4e-3, lr_base_size=256), 64) == pytest.approx(1e-3)
    assert scaled_lr(OptimizerConfig(lr=4e-3), 1024) == 4e-3
    with pytest.raises(ConfigError, match="global batch"):
        scaled_lr(OptimizerConfig(), 0)
