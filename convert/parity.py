"""Layer-by-layer torch vs MindSpore comparison that names the first layer where they disagree.

Forward hooks on every named module/cell (same structural names on both sides) record each layer's
output; the table lists them in torch execution order with max abs error, the error relative to the
layer's output scale (``max|a-b| / max|a|``) and cosine similarity. MindSpore hooks only fire in PyNative,
so the per-layer run uses PyNative; the final output is also compared in GRAPH_MODE.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np

DEFAULT_TOL = 1e-4   # float32: errors of ~1e-6 relative are observed; 1e-4 leaves room for depth


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
class ParityReport:
    model: str
    input_shape: tuple
    tol: float
    layers: list[LayerDiff] = field(default_factory=list)
    output: LayerDiff | None = None
    graph_output: LayerDiff | None = None
    unmatched: list[str] = field(default_factory=list)

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
            mark = "" if d.ok else "  <-- over tolerance"
            rows.append(f"{d.name:<34} {d.kind:<18} {str(tuple(d.shape)):<20} {d.max_abs:>10.3g} "
                        f"{d.max_rel:>10.3g} {d.cosine:>10.7f}{mark}")
        verdict = (f"PASS: every layer within {self.tol:g} of its output scale" if self.ok
                   else f"FAIL: first layer over tolerance {self.tol:g}: {self.first_failure}")
        return "\n".join(rows + [verdict])

    def to_json(self) -> str:
        out = asdict(self)
        out.update(ok=self.ok, first_failure=self.first_failure)
        return json.dumps(out, indent=1)


def compare(name: str, kind: str, ref: np.ndarray, got: np.ndarray, tol: float) -> LayerDiff:
    ref = np.asarray(ref, dtype=np.float64)
    got = np.asarray(got, dtype=np.float64)
    if ref.shape != got.shape:
        return LayerDiff(name, kind, tuple(ref.shape), float("inf"), float("inf"), 0.0, False)
    err = float(np.abs(ref - got).max()) if ref.size else 0.0
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    rel = err / scale if scale > 0 else err
    denom = np.linalg.norm(ref) * np.linalg.norm(got)
    cos = float((ref.ravel() @ got.ravel()) / denom) if denom > 0 else float(err == 0)
    return LayerDiff(name, kind, tuple(ref.shape), err, rel, cos, bool(rel <= tol and np.isfinite(got).all()))


def _first_tensor(out):
    if isinstance(out, (tuple, list)):
        return out[0] if out else None
    return out


def _capture_torch(model, x: np.ndarray):
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
            out = model(torch.from_numpy(x)).numpy()
    finally:
        for h in handles:
            h.remove()
    return records, out


def _capture_ms(model, x: np.ndarray):
    import mindspore as ms
    records, handles = {}, []
    for name, cell in model.cells_and_names():
        if not name:
            continue
        def hook(_c, _i, out, name=name):
            t = _first_tensor(out)
            if isinstance(t, ms.Tensor) and name not in records:
                records[name] = t.asnumpy().copy()
        handles.append(cell.register_forward_hook(hook))
    try:
        out = model(ms.Tensor(x)).asnumpy()
    finally:
        for h in handles:
            h.remove()
    return records, out


def compare_models(torch_model, ms_model, x: np.ndarray, tol: float = DEFAULT_TOL, model_name: str = "model",
                   ms_graph_model=None) -> ParityReport:
    """Compare two models holding the same weights on input ``x``, layer by layer.

    ``ms_model`` must have been built in PYNATIVE_MODE (hooks); ``ms_graph_model``, if given, is a copy
    built in GRAPH_MODE whose final output is compared as well.
    """
    import mindspore as ms
    torch_model.eval()
    ms_model.set_train(False)
    mode = ms.get_context("mode")
    ms.set_context(mode=ms.PYNATIVE_MODE)
    try:
        t_rec, t_out = _capture_torch(torch_model, x)
        m_rec, m_out = _capture_ms(ms_model, x)
    finally:
        ms.set_context(mode=mode)
    report = ParityReport(model_name, tuple(x.shape), tol)
    for name, (kind, ref) in t_rec.items():
        if name in m_rec:
            report.layers.append(compare(name, kind, ref, m_rec[name], tol))
        else:
            report.unmatched.append(name)
    report.output = compare("output", "logits", t_out, m_out, tol)
    if ms_graph_model is not None:
        ms.set_context(mode=ms.GRAPH_MODE)
        try:
            ms_graph_model.set_train(False)
            g_out = ms_graph_model(ms.Tensor(x)).asnumpy()
        finally:
            ms.set_context(mode=mode)
        report.graph_output = compare("output (GRAPH_MODE)", "logits", t_out, g_out, tol)
    return report


def run_parity(name: str, checkpoint: str | None = None, input_size: int | None = None, batch: int = 2,
               tol: float = DEFAULT_TOL, seed: int = 0, deploy: bool = False, graph: bool = True) -> ParityReport:
    """Build ``name`` in both frameworks with the same weights (``checkpoint``, or deterministic test weights)
    and compare them with :func:`compare_models`; ``deploy`` switches both to deploy form first."""
    import mindspore as ms
    import torch
    import torch_ref
    from specs import check_input_size, get_model_cfg
    from torch_ref.testing import deterministic_weights
    from .api import ms_twin, torch_model_from

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
    x = np.random.RandomState(seed).randn(batch, 3, h, w).astype(np.float32)
    graph_model = ms_twin(tm, ms.GRAPH_MODE) if graph else None
    return compare_models(tm, ms_twin(tm, ms.PYNATIVE_MODE), x, tol, name, graph_model)
