"""What is special to BiMLP: official names and outputs, the binary quantisers and their gradients, MindSpore's
``same`` max-pool, gradient parity in both MindSpore modes, training.

``bimlp_official_keys.json`` lists the parameter names and shapes of mindspore-ai/models@eab643f
``research/cv/BiMLP/src/bimlp.py`` ``BiMLP_S``/``BiMLP_M`` (``ms_shapes``; ``forms.train.shapes`` the same under
PyTorch's layer names). ``bimlp_official_tiny.safetensors`` was made by running that official code (PyNative)
on a reduced ``WaveNet`` (layers 1-2-1-1, widths 16-24-32-40, 10 classes; BatchNorm ``bn`` and GroupNorm ``gn``
outer norms) with seeded weights and calibrated BN statistics: its parameters under the official names, a
2x3x44x36 input (odd and even maps for the ``same`` pools) and its eval- and train-mode logits.
"""
from __future__ import annotations

import json

import mindspore as ms
import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.numpy import load_file

import ms_models
from convert.mapping import build_name_map, ms_to_torch
from helpers import DATA, adam_losses, rel_err
from builtin_data import digits
from ms_models.models.bimlp import BiMLP as MsBiMLP
from ms_models.layers.binary import ActQuantize as MsActQuantize, XnorConv2d as MsXnorConv2d
from torch_ref.models.bimlp import BiMLP, max_pool_same
from torch_ref.layers.binary import ActQuantize, XnorConv2d

TOL = 1e-4      # float32, relative to the output scale
MODES = pytest.mark.parametrize("mode", [ms.GRAPH_MODE, ms.PYNATIVE_MODE], ids=["graph", "pynative"])


def _set_mode(mode, request):
    request.getfixturevalue("graph_mode" if mode == ms.GRAPH_MODE else "pynative_mode")


def _official(tag: str):
    path = DATA / "bimlp_official_tiny.safetensors"
    with safe_open(str(path), "np") as f:
        kwargs = json.loads(f.metadata()[tag])
    arrays = load_file(str(path))
    state = {k[len(tag) + 7:]: v for k, v in arrays.items() if k.startswith(f"{tag}.state.")}
    return kwargs, state, arrays


def _pair(tag: str, **extra):
    """(torch model, MindSpore model) with the official tiny weights (MindSpore names load as they are)."""
    kwargs, state, arrays = _official(tag)
    kwargs = {**kwargs, **extra}
    tm, mm = BiMLP(**kwargs), MsBiMLP(**kwargs)
    nm = build_name_map(tm, mm)
    tm.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in ms_to_torch(state, nm).items()}, strict=True)
    not_loaded, unused = ms.load_param_into_net(mm, {k: ms.Parameter(ms.Tensor(v), name=k) for k, v in state.items()},
                                                strict_load=True)
    assert not not_loaded and not unused
    return tm, mm, nm, arrays


@pytest.mark.parametrize("name", ["bimlp_s", "bimlp_m"])
def test_mindspore_names_are_the_official_ones(name):
    """Our MindSpore parameter names and shapes are exactly the official network's (its checkpoints load as
    they are); the trainable count equals the official one (15.84 M / 29.69 M)."""
    manifest = json.loads((DATA / "bimlp_official_keys.json").read_text())["models"][name]
    from mindspore.nn.utils import no_init_parameters
    with no_init_parameters():
        mm = ms_models.create_model(name)
    assert {k: list(p.shape) for k, p in mm.parameters_and_names()} == manifest["ms_shapes"]
    assert sum(int(np.prod(p.shape)) for p in mm.trainable_params()) == manifest["params"]


@pytest.mark.parametrize("tag", ["bn", "gn"])
def test_torch_matches_official_code(tag):
    tm, _, _, a = _pair(tag)
    x = torch.from_numpy(a["input"])
    with torch.no_grad():
        assert rel_err(a[f"{tag}.logits_eval"], tm.eval()(x).numpy()) <= TOL
        assert rel_err(a[f"{tag}.logits_train"], tm.train()(x).numpy()) <= TOL


@pytest.mark.slow
@pytest.mark.parametrize("tag,mode", [("bn", ms.GRAPH_MODE), ("bn", ms.PYNATIVE_MODE), ("gn", ms.PYNATIVE_MODE)],
                         ids=["bn-graph", "bn-pynative", "gn-pynative"])
def test_mindspore_matches_official_code(tag, mode, request):
    _set_mode(mode, request)
    _, mm, _, a = _pair(tag)
    x = ms.Tensor(a["input"])
    mm.set_train(False)
    assert rel_err(a[f"{tag}.logits_eval"], mm(x).asnumpy()) <= TOL
    mm.set_train(True)
    assert rel_err(a[f"{tag}.logits_train"], mm(x).asnumpy()) <= TOL


def test_same_max_pool_equals_mindspore(pynative_mode):
    """MindSpore ``MaxPool2d(pad_mode='same')``: extra padding after, -inf (all-negative input), odd/even sizes."""
    x = -np.abs(np.random.RandomState(0).randn(2, 3, 11, 8)).astype(np.float32) - 1
    for k in (2, 3, 5, 7):
        ref = ms.nn.MaxPool2d(kernel_size=k, stride=2, pad_mode="same")(ms.Tensor(x)).asnumpy()
        got = max_pool_same(torch.from_numpy(x), k).numpy()
        assert got.shape == ref.shape == (2, 3, 6, 4) and np.array_equal(got, ref), k
    # k=3: rows pad 1 + 1 (11 -> 6), columns 0 + 1 (8 -> 4): the first window is rows 0-1, columns 0-2
    assert np.array_equal(max_pool_same(torch.from_numpy(x), 3)[:, :, 0, 0].numpy(), x[:, :, :2, :3].max((2, 3)))


@MODES
@pytest.mark.parametrize("act", ["round", "sign"])
def test_binary_conv_values_and_straight_through_gradients(act, mode, request):
    """Activations in {-1, 0, +1} (round half to even: +-0.5 -> 0) or sign; weights ``sign(W) mean_c|W|``;
    gradients: input ``g * (|x| <= 1)`` through the quantiser, weight the unclipped straight-through ``dW``.
    A quantiser that fell back to MindSpore's zero (or missing) gradient of Sign/Rint fails here."""
    _set_mode(mode, request)
    rs = np.random.RandomState(0)
    x = (rs.randn(2, 6, 5, 5) * 1.5).astype(np.float32)
    x[0, 0, 0, :5] = [0.5, -0.5, 1.5, -1.0, 0.0]
    torch.manual_seed(0)
    tc = XnorConv2d(6, 4, act_binarize=act)
    mc = MsXnorConv2d(6, 4, act_binarize=act)
    w = tc.weight.detach().numpy()
    mc.weight.set_data(ms.Tensor(w))
    xt = torch.from_numpy(x).requires_grad_()
    out = tc(xt)
    proj = rs.randn(*out.shape).astype(np.float32)
    (out * torch.from_numpy(proj)).sum().backward()
    q = np.round(np.clip(x, -1, 1)) if act == "round" else np.sign(np.clip(x, -1, 1))
    assert set(np.unique(q)) == {-1.0, 0.0, 1.0} and q[0, 0, 0, 4] == 0
    assert (q[0, 0, 0, :2] == 0).all() if act == "round" else (q[0, 0, 0, :2] == [1, -1]).all()
    wb = np.sign(w) * np.abs(w).mean(1, keepdims=True)
    ref = np.einsum("nchw,oc->nohw", q, wb[:, :, 0, 0])
    assert np.abs(out.detach().numpy() - ref).max() <= 1e-5
    mask = (np.abs(x) <= 1).astype(np.float32)
    gx_ref = np.einsum("nohw,oc->nchw", proj, wb[:, :, 0, 0]) * mask
    gw_ref = np.einsum("nohw,nchw->oc", proj, q)[:, :, None, None]
    assert np.abs(xt.grad.numpy() - gx_ref).max() <= 1e-5
    assert np.abs(tc.weight.grad.numpy() - gw_ref).max() <= 1e-4
    assert np.abs(gx_ref).max() > 0.1 and np.abs(gw_ref).max() > 0.1
    p = ms.Tensor(proj)

    def loss(a):
        return (mc(a) * p).sum()

    gx, gw = ms.grad(loss, 0, [mc.weight])(ms.Tensor(x))
    assert np.abs(mc(ms.Tensor(x)).asnumpy() - ref).max() <= 1e-5
    assert np.abs(gx.asnumpy() - gx_ref).max() <= 1e-5
    assert np.abs(gw[0].asnumpy() - gw_ref).max() <= 1e-4


def test_quantiser_gradient_is_not_zero_in_both_frameworks(pynative_mode):
    """The quantisers' gradient is the clip mask, not the zero gradient of Sign/Rint."""
    x = np.linspace(-2, 2, 41, dtype=np.float32)
    for mode in ("round", "sign"):
        g = ms.grad(MsActQuantize(mode))(ms.Tensor(x)).asnumpy()
        assert np.array_equal(g, (np.abs(x) <= 1).astype(np.float32))
        xt = torch.from_numpy(x).requires_grad_()
        ActQuantize(mode)(xt).sum().backward()
        assert np.array_equal(xt.grad.numpy(), g)


@pytest.mark.slow
@pytest.mark.parametrize("tag,act,mode", [("bn", "round", ms.GRAPH_MODE), ("gn", "sign", ms.PYNATIVE_MODE),
                                          ("bn", "sign", ms.PYNATIVE_MODE)],
                         ids=["bn-round-graph", "gn-sign-pynative", "bn-sign-pynative"])
def test_gradients_equal_torch(tag, act, mode, request):
    """One forward+backward on the official tiny weights: every parameter gradient of MindSpore equals torch's
    (float32: 1e-4 of the tensor's largest gradient, plus 1e-6 of the overall largest), and the binary layers
    get non-zero gradients. BN in eval mode: in train mode, batch statistics over the 8 values per channel of
    the last stage and quantised (near-constant) channels make the gradients ill-conditioned (up to 1e6)."""
    _set_mode(mode, request)
    tm, mm, nm, a = _pair(tag, act_binarize=act)
    x = a["input"]
    proj = np.random.RandomState(3).randn(len(x), 10).astype(np.float32)
    (tm.eval()(torch.from_numpy(x)) * torch.from_numpy(proj)).sum().backward()
    ref = {k: p.grad.numpy() for k, p in tm.named_parameters()}
    params = mm.trainable_params()
    mm.set_train(False)
    p = ms.Tensor(proj)

    def loss(i):
        return (mm(i) * p).sum()

    _, grads = ms.value_and_grad(loss, None, params)(ms.Tensor(x))
    floor = 1e-6 * max(np.abs(g).max() for g in ref.values())
    to_torch = nm.ms_to_torch
    assert len(grads) == len(ref)
    for prm, g in zip(params, grads):
        r = ref[to_torch[prm.name]]
        assert np.abs(g.asnumpy() - r).max() <= 1e-4 * np.abs(r).max() + floor, prm.name
    binary = [k for k in ref if k.endswith(("fc1.weight", "fc_h.weight", "tfc_w.weight", "sfc_h.weight"))]
    assert binary and all(np.abs(ref[k]).max() > 0 for k in binary)


@pytest.mark.slow
def test_training_lowers_the_loss_in_both_frameworks(pynative_mode):
    """Four Adam steps (lr 0.05) on 64 scikit-learn digits (16x16) with a tiny BiMLP lower the train-mode
    cross-entropy by over 15 % in torch and in MindSpore (PyNative), starting from the same weights."""
    kwargs = dict(layers=(1, 1, 1, 1), embed_dims=(8, 8, 16, 16), num_classes=10)
    x, y = (a[:64] for a in digits(16))           # 16x16 digits in [-1, 1]
    torch.manual_seed(0)
    losses = adam_losses(BiMLP(**kwargs), x, y, steps=4, lr=5e-2)
    assert losses[-1] < 0.85 * losses[0], losses
    torch.manual_seed(0)
    init = BiMLP(**kwargs)
    mm = MsBiMLP(**kwargs)
    nm = build_name_map(init, mm)
    state = {nm.torch_to_ms[k]: v.numpy() for k, v in init.state_dict().items() if k in nm.torch_to_ms}
    ms.load_param_into_net(mm, {k: ms.Parameter(ms.Tensor(v), name=k) for k, v in state.items()}, strict_load=True)
    losses_m = adam_losses(mm, x, y, steps=4, lr=5e-2)
    assert losses_m[-1] < 0.85 * losses_m[0], losses_m


def test_bad_arguments_give_one_line_errors():
    with pytest.raises(ValueError, match="act_binarize"):
        BiMLP(layers=(1, 1, 1, 1), embed_dims=(8, 8, 16, 16), act_binarize="tanh")
    with pytest.raises(ValueError, match="act_binarize"):
        MsBiMLP(layers=(1, 1, 1, 1), embed_dims=(8, 8, 16, 16), act_binarize="tanh")
    for cls in (BiMLP, MsBiMLP):
        with pytest.raises(ValueError, match="divisible by 4"):
            cls(layers=(1, 1, 1, 1), embed_dims=(8, 10, 16, 16))
        with pytest.raises(ValueError, match="norm"):
            cls(layers=(1, 1, 1, 1), embed_dims=(8, 8, 16, 16), norm="layer")
