"""Logit-distillation losses of VanillaKD (arXiv 2305.15781 §3): vanilla KD, DKD (arXiv 2203.08679), DIST
(arXiv 2205.10536) and BKD, as the official Hao840/vanillaKD@a27b029 ``losses/kd.py``, ``losses/dkd.py``,
``losses/dist.py`` and ``losses/bkd.py`` compute them, quirks included; defaults and the flag mapping of
:func:`create_kd_loss` are ``train-kd.py``'s. Mirrors ``torch_ref/distill.py`` name for name.

Every loss is a Cell called as ``loss(z_s, z_t, target=None)`` that returns a 0-d float32 tensor; ``construct``
compiles in GRAPH_MODE, also under ``value_and_grad``. The logits are cast to float32 first (the training engine
runs AMP, so they may come in float16). torch's ``kl_div`` uses ``xlogy``, so a teacher probability of exactly 0
(DKD's −1000-masked class, any underflowed softmax) contributes 0; ``ops.xlogy(0, 0)`` is NaN on CPU, hence
:func:`_kl_div` masks those entries, in the value and in the gradient.
"""
from __future__ import annotations

import mindspore as ms
from mindspore import Tensor, nn, ops

from specs.errors import ConfigError

__all__ = ["KLDiv", "DKD", "DIST", "BinaryKLDiv", "create_kd_loss", "KD_LOSSES"]

KD_LOSSES = ("kd", "dkd", "dist", "bkd")    # train-kd.py --kd-loss choices


def _float(x: Tensor) -> Tensor:
    """Any float logits (float16 under AMP) -> float32."""
    return ops.cast(x, ms.float32)


def _kl_div(log_q: Tensor, p: Tensor) -> Tensor:
    """Element-wise torch ``F.kl_div(log_q, p, reduction='none')`` = ``xlogy(p, p) − p·log_q``, 0·log 0 = 0
    (the inner ``where`` keeps the gradient finite at p = 0)."""
    return p * ops.log(ops.where(p > 0, p, ops.ones_like(p))) - p * log_q


class KLDiv(nn.Cell):
    """Vanilla KD (official ``losses/kd.py``): ``T² · mean_n Σ_c p_t (log p_t − log_softmax(z_s/T))``."""

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        self.temperature = temperature

    def construct(self, z_s: Tensor, z_t: Tensor, target: Tensor | None = None) -> Tensor:
        z_s, z_t = _float(z_s), _float(z_t)
        log_pred_student = ops.log_softmax(z_s / self.temperature, 1)
        pred_teacher = ops.softmax(z_t / self.temperature, 1)
        kd_loss = _kl_div(log_pred_student, pred_teacher).sum(1).mean()
        return kd_loss * self.temperature ** 2


def _get_gt_mask(logits: Tensor, target: Tensor) -> Tensor:
    """One-hot of the labels, as 0/1 floats (official ``dkd.py::_get_gt_mask``, a bool mask there: the products
    with it are the same)."""
    target = ops.cast(target.reshape(-1), ms.int32)
    return ops.one_hot(target, logits.shape[1], Tensor(1.0, ms.float32), Tensor(0.0, ms.float32))


def _get_other_mask(logits: Tensor, target: Tensor) -> Tensor:
    """Complement of the one-hot labels (official ``dkd.py::_get_other_mask``)."""
    return 1.0 - _get_gt_mask(logits, target)


def cat_mask(t: Tensor, mask1: Tensor, mask2: Tensor) -> Tensor:
    """``[Σ_mask1 t, Σ_mask2 t]`` per row, shape (N, 2) (official ``dkd.py::cat_mask``)."""
    t1 = (t * mask1).sum(1, keepdims=True)
    t2 = (t * mask2).sum(1, keepdims=True)
    return ops.cat([t1, t2], 1)


def dkd_loss(logits_student: Tensor, logits_teacher: Tensor, target: Tensor, alpha: float, beta: float,
             temperature: float) -> Tensor:
    """``α·TCKD + β·NCKD`` (DKD arXiv 2203.08679 eq. 7; official ``dkd.py::dkd_loss``). TCKD is the KL of the
    binary (target, others) sums, the student's log taken of the sums; NCKD masks the target class with
    ``−1000`` before the softmax. Both use ``batchmean`` and a ``T²`` factor."""
    n = logits_student.shape[0]
    gt_mask = _get_gt_mask(logits_student, target)
    other_mask = _get_other_mask(logits_student, target)
    pred_student = ops.softmax(logits_student / temperature, 1)
    pred_teacher = ops.softmax(logits_teacher / temperature, 1)
    pred_student = cat_mask(pred_student, gt_mask, other_mask)
    pred_teacher = cat_mask(pred_teacher, gt_mask, other_mask)
    log_pred_student = ops.log(pred_student)
    tckd_loss = _kl_div(log_pred_student, pred_teacher).sum() / n * temperature ** 2
    pred_teacher_part2 = ops.softmax(logits_teacher / temperature - 1000.0 * gt_mask, 1)
    log_pred_student_part2 = ops.log_softmax(logits_student / temperature - 1000.0 * gt_mask, 1)
    nckd_loss = _kl_div(log_pred_student_part2, pred_teacher_part2).sum() / n * temperature ** 2
    return alpha * tckd_loss + beta * nckd_loss


class DKD(nn.Cell):
    """Decoupled KD (official ``losses/dkd.py::DKD``). ``target``: int32/int64 labels (N,) or soft targets
    (N, C) (mixup/smoothing), reduced by argmax (``target.max(1)[1]``); required."""

    def __init__(self, alpha: float = 1.0, beta: float = 2.0, temperature: float = 1.0) -> None:
        super().__init__()
        self.alpha = alpha
        self.beta = beta
        self.temperature = temperature

    def construct(self, z_s: Tensor, z_t: Tensor, target: Tensor | None = None) -> Tensor:
        if target is None:
            raise ValueError("DKD needs the labels: loss(z_s, z_t, target)")
        if len(target.shape) == 2:  # mixup / smoothing
            target = ops.argmax(target, 1)
        return dkd_loss(_float(z_s), _float(z_t), target, self.alpha, self.beta, self.temperature)


def _norm(a: Tensor) -> Tensor:
    """Row L2 norm with torch's gradient at a zero row (0, not NaN: ``norm_backward`` masks it)."""
    sq = (a * a).sum(1)
    nonzero = sq > 0
    return ops.where(nonzero, ops.sqrt(ops.where(nonzero, sq, ops.ones_like(sq))), ops.zeros_like(sq))


def cosine_similarity(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """Row-wise ``Σ ab / (‖a‖·‖b‖ + eps)`` (official ``dist.py``)."""
    return (a * b).sum(1) / (_norm(a) * _norm(b) + eps)


def pearson_correlation(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """Row-wise Pearson correlation: cosine of the row-centred inputs (official ``dist.py``)."""
    return cosine_similarity(a - a.mean(1, keep_dims=True), b - b.mean(1, keep_dims=True), eps)


def inter_class_relation(y_s: Tensor, y_t: Tensor) -> Tensor:
    """``1 − mean_rows ρ`` (DIST arXiv 2205.10536 eq. 5; official ``dist.py``)."""
    return 1 - pearson_correlation(y_s, y_t).mean()


def intra_class_relation(y_s: Tensor, y_t: Tensor) -> Tensor:
    """``1 − mean_cols ρ``: the inter-class relation of the transposes (DIST eq. 7; official ``dist.py``)."""
    return inter_class_relation(y_s.T, y_t.T)


class DIST(nn.Cell):
    """DIST (official ``losses/dist.py``): ``β·τ²·inter + γ·τ²·intra`` on ``softmax(z/τ)``."""

    def __init__(self, beta: float = 1.0, gamma: float = 1.0, tau: float = 1.0) -> None:
        super().__init__()
        self.beta = beta
        self.gamma = gamma
        self.tau = tau

    def construct(self, z_s: Tensor, z_t: Tensor, target: Tensor | None = None) -> Tensor:
        y_s = ops.softmax(_float(z_s) / self.tau, 1)
        y_t = ops.softmax(_float(z_t) / self.tau, 1)
        inter_loss = self.tau ** 2 * inter_class_relation(y_s, y_t)
        intra_loss = self.tau ** 2 * intra_class_relation(y_s, y_t)
        return self.beta * inter_loss + self.gamma * intra_loss


class BinaryKLDiv(nn.Cell):
    """BKD (official ``losses/bkd.py``): ``BCEWithLogits(z_s, softmax(z_t))``, mean over N·C, no temperature.
    Written as torch's kernel computes it, ``(1 − y)·x − log σ(x)``: MindSpore 2.8's
    ``ops.binary_cross_entropy_with_logits`` backward in PyNative keeps the ``1/numel`` of the first shape it
    ran on (a later batch of another size gets a wrongly scaled gradient)."""

    def construct(self, z_s: Tensor, z_t: Tensor, target: Tensor | None = None) -> Tensor:
        z_s = _float(z_s)
        y = ops.softmax(_float(z_t), 1)
        return ((1 - y) * z_s - ops.logsigmoid(z_s)).mean()


def create_kd_loss(method: str, temperature: float = 1.0, dkd_alpha: float = 1.0, dkd_beta: float = 2.0,
                   dist_beta: float = 1.0, dist_gamma: float = 1.0) -> nn.Cell:
    """The loss of ``--kd-loss method`` built from the flags as official ``train-kd.py`` does (``--temperature``
    is KD's and DKD's T and DIST's tau; BKD takes none). Unknown ``method``: :class:`specs.ConfigError`
    (a ValueError)."""
    if method == "kd":
        return KLDiv(temperature)
    if method == "dist":
        return DIST(dist_beta, dist_gamma, temperature)
    if method == "bkd":
        return BinaryKLDiv()
    if method == "dkd":
        return DKD(dkd_alpha, dkd_beta, temperature)
    raise ConfigError(f"unknown kd loss {method!r}; expected one of {', '.join(KD_LOSSES)}")
