"""SFDA-DE (arXiv 2204.11257, CVPR 2022): the framework components of source-free domain adaptation by
distribution estimation, as the third-party CvNoob/SFDA-DE@213e138 (built on CAN) computes them, quirks included:
spherical k-means pseudo-labels anchored at the classifier weights (the paper's step 1;
``solver/clustering.py``), distance / class-size filtering (``solver/utils.py``), the diagonal class-conditional
source-distribution estimate (step 2; ``solver/anchor_solver.py``) and CAN's contrastive domain discrepancy, the
contrastive adaptation loss of step 3 (``discrepancy/cdd.py``). The steps are the abstract's; the paper body was
not available to check section numbers or equations against. Mirrors ``ms_models/sfda.py`` name for name.

The k-means, filtering and estimation helpers run without gradient (upstream works on ``.data`` under
``torch.no_grad``); they accept numpy arrays too. :class:`CDD` is differentiable in ``source`` and ``target``.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn

__all__ = ["spherical_kmeans", "filter_samples", "estimate_source_distribution", "CDD", "cosine_distance",
           "AdaptLoss", "classifier_of"]


def _tensor(x, dtype: torch.dtype | None = None) -> torch.Tensor:
    """numpy / tensor -> detached tensor (host helpers take either)."""
    t = torch.as_tensor(np.asarray(x)) if not isinstance(x, torch.Tensor) else x.detach()
    return t if dtype is None else t.to(dtype)


def cosine_distance(a: torch.Tensor, b: torch.Tensor, cross: bool = False) -> torch.Tensor:
    """``0.5·(1 − cos(a, b))`` row by row, or for every pair of rows with ``cross`` (upstream
    ``clustering.py::DIST.cos``; rows normalised by ``F.normalize``, so a zero row has distance 0.5)."""
    a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
    if not cross:
        return 0.5 * (1.0 - torch.sum(a * b, dim=1))
    return 0.5 * (1.0 - a @ b.T)


def spherical_kmeans(features, anchors, eps: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Spherical k-means started at the classifier weights (paper step 1; upstream
    ``clustering.py::Clustering.feature_clustering``, ``assign_labels``, ``clustering_stop``, ``align_centers``).

    ``features`` (N, D), ``anchors`` (C, D) the raw (not normalised) classifier weights. Each step assigns every
    sample to the nearest centre under :func:`cosine_distance`; the new centre is the *sum* of the raw assigned
    features (standard spherical k-means averages unit vectors), an empty cluster takes its anchor back.
    The loop stops when ``mean_c d(new_c, old_c) < eps``, keeps those last centres and assigns once more.
    Clusters are then mapped to classes by the Hungarian method on ``d(centres, anchors)`` (cluster i -> class
    ``col_ind[i]``). Upstream has no iteration cap; neither has this (no step lowers Σ ‖x‖·cos(x, centre of x), so
    only exact ties could cycle).

    Returns ``labels`` (N,) int64 classes, ``dist2center`` (N, C) with column c the distance to class c's centre,
    and ``centers`` (C, D) in class order. Upstream keeps ``dist2center`` in cluster order (only its row minimum
    is ever used) and reorders its logged centres with the forward map ``centers[col_ind]``; here both are in
    class order (the inverse map), as the contract asks.
    """
    feats = _tensor(features)
    init = _tensor(anchors, feats.dtype).to(feats.device)
    num_classes = init.shape[0]
    centers, new = init, None
    while True:                                           # clustering_stop / feature_clustering
        if new is not None:
            stop = cosine_distance(new, centers).mean().item() < eps
            centers = new
            if stop:
                break
        labels = cosine_distance(feats, centers, cross=True).argmin(1)
        onehot = F.one_hot(labels, num_classes).to(feats.dtype)            # (N, C)
        sums = onehot.T @ feats
        filled = (onehot.sum(0) > 0).unsqueeze(1)
        new = torch.where(filled, sums, init)             # an empty cluster falls back to its anchor
    dist = cosine_distance(feats, centers, cross=True)    # the final assignment, cluster order
    labels = dist.argmin(1)
    cost = cosine_distance(centers, init, cross=True)
    _, col_ind = linear_sum_assignment(cost.cpu().numpy())  # align_centers: cluster i -> class col_ind[i]
    col = torch.as_tensor(col_ind, dtype=torch.int64, device=feats.device)
    inverse = torch.argsort(col)                          # class c <- cluster inverse[c]
    return col[labels], dist[:, inverse], centers[inverse]


def filter_samples(labels, dist2center, threshold: float = 0.078, min_per_class: int = 5,
                   num_classes: int | None = None) -> tuple[torch.Tensor, list[int]]:
    """Keep the samples whose nearest centre is closer than ``threshold`` (strict; upstream
    ``solver/utils.py::filter_samples``), then list the classes with at least ``min_per_class`` kept samples,
    ascending (``filter_class``). Defaults: VisDA's ``CLUSTERING.FILTERING_THRESHOLD`` 0.078 and
    ``TRAIN.MIN_SN_PER_CLASS`` 5; ``num_classes`` None: ``dist2center``'s width. Returns ``keep`` (N,) bool and
    ``classes``, a list of ints."""
    labels = _tensor(labels).to(torch.int64)
    dist2center = _tensor(dist2center)
    keep = dist2center.min(1).values < threshold
    num_classes = dist2center.shape[1] if num_classes is None else num_classes
    kept = labels[keep]
    classes = [c for c in range(num_classes) if int((kept == c).sum()) >= min_per_class]
    return keep, classes


def estimate_source_distribution(features, labels, anchors, classes: Sequence[int], variance_mult: float = 1.0
                                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The diagonal Gaussian of each class's source features (paper step 2; upstream
    ``anchor_solver.py::collect_target_feature_mean_std`` and ``construct_surrogate_feature_sampler``).

    ``features`` / ``labels``: the kept target samples and their pseudo-labels; ``anchors`` (C, D) the raw
    classifier weights. For each class c of ``classes``: the target mean μ_t and unbiased per-dimension std σ_t;
    ``mean[c] = normalize(anchors[c])·‖μ_t‖`` (the direction from the anchor, the length from the target) and
    ``std[c] = where(σ_t == 0, 1e-4, σ_t)·variance_mult``. Only the diagonal is estimated (upstream: sampling a
    full 2048-d covariance is O(d²)); whether the paper uses a full covariance is not verified here.
    ``valid[c] = ‖μ_t‖ ≥ 1e-3``; a class outside ``classes`` is invalid. Upstream builds no sampler for an
    invalid class; its rows here are 0. A class of one sample has σ_t = NaN (torch's unbiased std), as upstream.
    Returns ``mean`` (C, D), ``std`` (C, D), ``valid`` (C,) bool.
    """
    feats = _tensor(features)
    labels = _tensor(labels).to(device=feats.device, dtype=torch.int64)
    anchors = _tensor(anchors, feats.dtype).to(feats.device)
    num_classes, dim = anchors.shape
    directions = F.normalize(anchors, dim=1)              # AnchorSolver.source_anchors
    mean = anchors.new_zeros(num_classes, dim)
    std = anchors.new_zeros(num_classes, dim)
    valid = torch.zeros(num_classes, dtype=torch.bool, device=feats.device)
    for c in classes:
        sigma, mu = torch.std_mean(feats[labels == c], dim=0, unbiased=True)
        norm = mu.norm(p=2)
        if norm < 1e-3:
            continue
        valid[c] = True
        mean[c] = directions[c] * norm
        std[c] = torch.where(sigma == 0, torch.full_like(sigma, 1e-4), sigma) * variance_mult
    return mean, std, valid


# --- CDD ----------------------------------------------------------------------------------------------------------

def _membership(nums: Sequence[int], like: torch.Tensor) -> torch.Tensor:
    """(len(nums), Σnums) one-hot rows: row c marks the samples of the c-th class group."""
    eye = torch.eye(len(nums), dtype=like.dtype, device=like.device)
    return torch.cat([eye[:, c:c + 1].expand(-1, n) for c, n in enumerate(nums)], dim=1)


def paired_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distance of every pair of rows, from explicit differences (upstream
    ``cdd.py::compute_paired_dist``; the diagonal of ``paired_distance(a, a)`` is exactly 0)."""
    return ((a.unsqueeze(1) - b.unsqueeze(0)) ** 2).sum(2)


def kernel_sum(dist: torch.Tensor, gamma: torch.Tensor, kernel_num: int, kernel_mul: float) -> torch.Tensor:
    """``Σ_k exp(−clamp(d/γ_k))`` with ``γ_k = γ/mul^(num//2)·mul^k`` clamped to at least 1e-5 and ``d/γ_k`` to
    [1e-5, 1e5]; the clamped entries get no gradient (upstream ``cdd.py::compute_kernel_dist``, detached masks).
    ``gamma`` broadcasts against ``dist`` and is constant."""
    base = gamma / (kernel_mul ** (kernel_num // 2))
    total = 0
    for k in range(kernel_num):
        g = base * (kernel_mul ** k)
        g = torch.where(g < 1e-5, torch.full_like(g, 1e-5), g)
        x = dist / g
        x = torch.where(x > 1e5, torch.full_like(x, 1e5), torch.where(x < 1e-5, torch.full_like(x, 1e-5), x))
        total = total + torch.exp(-x)
    return total


class CDD(nn.Module):
    """CAN's contrastive domain discrepancy (the paper's contrastive adaptation loss, step 3; upstream
    ``discrepancy/cdd.py::CDD.forward``), called as ``cdd(source, target, nums_S, nums_T)``.

    ``source`` / ``target``: one ``(Σnums, D_l)`` tensor per layer (``feat`` then ``probs``), rows grouped by class
    in the order of ``nums_S`` / ``nums_T`` (Python ints; ``len(nums_S)`` classes in the batch). Per class pair
    (i, j) the bandwidth is γ_ij = (Σd_ss,i + Σd_tt,j + 2Σd_st,ij) / (a² + b² + 2ab − a − b) over squared
    distances, constant (upstream ``.item()``); the multi-kernel (:func:`kernel_sum`) is summed over the layers and
    ``mmd_ij = mean K_ss,i + mean K_tt,j − 2 mean K_st,ij``, every term under γ_ij. ``intra = Σ_i mmd_ii / C``,
    ``inter = Σ_{i≠j} mmd_ij / (C(C−1))`` with C = ``num_classes`` (``DATASET.NUM_CLASSES``, used only here), and
    ``cdd = intra − inter``; ``intra_only`` or ``num_classes == 1``: ``cdd = intra``, ``inter = None``. No
    temperature: the contrast is intra- minus inter-class MMD. Upstream loops over the class pairs; this is the
    same sums with one-hot membership matrices.
    """

    def __init__(self, num_classes: int, num_layers: int = 2, kernel_num: Sequence[int] = (5, 5),
                 kernel_mul: Sequence[float] = (2, 2), intra_only: bool = False) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.num_layers = num_layers
        self.kernel_num = tuple(kernel_num)
        self.kernel_mul = tuple(kernel_mul)
        self.intra_only = intra_only or num_classes == 1

    def forward(self, source: Sequence[torch.Tensor], target: Sequence[torch.Tensor], nums_S: Sequence[int],
                nums_T: Sequence[int]) -> dict[str, torch.Tensor | None]:
        if len(nums_S) != len(nums_T):
            raise ValueError(f"the number of classes for source ({len(nums_S)}) and target ({len(nums_T)}) "
                             "should be the same")
        m_s, m_t = _membership(nums_S, source[0]), _membership(nums_T, target[0])   # (C_b, NS), (C_b, NT)
        a, b = m_s.sum(1, keepdim=True), m_t.sum(1, keepdim=True)
        pairs = (a + b.T) ** 2 - a - b.T                  # a² + b² + 2ab − a − b
        block_s, block_t = m_s.T @ m_s, m_t.T @ m_t       # same-class masks
        k_ss = k_tt = k_st = 0
        for i in range(self.num_layers):
            d_ss = paired_distance(source[i], source[i])
            d_tt = paired_distance(target[i], target[i])
            d_st = paired_distance(source[i], target[i])
            with torch.no_grad():                         # patch_gamma_estimation (γ is a Python float upstream)
                sum_ss = (m_s @ (d_ss * block_s)).sum(1, keepdim=True)
                sum_tt = (m_t @ (d_tt * block_t)).sum(1, keepdim=True)
                gamma = (sum_ss + sum_tt.T + 2 * (m_s @ d_st @ m_t.T)) / pairs          # (C_b, C_b)
            num, mul = self.kernel_num[i], self.kernel_mul[i]
            # st: entry (p, q) under γ[class(p), class(q)]
            k_st = k_st + m_s @ kernel_sum(d_st, m_s.T @ gamma @ m_t, num, mul) @ m_t.T
            # ss of class i under γ[i, j] for every j: (C_b, NS, NS) kernels, summed over the same-class blocks
            g_ss = (m_s.T @ gamma).T.unsqueeze(2)                                  # [j, p] = γ[class(p), j]
            k_ss = k_ss + m_s @ (kernel_sum(d_ss, g_ss, num, mul) * block_s).sum(2).T
            g_tt = (gamma @ m_t).unsqueeze(2)                                      # [i, q] = γ[i, class(q)]
            k_tt = k_tt + (kernel_sum(d_tt, g_tt, num, mul) * block_t).sum(2) @ m_t.T
        mmds = k_ss / a ** 2 + k_tt / (b ** 2).T - 2 * k_st / (a @ b.T)
        eye = torch.eye(len(nums_S), dtype=mmds.dtype, device=mmds.device)
        intra = (mmds * eye).sum() / self.num_classes
        if self.intra_only:
            return {"cdd": intra, "intra": intra, "inter": None}
        inter = (mmds * (1 - eye)).sum() / (self.num_classes * (self.num_classes - 1))
        return {"cdd": intra - inter, "intra": intra, "inter": inter}


def classifier_of(model: nn.Module) -> nn.Linear:
    """The linear classifier a model applies to its pooled features (``forward_head(x, pre_logits=True)``): the
    ``fc`` (ResNet, as upstream's ``FC``) or ``head`` attribute. SFDA-DE freezes it and anchors on its weights."""
    for name in ("fc", "head"):
        layer = getattr(model, name, None)
        if isinstance(layer, nn.Linear):
            return layer
    raise ValueError(f"{type(model).__name__} has no linear classifier (fc or head) on pooled features: SFDA-DE "
                     f"needs one (its weights are the anchors)")


class AdaptLoss(nn.Module):
    """One SFDA-DE adaptation loss (upstream ``anchor_solver.py::update_network`` / ``calc_loss``):
    ``cdd_weight * CDD([feat_s, probs_s], [feat_t, probs_t])[key]`` with the target's pooled features
    ``feat_t`` and ``probs_t = softmax(classifier(feat_t))`` (the model in train mode), the surrogate source
    features ``feat_s`` sampled from the estimate and ``probs_s = softmax(classifier(feat_s))`` (``net.classify``);
    ``key`` is ``intra`` with ``intra_only``, else ``cdd``. ``classifier`` (:func:`classifier_of`) is frozen by the
    caller; gradients reach the model through the target branch only. Called as ``loss(images, surrogate,
    counts)`` (``counts``: the per-class group sizes, shared by both domains); returns ``(loss, intra)``."""

    def __init__(self, model: nn.Module, cdd: CDD, cdd_weight: float = 1.0) -> None:
        super().__init__()
        self.model = model
        self.classifier = classifier_of(model)
        self.cdd = cdd
        self.cdd_weight = cdd_weight

    def forward(self, images: torch.Tensor, surrogate: torch.Tensor, counts: Sequence[int]
                ) -> tuple[torch.Tensor, torch.Tensor]:
        feat = self.model.forward_head(self.model.forward_features(images), pre_logits=True)
        probs_t = F.softmax(self.classifier(feat), dim=1)
        probs_s = F.softmax(self.classifier(surrogate), dim=1)
        out = self.cdd([surrogate, probs_s], [feat, probs_t], counts, counts)
        return self.cdd_weight * out["cdd"], out["intra"]
