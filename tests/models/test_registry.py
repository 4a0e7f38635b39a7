"""Registry-driven tests: every registered model, both frameworks, no per-model test code (like timm's).
The training API (features, heads, weight decay, parameter groups, ``set_epoch``) is in ``test_api.py``.

Models over 100 M parameters, 10 GFLOP per test batch or 1500 modules (``helpers.is_heavy``: vanillanet_13
and the x1.5 pair, ViG-B, PViG-S/M/B, BiMLP-M) are built only, for CI time (the suite must stay under 15
minutes on 2 cores): their cfg and their state_dict keys and shapes against the official code's are checked; forward, parity,
backward and round-trip tests run on every other model at the cfg's small ``test_input_size``, and the
heavy variants share all their code with a tested smaller variant of the same family. The gradient test
(torch float64 and float32 against MindSpore, eval and train mode) runs on the smallest model of each set of
module types (``helpers.smallest_per_structure``): the other variants differ only in depth and width. Graph
models (ViG) run the parity and gradient tests with one shared kNN graph (``_shared_graph``).
"""
from __future__ import annotations

import inspect
import json

import mindspore as ms
import numpy as np
import pytest
import torch

import ms_models
import torch_ref
from convert.api import convert_file, ms_twin, name_map
from convert.io import read_checkpoint, write_checkpoint
from helpers import (DATA, MAX_FLIPS, NEAR_TIE, ProjectedSum, SharedKinks, SharedSteps, cached_state, is_heavy,
                     load_torch_state, record_kink_inputs, record_steps, rel_err, sample_input, separated_graph,
                     smallest_per_structure, torch_with_state)
from ms_models.context import execution_mode
from specs import list_cfgs

MODELS = torch_ref.list_models()
LIGHT = [n for n in MODELS if not is_heavy(n)]
GRADIENT = smallest_per_structure(LIGHT)
TOL = 1e-4   # float32 parity, relative to the output scale; observed ~3e-6 (see convert/parity.py)
# max-relative maxima in the gradient test's graph are separated by this fraction of their Grapher's key scale
# (measured on torch float32 keys): float32 moves PViG-Ti's deepest Grapher keys by <= 4e-6 of that scale against
# float64 (torch and MindSpore alike), so no framework's rounding can reverse a maximum (2 x 2 x 4e-6 < GAP)
GAP = 5e-5


def _official(name: str):
    family = torch_ref.get_model_cfg(name).family
    path = DATA / f"{family}_official_keys.json"
    return json.loads(path.read_text())["models"][name]


def test_both_frameworks_register_the_same_names():
    assert MODELS == ms_models.list_models() == list_cfgs()
    assert len(MODELS) >= 11


def test_unknown_name_lists_close_matches():
    for create in (torch_ref.create_model, ms_models.create_model):
        with pytest.raises(ValueError, match="vanillanet_5"):
            create("vanilanet_5")


@pytest.mark.parametrize("name", MODELS)
def test_cfg_fields(name):
    cfg = torch_ref.get_model_cfg(name)
    for field in ("input_size", "mean", "std", "crop_pct", "interpolation", "num_classes", "first_conv",
                  "classifier", "paper", "official_code"):
        assert getattr(cfg, field) not in (None, "", ()), field
    assert cfg.urls or "no checkpoint is published" in cfg.notes     # BiMLP: none exists
    assert len(cfg.mean) == len(cfg.std) == cfg.input_size[0] == 3
    with torch.device("meta"):
        keys = torch_ref.create_model(name).state_dict()
    assert f"{cfg.first_conv}.weight" in keys
    for head in cfg.classifier:
        assert f"{head}.weight" in keys and keys[f"{head}.weight"].shape[0] == cfg.num_classes


@pytest.mark.parametrize("name", MODELS)
def test_keys_and_shapes_equal_official(name):
    """state_dict keys and shapes equal the official code's, in every form it has (train, deploy)."""
    for form, spec in _official(name)["forms"].items():
        with torch.device("meta"):
            model = torch_ref.create_model(name, **spec["kwargs"])
        got = {k: list(v.shape) for k, v in model.state_dict().items()}
        assert got == spec["shapes"], form


def _shared_graph(torch_model, x: np.ndarray, separated: bool = False):
    """(torch, MindSpore) neighbour indices for graph models (ViG), else (None, None).

    A kNN graph is a discontinuous function of the features: a float32 rounding difference between the
    frameworks can swap one neighbour and move random-weight logits by percents. For models that expose
    ``graph_indices`` the parity and gradient tests therefore run in shared-graph mode: the neighbour indices
    torch computes (same weights, input, train/eval mode) are fed to every model under comparison through the
    models' own ``graph`` argument, so everything downstream is compared at the unchanged tolerances. The
    free-running graphs' agreement is tested in ``test_convert.py`` and reported by ``convert.parity``.

    ``separated``: the gradient of a max-relative graph conv is discontinuous too (it routes each node's and
    channel's gradient to the neighbour holding the maximum), so the gradient test edits the graph until every
    maximum beats its runner-up by ``GAP`` of the Grapher's key scale (``helpers.separated_graph``).
    """
    if not hasattr(torch_model, "graph_indices"):
        return None, None
    graph = separated_graph(torch_model, x, GAP) if separated else torch_model.graph_indices(torch.from_numpy(x))
    return graph, tuple(ms.Tensor(g.numpy()) for g in graph)


def _run(model, x, graph):
    return model(x) if graph is None else model(x, graph)


@pytest.mark.parametrize("name", LIGHT)
def test_parity_torch_vs_mindspore(name):
    """Same converted weights, same input: MindSpore GRAPH_MODE logits equal torch's (float32).

    Binary networks run in PyNative with shared binarisation (``helpers.SharedSteps``: forward hooks are
    PyNative-only); their GRAPH_MODE forward is checked against the official code's outputs by their family
    tests."""
    model = torch_with_state(name)
    x = sample_input(name)
    graph_t, graph_m = _shared_graph(model, x)
    with torch.no_grad():
        ref = _run(model, torch.from_numpy(x), graph_t).numpy()
        steps = record_steps(model, lambda: _run(model, torch.from_numpy(x), graph_t))
    shared = SharedSteps()
    mode = ms.PYNATIVE_MODE if steps else ms.GRAPH_MODE
    with execution_mode(mode):
        mm = ms_twin(model, mode)
        mm.set_train(False)
        shared.force(mm, steps)
        got = _run(mm, ms.Tensor(x), graph_m).asnumpy()
    shared.remove()
    assert got.shape == ref.shape and np.isfinite(got).all()
    assert rel_err(ref, got) <= TOL
    assert shared.flipped <= MAX_FLIPS * shared.total


def _ce_loss_torch(model, x, y, graph=None):
    return torch.nn.functional.cross_entropy(_run(model, torch.from_numpy(x), graph), torch.from_numpy(y))


@pytest.mark.parametrize("name", LIGHT)
def test_torch_backward_reaches_every_parameter(name):
    model = torch_ref.create_model(name, num_classes=7).train()
    x = sample_input(name)
    _ce_loss_torch(model, x, np.arange(len(x)) % 7).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)


def _no_dropout(name: str) -> dict:
    """Constructor kwargs that switch dropout off, for the families that have a ``drop_rate``."""
    params = inspect.signature(torch_ref._registry.registry.model_class(name)).parameters
    return {"drop_rate": 0.0} if "drop_rate" in params else {}


@pytest.mark.slow
@pytest.mark.parametrize("name", GRADIENT)
def test_mindspore_gradients_equal_torch(name, pynative_mode):
    """``ms.value_and_grad`` gives torch's parameter gradients on the same weights and input.

    The loss is a fixed random projection of the logits (a plain vector-Jacobian product: cross-entropy
    saturates on these logits and cancels catastrophically), with BN in eval mode (training-mode BN on a
    batch of 2 at the small test size normalises over as few as 8 values per channel). Even so a float32
    max-pool or ReLU decision can flip against float64, so the reference is torch float64 and MindSpore
    float32 must be as close to it as torch float32 is (4x, or 1e-5 of the tensor's scale, 1e-4 for 0-D
    parameters), plus 1e-6 of
    the largest gradient for tensors whose exact gradient is zero. Train mode must run and give torch's
    cross-entropy loss (without dropout: the frameworks draw different masks). Graph models use one graph in
    all three: torch float32's neighbour indices, edited so that no max-relative maximum is a float32 near tie
    (``_shared_graph(separated=True)``; with the unedited graph two PViG-Ti maxima 4e-7 apart flip in MindSpore,
    and in torch float32 with channels_last, and move one fc1 weight gradient by 5.6 %). Binary networks share
    torch float32's binarised activations in all three, with each framework's own gradient estimator
    (``convert.parity.SharedSteps``), and torch float32's side of every kink of their gradients
    (``helpers.SharedKinks``: straight-through clip, PReLU/Maxout slope; on AMD EPYC without AVX-512, BiMLP-S
    has one clip flip in torch float64 at 4e-7 of its layer's scale and one PReLU flip in MindSpore at 1.6e-7,
    and the patch-embedding gradient then misses the bound by 1.7x). The train-mode loss is measured against torch float64 like the gradients (a
    quantiser can flip on a float32 rounding: BiMLP-S's loss moves 2 %).
    """
    classes = torch_ref.get_model_cfg(name).num_classes
    x, y = sample_input(name), np.array([3, 917], dtype=np.int64) % classes
    proj = np.random.RandomState(5).randn(len(x), classes).astype(np.float32)
    graph_t, graph_m = _shared_graph(torch_with_state(name), x, separated=True)
    ref_model, shared, kinks = torch_with_state(name), SharedSteps(), SharedKinks()
    with torch.no_grad():
        kink_inputs: dict[str, np.ndarray] = {}
        steps = record_steps(ref_model, lambda: kink_inputs.update(
            record_kink_inputs(ref_model, lambda: _run(ref_model, torch.from_numpy(x), graph_t))))
    grads_t = {}
    for dtype in (torch.float64, torch.float32):
        tm = torch_with_state(name).eval().to(dtype)
        shared.force(tm, steps)
        kinks.force(tm, kink_inputs)
        (_run(tm, torch.from_numpy(x).to(dtype), graph_t) * torch.from_numpy(proj).to(dtype)).sum().backward()
        shared.remove()
        kinks.remove()
        grads_t[dtype] = {k: p.grad.double().numpy() for k, p in tm.named_parameters() if p.requires_grad}
    mm = ms_twin(torch_with_state(name), **_no_dropout(name))
    params = mm.trainable_params()
    grad_fn = ms.value_and_grad(ProjectedSum(mm, proj), None, params)
    to_torch = name_map(name).ms_to_torch
    floor = 1e-6 * max(np.abs(g).max() for g in grads_t[torch.float64].values())
    mm.set_train(False)
    shared.force(mm, steps)
    kinks.force(mm, kink_inputs)
    _, grads = _run(grad_fn, ms.Tensor(x), graph_m)
    shared.remove()
    kinks.remove()
    assert kinks.flipped <= MAX_FLIPS * max(kinks.total, 1) and kinks.worst <= NEAR_TIE, (kinks.flipped, kinks.worst)
    assert len(grads) == len(grads_t[torch.float64])
    for p, g in zip(params, grads):
        ref, t32 = grads_t[torch.float64][to_torch[p.name]], grads_t[torch.float32][to_torch[p.name]]
        # a 0-D parameter's gradient is one reduction over the whole batch (AdaBin's binary-activation
        # scalars, ~1e4 terms that cancel): the project's float32 rule, 1e-4 of its scale (observed 4.7e-5)
        rel = 1e-4 if ref.ndim == 0 else 1e-5
        bound = max(4 * np.abs(t32 - ref).max(), rel * np.abs(ref).max()) + floor
        assert np.abs(g.asnumpy() - ref).max() <= bound, p.name
    mm.set_train(True)
    graph_t, graph_m = _shared_graph(torch_with_state(name).train(), x)     # batch-statistics BN: its own graph
    ce = ms.value_and_grad(lambda a, b: ms.ops.cross_entropy(_run(mm, a, graph_m), b), None, params)
    loss, grads = ce(ms.Tensor(x), ms.Tensor(y.astype(np.int32)))
    losses = {}
    for dtype in (torch.float64, torch.float32):
        no_drop = load_torch_state(torch_ref.create_model(name, **_no_dropout(name)), cached_state(name))
        losses[dtype] = torch.nn.functional.cross_entropy(
            _run(no_drop.train().to(dtype), torch.from_numpy(x).to(dtype), graph_t), torch.from_numpy(y)).item()
    loss_t = losses[torch.float64]     # binary nets: a float32 rounding can flip a quantised activation
    bound = max(4 * abs(losses[torch.float32] - loss_t), 1e-4 * max(1.0, abs(loss_t)))
    assert abs(float(loss.asnumpy()) - loss_t) <= bound
    assert all(np.isfinite(g.asnumpy()).all() for g in grads)
    assert shared.flipped <= MAX_FLIPS * shared.total


@pytest.mark.parametrize("name", LIGHT)
def test_convert_round_trip_is_bit_exact(name, tmp_path):
    """torch -> MindSpore .ckpt -> torch gives back every tensor bit for bit (BN step counters restored as 0)."""
    state = cached_state(name)
    write_checkpoint(state, tmp_path / "a.pth", container="model_ema")
    convert_file(name, tmp_path / "a.pth", tmp_path / "b.ckpt", "torch2ms")
    convert_file(name, tmp_path / "b.ckpt", tmp_path / "c.pth", "ms2torch")
    back = read_checkpoint(tmp_path / "c.pth")
    assert list(back) == list(state)
    nm = name_map(name)
    for k, v in state.items():
        if k in nm.torch_only:
            assert back[k].dtype == v.dtype and back[k].shape == v.shape
        else:
            assert back[k].dtype == v.dtype and np.array_equal(back[k], v), k
