"""Layer-by-layer torch vs MindSpore comparison that names the first layer where they disagree.

Forward hooks on every named module/cell (same structural names on both sides) record each layer's
output; the table lists them in torch execution order with max abs error, the error relative to the
layer's output scale (``max|a-b| / max|a|``) and cosine similarity. MindSpore hooks only fire in PyNative,
so the per-layer run uses PyNative, under :func:`ms_models.layers.layerwise_mode` (every conv and BN cell
runs: no eval-mode BN folding, no compiled kernels; a container its parent runs child by child is listed
as unmatched, its output being its last child's); the final output is also compared in GRAPH_MODE, where
the model runs as it is.

Graph models (ViG: the torch model has ``graph_indices``) get three extra views, because a kNN graph is a
discontinuous function of the features:

* neighbour agreement: per Grapher, the fraction of torch's neighbour indices that MindSpore's own kNN also
  selects (order-insensitive); in shared mode on the very features torch's kNN saw (MindSpore's kNN is rerun
  on its recorded inputs), in free mode along MindSpore's own run (flips compound with depth there);
* ``graph='shared'``: torch's neighbour indices are fed to MindSpore through the models' ``graph`` argument, so
  every layer downstream is compared exactly in float32 (``graph='free'`` compares the free-running models);
* :func:`float64_check`: on torch float32's graph, torch float32 must be within float32 rounding of torch
  float64 (``DEFAULT_TOL``), and MindSpore float64 must agree with torch float64 to 1e-9 relative where its
  CPU kernels allow (the ops that lack float64 are listed); per Grapher, the share of float32's neighbours that
  float64's own kNN picks, and what float32's neighbour flips alone change in the float64 output, are reported.
  (Torch float64 on its own graph equals torch float64 on float32's only where no neighbour is a float32 near
  tie, which depends on the input and on the CPU's float32 kernels: on AMD EPYC without AVX-512 ViG-Ti's last
  Grapher keeps 98.5 % of them at 128 px and the output moves 1.7 %. That is reported, not judged.)

Binary networks get the same treatment for their step functions (layers whose class has ``step_function =
True``: activation binarisers such as AdaBin's ``ApproxSign`` and BiMLP's ``ActQuantize``), where an input
within float32 rounding of a threshold binarises differently in the two frameworks:

* per step layer, the elements whose output flipped (moved by more than :data:`FLIP` of the output scale), and
  for each flip the distance of torch's input to the threshold of torch's own step between the two
  frameworks' inputs (found by bisection on the float32 line), in ulps of the layer's input scale
  ``max|input|``; the verdict is "float32 rounding at a threshold" when every flip is such a crossing within
  :data:`ROUNDING_ULPS` ulps (see :func:`step_diff`); a step layer's row compares the elements that did not flip;
* ``steps='shared'`` (:class:`SharedSteps`): MindSpore's step layers output torch's values (their own output
  is still recorded and compared), so every later layer is compared at the float tolerance; ``steps='free'``
  runs the two models independently (a rounding flip then moves everything downstream). Hooks only run in
  PyNative, so with shared steps the GRAPH_MODE output is compared with MindSpore's own PyNative output.
"""
from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass, field

import numpy as np

DEFAULT_TOL = 1e-4   # float32: errors of ~1e-6 relative are observed; 1e-4 leaves room for depth
# A flip moves a step layer's output element by a whole step (at least half its output scale); float rounding
# between the frameworks moves it by ~1e-7 of that scale (ApproxSign's ``sign - poly + poly``: 1 ulp of 1).
FLIP = 1e-3
# "A few ulps": the two frameworks' inputs to a step layer agree to ~1e-6 of its input scale max|input| (8 to 16
# float32 ulps of it; an ulp is 6e-8 to 1.2e-7 of the scale) and the flips seen on AdaBin ResNet-18 at 224 px
# lie within 5 ulps of the threshold. 16 ulps (<= 2e-6 of the scale, 50x under DEFAULT_TOL) is what float32
# rounding alone reaches; a wrong weight, scale or threshold moves the inputs by orders of magnitude more.
ROUNDING_ULPS = 16
STEP_EXACT, STEP_ROUNDING = "exact", "float32 rounding at a threshold"
STEP_INPUT, STEP_FAULT = "input differs beyond the tolerance", "flips beyond float32 rounding"


@dataclass
class LayerDiff:
    name: str
    kind: str
    shape: tuple
    max_abs: float
    max_rel: float
    cosine: float
    ok: bool


@dataclass
class StepDiff:
    """One step layer: ``flipped`` of ``total`` output elements flipped; ``max_ulps`` / ``max_dist`` the largest
    distance of a flip's torch input to its threshold in ulps of / relative to the input scale (inf: torch's
    own step does not change between the two inputs); ``input_rel`` the inputs' max error relative to that
    scale; ``verdict`` one of ``STEP_EXACT``, ``STEP_ROUNDING``, ``STEP_INPUT``, ``STEP_FAULT``."""

    name: str
    flipped: int
    total: int
    max_ulps: float
    max_dist: float
    input_rel: float
    verdict: str

    @property
    def ok(self) -> bool:
        return self.verdict in (STEP_EXACT, STEP_ROUNDING)

    def summary(self) -> str:
        if not self.flipped:
            return "step: no flip"
        return (f"step: {self.flipped}/{self.total} flipped, <= {self.max_ulps:.3g} ulp "
                f"({self.max_dist:.2g} of input scale): {self.verdict}")


@dataclass
class ParityReport:
    model: str
    input_shape: tuple
    tol: float
    layers: list[LayerDiff] = field(default_factory=list)
    output: LayerDiff | None = None
    graph_output: LayerDiff | None = None
    unmatched: list[str] = field(default_factory=list)
    graph_mode: str = "free"
    agreement: dict[str, float] = field(default_factory=dict)   # Grapher kNN layer -> neighbour agreement
    steps_mode: str = "none"                  # "shared" / "free" for models with step layers
    steps: dict[str, StepDiff] = field(default_factory=dict)    # step layer -> its flips

    @property
    def first_failure(self) -> str | None:
        bad = [d for d in self.layers if not d.ok]
        if bad:
            return bad[0].name
        for d in (self.output, self.graph_output):
            if d is not None and not d.ok:
                return d.name
        return None

    @property
    def ok(self) -> bool:
        return self.first_failure is None and self.output is not None

    def table(self) -> str:
        head = f"{'layer':<34} {'type':<18} {'shape':<20} {'max abs':>10} {'max rel':>10} {'cosine':>10}"
        rows = [head, "-" * len(head)]
        for d in self.layers + [x for x in (self.output, self.graph_output) if x is not None]:
            step = f"  {self.steps[d.name].summary()}" if d.name in self.steps else ""
            mark = "" if d.ok else "  <-- over tolerance"
            rows.append(f"{d.name:<34} {d.kind:<18} {str(tuple(d.shape)):<20} {d.max_abs:>10.3g} "
                        f"{d.max_rel:>10.3g} {d.cosine:>10.7f}{step}{mark}")
        if self.agreement:
            rows.append(f"neighbour agreement (MindSpore's own kNN vs torch's), graph mode {self.graph_mode}:")
            rows += [f"  {k:<48} {v:8.2%}" for k, v in self.agreement.items()]
        if self.steps:
            flips = [d for d in self.steps.values() if d.flipped]
            fed = ("MindSpore's step layers output torch's values" if self.steps_mode == "shared"
                   else "the models run independently")
            rows.append(f"steps {self.steps_mode} ({fed}): {len(self.steps)} step layers, {len(flips)} with "
                        f"flips; a step row compares MindSpore's own output where it did not flip")
            rows.append(f"  rounding rule: every flip crosses torch's threshold between the two inputs, torch's "
                        f"input within {ROUNDING_ULPS} ulps of max|input| from it")
        if self.ok:
            verdict = f"PASS: every layer within {self.tol:g} of its output scale"
        else:
            verdict = f"FAIL: first layer over tolerance {self.tol:g}: {self.first_failure}"
            names = [d.name for d in self.layers]
            rounding = [n for n, d in self.steps.items() if d.verdict == STEP_ROUNDING]
            if (self.steps_mode == "free" and rounding and self.first_failure in names
                    and names.index(rounding[0]) < names.index(self.first_failure)):
                verdict += (f" (after float32 rounding flips at {rounding[0]}; --steps shared compares the "
                            f"layers past them)")
        return "\n".join(rows + [verdict])

    def to_json(self) -> str:
        out = asdict(self)
        out.update(ok=self.ok, first_failure=self.first_failure)
        return json.dumps(out, indent=1)


def compare(name: str, kind: str, ref: np.ndarray, got: np.ndarray, tol: float,
            skip: np.ndarray | None = None) -> LayerDiff:
    """Errors of ``got`` against ``ref`` (elements where ``skip`` is True left out: a step layer's flips)."""
    ref = np.asarray(ref, dtype=np.float64)
    got = np.asarray(got, dtype=np.float64)
    if ref.shape != got.shape:
        return LayerDiff(name, kind, tuple(ref.shape), float("inf"), float("inf"), 0.0, False)
    shape = ref.shape
    if skip is not None:
        ref, got = ref[~skip], got[~skip]
    err = float(np.abs(ref - got).max()) if ref.size else 0.0
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    rel = err / scale if scale > 0 else err
    denom = np.linalg.norm(ref) * np.linalg.norm(got)
    cos = float((ref.ravel() @ got.ravel()) / denom) if denom > 0 else float(err == 0)
    return LayerDiff(name, kind, tuple(shape), err, rel, cos, bool(rel <= tol and np.isfinite(got).all()))


def neighbour_agreement(ref: np.ndarray, got: np.ndarray) -> float:
    """Fraction of the (B, N, k) neighbour indices ``ref`` that ``got`` also holds for the same node (any order)."""
    ref, got = np.asarray(ref), np.asarray(got)
    if ref.shape != got.shape:
        return 0.0
    return float((ref[..., :, None] == got[..., None, :]).any(-1).mean())


def _is_graph(out) -> bool:
    return np.issubdtype(np.asarray(out).dtype, np.integer)


def _first_tensor(out):
    if isinstance(out, (tuple, list)):
        return out[0] if out else None
    return out


def step_layers(model) -> list[tuple[str, object]]:
    """(name, layer) of the step-function layers (class attribute ``step_function``) of a torch module or
    MindSpore cell; the names are equal in both frameworks."""
    items = model.cells_and_names() if hasattr(model, "cells_and_names") else model.named_modules()
    return [(n, m) for n, m in items if getattr(type(m), "step_function", False)]


def flip_mask(ref: np.ndarray, got: np.ndarray) -> np.ndarray:
    """The elements of a step layer's output ``got`` that moved from ``ref`` by a step (:data:`FLIP`)."""
    ref = np.asarray(ref, np.float64)
    return np.abs(ref - got) > FLIP * max(np.abs(ref).max(initial=0.0), 1e-12)


class SharedSteps:
    """Shared binarisation, the step-function analogue of the shared kNN graph: an activation within float32
    rounding of a threshold binarises differently in the two frameworks and moves everything downstream.

    ``watch(model)`` hooks every step layer of a torch module or MindSpore (PyNative) cell and records its
    input and its own output (float32, last call) in ``inputs`` / ``outputs``; ``force(model, outs)`` also
    makes each step layer output ``outs[name]`` (torch float32's values) while keeping its own gradient
    (``o + stop_gradient(t - o)``), and counts the elements where its own output differed (``flipped`` of
    ``total``, :func:`flip_mask`). ``remove()`` takes the hooks off."""

    def __init__(self):
        self.flipped = 0
        self.total = 0
        self.inputs: dict[str, np.ndarray] = {}
        self.outputs: dict[str, np.ndarray] = {}
        self.handles: list = []                 # callables that take the hooks off

    def _record(self, name: str, x, own: np.ndarray, forced: np.ndarray | None) -> None:
        self.inputs[name], self.outputs[name] = x, own
        if forced is not None:
            self.flipped += int(flip_mask(forced, own).sum())
            self.total += forced.size

    def _hook(self, model, outs: dict[str, np.ndarray] | None) -> None:
        for name, layer in step_layers(model):
            forced = None if outs is None else outs[name]
            if not hasattr(model, "cells_and_names"):
                import torch

                def hook(_m, inputs, o, name=name, t=None if forced is None else torch.from_numpy(forced)):
                    self._record(name, inputs[0].detach().float().numpy().copy(),
                                 o.detach().float().numpy().copy(), None if t is None else t.numpy())
                    return None if t is None else o + (t.to(o.dtype) - o).detach()
                self.handles.append(layer.register_forward_hook(hook).remove)
            else:
                self._wrap_ms(name, layer, forced)

    def _wrap_ms(self, name: str, cell, forced: np.ndarray | None) -> None:
        """MindSpore skips the forward hooks of a cell with a custom ``bprop`` (BiMLP's ``ActQuantize``, 2.8.0;
        pre-hooks still run), so the step cell's ``construct`` is wrapped instead; the forced value added
        under ``stop_gradient`` leaves the gradient to the cell's own ``bprop`` or ops."""
        import mindspore as ms
        from mindspore import ops
        own_construct, t = cell.construct, None if forced is None else ms.Tensor(forced)

        def construct(*args):
            o = own_construct(*args)
            self._record(name, args[0].asnumpy().astype(np.float32), o.asnumpy().astype(np.float32), forced)
            return o if t is None else o + ops.stop_gradient(t - o)
        cell.construct = construct
        self.handles.append(functools.partial(delattr, cell, "construct"))

    def watch(self, model) -> None:
        self._hook(model, None)

    def force(self, model, outs: dict[str, np.ndarray]) -> None:
        self._hook(model, outs)

    def remove(self) -> None:
        for undo in self.handles:
            undo()
        self.handles = []


def _ordered(x: np.ndarray) -> np.ndarray:
    """float32 -> int64 in the order of the values, consecutive floats one apart (both zeros at 0)."""
    bits = x.astype(np.float32).view(np.int32).astype(np.int64)
    return np.where(bits < 0, -(bits & 0x7FFFFFFF), bits)


def _from_ordered(o: np.ndarray) -> np.ndarray:
    return np.where(o < 0, -o + 2 ** 31, o).astype(np.uint32).view(np.float32)


def threshold_distance(layer, ref_in: np.ndarray, ref_out: np.ndarray, got_in: np.ndarray, got_out: np.ndarray,
                       where: np.ndarray) -> np.ndarray:
    """For the elements ``where`` of an elementwise torch step ``layer`` (output ``ref_out`` on ``ref_in``;
    the other framework's ``got_out`` on ``got_in``): the distance from ``ref_in`` to the nearest float32 on
    the way to ``got_in`` at which ``layer``'s output flips (bisection on the float32 line); inf where it
    does not flip between the two or where ``layer`` on ``got_in`` does not give ``got_out``."""
    import torch
    idx = np.flatnonzero(where)
    ref_flat = ref_in.ravel()

    def run(values: np.ndarray) -> np.ndarray:
        probe = ref_flat.copy()
        probe[idx] = values
        with torch.no_grad():
            return layer(torch.from_numpy(probe.reshape(ref_in.shape))).numpy()

    lo, hi = _ordered(ref_flat[idx]), _ordered(got_in.ravel()[idx])
    at_got = run(_from_ordered(hi))
    crossing = flip_mask(ref_out, at_got).ravel()[idx] & ~flip_mask(got_out, at_got).ravel()[idx]
    while True:                          # invariant: no flip at lo, a flip at hi (where crossing)
        gap = crossing & (np.abs(hi - lo) > 1)
        if not gap.any():
            break
        mid = lo + (hi - lo) // 2
        hit = flip_mask(ref_out, run(np.where(gap, _from_ordered(mid), _from_ordered(lo)))).ravel()[idx]
        hi, lo = np.where(gap & hit, mid, hi), np.where(gap & ~hit, mid, lo)
    dist = np.abs(_from_ordered(hi).astype(np.float64) - ref_flat[idx])
    return np.where(crossing, dist, np.inf)


def step_diff(name: str, layer, ref_in: np.ndarray, ref_out: np.ndarray, got_in: np.ndarray,
              got_out: np.ndarray, tol: float) -> StepDiff:
    """Classify the flips of one step layer (torch ``layer``: input ``ref_in``, output ``ref_out``; MindSpore's
    own ``got_in`` / ``got_out``). The rule: "float32 rounding at a threshold" when every flipped element is a
    crossing of torch's own step between the two inputs to the value MindSpore gives (see
    :func:`threshold_distance`) and torch's input lies within ``ROUNDING_ULPS`` float32 ulps of the input scale (``ulp(max|ref_in|)``) from it; otherwise
    "input differs beyond the tolerance" if the inputs differ by more than ``tol`` of that scale (the cause is
    upstream), else "flips beyond float32 rounding" (the step itself differs)."""
    if ref_in.shape != got_in.shape or ref_out.shape != got_out.shape:
        return StepDiff(name, ref_out.size, ref_out.size, float("inf"), float("inf"), float("inf"), STEP_FAULT)
    scale = max(float(np.abs(ref_in).max(initial=0.0)), float(np.finfo(np.float32).tiny))
    ulp = float(np.spacing(np.float32(scale)))
    input_rel = float(np.abs(ref_in.astype(np.float64) - got_in).max(initial=0.0)) / scale
    mask = flip_mask(ref_out, got_out)
    if not mask.any():
        return StepDiff(name, 0, mask.size, 0.0, 0.0, input_rel, STEP_EXACT)
    far = float(threshold_distance(layer, ref_in, ref_out, got_in, got_out, mask).max())
    verdict = (STEP_ROUNDING if far <= ROUNDING_ULPS * ulp else STEP_INPUT if input_rel > tol else STEP_FAULT)
    return StepDiff(name, int(mask.sum()), mask.size, far / ulp, far / scale, input_rel, verdict)


def _capture_torch(model, x: np.ndarray, graph=None):
    import torch
    records, handles = {}, []
    for name, mod in model.named_modules():
        if not name:
            continue
        def hook(_m, _i, out, name=name, kind=type(mod).__name__):
            t = _first_tensor(out)
            if isinstance(t, torch.Tensor) and name not in records:
                records[name] = (kind, t.detach().numpy().copy())
        handles.append(mod.register_forward_hook(hook))
    try:
        with torch.no_grad():
            xt = torch.from_numpy(x)
            out = (model(xt) if graph is None else model(xt, graph)).numpy()
    finally:
        for h in handles:
            h.remove()
    return records, out


def _is_knn(cell) -> bool:
    """kNN graph cells (ViG ``DilatedKnnGraph``): they carry ``k`` and ``dilation``."""
    return hasattr(cell, "k") and hasattr(cell, "dilation")


def _capture_ms(model, x: np.ndarray, graph=None):
    """Per-cell outputs and the final output; kNN cells also record their own graph on the inputs they get
    (when ``graph`` is given they return it, so their own choice is recomputed from the same features)."""
    import mindspore as ms
    records, handles, knn_args = {}, [], {}
    for name, cell in model.cells_and_names():
        if not name:
            continue
        def hook(_c, _i, out, name=name):
            t = _first_tensor(out)
            if isinstance(t, ms.Tensor) and name not in records:
                records[name] = t.asnumpy().copy()
        handles.append(cell.register_forward_hook(hook))
        if _is_knn(cell):
            def pre(_c, args, name=name):       # returns None: a returned value would replace the inputs
                knn_args.setdefault(name, tuple(args[:3]))
            handles.append(cell.register_forward_pre_hook(pre))
    try:
        out = (model(ms.Tensor(x)) if graph is None else model(ms.Tensor(x), graph)).asnumpy()
    finally:
        for h in handles:
            h.remove()
    cells = dict(model.cells_and_names())
    own = {name: cells[name](*args).asnumpy() for name, args in knn_args.items()}
    return records, out, own


def shared_graph(torch_model, x: np.ndarray):
    """torch's neighbour indices on ``x`` as (torch list, MindSpore tuple), or (None, None) for other models."""
    import mindspore as ms
    import torch
    if not hasattr(torch_model, "graph_indices"):
        return None, None
    graph = torch_model.graph_indices(torch.from_numpy(x))
    return graph, tuple(ms.Tensor(g.numpy()) for g in graph)


def _run_ms(model, x: np.ndarray, feed):
    import mindspore as ms
    return (model(ms.Tensor(x)) if feed is None else model(ms.Tensor(x), feed)).asnumpy()


def compare_models(torch_model, ms_model, x: np.ndarray, tol: float = DEFAULT_TOL, model_name: str = "model",
                   ms_graph_model=None, graph: str = "shared", steps: str = "shared") -> ParityReport:
    """Compare two models holding the same weights on input ``x``, layer by layer.

    ``ms_model`` must have been built in PYNATIVE_MODE (hooks); ``ms_graph_model``, if given, is a copy
    built in GRAPH_MODE whose final output is compared as well. For graph models, ``graph='shared'`` feeds
    torch's neighbour indices to MindSpore, ``'free'`` lets it build its own graph; the per-Grapher
    neighbour agreement is reported in both cases. For models with step layers, ``steps='shared'`` feeds
    torch's step outputs to MindSpore, ``'free'`` does not; the flips of every step layer are classified in
    both cases (see the module docstring).
    """
    import mindspore as ms
    from ms_models.context import execution_mode
    from ms_models.layers import layerwise_mode
    for arg, value in (("graph", graph), ("steps", steps)):
        if value not in ("shared", "free"):
            raise ValueError(f"{arg} must be 'shared' or 'free', not {value!r}")
    torch_model.eval()
    ms_model.set_train(False)
    _, graph_m = shared_graph(torch_model, x)
    feed = graph_m if graph == "shared" else None
    t_steps, m_steps = SharedSteps(), SharedSteps()
    with execution_mode(ms.PYNATIVE_MODE):
        t_steps.watch(torch_model)
        try:
            t_rec, t_out = _capture_torch(torch_model, x)
        finally:
            t_steps.remove()
        share = steps == "shared" and bool(t_steps.outputs)
        if share:
            m_steps.force(ms_model, t_steps.outputs)
        else:
            m_steps.watch(ms_model)
        try:
            with layerwise_mode(ms_model):      # every conv and BN cell runs (no fold, no fused kernel)
                m_rec, m_out, m_own = _capture_ms(ms_model, x, feed)
        finally:
            m_steps.remove()
        # hooks only run in PyNative: with shared steps GRAPH_MODE is compared with MindSpore's own PyNative run
        free_out = _run_ms(ms_model, x, feed) if share and ms_graph_model is not None else None
    report = ParityReport(model_name, tuple(x.shape), tol, graph_mode=graph if graph_m is not None else "none",
                          steps_mode=steps if t_steps.outputs else "none")
    torch_layers = dict(torch_model.named_modules())
    for name, (kind, ref) in t_rec.items():
        if _is_graph(ref):
            report.agreement[name] = neighbour_agreement(ref, m_own.get(name, np.empty(0)))
        elif name in t_steps.outputs and name in m_steps.outputs:
            own = m_steps.outputs[name]
            step = report.steps[name] = step_diff(name, torch_layers[name], t_steps.inputs[name], ref,
                                                  m_steps.inputs[name], own, tol)
            diff = compare(name, kind, ref, own, tol,
                           skip=flip_mask(ref, own) if ref.shape == own.shape else None)
            diff.ok = diff.ok and step.ok
            report.layers.append(diff)
        elif name in m_rec:
            report.layers.append(compare(name, kind, ref, m_rec[name], tol))
        else:
            report.unmatched.append(name)
    report.output = compare("output", "logits", t_out, m_out, tol)
    if ms_graph_model is not None:
        with execution_mode(ms.GRAPH_MODE):
            ms_graph_model.set_train(False)
            g_out = _run_ms(ms_graph_model, x, feed)
        report.graph_output = (compare("output (GRAPH_MODE)", "logits", t_out, g_out, tol) if free_out is None
                               else compare("output (GRAPH_MODE vs PyNative)", "logits", free_out, g_out, tol))
    return report


def _build_pair(name: str, checkpoint: str | None, input_size: int | None, batch: int, seed: int,
                deploy: bool = False):
    """(torch model with the given or deterministic weights, input batch) for the parity checks."""
    import torch
    import torch_ref
    from specs import check_input_size, get_model_cfg
    from torch_ref.testing import deterministic_weights
    from .api import torch_model_from

    cfg = get_model_cfg(name)
    h, w = check_input_size(cfg, input_size or cfg.input_size[-1])
    if checkpoint is not None:
        tm = torch_model_from(name, checkpoint)
    else:
        torch.manual_seed(seed)
        tm = deterministic_weights(torch_ref.create_model(name), seed=seed, input_size=min(h, w))
    tm.eval()
    if deploy:
        tm.switch_to_deploy()
    return tm, np.random.RandomState(seed).randn(batch, 3, h, w).astype(np.float32)


def run_parity(name: str, checkpoint: str | None = None, input_size: int | None = None, batch: int = 2,
               tol: float = DEFAULT_TOL, seed: int = 0, deploy: bool = False, graph: bool = True,
               graph_mode: str = "shared", steps: str = "shared") -> ParityReport:
    """Build ``name`` in both frameworks with the same weights (``checkpoint``, or deterministic test weights)
    and compare them with :func:`compare_models`; ``deploy`` switches both to deploy form first; ``graph``
    also compares the GRAPH_MODE output; ``graph_mode`` is the kNN graph handling of graph models, ``steps``
    the step-layer handling of binary models."""
    import mindspore as ms
    from .api import ms_twin

    tm, x = _build_pair(name, checkpoint, input_size, batch, seed, deploy)
    graph_model = ms_twin(tm, ms.GRAPH_MODE) if graph else None
    return compare_models(tm, ms_twin(tm, ms.PYNATIVE_MODE), x, tol, name, graph_model, graph_mode, steps)


F64_TOL = 1e-9   # float64 end to end on one graph: rounding alone gives ~1e-15


@dataclass
class Float64Report:
    """:func:`float64_check` result, every figure relative to the float64 output's scale: torch float32 vs
    float64 on float32's graph (judged at ``tol32``), MindSpore float64 vs torch float64 on that graph (judged
    at ``tol``, or the ops its CPU kernels lack), and, reported only, the float32 vs float64 neighbour agreement
    per Grapher and torch float64 on its own graph vs on float32's."""

    model: str
    tol: float
    tol32: float
    torch_rel: float                          # torch f32 vs torch f64, both fed torch f32's graph
    graph_rel: float = 0.0                    # torch f64: own graph vs torch f32's graph (not judged)
    agreement_32_64: dict[str, float] = field(default_factory=dict)
    ms_missing: dict[str, str] = field(default_factory=dict)   # cell type -> primitive without float64
    ms_rel: float | None = None               # MindSpore f64 vs torch f64, shared graph (if it could run)

    @property
    def ok(self) -> bool:
        return self.torch_rel <= self.tol32 and (self.ms_rel is None or self.ms_rel <= self.tol)

    def table(self) -> str:
        rows = [f"{self.model}: float64 mode (float64 tolerance {self.tol:g}, float32 {self.tol32:g}, relative)",
                f"  torch float32 vs float64 on float32's graph: {self.torch_rel:.3g}",
                f"  torch float64, own graph vs float32's graph (reported): {self.graph_rel:.3g}"]
        rows += [f"  graph agreement float32 vs float64 {k:<40} {v:8.2%}" for k, v in self.agreement_32_64.items()]
        if self.ms_missing:
            rows.append("  MindSpore CPU float64 unavailable; ops without float64 kernels:")
            rows += [f"    {cell:<24} {prim}" for cell, prim in self.ms_missing.items()]
        else:
            rows.append(f"  MindSpore float64 vs torch float64 (shared graph): {self.ms_rel:.3g}")
        return "\n".join(rows + ["PASS" if self.ok else "FAIL"])


def _to64(value):
    import mindspore as ms
    if isinstance(value, ms.Tensor) and value.dtype == ms.float32:
        return value.astype(ms.float64)
    if isinstance(value, tuple):
        return tuple(_to64(v) for v in value)
    return value


def _probe_ms_float64(ms_model, x: np.ndarray, feed) -> dict[str, str]:
    """Run one cell of every type in float64 on the input it saw in a float32 run (its parameters cast to
    float64 and back); cell type -> the primitive without a float64 kernel."""
    import re
    import mindspore as ms
    seen, handles = {}, []
    for _, cell in ms_model.cells_and_names():
        kind = type(cell).__name__
        if kind not in seen:
            def pre(c, args, kind=kind):
                if seen.get(kind) is None:
                    seen[kind] = (c, args)
            seen[kind] = None
            handles.append(cell.register_forward_pre_hook(pre))
    try:
        ms_model(ms.Tensor(x)) if feed is None else ms_model(ms.Tensor(x), feed)
    finally:
        for h in handles:
            h.remove()
    missing, leaves = {}, set()
    for kind, entry in seen.items():
        if entry is None:
            continue
        cell, args = entry
        if not cell.name_cells():
            leaves.add(kind)
        saved = {p.name: p.asnumpy().copy() for p in cell.get_parameters()}
        for p in cell.get_parameters():
            p.set_data(ms.Tensor(saved[p.name].astype(np.float64)))
        try:
            cell(*_to64(tuple(args)))
        except (TypeError, ValueError, RuntimeError) as exc:
            m = re.search(r"primitive\[(\w+)\]", str(exc))
            missing[kind] = m.group(1) if m else str(exc).splitlines()[0][:80]
        finally:
            for p in cell.get_parameters():
                p.set_data(ms.Tensor(saved[p.name]))
    # a container failing on a primitive one of its leaf cells already lacks adds nothing: keep leaves, and
    # containers whose own ops (not their children's) lack float64
    leaf_prims = {missing[k] for k in missing if k in leaves}
    return {k: v for k, v in missing.items() if k in leaves or v not in leaf_prims}


def float64_check(name: str, checkpoint: str | None = None, input_size: int | None = None, batch: int = 2,
                  seed: int = 0, tol: float = F64_TOL, tol32: float = DEFAULT_TOL) -> Float64Report:
    """Float64 mode of the parity tool (graph models; any model for the MindSpore part)."""
    import copy
    import mindspore as ms
    import torch
    from ms_models.context import execution_mode
    from .api import ms_twin

    tm, x = _build_pair(name, checkpoint, input_size, batch, seed)
    graph_t, graph_m = shared_graph(tm, x)
    t64 = copy.deepcopy(tm).double().eval()
    x64 = torch.from_numpy(x.astype(np.float64))
    def on_graph(model, inp):                  # the model fed torch float32's graph (if it has one)
        return (model(inp) if graph_t is None else model(inp, graph_t)).numpy()

    with torch.no_grad():
        fed, f32 = on_graph(t64, x64), on_graph(tm.eval(), torch.from_numpy(x))
        own = t64(x64).numpy() if graph_t is not None else fed
    scale = max(np.abs(fed).max(), 1e-300)
    report = Float64Report(name, tol, tol32, float(np.abs(f32 - fed).max() / scale),
                           float(np.abs(own - fed).max() / scale))
    if graph_t is not None:
        for (gname, _), g32, g64 in zip(((n, m) for n, m in tm.named_modules() if type(m).__name__ == "DilatedKnnGraph"),
                                         graph_t, t64.graph_indices(x64)):
            report.agreement_32_64[gname] = neighbour_agreement(g32.numpy(), g64.numpy())
    with execution_mode(ms.PYNATIVE_MODE):
        mm = ms_twin(tm, ms.PYNATIVE_MODE)
        mm.set_train(False)
        report.ms_missing = _probe_ms_float64(mm, x, None)
        if not report.ms_missing:
            for p in mm.get_parameters():
                p.set_data(p.astype(ms.float64))
            xm = ms.Tensor(x.astype(np.float64))
            out = (mm(xm) if graph_m is None else mm(xm, _to64(graph_m))).asnumpy()
            report.ms_rel = float(np.abs(fed - out).max() / scale)
    return report
