"""Helpers shared by the tests (weights, inputs, error measure)."""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

import mindspore as ms
import torch_ref
from convert.parity import SharedSteps
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


def separated_graph(model: torch.nn.Module, x: np.ndarray, margin: float) -> list[torch.Tensor]:
    """The neighbour indices a ViG ``model`` computes on ``x`` (like ``graph_indices``), with no near-tied
    max-relative maximum.

    A max-relative graph conv takes, per node and channel, the largest of its neighbours' key values; where
    the two largest are closer than float32 rounding, frameworks (or two valid torch kernels) pick different
    neighbours and the gradient routed back jumps by percents (``test_registry``' gradient test). Here every
    node whose two largest neighbour keys in some channel differ by less than ``margin`` times the largest key
    magnitude of that Grapher gets the runner-up replaced by other key nodes until every channel of its row is
    separated; later Graphers compute their kNN on features produced with the edited earlier rows. Any index
    tensor is a valid shared graph; this one makes every maximum unambiguous.
    """
    from torch_ref.models.vig import DilatedKnnGraph
    edited: list[torch.Tensor] = []

    def hook(_module, args, idx):
        keys = args[1].numpy()                                     # (B, C, M)
        tol = margin * np.abs(keys).max()
        edited.append(torch.from_numpy(np.stack([separate_rows(i, k.T, tol) for i, k in zip(idx.numpy(), keys)])))
        return edited[-1]

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, DilatedKnnGraph)]
    try:
        with torch.no_grad():
            model.forward_features(torch.from_numpy(x))
    finally:
        for h in handles:
            h.remove()
    return edited


def _gaps(keys: np.ndarray, row: np.ndarray) -> np.ndarray:
    """Per channel: largest minus second-largest key value among the neighbours ``row``."""
    top = np.sort(keys[row], axis=0)
    return top[-1] - top[-2]


def separate_rows(idx: np.ndarray, keys: np.ndarray, tol: float) -> np.ndarray:
    """``idx`` (N, k) neighbour rows into ``keys`` (M, C): in every row with near ties, the runner-up of the
    closest one is replaced by the first other key node that leaves fewer near-tied channels, until none."""
    idx = idx.copy()
    top = np.sort(keys[idx], axis=1)                               # (N, k, C)
    for n in np.flatnonzero((top[:, -1] - top[:, -2]).min(axis=1) < tol):
        row = idx[n]
        gaps = _gaps(keys, row)
        while gaps.min() < tol:
            second = int(np.argsort(keys[row, gaps.argmin()])[-2])
            for cand in np.setdiff1d(np.arange(len(keys)), row):
                trial = row.copy()
                trial[second] = cand
                trial_gaps = _gaps(keys, trial)
                if (trial_gaps < tol).sum() < (gaps < tol).sum():
                    row, gaps = trial, trial_gaps
                    break
            else:
                raise AssertionError(f"no replacement separates node {n}'s neighbour maxima by {tol:.1e}")
        idx[n] = row
    return idx


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


# Fraction of a model's step outputs allowed to flip: a float32 near tie (|x - threshold| below the ~1e-5
# rounding difference of the layer input) hits about 1 element in 1e5 at the test sizes; a wrong threshold,
# scale or rounding rule flips a large share of the elements (e.g. sign vs round-to-{-1,0,1}: ~1/3).
MAX_FLIPS = 1e-4


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


# A shared kink decision must be a float32 near tie: the reference input lies within this fraction of the
# layer's input scale (max |input|) of the kink (float32 forward rounding moves inputs by ~1e-6 of it).
NEAR_TIE = 1e-5


def kink_layers(model) -> list[tuple[str, object, tuple[float, ...]]]:
    """(name, layer, kinks) of the layers of a torch module or MindSpore cell that declare ``kinks``: the inputs
    where their gradient steps (BiMLP's quantiser clip at +-1, and its value steps; PReLU's and AdaBin's
    Maxout's slope change at 0)."""
    items = model.cells_and_names() if isinstance(model, ms.nn.Cell) else model.named_modules()
    return [(n, m, m.kinks) for n, m in items if getattr(m, "kinks", None)]


def record_kink_inputs(torch_model: torch.nn.Module, run) -> dict[str, np.ndarray]:
    """Inputs of ``torch_model``'s kink layers (float32 copies) while ``run()`` runs."""
    ins: dict[str, np.ndarray] = {}
    handles = [m.register_forward_pre_hook(lambda _m, a, n=n: ins.__setitem__(n, a[0].detach().float().numpy()))
               for n, m, _ in kink_layers(torch_model)]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return ins


def _other_side(x, ref, kinks):
    """Elements of ``x`` on another side of some kink than ``ref`` (numpy, torch or MindSpore tensors)."""
    differ = (x > kinks[0]) != (ref > kinks[0])
    for k in kinks[1:]:
        differ = differ | ((x > k) != (ref > k))
    return differ


class _KinkInput(ms.nn.Cell):
    """A MindSpore kink layer whose input takes ``ref`` where it lies on another side of a kink (identity
    gradient); its own input is kept in ``seen`` (an assignment, which GRAPH_MODE keeps too)."""

    def __init__(self, layer: ms.nn.Cell, ref: np.ndarray, kinks: tuple[float, ...]):
        super().__init__()
        self.layer, self.kinks = layer, kinks
        self.ref = ms.Parameter(ms.Tensor(ref), requires_grad=False)
        self.seen = ms.Parameter(ms.Tensor(np.zeros_like(ref)), requires_grad=False)

    def construct(self, x):
        ms.ops.assign(self.seen, x)
        return self.layer(x + ms.ops.stop_gradient(ms.ops.select(_other_side(x, self.ref, self.kinks), self.ref, x) - x))


class SharedKinks:
    """Shared gradient decisions, the companion of :class:`convert.parity.SharedSteps` (which shares step
    *outputs*): where an input lies within float32 rounding of a kink, the two frameworks pick different slopes
    and a gradient moves by percents. ``force(model, inputs)`` makes every kink layer of a torch module or
    MindSpore cell (PyNative or GRAPH_MODE; MindSpore layers are wrapped, since MindSpore runs no forward hook
    on a cell with a custom ``bprop``) take the reference input ``inputs[name]`` where its own lies on another
    side of a kink; the forward value moves by that rounding only. ``flipped`` / ``worst``: how many elements
    were forced in the forced models' last runs, and the largest distance of their reference input from the
    kink relative to the layer's input scale. ``remove()`` undoes ``force`` and keeps the counts."""

    def __init__(self):
        self._seen: list[tuple[np.ndarray, np.ndarray, tuple]] = []      # (own input, reference, kinks)
        self._wrapped: list[tuple[ms.nn.Cell, str, ms.nn.Cell, _KinkInput]] = []
        self._handles: list = []

    def force(self, model, inputs: dict[str, np.ndarray]) -> None:
        if not isinstance(model, ms.nn.Cell):
            for name, layer, kinks in kink_layers(model):
                if name not in inputs:      # did not run in the reference (AdaBin ImageNet's unused Maxout)
                    continue

                def hook(_m, args, ref=inputs[name], kinks=kinks):
                    x, r = args[0], torch.from_numpy(ref).to(args[0].dtype)
                    self._seen.append((x.detach().double().numpy(), ref, kinks))
                    return (x + (torch.where(_other_side(x, r, kinks), r, x) - x).detach(), *args[1:])
                self._handles.append(layer.register_forward_pre_hook(hook))
            return
        cells = dict(model.cells_and_names())
        for name, layer, kinks in kink_layers(model):
            if name not in inputs:
                continue
            parent, _, child = name.rpartition(".")
            names = {id(p): p.name for p in layer.get_parameters()}
            wrapper = _KinkInput(layer, inputs[name], kinks)
            setattr(cells[parent], child, wrapper)
            for p in layer.get_parameters():        # the wrapper must not rename the layer's parameters
                p.name = names[id(p)]
            wrapper.ref.name, wrapper.seen.name = name + ".kink_ref", name + ".kink_seen"
            self._wrapped.append((cells[parent], child, layer, wrapper))

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        for parent, child, layer, wrapper in self._wrapped:
            self._seen.append((wrapper.seen.asnumpy().astype(np.float64), wrapper.ref.asnumpy(), wrapper.kinks))
            names = {id(p): p.name for p in layer.get_parameters()}
            setattr(parent, child, layer)
            for p in layer.get_parameters():
                p.name = names[id(p)]
        self._wrapped, self._handles = [], []

    def _distances(self) -> list[np.ndarray]:
        out = []
        for own, ref, kinks in self._seen:
            ref = ref.astype(np.float64)
            forced = _other_side(own, ref, kinks)
            dist = np.min([np.abs(ref[forced] - k) for k in kinks], axis=0) if forced.any() else np.zeros(0)
            out.append(dist / max(np.abs(ref).max(), 1e-12))
        return out

    @property
    def flipped(self) -> int:
        return sum(d.size for d in self._distances())

    @property
    def total(self) -> int:
        return sum(ref.size for _, ref, _ in self._seen)

    @property
    def worst(self) -> float:
        return max((float(d.max()) for d in self._distances() if d.size), default=0.0)


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
