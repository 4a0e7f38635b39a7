"""AdderNet post-training quantization (arXiv 2212.10200): the shared NumPy math, both frameworks'
pipelines (``{ms_models,torch_ref}/methods/quantize.py``), the converter CLI and the demo."""
from __future__ import annotations

import subprocess
import sys

import mindspore as ms
import numpy as np
import pytest
import torch

import ms_models.layers.adder as ms_adder
import torch_ref.layers.adder as t_adder
from ms_models.methods import quantize as ms_quant
from torch_ref.methods import quantize as t_quant

import torch_ref
from convert.api import ms_state_of, ms_twin, torch_model_from, torch_state_of
from convert.io import write_checkpoint
from helpers import ROOT, cached_state, naive_adder, rel_err, torch_with_state
from specs import addernet as spec
from builtin_data import calibration_source
from specs.errors import ZooError

NAME = "adder_resnet20"
TOL = 1e-4   # float32 vs float64 reference, relative to the tensor's scale (sums of <= 600 terms: ~1e-6 seen)


def test_calibration_percentile_is_the_official_index():
    x = np.random.RandomState(0).randn(3, 5, 7, 11).astype(np.float32)
    n = x.size                                             # 1155: index int((round(1154.65) - 1) * 0.9997)
    assert spec.calib_index(n) == int((round(n * 0.9997) - 1) * 0.9997) == 1153
    assert spec.calib_batch_max(x) == np.sort(np.abs(x).ravel())[1153]
    assert spec.calib_batch_max(x) < np.abs(x).max()      # the top outlier is clamped


def test_kmeans_is_deterministic_and_finds_separated_groups():
    r = np.random.RandomState(0)
    v = np.concatenate([r.rand(7) * 0.1 + c for c in (3.0, 0.0, 1.0, 2.0)])
    labels = spec.kmeans_1d(v, 4, seed=3)
    assert np.array_equal(labels, np.repeat([3, 0, 1, 2], 7))     # groups numbered by ascending centre
    assert np.array_equal(labels, spec.kmeans_1d(v, 4, seed=3))
    with pytest.raises(ZooError, match="cannot split 3 output channels into 4 groups"):
        spec.kmeans_1d(v[:3], 4)


def test_weight_clamp_is_lossless_for_bounded_nonnegative_inputs():
    """|x - w| = |x - clamp(w)| + (|w| - s) for 0 <= x <= s < |w|: the clamp + bias changes no output."""
    r = np.random.RandomState(0)
    s = 0.7
    w = r.randn(6, 3, 3, 3).astype(np.float32)           # about half the weights exceed s
    x = (r.rand(2, 3, 5, 5) * s).astype(np.float32)
    wc, bias = spec.clamp_weights(w, s)
    assert (np.abs(w) > s).mean() > 0.3 and np.abs(wc).max() <= np.float32(s)
    ref = naive_adder(x, w, 1, 0)      # no padding: a zero pad is inside [0, s] too, but keep the claim simple
    got = naive_adder(x, wc, 1, 0) + bias.reshape(1, -1, 1, 1)
    assert np.abs(ref - got).max() <= 1e-5 * np.abs(ref).max()
    x_out = x.copy()
    x_out[0, 0, 0, 0] = 2.0                               # an input above s breaks it: the test can fail
    assert np.abs(naive_adder(x_out, w, 1, 0) - naive_adder(x_out, wc, 1, 0) - bias.reshape(1, -1, 1, 1)).max() > 1e-3


@pytest.mark.parametrize("bits", [4, 5, 6, 8])
def test_quantizers_share_one_integer_grid(bits):
    r = np.random.RandomState(bits)
    s = 0.9
    w = r.randn(4, 2, 3, 3).astype(np.float32)
    wq = spec.quantize_weight(w, s, bits)
    wstep, astep = 2 * s / (2 ** bits - 1), s / (2 ** bits - 1)
    k = wq / wstep
    assert np.abs(k - np.round(k)).max() < 1e-3 and k.min() >= -2 ** (bits - 1) and k.max() <= 2 ** (bits - 1) - 1
    inside = np.abs(w) < s * (1 - 2 / 2 ** bits)
    assert np.abs(wq - w)[inside].max() <= wstep / 2 + 1e-6
    a = spec.quantize_act(np.abs(r.randn(100)).astype(np.float32), s, bits)
    assert a.min() >= 0 and a.max() <= s * (1 + 1e-6)
    assert np.abs(a / astep - np.round(a / astep)).max() < 1e-3
    d = (a[:, None] - wq.ravel()[None]) / astep          # |a - w| lies on the activation grid
    assert np.abs(d - np.round(d)).max() < 2e-3
    m = 2 ** bits - 1                                     # scale m: step 1, exact ties
    assert spec.quantize_act(np.float32([0.5, 1.5, 2.5]), m, bits).tolist() == [0, 2, 2]   # half to even


def test_bad_bits_and_groups_give_one_line_errors():
    for bits in (3, 7, 16):
        with pytest.raises(ZooError, match="bits must be one of 4, 5, 6, 8"):
            spec.layer_quant(np.ones((4, 1, 1, 1), np.float32), 1.0, bits, 2)
    with pytest.raises(ZooError, match="cannot split 4 output channels into 5 groups"):
        spec.layer_quant(np.random.RandomState(0).randn(4, 1, 1, 1).astype(np.float32), 1.0, 8, 5)


def _quant_reference(x, q, bits, stride, padding):
    """NumPy reference of a quantized layer: each group's channels see the input quantized with its scale."""
    out = np.zeros(naive_adder(x, q.weight, stride, padding).shape)
    for g, s in enumerate(q.scale):
        y = naive_adder(spec.quantize_act(x, s, bits), q.weight, stride, padding)
        out[:, q.group == g] = y[:, q.group == g]
    return out + q.bias.reshape(1, -1, 1, 1)


@pytest.mark.parametrize("bits", [4, 8])
def test_quantized_layer_equals_reference_in_both_frameworks(bits, graph_mode):
    r = np.random.RandomState(0)
    w = (r.randn(8, 3, 3, 3) * np.linspace(0.2, 2, 8).reshape(-1, 1, 1, 1)).astype(np.float32)
    x = np.maximum(r.randn(2, 3, 6, 6), 0).astype(np.float32)
    q = spec.layer_quant(w, 1.2, bits, 3, seed=0)
    assert sorted(set(q.group.tolist())) == [0, 1, 2] and (q.bias < 0).any() and (q.bias == 0).any()
    ref = _quant_reference(x, q, bits, 2, 1)
    t = t_adder.Adder2d(3, 8, 3, 2, 1)
    t.set_quant(q, bits)
    with torch.no_grad():
        got_t = t(torch.from_numpy(x)).numpy()
    m = ms_adder.Adder2d(3, 8, 3, 2, 1)
    m.set_quant(q, bits)
    got_m = m(ms.Tensor(x)).asnumpy()
    assert rel_err(ref, got_t) <= TOL and rel_err(ref, got_m) <= TOL
    assert rel_err(got_t, got_m) <= 1e-6


def _calib():
    cfg = torch_ref.get_model_cfg(NAME)
    return calibration_source("digits", 2, 4, 32, cfg.mean, cfg.std, seed=0)


@pytest.fixture(scope="module")
def quantized_pair():
    """adder_resnet20 quantized separately in each framework from the same float weights and batches."""
    tm = torch_with_state(NAME)
    mm = ms_twin(tm, ms.PYNATIVE_MODE)
    r_t = t_quant.quantize(tm, _calib(), 4, 4, progress=False)
    r_m = ms_quant.quantize(mm, _calib(), 4, 4, progress=False)
    return tm, mm, r_t, r_m


@pytest.mark.slow
def test_quantization_is_identical_in_both_frameworks(quantized_pair):
    """Same calibrated ranges (float32 forward of two runtimes: ~1e-6 relative), the same k-means groups and,
    from those, the same scales; the quantized models agree on the output."""
    tm, mm, r_t, r_m = quantized_pair
    assert list(r_t) == list(r_m) and len(r_t) == 20          # 18 convs + 2 downsamples
    for k in r_t:
        assert abs(r_t[k] - r_m[k]) <= 1e-5 * r_t[k], k
    st, sm = torch_state_of(tm), ms_state_of(mm)
    for k in r_t:
        assert np.array_equal(st[f"{k}.group"], sm[f"{k}.group"]), k
        assert np.allclose(st[f"{k}.scale_para"], sm[f"{k}.scale_para"], rtol=1e-5), k
    x = next(iter(_calib()()))
    with torch.no_grad():
        ref = tm(torch.from_numpy(x)).numpy()
    got = mm(ms.Tensor(x)).asnumpy()
    # independent calibrations differ by ~1e-6 in the ranges, so a few 4-bit roundings may flip: looser bound
    assert rel_err(ref, got) <= 2e-2 and (ref.argmax(1) == got.argmax(1)).mean() >= 0.9


@pytest.mark.slow
def test_quantized_model_parity_same_state(quantized_pair, tmp_path, graph_mode):
    """One quantized state (torch) loaded into MindSpore: GRAPH_MODE logits equal torch's (float32 parity)."""
    tm = quantized_pair[0]
    write_checkpoint(torch_state_of(tm), tmp_path / "q.pth")
    back = torch_model_from(NAME, tmp_path / "q.pth", quant_bits=4).eval()
    assert back.quant_groups == 4
    mm = ms_twin(back, ms.GRAPH_MODE)
    mm.set_train(False)
    x = next(iter(_calib()()))
    with torch.no_grad():
        ref = tm(torch.from_numpy(x)).numpy()
        assert np.array_equal(back(torch.from_numpy(x)).numpy(), ref)
    assert rel_err(ref, mm(ms.Tensor(x)).asnumpy()) <= 1e-3   # see test above: rare activation-rounding flips


def test_official_mindspore_adderquant_layout_loads(tmp_path):
    """A .ckpt in the layout of the official MindSpore AdderQuant ResNet-20 (res20_adder.py): MindSpore names
    plus ``adder_new`` and ``scale_para`` per adder layer and optimizer state."""
    state = cached_state(NAME)
    nm_model = ms_twin(torch_with_state(NAME))
    official = dict(ms_state_of(nm_model))
    for k in [k for k in official if k.endswith(".adder")]:
        official[k + "_new"] = official[k].copy()
        official[k[: -len("adder")] + "scale_para"] = np.ones(4, np.float32)
    official["moments.conv1.weight"] = np.zeros_like(official["conv1.weight"])
    official["learning_rate"] = np.float32([0.1])
    write_checkpoint(official, tmp_path / "adder_res20.ckpt")
    tm = torch_ref.create_model(NAME, checkpoint=tmp_path / "adder_res20.ckpt")
    for k, v in state.items():
        if not k.endswith("num_batches_tracked"):
            assert np.array_equal(tm.state_dict()[k].numpy(), v), k
    import ms_models
    mm = ms_models.create_model(NAME, checkpoint=tmp_path / "adder_res20.ckpt")
    assert np.array_equal(dict(mm.parameters_and_names())["layer2.0.conv1.adder"].asnumpy(),
                          state["layer2.0.conv1.adder"])


@pytest.mark.slow
def test_quantize_cli(tmp_path):
    write_checkpoint(cached_state(NAME), tmp_path / "f.pth", container="state_dict")
    base = [sys.executable, "-m", "convert", "quantize", "--model", NAME]
    run = subprocess.run(base + ["--bits", "6", "--groups", "2", "--calib-batches", "1", "--batch-size", "8",
                                 "--framework", "mindspore", str(tmp_path / "f.pth"), str(tmp_path / "q.ckpt")],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    model = torch_model_from(NAME, tmp_path / "q.ckpt", quant_bits=6)
    assert model.quant_groups == 2 and model.layer1[0].conv1.scale_para.shape == (2,)
    bad = subprocess.run(base + ["--bits", "3", "--groups", "2", str(tmp_path / "f.pth"), str(tmp_path / "x.pth")],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and bad.stderr.strip().splitlines()[-1] == "error: bits must be one of 4, 5, 6, 8, got 3"
    assert not (tmp_path / "x.pth").exists()


@pytest.mark.slow
def test_demo_script_runs_and_8_bit_stays_within_one_point(tmp_path):
    """scripts/adder_quant_demo.py end to end with its defaults (4 epochs; 2 epochs leave the float model
    unconverged and BN re-estimation alone moves it by ~3 points), 8 bits only for CI time."""
    script = ROOT / "scripts" / "adder_quant_demo.py"
    run = subprocess.run([sys.executable, str(script), "--bits", "8"], capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    acc = {}
    for line in run.stdout.splitlines():
        parts = line.split()
        if parts and parts[0] in ("float32", "8-bit"):
            acc.setdefault(parts[0], float(parts[-1]))      # the first 8-bit row is the paper's method
    assert acc["float32"] > 80, run.stdout                    # it learned something
    assert abs(acc["8-bit"] - acc["float32"]) <= 1.0, run.stdout


