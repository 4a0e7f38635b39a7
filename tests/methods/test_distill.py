"""VanillaKD logit-distillation losses (arXiv 2305.15781 §3; ``{torch_ref,ms_models}/distill.py``): the official
losses as oracle, closed forms, invariances, float64 gradients, MindSpore vs torch in both modes, the factory.

Oracle data: ``tests/data/vanillakd_official_losses.npz`` was made by running the official
Hao840/vanillaKD@a27b029 ``losses/{kd,dkd,dist,bkd}.py`` (torch 2.13 CPU, float32, unmodified) on logits drawn
with ``np.random.RandomState(20230525)``: ``z = s·N(0, 1)`` with s = 2 or 3, teacher s = 60 in the
``*_zero_teacher`` cases (softmax entries underflow to exactly 0; in DKD a target-class teacher probability too),
int64 labels or mixup(λ=0.7) of two 0.1-smoothed one-hots as soft targets, N = 1..6, C = 5..10. For each case it
holds ``<id>/z_s``, ``<id>/z_t``, ``<id>/target`` (DKD), the loss ``<id>/loss`` and ``<id>/grad`` = d loss / d z_s
(``backward``), and a JSON list ``meta`` of (id, class, constructor kwargs).
"""
from __future__ import annotations

import json

import mindspore as ms
import numpy as np
import pytest
import torch
from mindspore import Tensor, nn, ops

import ms_models.distill as ms_distill
import torch_ref.distill as t_distill
from helpers import DATA, rel_err
from ms_models.context import execution_mode

ORACLE = np.load(DATA / "vanillakd_official_losses.npz")
META = json.loads(str(ORACLE["meta"]))

TORCH_TOL = 1e-5    # torch_ref runs the official ops in the same order: float32 rounding at most
MS_TOL = 1e-4       # MindSpore float32 kernels (other reduction orders, softmax/log implementations)
F64_TOL = 1e-5      # torch_ref float32 vs float64 (and the 6-decimal reference table): a few float32 ulps through
                    # softmax and the log-difference cancellation of the KL, sums of <= 10 terms
FP16_TOL = 1e-3     # float16 gradients: one float16 ulp (2^-10) of the largest entry

# closed forms and invariances: torch_ref, and MindSpore in PyNative (GRAPH_MODE is checked against the oracle and
# torch_ref below; a compile per case would double this file's run time)
FRAMEWORKS = ("torch", "pynative")
MODES = {"graph": ms.GRAPH_MODE, "pynative": ms.PYNATIVE_MODE}
CLASSES = {"kd": "KLDiv", "dkd": "DKD", "dist": "DIST", "bkd": "BinaryKLDiv"}


def run(framework: str, cls: str, kwargs: dict, z_s: np.ndarray, z_t: np.ndarray,
        target: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Loss value and d loss / d z_s of ``cls(**kwargs)`` (numpy): torch_ref autograd in the inputs' dtype
    ("torch"; int labels as int64), or MindSpore ``value_and_grad`` in the current mode (None) or the named one."""
    if framework == "torch":
        zs = torch.tensor(z_s, requires_grad=True)
        t = None if target is None else torch.from_numpy(target.astype(np.int64) if target.ndim == 1 else target)
        loss = getattr(t_distill, cls)(**kwargs)(zs, torch.tensor(z_t), t)
        loss.backward()
        return loss.detach().numpy(), zs.grad.numpy()
    with execution_mode(MODES.get(framework)):
        args = [Tensor(z_s), Tensor(z_t)] + ([] if target is None else [Tensor(target)])
        value, grad = ms.value_and_grad(getattr(ms_distill, cls)(**kwargs), 0)(*args)
    assert value.shape == () and value.dtype == ms.float32
    return value.asnumpy(), grad.asnumpy()


def tolerance(framework: str) -> float:
    """Relative tolerance of a float32 loss against a float64 value."""
    return F64_TOL if framework == "torch" else MS_TOL


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def random_case(method: str, n: int = 6, c: int = 10, seed: int = 0, teacher_scale: float = 2.0):
    """Random logits (float32), int32 labels, and the constructor kwargs of ``method`` with non-default values."""
    r = np.random.RandomState(seed)
    z_s = (r.randn(n, c) * 2).astype(np.float32)
    z_t = (r.randn(n, c) * teacher_scale).astype(np.float32)
    kwargs = {"kd": {"temperature": 2.0}, "dkd": {"alpha": 0.5, "beta": 3.0, "temperature": 2.0},
              "dist": {"beta": 2.0, "gamma": 0.5, "tau": 2.0}, "bkd": {}}[method]
    return z_s, z_t, r.randint(0, c, n).astype(np.int32), kwargs


def soft_target(y: np.ndarray, c: int) -> np.ndarray:
    """Mixup (λ = 0.6) of two 0.1-smoothed one-hots; its argmax is ``y``."""
    smooth = np.full((len(y), c), 0.1 / c) + 0.9 * np.eye(c)[y]
    return (0.6 * smooth + 0.4 * np.roll(smooth, 1, axis=0)).astype(np.float32)


# --- 1. the official losses as oracle ---------------------------------------------------------------------------

def oracle(case: dict) -> tuple[str, dict, np.ndarray, np.ndarray, np.ndarray | None, np.ndarray, np.ndarray]:
    cid = case["id"]
    target = ORACLE[f"{cid}/target"] if f"{cid}/target" in ORACLE else None
    return (case["cls"], case["kwargs"], ORACLE[f"{cid}/z_s"], ORACLE[f"{cid}/z_t"], target,
            ORACLE[f"{cid}/loss"], ORACLE[f"{cid}/grad"])


@pytest.mark.parametrize("case", META, ids=[c["id"] for c in META])
def test_torch_ref_matches_official(case):
    cls, kwargs, z_s, z_t, target, loss, grad = oracle(case)
    value, g = run("torch", cls, kwargs, z_s, z_t, target)
    assert rel_err(loss, value) < TORCH_TOL and rel_err(grad, g) < TORCH_TOL


@pytest.mark.parametrize("case", META, ids=[c["id"] for c in META])
def test_ms_matches_official(case, any_mode):
    cls, kwargs, z_s, z_t, target, loss, grad = oracle(case)
    value, g = run(None, cls, kwargs, z_s, z_t, target)
    assert rel_err(loss, value) < MS_TOL and rel_err(grad, g) < MS_TOL


def test_oracle_covers_zero_teacher_probabilities():
    """The zero-probability cases really hold exact zeros (float32 softmax), DKD's in the target class too."""
    for cid in ("kd_zero_teacher", "dkd_zero_teacher", "bkd_zero_teacher"):
        assert (softmax(ORACLE[f"{cid}/z_t"].astype(np.float32)) == 0).any()
    z_t, y = ORACLE["dkd_zero_teacher/z_t"], ORACLE["dkd_zero_teacher/target"]
    assert (softmax(z_t)[np.arange(len(y)), y] == 0).any()


# --- 2. closed forms (reference notes §1.2) ---------------------------------------------------------------------

TABLE_S = np.array([[1, 2, 3], [0.5, 0.2, -1]], np.float32)
TABLE_T = np.array([[2, 1, 0], [1, 1, 1]], np.float32)
TABLE_Y = np.array([2, 0], np.int32)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_kd_two_class_closed_form(framework):
    """z_s = [0, 0], z_t = [ln 3, 0]: p_t = (3/4, 1/4), p_s = (1/2, 1/2)."""
    z_t = np.array([[np.log(3), 0]], np.float32)
    value, _ = run(framework, "KLDiv", {}, np.zeros((1, 2), np.float32), z_t)
    expected = 0.75 * np.log(1.5) + 0.25 * np.log(0.5)
    assert abs(value - expected) < tolerance(framework) * expected


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("cls, kwargs, expected", [
    ("KLDiv", {"temperature": 1.0}, 0.663383),
    ("KLDiv", {"temperature": 4.0}, 0.761130),
    ("DKD", {"temperature": 1.0}, 1.028667),
    ("DKD", {"temperature": 4.0}, 1.192628),
    ("DKD", {"alpha": 1.0, "beta": 0.0}, 0.396415),      # TCKD alone
    ("DKD", {"alpha": 0.0, "beta": 1.0}, 0.316126),      # NCKD alone
    ("DIST", {"tau": 1.0}, 2.766880),                    # N = 2: intra-class ρ = ±1, still a fixed number
    ("DIST", {"tau": 4.0}, 45.251811),
], ids=["kd-T1", "kd-T4", "dkd-T1", "dkd-T4", "tckd", "nckd", "dist-T1", "dist-T4"])
def test_reference_table(framework, cls, kwargs, expected):
    value, _ = run(framework, cls, kwargs, TABLE_S, TABLE_T, TABLE_Y)
    assert abs(value - expected) < tolerance(framework) * expected


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_dist_formula_float64(framework, tau):
    """DIST = β·τ²·(1 − mean_i ρ(rows)) + γ·τ²·(1 − mean_c ρ(columns)), ρ from ``np.corrcoef`` in float64 (the
    official eps 1e-8 against norm products >= 1e-3 here: < 1e-5 relative, within the tolerance)."""
    r = np.random.RandomState(1)
    z_s, z_t = (r.randn(2, 5, 4) * 2).astype(np.float32)
    y_s, y_t = softmax(z_s.astype(np.float64) / tau), softmax(z_t.astype(np.float64) / tau)
    inter = np.mean([np.corrcoef(a, b)[0, 1] for a, b in zip(y_s, y_t)])
    intra = np.mean([np.corrcoef(a, b)[0, 1] for a, b in zip(y_s.T, y_t.T)])
    expected = tau ** 2 * (2.0 * (1 - inter) + 0.5 * (1 - intra))
    value, _ = run(framework, "DIST", {"beta": 2.0, "gamma": 0.5, "tau": tau}, z_s, z_t)
    assert abs(value - expected) < tolerance(framework) * expected


# --- 3. invariances and float64 gradients -----------------------------------------------------------------------

@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_kd_is_zero_for_equal_logits(framework, temperature):
    """KL(p ‖ p) = 0, up to float32 rounding of log p_t vs log_softmax (relative to the scale T², the loss is
    T²·Σ p·(log p − log q)) and of softmax vs exp(log_softmax) (relative to the gradient's scale T/N)."""
    z = (np.random.RandomState(2).randn(4, 10) * 3).astype(np.float32)
    value, grad = run(framework, "KLDiv", {"temperature": temperature}, z, z)
    assert abs(value) < tolerance(framework) * temperature ** 2
    assert np.abs(grad).max() < tolerance(framework) * temperature / len(z)
    shifted, _ = run(framework, "KLDiv", {"temperature": temperature}, z, z[:, ::-1].copy())
    assert shifted > 0.1       # the test can fail: other logits give a clearly positive loss


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_dist_is_invariant_to_row_constants(framework):
    """softmax(z + c·1) = softmax(z) per row; the shifted logits (|c| <= 20) lose ~ulp(20) = 2e-6 in float32
    (2e-7 relative seen)."""
    z_s, z_t, _, kwargs = random_case("dist")
    c = np.random.RandomState(3).uniform(-20, 20, (2, len(z_s), 1)).astype(np.float32)
    v0, g0 = run(framework, "DIST", kwargs, z_s, z_t)
    v1, g1 = run(framework, "DIST", kwargs, z_s + c[0], z_t + c[1])
    assert rel_err(v0, v1) < tolerance(framework) and rel_err(g0, g1) < tolerance(framework)
    column_shift = np.linspace(-3, 3, 10, dtype=np.float32)       # a per-column shift does change it
    v2, _ = run(framework, "DIST", kwargs, z_s + column_shift, z_t)
    assert rel_err(v0, v2) > 1e-2


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_dkd_without_nckd_is_alpha_tckd(framework):
    """β = 0: α·T²·mean_n KL([p_t,gt, 1 − p_t,gt] ‖ [p_s,gt, 1 − p_s,gt]), written in float64 numpy."""
    z_s, z_t, y, _ = random_case("dkd", seed=4)
    alpha, temperature = 0.5, 2.0

    def binary(z):
        p = softmax(z.astype(np.float64) / temperature)[np.arange(len(y)), y]
        return np.stack([p, 1 - p], 1)

    b_s, b_t = binary(z_s), binary(z_t)
    expected = alpha * temperature ** 2 * (b_t * np.log(b_t / b_s)).sum(1).mean()
    value, _ = run(framework, "DKD", {"alpha": alpha, "beta": 0.0, "temperature": temperature}, z_s, z_t, y)
    assert abs(value - expected) < tolerance(framework) * expected


@pytest.mark.parametrize("method", list(CLASSES))
def test_gradients_against_float64(method):
    """d loss / d z_s of torch_ref in float64 (autograd) is the reference for torch_ref float32 and MindSpore
    float32 in both modes; DKD with soft targets."""
    z_s, z_t, y, kwargs = random_case(method, seed=5)
    target = soft_target(y, z_s.shape[1])
    _, ref = run("torch", CLASSES[method], kwargs, z_s.astype(np.float64), z_t.astype(np.float64), target)
    _, g32 = run("torch", CLASSES[method], kwargs, z_s, z_t, target)
    assert rel_err(ref, g32) < F64_TOL
    for framework in MODES:
        assert rel_err(ref, run(framework, CLASSES[method], kwargs, z_s, z_t, target)[1]) < MS_TOL


# --- 4. MindSpore vs torch_ref ----------------------------------------------------------------------------------

@pytest.mark.parametrize("method", list(CLASSES))
@pytest.mark.parametrize("inputs", ["float32", "float16", "zero_teacher"])
def test_ms_matches_torch_ref(method, inputs, any_mode):
    """Random logits, int32 labels; float16 logits are computed in float32 (equal values, float16 gradients);
    a teacher of scale 60 has exact-zero probabilities: finite values and gradients."""
    z_s, z_t, y, kwargs = random_case(method, seed=6, teacher_scale=60.0 if inputs == "zero_teacher" else 2.0)
    if inputs == "float16":
        z_s, z_t = z_s.astype(np.float16), z_t.astype(np.float16)
    value, grad = run(None, CLASSES[method], kwargs, z_s, z_t, y)
    t_value, t_grad = run("torch", CLASSES[method], kwargs, z_s, z_t, y)
    assert np.isfinite(value) and np.isfinite(grad).all() and grad.dtype == z_s.dtype
    assert rel_err(t_value, value) < MS_TOL
    assert rel_err(t_grad, grad) < (FP16_TOL if inputs == "float16" else MS_TOL)


@pytest.mark.parametrize("target_kind", ["int32", "int64", "soft"])
def test_dkd_target_forms(target_kind, any_mode):
    """int32 / int64 labels and soft targets (argmax = the labels) give torch_ref's loss on int64 labels."""
    z_s, z_t, y, kwargs = random_case("dkd", seed=7)
    target = {"int32": y, "int64": y.astype(np.int64), "soft": soft_target(y, z_s.shape[1])}[target_kind]
    value, grad = run(None, "DKD", kwargs, z_s, z_t, target)
    t_value, t_grad = run("torch", "DKD", kwargs, z_s, z_t, y)
    assert rel_err(t_value, value) < MS_TOL and rel_err(t_grad, grad) < MS_TOL


@pytest.mark.parametrize("framework", ["torch", *MODES])
def test_dkd_needs_target(framework):
    """A plain call (in MindSpore not under ``value_and_grad``: an exception raised inside a PyNative grad leaves
    MindSpore 2.8's grad executor broken for later grads, e.g. ``LayerNormGrad, the index 7 is out of range``)."""
    z_s, z_t = random_case("dkd")[:2]
    with pytest.raises(ValueError, match="DKD needs the labels"):
        if framework == "torch":
            t_distill.DKD()(torch.from_numpy(z_s), torch.from_numpy(z_t))
        else:
            with execution_mode(MODES[framework]):
                ms_distill.DKD()(Tensor(z_s), Tensor(z_t))


@pytest.mark.parametrize("method", list(CLASSES))
def test_ms_loss_trains_network_weights(method, graph_mode):
    """GRAPH_MODE ``value_and_grad`` w.r.t. a Dense layer's weights through the loss equals torch autograd."""
    r = np.random.RandomState(8)
    x = r.randn(6, 5).astype(np.float32)
    w, b = (r.randn(10, 5) * 0.5).astype(np.float32), r.randn(10).astype(np.float32)
    _, z_t, y, kwargs = random_case(method, seed=8)
    dense = nn.Dense(5, 10)
    ops.assign(dense.weight, Tensor(w))
    ops.assign(dense.bias, Tensor(b))
    loss = getattr(ms_distill, CLASSES[method])(**kwargs)

    def forward(x_, z_t_, y_):
        return loss(dense(x_), z_t_, y_)

    value, grads = ms.value_and_grad(forward, None, dense.trainable_params())(Tensor(x), Tensor(z_t), Tensor(y))
    linear = torch.nn.Linear(5, 10)
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(w))
        linear.bias.copy_(torch.from_numpy(b))
    t_value = getattr(t_distill, CLASSES[method])(**kwargs)(linear(torch.from_numpy(x)), torch.from_numpy(z_t),
                                                           torch.from_numpy(y.astype(np.int64)))
    t_value.backward()
    assert rel_err(t_value.detach().numpy(), value.asnumpy()) < MS_TOL
    for g, p in zip(grads, (linear.weight, linear.bias)):
        assert rel_err(p.grad.numpy(), g.asnumpy()) < MS_TOL


# --- 5. the factory ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("module", [t_distill, ms_distill], ids=["torch", "mindspore"])
@pytest.mark.parametrize("method, attrs", [
    ("kd", {"temperature": 3.0}),
    ("dkd", {"alpha": 0.5, "beta": 4.0, "temperature": 3.0}),
    ("dist", {"beta": 2.0, "gamma": 0.25, "tau": 3.0}),     # train-kd.py: DIST(tau=args.temperature)
    ("bkd", {}),
])
def test_factory_maps_flags_as_train_kd(module, method, attrs):
    loss = module.create_kd_loss(method, 3.0, 0.5, 4.0, 2.0, 0.25)
    assert type(loss) is getattr(module, CLASSES[method])
    assert {k: getattr(loss, k) for k in attrs} == attrs


@pytest.mark.parametrize("module", [t_distill, ms_distill], ids=["torch", "mindspore"])
def test_factory_defaults_are_train_kd_argparse(module):
    """--temperature 1, --dkd-alpha 1, --dkd-beta 2, --dist-beta 1, --dist-gamma 1."""
    dkd, dist = module.create_kd_loss("dkd"), module.create_kd_loss("dist")
    assert (module.create_kd_loss("kd").temperature, dkd.alpha, dkd.beta, dkd.temperature) == (1.0, 1.0, 2.0, 1.0)
    assert (dist.beta, dist.gamma, dist.tau) == (1.0, 1.0, 1.0)
    assert (module.DKD().alpha, module.DKD().beta, module.DIST().tau, module.KLDiv().temperature) == (1, 2, 1, 1)


@pytest.mark.parametrize("module", [t_distill, ms_distill], ids=["torch", "mindspore"])
def test_factory_rejects_unknown_method(module):
    with pytest.raises(ValueError, match=r"^unknown kd loss 'mse'; expected one of kd, dkd, dist, bkd$"):
        module.create_kd_loss("mse")
