"""Parity tool on binary networks: step-layer flips are counted, classified (float32 rounding at a threshold or
not) and, with ``steps='shared'``, torch's binarised values are fed to MindSpore (``convert.parity``)."""
from __future__ import annotations

import mindspore as ms
import numpy as np
import pytest
import torch

from convert.api import ms_twin
from convert.cli import main as cli
from convert.io import write_checkpoint
from convert.parity import (ROUNDING_ULPS, STEP_FAULT, STEP_INPUT, STEP_ROUNDING, SharedSteps, compare_models,
                            run_parity, step_diff)
from helpers import torch_with_state
from ms_models.context import execution_mode
from torch_ref.layers.binary import ActQuantize, ApproxSign

NAME = "adabin_resnet20_cifar"
BINARY_A = "layer1.0.conv1.binary_a"          # the first activation binariser ...
STEP = BINARY_A + ".sign"                      # ... and its step layer
TOL = 1e-4                                     # the tool's float32 tolerance (convert.parity.DEFAULT_TOL)


def _torch_step(layer, u: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return layer(torch.from_numpy(u)).numpy()


def _inputs(seed: int = 0) -> np.ndarray:
    u = np.clip(np.random.RandomState(seed).randn(2, 4, 6, 6), -2.5, 2.5).astype(np.float32)
    u.flat[0] = 3.0                            # input scale max|u| = 3, ulp(3) = 2**-22
    return u


def test_rounding_flip_next_to_zero_is_rounding():
    """torch's input 1.5 ulp(3) above sign's threshold 0, MindSpore's as far below: one flip, 1.5 ulps away."""
    layer, u = ApproxSign(), _inputs()
    a = np.float32(1.5 * 2.0 ** -22)
    u.flat[7], got_in = a, u.copy()
    got_in.flat[7] = -a
    d = step_diff(STEP, layer, u, _torch_step(layer, u), got_in, _torch_step(layer, got_in), TOL)
    assert (d.flipped, d.total, d.verdict) == (1, u.size, STEP_ROUNDING)
    # the first float32 from a towards -a with another output is 0 (sign(0) = 0): a distance of a
    assert d.max_ulps == pytest.approx(1.5, rel=1e-6)
    assert d.max_dist == pytest.approx(float(a) / 3.0, rel=1e-6)


def test_rounding_flip_at_round_half_threshold():
    """BiMLP's round-to-{-1, 0, 1} flips at 0.5 (half to even: 0.5 -> 0); found without being told."""
    layer, u = ActQuantize("round"), _inputs()
    u.flat[5] = np.nextafter(np.float32(0.5), np.float32(1))          # torch: 1
    got_in = u.copy()
    got_in.flat[5] = np.nextafter(np.float32(0.5), np.float32(0))     # MindSpore: 0
    d = step_diff("quant_a", layer, u, _torch_step(layer, u), got_in, _torch_step(layer, got_in), TOL)
    assert (d.flipped, d.verdict) == (1, STEP_ROUNDING)
    assert d.max_ulps == pytest.approx(0.25)          # ulp(0.5) = ulp(3) / 4


def test_flip_beyond_rounding_is_a_fault():
    """A crossing 40 ulps from the threshold, inputs within the float tolerance: the step is not to blame on
    rounding (the rule bites below the tolerance); an output flip at equal inputs is a different step."""
    layer, u = ApproxSign(), _inputs()
    a = np.float32(40 * 2.0 ** -22)
    assert 40 > ROUNDING_ULPS and 2 * a / 3.0 < TOL
    u.flat[7], got_in = a, u.copy()
    got_in.flat[7] = -a
    far = step_diff(STEP, layer, u, _torch_step(layer, u), got_in, _torch_step(layer, got_in), TOL)
    assert (far.flipped, far.verdict) == (1, STEP_FAULT)
    assert far.max_ulps == pytest.approx(40, rel=1e-6)
    got_out = _torch_step(layer, u)
    got_out.flat[11] *= -1
    same = step_diff(STEP, layer, u, _torch_step(layer, u), u, got_out, TOL)
    assert (same.flipped, same.verdict, same.max_ulps) == (1, STEP_FAULT, float("inf"))


def test_flip_from_a_diverged_input_is_named_as_such():
    layer, u = ApproxSign(), _inputs()
    u.flat[7] = 0.01
    got_in = u.copy()
    got_in.flat[7] = -0.01                                             # 0.02 / 3 of the scale: over TOL
    d = step_diff(STEP, layer, u, _torch_step(layer, u), got_in, _torch_step(layer, got_in), TOL)
    assert (d.flipped, d.verdict) == (1, STEP_INPUT)
    assert d.input_rel == pytest.approx(0.02 / 3, rel=1e-6)


def test_shared_steps_force_a_custom_bprop_cell(pynative_mode):
    """MindSpore runs no forward hook on a cell with a custom ``bprop`` (BiMLP's ``ActQuantize``): the forced
    values still come out, the gradient is the cell's own straight-through estimator (1 where |x| <= 1) and
    the elements where its own output differs are counted."""
    from ms_models.layers.binary import ActQuantize as MsActQuantize
    cell = MsActQuantize("round")
    x = ms.Tensor(np.array([[0.3, -1.5, 0.7, 0.2]], np.float32))     # own output: 0, -1, 1, 0
    forced = np.array([[1.0, -1.0, 0.0, 0.0]], np.float32)
    shared = SharedSteps()
    shared.force(cell, {"": forced})
    out = cell(x).asnumpy()
    grad = ms.grad(lambda a: (cell(a) * ms.Tensor(np.array([[1.0, 2.0, 3.0, 4.0]], np.float32))).sum())(x)
    shared.remove()
    np.testing.assert_array_equal(out, forced)
    np.testing.assert_array_equal(grad.asnumpy(), [[1.0, 0.0, 3.0, 4.0]])
    assert (shared.flipped, shared.total) == (2 * 2, 2 * 4)           # two calls (forward, grad), 2 flips each
    np.testing.assert_array_equal(shared.outputs[""], [[0.0, -1.0, 1.0, 0.0]])
    np.testing.assert_array_equal(cell(x).asnumpy(), [[0.0, -1.0, 1.0, 0.0]])   # removed: its own output again


@pytest.fixture(scope="module")
def near_tie():
    """(torch model, input) with one pre-sign value of ``STEP`` exactly 0 in torch and not in MindSpore.

    ``beta_a`` of ``BINARY_A`` is set to torch's input of it at an element where MindSpore's input differs by
    float32 rounding: torch's ``(x - beta_a) / alpha_a`` is then exactly 0 there (``sign`` gives 0),
    MindSpore's a few ulps from 0 (``sign`` gives +-1). The input is the one ``run_parity`` draws (seed 0,
    batch 2 at the cfg size)."""
    tm = torch_with_state(NAME)
    x = np.random.RandomState(0).randn(2, 3, 32, 32).astype(np.float32)
    seen = {}
    handle = dict(tm.named_modules())[BINARY_A].register_forward_pre_hook(
        lambda _m, args: seen.__setitem__("torch", args[0].numpy().copy()))
    with torch.no_grad():
        tm(torch.from_numpy(x))
    handle.remove()
    with execution_mode(ms.PYNATIVE_MODE):
        mm = ms_twin(tm, ms.PYNATIVE_MODE)
        mm.set_train(False)
        handle = dict(mm.cells_and_names())[BINARY_A].register_forward_pre_hook(
            lambda _c, args: seen.__setitem__("ms", args[0].asnumpy().copy()))
        mm(ms.Tensor(x))
        handle.remove()
    diff = np.abs(seen["torch"] - seen["ms"])
    j = int(diff.argmax())
    assert diff.flat[j] > 0                    # the frameworks' inputs differ by float32 rounding somewhere
    with torch.no_grad():
        dict(tm.named_modules())[BINARY_A].beta_a.fill_(float(seen["torch"].flat[j]))
    return tm, x


def test_shared_steps_pass_a_rounding_flip(near_tie):
    tm, x = near_tie
    report = compare_models(tm, ms_twin(tm, ms.PYNATIVE_MODE), x, model_name=NAME)
    step = report.steps[STEP]
    assert report.steps_mode == "shared"
    assert step.flipped >= 1 and step.verdict == STEP_ROUNDING
    assert step.max_ulps <= 1                  # torch's input is exactly at the threshold: 1 subnormal away
    assert report.ok, report.table()
    table = report.table()
    assert f"{STEP} " in table and STEP_ROUNDING in table and "steps shared" in table


def test_shared_steps_name_a_real_fault(near_tie):
    """A binary weight of MindSpore's ``layer2.0.conv1`` turned over: the tool names that conv, past the
    rounding flip upstream (still classified as rounding)."""
    tm, x = near_tie
    mm = ms_twin(tm, ms.PYNATIVE_MODE)
    param = dict(mm.parameters_and_names())["layer2.0.conv1.weight"]
    w = param.asnumpy().copy()
    k = int(np.abs(w[0] - w[0].mean()).argmax())
    before = np.sign(w[0] - w[0].mean()).ravel()[k]
    w[0].flat[k] *= -1
    assert np.sign(w[0] - w[0].mean()).ravel()[k] == -before       # its binarised value changed
    param.set_data(ms.Tensor(w))
    report = compare_models(tm, mm, x, model_name=NAME)
    assert report.first_failure == "layer2.0.conv1"
    assert report.steps[STEP].verdict == STEP_ROUNDING


def test_free_steps_cascade_after_the_flip(near_tie, tmp_path):
    """``steps='free'`` (``run_parity`` on a checkpoint): the flip moves the binariser's output, which is the
    first layer over tolerance; the verdict points at the rounding flip and at ``--steps shared``."""
    tm, _ = near_tie
    path = write_checkpoint({k: v.numpy() for k, v in tm.state_dict().items()}, tmp_path / "near_tie.pth")
    report = run_parity(NAME, checkpoint=str(path), graph=False, steps="free")
    assert report.steps_mode == "free"
    assert report.steps[STEP].verdict == STEP_ROUNDING
    assert report.first_failure == BINARY_A
    assert f"after float32 rounding flips at {STEP}; --steps shared" in report.table()


def test_cli_defaults_to_shared_steps(near_tie, tmp_path, capsys):
    """``python -m convert parity`` on a binary model shares the steps by default and passes (GRAPH_MODE output
    compared with MindSpore's PyNative run), with the rounding flip in the table."""
    tm, _ = near_tie
    path = write_checkpoint({k: v.numpy() for k, v in tm.state_dict().items()}, tmp_path / "near_tie.pth")
    assert cli(["parity", "--model", NAME, "--checkpoint", str(path)]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith(STEP + " "))
    assert STEP_ROUNDING in row and "<-- over tolerance" not in row
    assert "steps shared" in out and "output (GRAPH_MODE vs PyNative)" in out and "PASS" in out

