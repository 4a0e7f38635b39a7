"""ONNX export from either framework, verified with onnxruntime before the file is kept."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from specs.errors import ZooError

from .io import atomic_output


@dataclass
class OnnxResult:
    path: Path
    framework: str
    max_abs_err: float
    ref_scale: float

    def __str__(self) -> str:
        return (f"wrote {self.path} ({self.framework}); onnxruntime vs {self.framework}: max abs err "
                f"{self.max_abs_err:.3g} at output scale {self.ref_scale:.3g}")


def ort_run(path: str | os.PathLike, x: np.ndarray) -> np.ndarray:
    import onnx
    import onnxruntime as ort
    onnx.checker.check_model(str(path), full_check=True)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _export_torch(model, x: np.ndarray, path: Path) -> np.ndarray:
    import torch
    model.eval()
    inp = torch.from_numpy(x)
    with torch.no_grad():
        ref = model(inp).numpy()
        torch.onnx.export(model, (inp,), str(path), dynamo=False, opset_version=17, input_names=["input"],
                          output_names=["output"], dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    return ref


def _export_ms(model, x: np.ndarray, path: Path) -> np.ndarray:
    import mindspore as ms
    from ms_models.layers import export_mode
    model.set_train(False)
    inp = ms.Tensor(x)
    ref = model(inp).asnumpy()
    with export_mode(model):         # custom CPU kernels and adaptive pools the exporter cannot write
        # An operator the exporter lacks (AdaBin's Sign, BiMLP's Rint) raises "Can not find key Sign in convert
        # map. ..." and a C++ stack. MindSpore 2.8 stays broken after it for the rest of the process (later
        # GRAPH_MODE dict outputs come back as tuples): the CLI exits; a library caller should not go on.
        try:
            ms.export(model, inp, file_name=str(path)[: -len(".onnx")], file_format="ONNX")
        except RuntimeError as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ZooError(f"MindSpore's ONNX exporter cannot write this model ({reason}); "
                           f"export it from torch instead (--framework torch)") from None
    return ref


def export_onnx(model, dst: str | os.PathLike, framework: str, input_size: tuple[int, int], batch: int = 1,
                seed: int = 0, tol: float = 1e-4) -> OnnxResult:
    """Export ``model`` (a torch_ref or ms_models model) to ``dst`` and check it with onnxruntime.

    The file is renamed into place only if onnxruntime's output matches the framework's own output within
    ``tol`` relative to the output scale (float32 kernels of two runtimes: ~1e-6 observed).
    """
    x = np.random.RandomState(seed).randn(batch, 3, *input_size).astype(np.float32)
    dst = Path(dst)
    if not str(dst).endswith(".onnx"):
        raise ZooError(f"{dst}: the ONNX output needs a .onnx extension")
    with atomic_output(dst, suffix=".onnx") as tmp:
        ref = (_export_torch if framework == "torch" else _export_ms)(model, x, tmp)
        got = ort_run(tmp, x)
        err = float(np.abs(got - ref).max())
        scale = float(np.abs(ref).max())
        if not err <= tol * max(scale, 1e-6):
            raise ZooError(f"ONNX export of the {framework} model disagrees with it: max abs err {err:.3g} "
                           f"at output scale {scale:.3g}")
    return OnnxResult(dst, framework, err, scale)
