"""Optimizers (issue 12 section 4): timm's parameter groups (weight decay, layer-wise lr decay on a registered
model), each optimizer over several steps with a changing per-step lr against torch (``torch.optim.SGD``,
``torch.optim.AdamW``) or timm's update rules transcribed in torch (``RMSpropTF``, ``Lamb``), in GRAPH_MODE and
PyNative, and checkpoint/resume of the optimizer state and schedule position."""
from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops

import ms_models
from ms_models.train.config import OptimizerConfig
from ms_models.train.optim import AdamW, Lamb, RMSpropTF, create_optimizer, param_groups
from specs.errors import ConfigError
from specs.param_groups import MATCH_PREV_GROUP

LRS = np.array([0.05, 0.1, 0.02, 0.04], np.float32)      # one lr per update, changing every step
WD = 0.1


# --- parameter groups -------------------------------------------------------------------------------------------

class Tiny(nn.Cell):
    """A model with timm's API: a stem, two blocks, a final norm that joins the last block, a head, a 2-d token
    excluded from weight decay by name, and a frozen parameter."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Dense(4, 4)
        self.blocks = nn.CellList([nn.Dense(4, 4), nn.Dense(4, 4)])
        self.norm = nn.LayerNorm((4,))
        self.head = nn.Dense(4, 3)
        self.token = Parameter(Tensor(np.ones((1, 4), np.float32)), name="token")
        self.frozen = Parameter(Tensor(np.ones((2, 2), np.float32)), name="frozen", requires_grad=False)

    def construct(self, x):
        x = self.stem(x) + self.token
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))

    def no_weight_decay(self):
        return {"token"}

    def group_matcher(self, coarse=False):
        return dict(stem=r"^(?:stem|token)", blocks=[(r"^blocks\.(\d+)\.", None), (r"^norm\.", (MATCH_PREV_GROUP,))])


def test_weight_decay_groups():
    """No decay for 1-d parameters (biases, LayerNorm gamma/beta) and no_weight_decay() names; frozen ones out."""
    groups = param_groups(Tiny(), WD)
    decay = {n for g in groups if g["weight_decay"] == WD for n in g["names"]}
    no_decay = {n for g in groups if g["weight_decay"] == 0 for n in g["names"]}
    assert decay == {"stem.weight", "blocks.0.weight", "blocks.1.weight", "head.weight"}
    assert no_decay == {"stem.bias", "blocks.0.bias", "blocks.1.bias", "head.bias", "norm.gamma", "norm.beta", "token"}
    assert all(g["lr_scale"] == 1.0 for g in groups)


def test_filter_bias_and_bn_off_decays_every_parameter():
    """``optimizer.filter_bias_and_bn=false`` (timm's flag): one group, weight decay on every trainable parameter,
    as the official AdderNet / AdaBin scripts' ``torch.optim.SGD(model.parameters(), weight_decay=wd)``; one
    momentum SGD step equals that torch optimizer's (the default rule would leave the biases, LayerNorm and the
    token undecayed)."""
    model = Tiny()
    groups = param_groups(model, WD, filter_bias_and_bn=False)
    assert [g["weight_decay"] for g in groups] == [WD]
    assert groups[0]["names"] == [p.name for p in model.trainable_params()]

    before = {p.name: p.asnumpy().copy() for p in model.trainable_params()}
    opt = create_optimizer(model, OptimizerConfig(name="sgd", momentum=0.9, weight_decay=WD, filter_bias_and_bn=False),
                           LRS)
    grads = {p.name: np.random.default_rng(1).standard_normal(p.shape).astype(np.float32) for p in opt.parameters}
    opt(tuple(Tensor(grads[p.name]) for p in opt.parameters))
    params = {n: torch.tensor(v, requires_grad=True) for n, v in before.items()}
    reference = torch.optim.SGD(params.values(), lr=float(LRS[0]), momentum=0.9, weight_decay=WD)
    for n, p in params.items():
        p.grad = torch.from_numpy(grads[n])
    reference.step()
    for p in opt.parameters:
        np.testing.assert_allclose(p.asnumpy(), params[p.name].detach().numpy(), rtol=1e-6, atol=1e-7)


def test_layer_decay_groups_and_effective_lr():
    """timm param_groups_layer_decay: layers stem(+token) 0, blocks.0 1, blocks.1 + norm 2, head 3 (layer_max):
    scale 0.5 ** (3 - id); checked on the update of a momentum-free SGD step with unit gradients."""
    model = Tiny()
    expected_scale = {"stem": 0.125, "token": 0.125, "blocks.0": 0.25, "blocks.1": 0.5, "norm": 0.5, "head": 1.0}
    scale_of = {n: g["lr_scale"] for g in param_groups(model, WD, layer_decay=0.5) for n in g["names"]}
    assert scale_of == {n: expected_scale[re.sub(r"\.(weight|bias|gamma|beta)$", "", n)] for n in scale_of}

    opt = create_optimizer(model, OptimizerConfig(name="sgd", momentum=0.0, weight_decay=0.0, layer_decay=0.5), LRS)
    before = {p.name: p.asnumpy().copy() for p in opt.parameters}
    opt(tuple(ops.ones_like(p) for p in opt.parameters))
    for p in opt.parameters:
        np.testing.assert_allclose(before[p.name] - p.asnumpy(), LRS[0] * scale_of[p.name], rtol=1e-4)


def test_layer_decay_on_vanillanet():
    """vanillanet_5 (official optim_factory layer ids): stem 0, stages.0-2 1-3, head (cls*) 4; scale
    0.8 ** (4 - id); BN statistics and the frozen act_learn are not optimized; wd 0 exactly for ndim <= 1."""
    model = ms_models.create_model("vanillanet_5", num_classes=10)
    groups = param_groups(model, WD, layer_decay=0.8)
    names = [n for g in groups for n in g["names"]]
    assert sorted(names) == sorted(p.name for p in model.trainable_params())
    assert not any("moving_" in n or "act_learn" in n for n in names)
    shapes = {p.name: p.shape for p in model.trainable_params()}
    for g in groups:
        for n in g["names"]:
            stage = re.match(r"stages\.(\d+)\.", n)
            layer = 0 if n.startswith("stem") else int(stage.group(1)) + 1 if stage else 4
            assert n.startswith(("stem", "stages.", "cls1.", "cls2.")), n
            assert g["lr_scale"] == pytest.approx(0.8 ** (4 - layer)), n
            assert g["weight_decay"] == (0.0 if len(shapes[n]) <= 1 else WD), n


def test_layer_decay_needs_a_group_matcher():
    with pytest.raises(ConfigError, match="group_matcher"):
        param_groups(nn.Dense(2, 2), WD, layer_decay=0.9)


# --- the update rules -------------------------------------------------------------------------------------------

def _timm_rmsprop_tf(alpha, eps, momentum):
    """timm RMSpropTF.step (lr_in_momentum, L2 decay), per parameter, in torch."""
    def step(p, g, lr, wd, state, t):
        if not state:
            state.update(square_avg=torch.ones_like(p), buf=torch.zeros_like(p))
        g = g + wd * p
        state["square_avg"] += (g * g - state["square_avg"]) * (1 - alpha)
        state["buf"] = momentum * state["buf"] + lr * g / torch.sqrt(state["square_avg"] + eps)
        p -= state["buf"]
    return step


def _timm_lamb(beta1, beta2, eps, clips):
    """timm Lamb (default flags) per parameter, in torch; the global clip factor comes from the caller."""
    def step(p, g, lr, wd, state, t):
        if not state:
            state.update(m=torch.zeros_like(p), v=torch.zeros_like(p))
        g = g / clips[t]
        state["m"] = beta1 * state["m"] + (1 - beta1) * g
        state["v"] = beta2 * state["v"] + (1 - beta2) * g * g
        update = (state["m"] / (1 - beta1 ** (t + 1))) / (state["v"].sqrt() / math.sqrt(1 - beta2 ** (t + 1)) + eps)
        if wd != 0:
            update = update + wd * p
            w_norm, u_norm = p.norm(), update.norm()
            update = update * (w_norm / u_norm if w_norm > 0 and u_norm > 0 else 1.0)
        p -= lr * update
    return step


CASES = {
    "sgd": dict(name="sgd", momentum=0.9),
    "sgd_nesterov": dict(name="sgd", momentum=0.9, nesterov=True),
    "adamw": dict(name="adamw", betas=(0.9, 0.99), eps=1e-8),
    "lamb": dict(name="lamb", betas=(0.9, 0.99), eps=1e-6),
    "rmsprop": dict(name="rmsprop", alpha=0.9, momentum=0.9, eps=1e-2),
}


class Net(nn.Cell):
    def __init__(self, w, b):
        super().__init__()
        self.fc = nn.Dense(4, 3)
        self.fc.weight.set_data(Tensor(w))
        self.fc.bias.set_data(Tensor(b))

    def construct(self, x):
        return self.fc(x)


class TrainStep(nn.Cell):
    """forward, ms.value_and_grad over the optimizer's parameters, update (compiled as a whole in GRAPH_MODE)."""

    def __init__(self, net, opt):
        super().__init__()
        self.net, self.opt = net, opt
        self.grad_fn = ms.value_and_grad(self.forward, None, opt.parameters)

    def forward(self, x, y):
        return ops.square(self.net(x) - y).mean()

    def construct(self, x, y):
        loss, grads = self.grad_fn(x, y)
        self.opt(grads)
        return loss


def _data():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((3, 4)).astype(np.float32)
    b = rng.standard_normal(3).astype(np.float32)
    xs = rng.standard_normal((len(LRS), 5, 4)).astype(np.float32)
    ys = (4 * rng.standard_normal((len(LRS), 5, 3))).astype(np.float32)   # large errors: Lamb's clip is active
    return w, b, xs, ys


def _torch_run(case: str, w, b, xs, ys):
    """The reference: torch.optim for SGD / AdamW, timm's rules in torch for RMSpropTF / Lamb; weight decay on the
    weight, none on the bias (the grouping above), lr changed before every step as timm's step_update does."""
    cfg = OptimizerConfig(weight_decay=WD, **CASES[case])
    params = [torch.tensor(w, requires_grad=True), torch.tensor(b, requires_grad=True)]
    wds = [WD, 0.0]
    groups = [{"params": [p], "weight_decay": d} for p, d in zip(params, wds)]
    optimizer, rule, clips = None, None, []
    if cfg.name == "sgd":
        optimizer = torch.optim.SGD(groups, lr=1.0, momentum=cfg.momentum, nesterov=cfg.nesterov)
    elif cfg.name == "adamw":
        optimizer = torch.optim.AdamW(groups, lr=1.0, betas=cfg.betas, eps=cfg.eps)
    elif cfg.name == "rmsprop":
        rule = _timm_rmsprop_tf(cfg.alpha, cfg.eps, cfg.momentum)
    else:
        rule = _timm_lamb(*cfg.betas, cfg.eps, clips)
    states = [{}, {}]
    for t, (x, y) in enumerate(zip(xs, ys)):
        for p in params:
            p.grad = None
        loss = ((torch.tensor(x) @ params[0].T + params[1] - torch.tensor(y)) ** 2).mean()
        loss.backward()
        if optimizer is not None:
            for g in optimizer.param_groups:
                g["lr"] = float(LRS[t])
            optimizer.step()
            continue
        clips.append(max(math.sqrt(sum(float((p.grad ** 2).sum()) for p in params)), 1.0))
        with torch.no_grad():
            for p, d, state in zip(params, wds, states):
                rule(p, p.grad, float(LRS[t]), d, state, t)
    if cfg.name == "lamb":
        assert max(clips) > 1.0       # the global-norm clip is exercised
    return [p.detach().numpy() for p in params]


@pytest.mark.parametrize("case", list(CASES))
def test_optimizer_steps_match_reference(case, any_mode):
    """Four steps with a per-step lr through create_optimizer (weight decay on the weight, off on the bias),
    in a compiled train step (GRAPH_MODE) and eagerly (PyNative), equal the torch / timm reference."""
    w, b, xs, ys = _data()
    net = Net(w, b)
    opt = create_optimizer(net, OptimizerConfig(weight_decay=WD, **CASES[case]), LRS)
    step = TrainStep(net, opt)
    for x, y in zip(xs, ys):
        step(Tensor(x), Tensor(y))
    expected = _torch_run(case, w, b, xs, ys)
    assert int(opt.global_step.asnumpy()[0]) == len(LRS)
    np.testing.assert_allclose(net.fc.weight.asnumpy(), expected[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(net.fc.bias.asnumpy(), expected[1], rtol=1e-5, atol=1e-6)


def test_create_optimizer_classes():
    """MindSpore's own optimizer where the maths is the same (SGD), ours for AdamW, Lamb and RMSpropTF."""
    net = Net(*_data()[:2])
    expected = {"sgd": nn.SGD, "adamw": AdamW, "lamb": Lamb, "rmsprop": RMSpropTF}
    for name, cls in expected.items():
        assert type(create_optimizer(net, OptimizerConfig(name=name), LRS)) is cls
    with pytest.raises(ConfigError, match="learning rate"):
        create_optimizer(net, OptimizerConfig(), np.zeros((2, 2)))
    with pytest.raises(ConfigError, match="nesterov"):
        create_optimizer(net, OptimizerConfig(name="sgd", momentum=0.0, nesterov=True), LRS)


def test_adamw_differs_from_mindspore_adamweightdecay():
    """Why AdamW is ours: mindspore.nn.AdamWeightDecay has no bias correction: its first step moves every weight
    by lr * (1 - b1) / sqrt(1 - b2) (3.16 lr at the default betas), torch AdamW's by lr."""
    w, b, xs, ys = _data()
    ours, theirs = Net(w, b), Net(w, b)
    for net, opt in ((ours, AdamW(ours.trainable_params(), 0.1)),
                     (theirs, nn.AdamWeightDecay(theirs.trainable_params(), 0.1, eps=1e-8))):
        TrainStep(net, opt)(Tensor(xs[0]), Tensor(ys[0]))
    np.testing.assert_allclose(np.abs(w - ours.fc.weight.asnumpy()), 0.1, rtol=1e-4)
    np.testing.assert_allclose(np.abs(w - theirs.fc.weight.asnumpy()), 0.1 * 0.1 / math.sqrt(0.001), rtol=1e-4)


# --- MindSpore's own optimizers against torch's (why the engine uses the ones it does; docs/training_optim.md) ---

def _three_updates(ms_opt, torch_opt) -> tuple[np.ndarray, np.ndarray]:
    """One weight after three updates with the same gradients and lr 0.1, 0.05, 0.02 (MindSpore: a per-step lr
    Tensor, torch: the group lr set before each step): (MindSpore, torch)."""
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal((3, 4)).astype(np.float32)
    grads = rng.standard_normal((3, 3, 4)).astype(np.float32)
    lrs = np.array([0.1, 0.05, 0.02], np.float32)
    p = Parameter(Tensor(w0), name="w")
    opt = ms_opt([p], Tensor(lrs))
    for g in grads:
        opt((Tensor(g),))
    q = torch.tensor(w0, requires_grad=True)
    ref = torch_opt([q])
    for g, lr in zip(grads, lrs):
        q.grad = torch.from_numpy(g)
        ref.param_groups[0]["lr"] = float(lr)
        ref.step()
    return p.asnumpy(), q.detach().numpy()


def test_mindspore_sgd_and_momentum_equal_torch_sgd(pynative_mode):
    """``nn.SGD`` is torch's SGD, first step included (its momentum buffer starts at the first gradient, undamped,
    like torch's; checked with dampening 0.5, where a zero-initialised buffer would differ), L2 weight decay in
    the gradient. ``nn.Momentum`` (``accum = m * accum + g`` from zero, ``p -= lr * accum``) equals it without
    dampening: the same buffer after the first step."""
    ms_w, torch_w = _three_updates(lambda p, lr: nn.SGD(p, lr, momentum=0.9, dampening=0.5, weight_decay=0.1),
                                   lambda p: torch.optim.SGD(p, 1.0, momentum=0.9, dampening=0.5, weight_decay=0.1))
    np.testing.assert_allclose(ms_w, torch_w, rtol=1e-6, atol=1e-6)
    ms_w, torch_w = _three_updates(lambda p, lr: nn.Momentum(p, lr, momentum=0.9, weight_decay=0.1),
                                   lambda p: torch.optim.SGD(p, 1.0, momentum=0.9, weight_decay=0.1))
    np.testing.assert_allclose(ms_w, torch_w, rtol=1e-6, atol=1e-6)


def test_mindspore_momentum_ignores_nesterov_on_cpu(pynative_mode):
    """The difference that rules ``nn.Momentum`` out: with ``use_nesterov=True`` its CPU kernel (MindSpore 2.8)
    runs plain momentum, torch's ``nesterov=True`` update is ``g + m * buf``. The engine's ``sgd`` (``nn.SGD``)
    has torch's Nesterov (``test_optimizer_steps_match_reference``)."""
    ms_w, plain = _three_updates(lambda p, lr: nn.Momentum(p, lr, momentum=0.9, use_nesterov=True),
                                 lambda p: torch.optim.SGD(p, 1.0, momentum=0.9))
    np.testing.assert_allclose(ms_w, plain, rtol=1e-6, atol=1e-6)
    sgd_w, nesterov = _three_updates(lambda p, lr: nn.SGD(p, lr, momentum=0.9, nesterov=True),
                                     lambda p: torch.optim.SGD(p, 1.0, momentum=0.9, nesterov=True))
    np.testing.assert_allclose(sgd_w, nesterov, rtol=1e-6, atol=1e-6)
    assert np.abs(nesterov - plain).max() > 0.1


def test_mindspore_adam_scales_eps_by_the_bias_correction(pynative_mode):
    """The eps placement of ``nn.Adam`` (TensorFlow's "epsilon hat"): ``p -= lr * sqrt(1 - b2^t) / (1 - b1^t) *
    m / (sqrt(v) + eps)``, i.e. torch's ``m_hat / (sqrt(v_hat) + eps)`` with eps divided by ``sqrt(1 - b2^t)``
    (31.6 x at t = 1, b2 = 0.999). Checked against that formula in NumPy, and against torch's Adam, which it
    misses by far at eps = 1e-3 (the engine's ``adamw`` puts eps where torch does)."""
    ms_w, torch_w = _three_updates(lambda p, lr: nn.Adam(p, lr, eps=1e-3),
                                   lambda p: torch.optim.Adam(p, 1.0, eps=1e-3))
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 4)).astype(np.float64)
    m = v = 0.0
    for t, (g, lr) in enumerate(zip(rng.standard_normal((3, 3, 4)), (0.1, 0.05, 0.02)), start=1):
        m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
        w = w - lr * math.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t) * m / (np.sqrt(v) + 1e-3)
    np.testing.assert_allclose(ms_w, w, rtol=1e-5, atol=1e-6)
    assert np.abs(ms_w - torch_w).max() > 1e-2


@pytest.mark.parametrize("name", ["sgd", "adamw", "lamb", "rmsprop"])
def test_checkpoint_restores_state_and_schedule_position(name, tmp_path):
    """The step counter is a Parameter: 2 steps, save the optimizer (model weights, moments, global_step),
    load into a fresh model and optimizer, 2 more steps == 4 uninterrupted steps (same lr sequence)."""
    w, b, xs, ys = _data()
    cfg = OptimizerConfig(name=name, weight_decay=WD)
    reference = Net(w, b)
    step = TrainStep(reference, create_optimizer(reference, cfg, LRS))
    for x, y in zip(xs, ys):
        step(Tensor(x), Tensor(y))

    first = Net(w, b)
    opt = create_optimizer(first, cfg, LRS)
    assert isinstance(opt.global_step, Parameter) and "global_step" in {p.name for p in opt.get_parameters()}
    step = TrainStep(first, opt)
    for x, y in zip(xs[:2], ys[:2]):
        step(Tensor(x), Tensor(y))
    ms.save_checkpoint(opt, str(tmp_path / "opt.ckpt"))

    rng = np.random.default_rng(11)
    resumed = Net(rng.standard_normal(w.shape).astype(np.float32), np.zeros_like(b))
    opt = create_optimizer(resumed, cfg, LRS)
    not_loaded, _ = ms.load_param_into_net(opt, ms.load_checkpoint(str(tmp_path / "opt.ckpt")))
    assert not not_loaded and int(opt.global_step.asnumpy()[0]) == 2
    step = TrainStep(resumed, opt)
    for x, y in zip(xs[2:], ys[2:]):
        step(Tensor(x), Tensor(y))
    np.testing.assert_allclose(resumed.fc.weight.asnumpy(), reference.fc.weight.asnumpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(resumed.fc.bias.asnumpy(), reference.fc.bias.asnumpy(), rtol=1e-6, atol=1e-7)
