"""ms_models without torch (issue 11 section 2): in a fresh interpreter where importing torch fails, ms_models
imports, reads a training config, builds a model, saves and loads ``.ckpt`` and ``.safetensors`` files, trains a
few steps, runs the training engine for an epoch and validates its checkpoint, and says in one line that torch is needed when a file holds torch names or is a torch file. torch never
enters ``sys.modules``. One subprocess (importing MindSpore dominates its time)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r'''
import sys


class NoTorch:
    """A meta-path finder that fails every import of torch or a torch sub-module, as if it were not installed."""

    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError(f"No module named {name!r} (blocked by test_torch_free)")
        return None


sys.meta_path.insert(0, NoTorch())

import os
import tempfile

import mindspore as ms
import numpy as np

import ms_models
from convert.io import write_checkpoint
from ms_models.train.config import load_config
from specs.errors import CheckpointError, KeyMismatchError

assert load_config("configs/demo/adabin_resnet20_digits.yaml").model.name == "adabin_resnet20_cifar"

NAME, ARCH = "adabin_resnet20_cifar", dict(layers=(1, 1, 1), width=8)   # one block per stage: seconds
tmp = tempfile.mkdtemp()


def state_of(model):
    return {k: p.asnumpy() for k, p in model.parameters_and_names()}


def expect_error(cls, words, fn):
    try:
        fn()
    except cls as exc:
        msg = str(exc)
        assert "\n" not in msg and all(w in msg for w in words), msg
        return
    raise AssertionError(f"no {cls.__name__}")


ms.set_seed(0)
with ms_models.execution_mode(ms.GRAPH_MODE):
    model = ms_models.create_model(NAME, **ARCH)
    rng = np.random.RandomState(0)
    x, y = rng.randn(32, 3, 8, 8).astype(np.float32), rng.randint(0, 10, 32).astype(np.int32)
    opt = ms.nn.Adam(model.trainable_params(), learning_rate=1e-2)
    step = ms.nn.TrainOneStepCell(ms.nn.WithLossCell(model, ms.nn.CrossEntropyLoss()), opt)
    step.set_train(True)
    losses = [float(step(ms.Tensor(x), ms.Tensor(y)).asnumpy()) for _ in range(8)]
# 8 Adam steps at lr 1e-2 on one batch of 32 random images fit it: the loss falls well below its start
assert np.isfinite(losses[-1]) and losses[-1] < 0.8 * losses[0], losses

trained = state_of(model)
ms.save_checkpoint(model, os.path.join(tmp, "m.ckpt"))                     # MindSpore's own writer
write_checkpoint(trained, os.path.join(tmp, "m.safetensors"))
for file in ("m.ckpt", "m.safetensors"):
    path = os.path.join(tmp, file)
    loaded = state_of(ms_models.create_model(NAME, checkpoint=path, **ARCH))
    assert loaded.keys() == trained.keys() and all(np.array_equal(loaded[k], v) for k, v in trained.items()), file
    into = state_of(ms_models.load_checkpoint(ms_models.create_model(NAME, **ARCH), path))
    assert all(np.array_equal(into[k], v) for k, v in trained.items()), file

# the cfg's MindSpore-only parameters (the estimator temperatures t, k) may be absent: they keep their values
no_tk = {k: v for k, v in trained.items() if not k.endswith((".t", ".k"))}
assert len(no_tk) < len(trained)
write_checkpoint(no_tk, os.path.join(tmp, "no_tk.safetensors"))
assert state_of(ms_models.create_model(NAME, checkpoint=os.path.join(tmp, "no_tk.safetensors"), **ARCH)).keys() \
    == trained.keys()

# strict: a missing key and a wrong shape are one-line KeyMismatchErrors, without torch
missing = {k: v for k, v in trained.items() if k != "conv1.weight"}
write_checkpoint(missing, os.path.join(tmp, "missing.ckpt"))
expect_error(KeyMismatchError, ["1 missing key(s): conv1.weight"],
             lambda: ms_models.create_model(NAME, checkpoint=os.path.join(tmp, "missing.ckpt"), **ARCH))
write_checkpoint({**trained, "linear.bias": np.zeros(3, np.float32)}, os.path.join(tmp, "shape.ckpt"))
expect_error(KeyMismatchError, ["shape mismatch", "linear.bias"],
             lambda: ms_models.create_model(NAME, checkpoint=os.path.join(tmp, "shape.ckpt"), **ARCH))

# torch names (BatchNorm weight/bias/running_*) or a torch file: one line saying torch is needed
bn = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}
torch_named = {k.rsplit(".", 1)[0] + "." + bn.get(k.rsplit(".", 1)[1], k.rsplit(".", 1)[1]): v
               for k, v in trained.items()}
write_checkpoint(torch_named, os.path.join(tmp, "torch_named.safetensors"))
expect_error(CheckpointError, ["torch_named.safetensors", "needs torch"],
             lambda: ms_models.create_model(NAME, checkpoint=os.path.join(tmp, "torch_named.safetensors"), **ARCH))
with open(os.path.join(tmp, "m.pth"), "wb") as f:
    f.write(b"never read: torch is needed first")
expect_error(CheckpointError, ["m.pth", "needs torch"],
             lambda: ms_models.load_checkpoint(model, os.path.join(tmp, "m.pth")))

# the training engine: one epoch of the demo recipe (its model at one block per stage), then validation
from ms_models.train.cli import validate
from ms_models.train.config import apply_overrides
from ms_models.train.loop import train
cfg = apply_overrides(load_config("configs/demo/adabin_resnet20_digits.yaml"),
                      ["train.epochs=1", "model.kwargs.layers=[1, 1, 1]", "model.kwargs.width=8", "data.workers=1"])
result = train(cfg, os.path.join(tmp, "run"))
assert sorted(os.listdir(os.path.join(tmp, "run"))) == ["best.ckpt", "config.yaml", "curves.png", "last.ckpt",
                                                        "metrics.jsonl", "train.log"], os.listdir(os.path.join(tmp, "run"))
scores = validate(cfg.model.name, os.path.join(tmp, "run", "best.ckpt"), cfg.data.dir, progress=False)
assert abs(scores["top1"] - result.best_top1) * scores["images"] / 100 <= 1, (scores, result.best_top1)

leaked = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
assert not leaked, leaked
print("TORCH-FREE OK", len(trained), "parameters", [round(v, 3) for v in losses])
'''


@pytest.mark.slow   # a subprocess that trains
def test_ms_models_imports_builds_loads_and_trains_without_torch():
    run = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "GLOG_v": "3"})
    assert run.returncode == 0, run.stderr[-3000:]
    assert "TORCH-FREE OK" in run.stdout, run.stdout[-2000:]
