"""Helpers shared by the tests (weights, inputs, error measure)."""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

import torch_ref
from torch_ref.testing import deterministic_weights

DATA = Path(__file__).parent / "data"

HEAVY_PARAMS = 100e6
HEAVY_FLOPS = 10e9      # forward FLOPs of the test batch (2 images at the cfg's test_input_size)
HEAVY_MODULES = 1500    # graph size: MindSpore's compile time and PyNative per-op cost grow with the layer count


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
    model = torch_ref.create_model(name)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in cached_state(name).items()})
    return model.eval()


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
