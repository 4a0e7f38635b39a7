"""Logit-distillation losses of VanillaKD (arXiv 2305.15781 §3): vanilla KD, DKD (arXiv 2203.08679), DIST
(arXiv 2205.10536) and BKD, as the official Hao840/vanillaKD@a27b029 ``losses/kd.py``, ``losses/dkd.py``,
``losses/dist.py`` and ``losses/bkd.py`` compute them, quirks included; defaults and the flag mapping of
:func:`create_kd_loss` are ``train-kd.py``'s. Mirrors ``ms_models/distill.py`` name for name.

Every loss is called as ``loss(z_s, z_t, target=None)`` and returns a 0-d tensor. Half-precision logits (the
training engine runs AMP) are promoted to float32 first; float64 stays float64 (the float64 gradient tests).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from specs.errors import ConfigError

__all__ = ["KLDiv", "DKD", "DIST", "BinaryKLDiv", "create_kd_loss", "KD_LOSSES"]

KD_LOSSES = ("kd", "dkd", "dist", "bkd")    # train-kd.py --kd-loss choices


def _float(x: torch.Tensor) -> torch.Tensor:
    """float16/bfloat16 -> float32 (AMP logits); float32 and float64 unchanged."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


class KLDiv(nn.Module):
    """Vanilla KD (official ``losses/kd.py``): ``T² · mean_n Σ_c p_t (log p_t − log_softmax(z_s/T))``."""

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, z_s: torch.Tensor, z_t: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        z_s, z_t = _float(z_s), _float(z_t)
        log_pred_student = F.log_softmax(z_s / self.temperature, dim=1)
        pred_teacher = F.softmax(z_t / self.temperature, dim=1)
        kd_loss = F.kl_div(log_pred_student, pred_teacher, reduction="none").sum(1).mean()
        return kd_loss * self.temperature ** 2


def _get_gt_mask(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Boolean one-hot of the labels (official ``dkd.py::_get_gt_mask``)."""
    target = target.reshape(-1)
    return torch.zeros_like(logits).scatter_(1, target.unsqueeze(1), 1).bool()


def _get_other_mask(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Boolean complement of the one-hot labels (official ``dkd.py::_get_other_mask``)."""
    target = target.reshape(-1)
    return torch.ones_like(logits).scatter_(1, target.unsqueeze(1), 0).bool()


def cat_mask(t: torch.Tensor, mask1: torch.Tensor, mask2: torch.Tensor) -> torch.Tensor:
    """``[Σ_mask1 t, Σ_mask2 t]`` per row, shape (N, 2) (official ``dkd.py::cat_mask``)."""
    t1 = (t * mask1).sum(dim=1, keepdims=True)
    t2 = (t * mask2).sum(1, keepdims=True)
    return torch.cat([t1, t2], dim=1)


def dkd_loss(logits_student: torch.Tensor, logits_teacher: torch.Tensor, target: torch.Tensor, alpha: float,
             beta: float, temperature: float) -> torch.Tensor:
    """``α·TCKD + β·NCKD`` (DKD arXiv 2203.08679 eq. 7; official ``dkd.py::dkd_loss``). TCKD is the KL of the
    binary (target, others) sums, the student's log taken of the sums; NCKD masks the target class with
    ``−1000`` before the softmax. Both use ``batchmean`` and a ``T²`` factor."""
    gt_mask = _get_gt_mask(logits_student, target)
    other_mask = _get_other_mask(logits_student, target)
    pred_student = F.softmax(logits_student / temperature, dim=1)
    pred_teacher = F.softmax(logits_teacher / temperature, dim=1)
    pred_student = cat_mask(pred_student, gt_mask, other_mask)
    pred_teacher = cat_mask(pred_teacher, gt_mask, other_mask)
    log_pred_student = torch.log(pred_student)
    tckd_loss = F.kl_div(log_pred_student, pred_teacher, reduction="batchmean") * temperature ** 2
    pred_teacher_part2 = F.softmax(logits_teacher / temperature - 1000.0 * gt_mask, dim=1)
    log_pred_student_part2 = F.log_softmax(logits_student / temperature - 1000.0 * gt_mask, dim=1)
    nckd_loss = F.kl_div(log_pred_student_part2, pred_teacher_part2, reduction="batchmean") * temperature ** 2
    return alpha * tckd_loss + beta * nckd_loss


class DKD(nn.Module):
    """Decoupled KD (official ``losses/dkd.py::DKD``). ``target``: int labels (N,) or soft targets (N, C)
    (mixup/smoothing), reduced by ``target.max(1)[1]``; required."""

    def __init__(self, alpha: float = 1.0, beta: float = 2.0, temperature: float = 1.0) -> None:
        super().__init__()
        self.alpha = alpha
        self.beta = beta
        self.temperature = temperature

    def forward(self, z_s: torch.Tensor, z_t: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        if target is None:
            raise ValueError("DKD needs the labels: loss(z_s, z_t, target)")
        if len(target.shape) == 2:  # mixup / smoothing
            target = target.max(1)[1]
        return dkd_loss(_float(z_s), _float(z_t), target, self.alpha, self.beta, self.temperature)


def cosine_similarity(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Row-wise ``Σ ab / (‖a‖·‖b‖ + eps)`` (official ``dist.py``)."""
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def pearson_correlation(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Row-wise Pearson correlation: cosine of the row-centred inputs (official ``dist.py``)."""
    return cosine_similarity(a - a.mean(1).unsqueeze(1), b - b.mean(1).unsqueeze(1), eps)


def inter_class_relation(y_s: torch.Tensor, y_t: torch.Tensor) -> torch.Tensor:
    """``1 − mean_rows ρ`` (DIST arXiv 2205.10536 eq. 5; official ``dist.py``)."""
    return 1 - pearson_correlation(y_s, y_t).mean()


def intra_class_relation(y_s: torch.Tensor, y_t: torch.Tensor) -> torch.Tensor:
    """``1 − mean_cols ρ``: the inter-class relation of the transposes (DIST eq. 7; official ``dist.py``)."""
    return inter_class_relation(y_s.transpose(0, 1), y_t.transpose(0, 1))


class DIST(nn.Module):
    """DIST (official ``losses/dist.py``): ``β·τ²·inter + γ·τ²·intra`` on ``softmax(z/τ)``."""

    def __init__(self, beta: float = 1.0, gamma: float = 1.0, tau: float = 1.0) -> None:
        super().__init__()
        self.beta = beta
        self.gamma = gamma
        self.tau = tau

    def forward(self, z_s: torch.Tensor, z_t: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        y_s = (_float(z_s) / self.tau).softmax(dim=1)
        y_t = (_float(z_t) / self.tau).softmax(dim=1)
        inter_loss = self.tau ** 2 * inter_class_relation(y_s, y_t)
        intra_loss = self.tau ** 2 * intra_class_relation(y_s, y_t)
        return self.beta * inter_loss + self.gamma * intra_loss


class BinaryKLDiv(nn.Module):
    """BKD (official ``losses/bkd.py``): ``BCEWithLogits(z_s, softmax(z_t))``, mean over N·C, no temperature."""

    def forward(self, z_s: torch.Tensor, z_t: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(_float(z_s), _float(z_t).softmax(1))


def create_kd_loss(method: str, temperature: float = 1.0, dkd_alpha: float = 1.0, dkd_beta: float = 2.0,
                   dist_beta: float = 1.0, dist_gamma: float = 1.0) -> nn.Module:
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
