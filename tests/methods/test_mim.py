"""FastMIM / LocalMIM HOG targets and masking helpers (arXiv 2212.06593, 2303.05251; ``{torch_ref,ms_models}/mim.py``):
the official code as oracle, a numpy float64 re-statement, closed forms, invariants, torch vs MindSpore.

Oracle data: ``tests/data/mim_official_hog.npz`` was made by running, unmodified (torch 2.13 CPU, float32), the
official ``HOGLayerC`` of ggjy/FastMIM.pytorch@d4eea0d ``util/hog_layer.py`` (PIL/torchvision imports dropped),
``HOGLayer``, ``random_masking`` and ``recal_mask`` of Haoqing-Wang/LocalMIM@314a6e5 ``ViT/models_mim.py`` and
``mim_per_sample_block_masking`` of FastMIM ``mim_vit_pretrain.py`` (the methods called with a stand-in ``self``
holding ``img_size``/``block_size``/``patch_size`` or ``scale = [4, 2, 1, 0.5]``). Inputs:

- ``img`` (2, 3, 48, 48) and ``rect`` (2, 3, 40, 56): dyadic values ``k/256`` in [−2, 2) drawn with
  ``np.random.RandomState(20221213)`` (image 1 of ``img`` has a flat 16×16 top-left corner), so every Sobel sum is
  exact in float32; pixels were nudged by 1/256 until no pixel's float64 ``phase/π·nbins`` lies within 1e-4 of an
  integer for nbins 9 and 18, with no bias and both biases below, except the reflected-border zeros (exact
  bin edges by construction, which the layers must reproduce).
- ``<id>/out``: ``HOGLayerC(**kwargs)(x)``, or LocalMIM's per-channel use ``cat([HOGLayer(x[:, c:c+1]) for c in
  RGB], 1)`` (the official ``HOG()`` before its flatten); ``seeded_bias`` is ``conv.bias`` of
  ``HOGLayer(18, 8, bias=True)`` built after ``torch.manual_seed(0)`` (upstream's default init), ``dyadic_bias``
  is (0.375, −0.25); both were copied into the official layer's ``conv.bias``. ``meta`` (JSON) lists the cases.
- masking: ``<id>/noise`` is what ``torch.rand`` draws after ``torch.manual_seed(100 + i)`` (block) or
  ``200 + i`` (random); the official function ran after the same seed, so it drew that noise, and its outputs
  are ``<id>/mask``, ``<id>/loss_mask``, ``<id>/x_keep``, ``<id>/ids_restore``, ``<id>/recal_<scale>``.

The bin is a step function of the phase: where a pixel sits on (or, for non-dyadic inputs, within float rounding
of) a bin edge, the comparison shares the step (the reference's bin is fed to the layer's ``histogram``, and the flips
are counted and bounded) instead of widening a tolerance.
"""
from __future__ import annotations

import json
import math

import mindspore as ms
import numpy as np
import pytest
import torch
from mindspore import Tensor

import ms_models.mim as ms_mim
import torch_ref.mim as t_mim
from helpers import DATA, rel_err
from ms_models.context import execution_mode

ORACLE = np.load(DATA / "mim_official_hog.npz")
META = json.loads(str(ORACLE["meta"]))
HOG_CASES = {c["id"]: c for c in META["hog"]}
MASK_CASES = {c["id"]: c for c in META["masking"]}

TORCH_TOL = 1e-5    # contract: HOG maps; torch_ref sums the same exact Sobel values, cell sums of <= 1024 terms in
                    # another order and a hand-written norm: a few float32 ulps (measured <= 3.4e-7)
MS_TOL = 1e-4       # contract: MindSpore kernels (sqrt/atan2/reductions) of other implementations (measured <= 3e-7)
EDGE = 1e-4         # |phase/π·nbins − k| below which a pixel counts as on a bin edge (float32 phase error ~1e-6)
KX = np.array([[1, 0, -1], [2, 0, -2], [1, 0, -1]], np.float64)


# ---- the numpy float64 re-statement (contract §2.1) ------------------------------------------------------------

def np_hog(x: np.ndarray, nbins: int, pool: int, mean: bool, norm: bool = True, bias=(0.0, 0.0)):
    """``(out (B, C·nbins, H//pool, W//pool), bins (B, C, H, W), v = phase/π·nbins, mag)`` in float64: reflect pad,
    explicit 3×3 cross-correlation, ``floor(v) mod nbins``, cell sum or mean, ``x / max(‖x‖, 1e-12)``."""
    p = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)), mode="reflect")
    h, w = x.shape[-2:]
    gx = sum(KX[a, b] * p[..., a:a + h, b:b + w] for a in range(3) for b in range(3)) + bias[0]
    gy = sum(KX.T[a, b] * p[..., a:a + h, b:b + w] for a in range(3) for b in range(3)) + bias[1]
    mag, v = np.sqrt(gx ** 2 + gy ** 2), np.arctan2(gx, gy) / np.pi * nbins
    bins = np.floor(v).astype(np.int64) % nbins
    hist = np.stack([(bins == k) * mag for k in range(nbins)], 2)
    hp, wp = h // pool, w // pool
    hist = hist[..., :hp * pool, :wp * pool].reshape(*hist.shape[:3], hp, pool, wp, pool)
    out = hist.mean((4, 6)) if mean else hist.sum((4, 6))
    if norm:
        out = out / np.maximum(np.sqrt((out ** 2).sum(2, keepdims=True)), 1e-12)
    return out.reshape(x.shape[0], -1, hp, wp), bins, v, mag


def near_edge(v: np.ndarray) -> np.ndarray:
    return np.abs(v - np.round(v)) < EDGE


# ---- running the layers -----------------------------------------------------------------------------------------

def make_layer(framework: str, case: dict):
    """The layer of an oracle case in ``framework`` ("torch" or "ms"), its bias loaded."""
    mod = t_mim if framework == "torch" else ms_mim
    if case["layer"] == "HOGLayerC":
        return mod.HOGLayerC(**case["kwargs"])
    layer = mod.HOGLayer(**case["kwargs"], bias=case["bias"] is not None)
    if case["bias"] is not None:
        values = ORACLE[case["bias"]]
        if framework == "torch":
            with torch.no_grad():
                layer.conv.bias.copy_(torch.from_numpy(values))
        else:
            layer.conv.bias.set_data(Tensor(values))
    return layer


def channels(layer, x: np.ndarray) -> list[np.ndarray]:
    """The inputs the layer is called on: the image (HOGLayerC), or each colour channel (LocalMIM's ``HOG``)."""
    return [x] if type(layer).__name__ == "HOGLayerC" else [x[:, c:c + 1] for c in range(x.shape[1])]


def forward(layer, x: np.ndarray) -> np.ndarray:
    """The layer's output on ``x`` (LocalMIM: per channel, concatenated R, G, B), in the current MindSpore mode."""
    if isinstance(layer, torch.nn.Module):
        return np.concatenate([layer(torch.from_numpy(xc)).numpy() for xc in channels(layer, x)], 1)
    return np.concatenate([layer(Tensor(xc)).asnumpy() for xc in channels(layer, x)], 1)


def shared_step(layer, x: np.ndarray, ref_bins: np.ndarray, near: np.ndarray) -> tuple[np.ndarray, int, int]:
    """Forward with the step shared: ``(out, flips, off_edge_mismatches)``. The layer's own ``(mag, bin)``
    (``orientation``) is kept, except at the pixels ``near`` a bin edge, which take ``ref_bins``; ``histogram`` makes
    the output. ``flips`` counts the near-edge pixels whose own bin differed, ``off_edge_mismatches`` the others
    (must be 0: away from an edge a bin is not a matter of rounding). MindSpore: PyNative."""
    outs, flips, off, c0 = [], 0, 0, 0
    is_torch = isinstance(layer, torch.nn.Module)
    for xc in channels(layer, x):
        ref, nr = ref_bins[:, c0:c0 + xc.shape[1]], near[:, c0:c0 + xc.shape[1]]
        c0 += xc.shape[1]
        if is_torch:
            with torch.no_grad():
                mag, bins = layer.orientation(torch.from_numpy(xc))
            own = bins.numpy()
            forced = torch.from_numpy(np.where(nr, ref, own)).to(bins.dtype)
            with torch.no_grad():
                outs.append(layer.histogram(mag, forced).numpy())
        else:
            mag, bins = layer.orientation(Tensor(xc))
            own = bins.asnumpy()
            outs.append(layer.histogram(mag, Tensor(np.where(nr, ref, own).astype(own.dtype))).asnumpy())
        flips += int((nr & (own != ref)).sum())
        off += int((~nr & (own != ref)).sum())
    return np.concatenate(outs, 1), flips, off


def np_case(case: dict):
    """The numpy re-statement of an oracle case: ``(out, bins, v, mag)``."""
    kw = case["kwargs"]
    bias = (0.0, 0.0) if case.get("bias") is None else tuple(float(b) for b in ORACLE[case["bias"]])
    return np_hog(ORACLE[case["input"]], kw["nbins"], kw["pool"], case["layer"] == "HOGLayer",
                  kw.get("norm_pix_loss", True), bias)


# ---- HOG against the official outputs ---------------------------------------------------------------------------

@pytest.mark.parametrize("framework", ["torch", "ms"])
@pytest.mark.parametrize("cid", list(HOG_CASES))
def test_hog_official(cid, framework, request):
    """torch_ref and MindSpore (PyNative) vs the recorded official output; the step checked pixel by pixel against
    the float64 bins (no near-edge pixel may flip: the op order is upstream's), then the continuous part with the
    step shared."""
    if framework == "ms":
        request.getfixturevalue("pynative_mode")
    tol = TORCH_TOL if framework == "torch" else MS_TOL
    case = HOG_CASES[cid]
    ref, x = ORACLE[f"{cid}/out"], ORACLE[case["input"]]
    layer = make_layer(framework, case)
    assert rel_err(forward(layer, x), ref) <= tol
    _, bins64, v, _ = np_case(case)
    out, flips, off = shared_step(layer, x, bins64, near_edge(v))
    assert (flips, off) == (0, 0)
    assert rel_err(out, ref) <= tol


@pytest.mark.parametrize("cid", list(HOG_CASES))
def test_hog_official_ms_graph(cid, graph_mode):
    """The compiled layers (``construct`` in GRAPH_MODE; the step is not forced there: the recorded inputs keep
    every pixel off the edges or exactly on them, and PyNative above checks the bins themselves)."""
    case = HOG_CASES[cid]
    assert rel_err(forward(make_layer("ms", case), ORACLE[case["input"]]), ORACLE[f"{cid}/out"]) <= MS_TOL


def test_oracle_border_pixels_are_exact_edges():
    """The recorded inputs do exercise the exact-edge rule: without a bias every reflected border pixel has
    gx = 0 (left/right) or gy = 0 (top/bottom), i.e. v ∈ {0, ±nbins} or ±nbins/2 (an edge for nbins = 18)."""
    _, _, v, mag = np_case(HOG_CASES["fastmim_nb18_p4"])
    assert np.all(np.isin(v[..., :, [0, -1]], [0.0, 18.0, -18.0]))
    top = v[..., [0, -1], 1:-1]
    assert np.all(np.isin(top, [9.0, -9.0]) | (top == 0))
    inner = (mag > 0)[..., 1:-1, 1:-1]       # the flat corner of image 1 has no gradient
    assert not near_edge(v[..., 1:-1, 1:-1][inner]).any()


# ---- HOG against the numpy re-statement, closed forms, invariants ----------------------------------------------

def run_layer(framework: str, cls: str, x: np.ndarray, **kwargs) -> np.ndarray:
    """Forward of a fresh layer; "torch" or "pynative"."""
    if framework == "torch":
        return forward(getattr(t_mim, cls)(**kwargs), x)
    with execution_mode(ms.PYNATIVE_MODE):
        return forward(getattr(ms_mim, cls)(**kwargs), x)


@pytest.mark.parametrize("framework", ["torch", "pynative"])
@pytest.mark.parametrize("cls,nbins,pool", [("HOGLayerC", 9, 8), ("HOGLayerC", 18, 6), ("HOGLayer", 18, 4)])
def test_hog_numpy_restatement(framework, cls, nbins, pool):
    """Non-dyadic Gaussian images (Sobel sums rounded in float32): against float64, with the step shared at the
    near-edge pixels; the reflected-border pixels (exact zeros) must not flip, others may only by rounding."""
    x = np.random.RandomState(nbins + pool).randn(2, 3, 30, 36).astype(np.float32)
    ref, bins64, v, _ = np_hog(x, nbins, pool, mean=cls == "HOGLayer")
    near = near_edge(v)
    border = np.zeros_like(near)
    border[..., [0, -1], :] = border[..., :, [0, -1]] = True
    with execution_mode(ms.PYNATIVE_MODE):
        mod = t_mim if framework == "torch" else ms_mim
        layer = getattr(mod, cls)(nbins, pool)
        out, flips, off = shared_step(layer, x, bins64, near)
        _, flips_border, _ = shared_step(layer, x, bins64, near & border)
    assert off == 0 and flips_border == 0
    assert flips <= int((near & ~border).sum())     # only interior pixels within 1e-4 of an edge may differ
                                                    # (float32 vs float64 rounding; 0 of 1..3 measured)
    assert rel_err(out, ref) <= (TORCH_TOL if framework == "torch" else MS_TOL)


def ramp(theta_deg: float, size: int = 16) -> tuple[np.ndarray, float, float]:
    """A dyadic ramp ``I = a·col + b·row`` with ``(a, b) ≈ (cos θ, sin θ)`` (multiples of 1/64), 3 equal
    channels, and its exact (a, b)."""
    a = round(math.cos(math.radians(theta_deg)) * 64) / 64
    b = round(math.sin(math.radians(theta_deg)) * 64) / 64
    r, c = np.mgrid[:size, :size]
    img = (a * c + b * r).astype(np.float32)
    return np.broadcast_to(img, (1, 3, size, size)).copy(), a, b


# (θ, FastMIM bin) of reference/methods.md §0.2 for nbins = 9: bin = floor(((90° − θ) mod 180°) / 20°)
RAMP_TABLE = [(5, 4), (15, 3), (25, 3), (45, 2), (85, 0), (95, 8), (135, 6), (175, 4)]


@pytest.mark.parametrize("framework", ["torch", "pynative"])
@pytest.mark.parametrize("cls", ["HOGLayerC", "HOGLayer"])
def test_hog_ramp_closed_form(framework, cls):
    """Ramps of gradient direction θ = atan2(d_row, d_col): every interior cell is one-hot at the tabulated bin
    (and at ``floor(((90 − θ) mod 180) / (180/nbins))`` for nbins = 18, 22); the corner cell mixes, in closed form,
    (p−1)² interior pixels (mag 8·√(a²+b²)), p−1 left-column pixels (gx = 0: bin 0, mag 8|b|) and p−1 top-row
    pixels (gy = 0: bin nbins//2, mag 8|a|); the corner pixel has no gradient. nbins = 22 is not an upstream
    setting: there ``float32(−π/2) / π * 22`` is exactly −11 (bin 11) but ``float32(−π/2) * (22/π)`` rounds below
    (bin 10), so it pins the op order (at 9 and 18 both orders happen to round to the same bins)."""
    p = 4
    for theta, expected in RAMP_TABLE:
        x, a, b = ramp(theta)
        true_theta = math.degrees(math.atan2(b, a))
        for nbins in (9, 18, 22):
            k = expected if nbins == 9 else math.floor(((90 - true_theta) % 180) / (180 / nbins))
            if nbins == 9:
                assert k == math.floor(((90 - true_theta) % 180) / 20)
            out = run_layer(framework, cls, x, nbins=nbins, pool=p)[0].reshape(3, nbins, 4, 4)
            onehot = np.eye(nbins)[k]
            assert np.allclose(out[:, :, 1:3, 1:3], onehot[None, :, None, None], atol=1e-6, rtol=0)
            corner = np.zeros(nbins)
            corner[k] += (p - 1) ** 2 * 8 * math.hypot(a, b)
            corner[0] += (p - 1) * 8 * abs(b)
            corner[nbins // 2] += (p - 1) * 8 * abs(a)
            corner /= np.linalg.norm(corner)
            for ch in range(3):
                assert np.allclose(out[ch, :, 0, 0], corner, atol=1e-6, rtol=0), (theta, nbins)


@pytest.mark.parametrize("framework", ["torch", "pynative"])
def test_hog_invariants(framework):
    """Unit L2 norm per non-empty cell; zero cells on a constant image; per-channel affine invariance (exact
    dyadic scale and shift); FastMIM's un-normalised cells are the sums, LocalMIM's the means (× pool²)."""
    x = np.random.RandomState(7).randint(-256, 256, (1, 3, 24, 24)).astype(np.float32) / 128
    out = run_layer(framework, "HOGLayerC", x, nbins=9, pool=8).reshape(1, 3, 9, 3, 3)
    assert np.allclose(np.linalg.norm(out, axis=2), 1.0, atol=1e-6)
    flat = np.full((1, 3, 16, 16), 0.75, np.float32)
    assert np.all(run_layer(framework, "HOGLayerC", flat) == 0)
    assert np.all(run_layer(framework, "HOGLayer", flat, nbins=9, pool=8) == 0)
    scale = np.array([2.0, 0.5, 4.0], np.float32).reshape(1, 3, 1, 1)
    shift = np.array([-1.0, 0.25, 3.0], np.float32).reshape(1, 3, 1, 1)
    assert rel_err(run_layer(framework, "HOGLayerC", x * scale + shift, nbins=9, pool=8), out.reshape(1, 27, 3, 3)) \
        <= 1e-6
    sums = run_layer(framework, "HOGLayerC", x, nbins=9, pool=8, norm_pix_loss=False)
    ref = np_hog(x, 9, 8, mean=False, norm=False)[0]
    assert rel_err(sums, ref) <= 1e-6
    hist = ref.reshape(1, 3, 9, 3, 3)
    hist = hist / np.linalg.norm(hist, axis=2, keepdims=True)
    assert rel_err(run_layer(framework, "HOGLayer", x, nbins=9, pool=8), hist.reshape(1, 27, 3, 3)) <= 1e-6


@pytest.mark.parametrize("framework", ["torch", "pynative"])
def test_hog_bias_flat_cell_one_hot(framework):
    """With ``bias`` a flat region has gradient (b0, b1): its cells are one-hot at ``floor(atan2(b0, b1)/π·nbins)
    mod nbins``; bias values come from an assignment (``copy_`` / ``set_data``), as from a checkpoint."""
    bias = np.array([-0.2, 0.15], np.float32)
    k = math.floor(math.atan2(-0.2, 0.15) / math.pi * 18) % 18
    flat = np.full((2, 1, 16, 16), -0.5, np.float32)
    if framework == "torch":
        layer = t_mim.HOGLayer(18, 8, bias=True)
        with torch.no_grad():
            layer.conv.bias.copy_(torch.from_numpy(bias))
        out = forward(layer, flat)
    else:
        with execution_mode(ms.PYNATIVE_MODE):
            layer = ms_mim.HOGLayer(18, 8, bias=True)
            layer.conv.bias.set_data(Tensor(bias))
            out = forward(layer, flat)
    assert out.shape == (2, 18, 2, 2)
    assert np.allclose(out, np.eye(18)[k][None, :, None, None], atol=1e-7, rtol=0)


def test_hog_parameters_and_keys():
    """State-dict keys, shapes, frozen Sobel values and the bias init range, both frameworks (official keys:
    ``HOGLayer.conv.{weight,bias}``, ``HOGLayerC.weight_{x,y}``)."""
    kx = KX.astype(np.float32)
    for bias in (False, True):
        t = t_mim.HOGLayer(9, 8, bias=bias)
        m = ms_mim.HOGLayer(9, 8, bias=bias)
        keys = {"conv.weight"} | ({"conv.bias"} if bias else set())
        assert set(t.state_dict()) == keys == set(m.parameters_dict())
        for w in (t.state_dict()["conv.weight"].numpy(), m.parameters_dict()["conv.weight"].asnumpy()):
            assert w.shape == (2, 1, 3, 3) and np.array_equal(w[0, 0], kx) and np.array_equal(w[1, 0], kx.T)
        assert not any(p.requires_grad for p in t.parameters()) and not m.trainable_params()
        if bias:
            for b in (t.conv.bias.detach().numpy(), m.conv.bias.asnumpy()):
                assert b.shape == (2,) and np.all(np.abs(b) <= 1 / 3) and np.any(b != 0)
    t, m = t_mim.HOGLayerC(), ms_mim.HOGLayerC()
    assert set(t.state_dict()) == {"weight_x", "weight_y"} == set(m.parameters_dict())
    for sd in ({k: v.numpy() for k, v in t.state_dict().items()},
               {k: v.asnumpy() for k, v in m.parameters_dict().items()}):
        assert sd["weight_x"].shape == (3, 1, 3, 3) and all(np.array_equal(sd["weight_x"][c, 0], kx) for c in range(3))
        assert np.array_equal(sd["weight_y"], sd["weight_x"].transpose(0, 1, 3, 2))
    assert (t.nbins, t.pool, t.norm_pix_loss) == (9, 8, True)
    for layer in (ms_mim.HOGLayer(9, 8), m):       # Cell walks (set_train) work: no method shadows nn.Cell's
        assert layer.set_train(False) is layer and not layer.training


def test_hog_layer_rejects_multichannel():
    with pytest.raises(ValueError):
        t_mim.HOGLayer(9, 8)(torch.zeros(1, 3, 16, 16))
    with execution_mode(ms.PYNATIVE_MODE), pytest.raises(ValueError):
        ms_mim.HOGLayer(9, 8)(Tensor(np.zeros((1, 3, 16, 16), np.float32)))


# ---- masking ---------------------------------------------------------------------------------------------------

def block_mask(framework: str, case: dict, noise: np.ndarray | None):
    imgs = np.zeros((noise.shape[0] if noise is not None else 2, 3, case["height"], case["height"]), np.float32)
    args = (case["mask_ratio"], case["img_size"], case["block_size"], case["patch_size"])
    if framework == "torch":
        out = t_mim.block_masking(torch.from_numpy(imgs), *args,
                                  noise=None if noise is None else torch.from_numpy(noise))
        return tuple(o.numpy() for o in out)
    with execution_mode(ms.PYNATIVE_MODE):
        out = ms_mim.block_masking(Tensor(imgs), *args, noise=None if noise is None else Tensor(noise))
        return tuple(o.asnumpy() for o in out)


def rand_mask(framework: str, x: np.ndarray, ratio: float, noise: np.ndarray | None):
    if framework == "torch":
        out = t_mim.random_masking(torch.from_numpy(x), ratio, None if noise is None else torch.from_numpy(noise))
        return tuple(o.numpy() for o in out)
    with execution_mode(ms.PYNATIVE_MODE):
        out = ms_mim.random_masking(Tensor(x), ratio, None if noise is None else Tensor(noise))
        return tuple(o.asnumpy() for o in out)


def recal(framework: str, mask: np.ndarray, scale: float) -> np.ndarray:
    if framework == "torch":
        return t_mim.recal_mask(torch.from_numpy(mask), scale).numpy()
    with execution_mode(ms.PYNATIVE_MODE):
        return ms_mim.recal_mask(Tensor(mask), scale).asnumpy()


FRAMEWORKS = ("torch", "pynative")


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_masking_official(framework):
    """Masks, kept tokens, ``ids_restore`` and per-level masks equal the official ones exactly (same noise)."""
    for cid, case in MASK_CASES.items():
        noise = ORACLE[f"{cid}/noise"]
        if case["fn"] == "block_masking":
            mask, loss_mask = block_mask(framework, case, noise)
            assert np.array_equal(mask, ORACLE[f"{cid}/mask"]) and np.array_equal(loss_mask, ORACLE[f"{cid}/loss_mask"])
            assert mask.dtype.kind == loss_mask.dtype.kind == "i"
            continue
        x_keep, mask, ids_restore = rand_mask(framework, ORACLE[f"{cid}/x"], case["mask_ratio"], noise)
        assert np.array_equal(x_keep, ORACLE[f"{cid}/x_keep"]) and np.array_equal(mask, ORACLE[f"{cid}/mask"])
        assert np.array_equal(ids_restore, ORACLE[f"{cid}/ids_restore"]) and mask.dtype == np.float32
        for s in (4.0, 2.0, 1.0, 0.5):
            if f"{cid}/recal_{s}" in ORACLE:
                m = recal(framework, mask, s)
                assert m.dtype == np.float32 and np.array_equal(m, ORACLE[f"{cid}/recal_{s}"])


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_block_masking_equations(framework):
    """n − int(n·(1 − r)) masked blocks per sample, exactly the largest-noise ones; the pixel mask is the block
    mask spread over H/√n pixels; the loss mask is repeated to token resolution when block > patch."""
    rs = np.random.RandomState(3)
    for img_size, block, patch, h, ratio in [(64, 16, 16, 64, 0.75), (128, 32, 16, 128, 0.6), (64, 16, 8, 48, 0.5)]:
        m = img_size // block
        noise = rs.permutation(2 * m * m).reshape(2, m * m).astype(np.float32) / (2 * m * m)
        case = dict(mask_ratio=ratio, img_size=img_size, block_size=block, patch_size=patch, height=h)
        mask, loss_mask = block_mask(framework, case, noise)
        len_keep = int(m * m * (1 - ratio))
        blocks = np.ones((2, m * m), np.int64)
        np.put_along_axis(blocks, np.argsort(noise, 1)[:, :len_keep], 0, 1)
        blocks = blocks.reshape(2, 1, m, m)
        assert np.all(blocks.sum((1, 2, 3)) == m * m - len_keep)
        assert np.array_equal(mask, np.kron(blocks, np.ones((1, 1, h // m, h // m), np.int64)))
        rep = block // patch if block > patch else 1
        assert np.array_equal(loss_mask, np.kron(blocks, np.ones((1, 1, rep, rep), np.int64)))
    mask, loss_mask = block_mask(framework, dict(mask_ratio=0.75, img_size=64, block_size=16, patch_size=16,
                                                 height=64), None)   # drawn noise
    assert mask.shape == (2, 1, 64, 64) and np.all(loss_mask.sum((1, 2, 3)) == 12)
    with pytest.raises(ValueError):
        block_mask(framework, dict(mask_ratio=0.75, img_size=64, block_size=16, patch_size=16, height=50), None)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_random_masking_equations(framework):
    """The int(L·(1 − r)) smallest-noise tokens are kept in ascending noise order; the mask marks the rest;
    ``ids_restore`` inverts the shuffle; drawn noise gives the same counts."""
    rs = np.random.RandomState(4)
    x = rs.randn(3, 196, 5).astype(np.float32)
    noise = rs.permutation(3 * 196).reshape(3, 196).astype(np.float32) / 600
    x_keep, mask, ids_restore = rand_mask(framework, x, 0.75, noise)
    order = np.argsort(noise, 1)
    assert np.array_equal(x_keep, np.take_along_axis(x, order[:, :49, None], 1))
    assert np.array_equal(mask, _mask_of(order, 49)) and np.all(mask.sum(1) == 147)
    assert np.array_equal(np.take_along_axis(order, ids_restore.astype(np.int64), 1), np.tile(np.arange(196), (3, 1)))
    x_keep, mask, _ = rand_mask(framework, x, 0.75, None)
    assert x_keep.shape == (3, 49, 5) and np.all(mask.sum(1) == 147)


def _mask_of(order: np.ndarray, len_keep: int) -> np.ndarray:
    mask = np.ones(order.shape, np.float32)
    np.put_along_axis(mask, order[:, :len_keep], 0, 1)
    return mask


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_recal_mask_equations(framework):
    """Nearest upsampling for scale ≥ 1 (np.kron); at 0.5 the 2×2 means, multiples of 0.25 (hand-made 4×4)."""
    m = np.array([[1, 1, 0, 1], [1, 0, 0, 0], [0, 0, 1, 1], [1, 0, 1, 1]], np.float32)
    mask = np.stack([m, 1 - m]).reshape(2, 16)
    assert np.array_equal(recal(framework, mask, 0.5), np.array([[0.75, 0.25, 0.25, 1.0], [0.25, 0.75, 0.75, 0.0]]))
    for s in (1.0, 2.0, 4.0):
        up = np.stack([np.kron(mm, np.ones((int(s), int(s)))) for mm in (m, 1 - m)]).reshape(2, -1)
        assert np.array_equal(recal(framework, mask, s), up)


def test_masking_torch_vs_ms():
    """Both frameworks give the same masks from the same injected noise (ties-free random noise, larger grids)."""
    rs = np.random.RandomState(5)
    noise = rs.rand(4, 196).astype(np.float32)
    x = rs.randn(4, 196, 8).astype(np.float32)
    for a, b in zip(rand_mask("torch", x, 0.75, noise), rand_mask("pynative", x, 0.75, noise)):
        assert np.array_equal(a, b)
    case = dict(mask_ratio=0.75, img_size=224, block_size=16, patch_size=16, height=224)
    for a, b in zip(block_mask("torch", case, noise), block_mask("pynative", case, noise)):
        assert np.array_equal(a, b)
    mask = rand_mask("torch", x, 0.75, noise)[1]
    for s in (4.0, 2.0, 1.0, 0.5):
        assert np.array_equal(recal("torch", mask, s), recal("pynative", mask, s))
