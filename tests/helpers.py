"""Helpers shared by the tests (weights, inputs, error measure)."""
from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import torch

import mindspore as ms
from safetensors import safe_open
from safetensors.numpy import load_file

import torch_ref
from convert.api import torch_state_of
from convert.mapping import build_name_map, torch_to_ms
from convert.parity import SharedSteps
# the shared gradient decisions live with the training parity (which shares them at every step); the tests import
# them from here: MAX_FLIPS (share of step outputs / kink inputs allowed to be forced), NEAR_TIE (a forced kink
# input's distance from the kink, relative to the layer's input scale)
from convert.train_parity import (MAX_FLIPS, NEAR_TIE, SharedKinks, kink_layers, record_kink_inputs,  # noqa: F401
                                  separate_rows, separated_graph)
from torch_ref.testing import deterministic_weights

ROOT = Path(__file__).resolve().parents[1]     # the project checkout
DATA = Path(__file__).parent / "data"

HEAVY_PARAMS = 100e6
HEAVY_FLOPS = 10e9      # forward FLOPs of the test batch (2 images at the cfg's test_input_size)
HEAVY_MODULES = 1500    # graph size: MindSpore's compile time and PyNative per-op cost grow with the layer count


@functools.lru_cache(maxsize=None)
def _layer_types(name: str) -> tuple[frozenset, int]:
    """The module types ``name`` is made of, and its parameter count (train form, built on the meta device)."""
    with torch.device("meta"):
        model = torch_ref.create_model(name)
    return frozenset(type(m) for m in model.modules()), sum(p.numel() for p in model.parameters())


def smallest_per_structure(names: list[str]) -> list[str]:
    """The smallest model (by parameters) of each set of module types among ``names``, in registry order.

    Variants built from the same module types (VanillaNet-5..12, GhostNetV2 1.0/1.3/1.6, ViG-Ti/S) run the same
    layer code at other depths and widths, so the float64-referenced gradient test runs once per structure (CI
    time); a variant with a block of its own (adder ResNet-50's bottleneck) is its own structure. Every variant
    still gets the forward parity, backward-reach and round-trip tests."""
    best: dict[frozenset, str] = {}
    for name in names:
        types, count = _layer_types(name)
        if types not in best or count < _layer_types(best[types])[1]:
            best[types] = name
    return [n for n in names if n in best.values()]


def smallest_per_family(names: list[str]) -> list[str]:
    """The smallest model (by parameters) of each family among ``names`` (one family = one file of
    ``torch_ref/models``, so ViG and Pyramid ViG are one), in registry order: ``make test-fast`` runs the
    registry-parametrized tests on these only (``conftest.py``, ``--fast``)."""
    best: dict[str, str] = {}
    for name in names:
        family = torch_ref._registry.registry.model_class(name).__module__
        if family not in best or _layer_types(name)[1] < _layer_types(best[family])[1]:
            best[family] = name
    return [n for n in names if n in best.values()]


@functools.lru_cache(maxsize=None)
def is_heavy(name: str) -> bool:
    """Models above 100 M parameters (train form) or 10 GFLOP per test batch are too slow to train-step and
    gradient-check on a 2-core CI machine; for them the registry tests check the cfg and the keys and shapes
    against the official ones only (built on the meta device). The FLOP bound matters for models whose smallest input is large (ViG-B at 144, PViG-M/B at 224:
    the kNN needs k*dilation nodes); every VanillaNet below 100 M parameters stays under it (<= 6.6 GFLOP),
    and the smaller variants of the same families run the backward tests through the same code. The module
    bound catches deep graphs of cheap layers (BiMLP-M: 2088 modules; BiMLP-S, 1176 modules, already takes
    24 s CPU of GRAPH_MODE compile; BiMLP-S, same code but BatchNorm, is tested, and test_bimlp.py tests
    the GroupNorm form)."""
    from torch.utils.flop_counter import FlopCounterMode
    with torch.device("meta"):
        model = torch_ref.create_model(name).eval()
        if sum(p.numel() for p in model.parameters()) > HEAVY_PARAMS or len(list(model.modules())) > HEAVY_MODULES:
            return True
        x = torch.empty(2, *torch_ref.get_model_cfg(name).test_input_size)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(x)
    return counter.get_total_flops() > HEAVY_FLOPS


@functools.lru_cache(maxsize=None)
def cached_state(name: str) -> dict[str, np.ndarray]:
    """Deterministic, BN-calibrated weights of ``name`` (torch keys), built once per session."""
    model = make_torch(name)
    return {k: v.numpy().copy() for k, v in model.state_dict().items()}


def make_torch(name: str, **kwargs) -> torch.nn.Module:
    cfg = torch_ref.get_model_cfg(name)
    torch.manual_seed(0)
    model = torch_ref.create_model(name, **kwargs)
    # calibrate on the larger side of a non-square test size: BN statistics of tiny late-stage maps
    # (GhostNetV2's DFC pools 1x1 at 80 px) are degenerate and make the gradients ill-conditioned
    size = max(cfg.test_input_size[1:])
    return deterministic_weights(model, seed=0, input_size=size, batches=1, batch_size=2)


def torch_with_state(name: str) -> torch.nn.Module:
    return load_torch_state(torch_ref.create_model(name), cached_state(name)).eval()


def load_torch_state(model: torch.nn.Module, state: dict[str, np.ndarray], strict: bool = True) -> torch.nn.Module:
    """``model`` with the NumPy ``state`` (torch keys) loaded; strict: every key matches. Read-only arrays
    (safetensors files) are copied, torch tensors need writable memory."""
    model.load_state_dict({k: torch.from_numpy(np.require(v, requirements="W")) for k, v in state.items()},
                          strict=strict)
    return model


def load_ms_state(model: ms.nn.Cell, state: dict[str, np.ndarray], strict: bool = True) -> ms.nn.Cell:
    """``model`` with the NumPy ``state`` (MindSpore names) loaded; strict: every parameter of ``model`` is
    loaded and every entry of ``state`` is used."""
    params = {k: ms.Parameter(ms.Tensor(np.asarray(v)), name=k) for k, v in state.items()}
    not_loaded, unused = ms.load_param_into_net(model, params, strict_load=strict)
    assert not strict or not (not_loaded or unused), f"not loaded: {not_loaded}, unused: {unused}"
    return model


def ms_with_weights_of(torch_model: torch.nn.Module, ms_model: ms.nn.Cell) -> ms.nn.Cell:
    """``ms_model`` holding ``torch_model``'s weights (strictly, through the name map computed from the two models),
    in eval mode: the MindSpore twin of a custom-size model that has no registry name (else ``convert.api.ms_twin``)."""
    load_ms_state(ms_model, torch_to_ms(torch_state_of(torch_model), build_name_map(torch_model, ms_model)))
    ms_model.set_train(False)
    return ms_model


def prefixed(arrays: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """The entries of ``arrays`` whose key starts with ``prefix``, the prefix cut off."""
    return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}


def official_record(file_name: str, tag: str | None = None
                    ) -> tuple[dict, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``(kwargs, state, arrays)`` of the official-code record ``tests/data/<file_name>`` (a .safetensors file):
    the model's constructor kwargs (the JSON metadata "kwargs"), the official state_dict (the ``state.``-prefixed
    arrays, prefix cut off) and all the arrays (inputs, outputs). A record of several models keeps model
    ``tag``'s kwargs in the metadata ``tag`` and its state under ``<tag>.state.``."""
    path = str(DATA / file_name)
    with safe_open(path, "np") as f:
        kwargs = json.loads(f.metadata()[tag or "kwargs"])
    arrays = load_file(path)
    return kwargs, prefixed(arrays, f"{tag}.state." if tag else "state."), arrays


def sample_input(name: str, batch: int = 2, seed: int = 0) -> np.ndarray:
    size = torch_ref.get_model_cfg(name).test_input_size
    return np.random.RandomState(seed).randn(batch, *size).astype(np.float32)


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| relative to the output scale max |a| (the project's parity measure)."""
    return float(np.abs(np.asarray(a, np.float64) - b).max() / max(np.abs(a).max(), 1e-12))


def run_eval(framework: str, model, x: np.ndarray) -> np.ndarray:
    """Eval-mode output of a torch_ref ("torch") or ms_models ("mindspore") model on ``x``."""
    if framework == "torch":
        with torch.no_grad():
            return model.eval()(torch.from_numpy(x)).numpy()
    import mindspore as ms
    model.set_train(False)
    return model(ms.Tensor(x)).asnumpy()


def ms_train_output(cell, x: np.ndarray) -> np.ndarray:
    """Training-mode output of a MindSpore ``cell`` on ``x`` (the cell is left in training mode)."""
    cell.set_train(True)
    return cell(ms.Tensor(x)).asnumpy()


class ProjectedSum(ms.nn.Cell):
    """``sum(net(*inputs) * proj)``: a fixed vector-Jacobian product of ``net``'s output (a cell, a primitive or
    a custom op), as a cell (GRAPH_MODE cannot differentiate a lambda); ``net``'s parameters keep their names.
    ``with_output``: returns ``(sum, net(*inputs))``, for ``value_and_grad(..., has_aux=True)``."""

    def __init__(self, net, proj: np.ndarray | ms.Tensor, with_output: bool = False):
        super().__init__(auto_prefix=False)
        self.net, self.with_output = net, with_output
        self.proj = proj if isinstance(proj, ms.Tensor) else ms.Tensor(proj)

    def construct(self, *inputs):
        y = self.net(*inputs)
        if self.with_output:
            return (y * self.proj).sum(), y
        return (y * self.proj).sum()


def adam_losses(model, x: np.ndarray, y: np.ndarray, steps: int, lr: float) -> list[float]:
    """Cross-entropy before each of ``steps`` Adam steps on one batch: a torch module (eager) or a MindSpore
    cell (``TrainOneStepCell``, in the current mode); ``model`` is put in training mode."""
    if isinstance(model, torch.nn.Module):
        model.train()
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        losses = []
        for _ in range(steps):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y))
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return losses
    opt = ms.nn.Adam(model.trainable_params(), learning_rate=lr)
    step = ms.nn.TrainOneStepCell(ms.nn.WithLossCell(model, ms.nn.CrossEntropyLoss()), opt)
    step.set_train(True)
    return [float(step(ms.Tensor(x), ms.Tensor(y.astype(np.int32))).asnumpy()) for _ in range(steps)]


def record_steps(torch_model, run) -> dict[str, np.ndarray]:
    """Outputs of ``torch_model``'s step layers while ``run()`` runs (the parity tool's
    :class:`convert.parity.SharedSteps`, which also forces them: the tests share the binarisation like the tool)."""
    steps = SharedSteps()
    steps.watch(torch_model)
    try:
        run()
    finally:
        steps.remove()
    return steps.outputs


def pad_hw(x: np.ndarray, p: int) -> np.ndarray:
    """Zero-pad the two spatial axes of an NCHW array by ``p``."""
    return np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))


def naive_adder(x: np.ndarray, w: np.ndarray, stride: int, padding: int) -> np.ndarray:
    """Official definition, float64: ``-sum |X - W|`` over each window."""
    x, w = pad_hw(x.astype(np.float64), padding), w.astype(np.float64)
    n, _, h, wd = x.shape
    o, _, k, _ = w.shape
    ho, wo = (h - k) // stride + 1, (wd - k) // stride + 1
    out = np.zeros((n, o, ho, wo))
    for i in range(ho):
        for j in range(wo):
            patch = x[:, None, :, i * stride:i * stride + k, j * stride:j * stride + k]
            out[:, :, i, j] = -np.abs(patch - w[None]).sum(axis=(2, 3, 4))
    return out


def write_tree(root: Path, layout: dict[str, dict[str, int]], size=(12, 10), fmt="PNG") -> Path:
    """An ImageFolder tree of random RGB images under ``root``: ``{split: {class: count}}``, ``size`` (w, h)."""
    from PIL import Image
    rng = np.random.default_rng(0)
    for split, classes in layout.items():
        for cls, count in classes.items():
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
                img.save(folder / f"{i}.{'png' if fmt == 'PNG' else 'jpg'}", fmt)
    return root
