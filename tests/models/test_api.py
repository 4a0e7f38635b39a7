"""The model API a trainer uses, over every registered model in both frameworks (registry-driven).

``forward_features`` / ``forward_head`` / ``reset_classifier``, ``no_weight_decay``, ``group_matcher`` (through
``specs.param_groups.group_with_matcher``) and ``set_epoch``. Heavy models (``helpers.is_heavy``) are built
without weights (torch on the meta device, MindSpore under ``no_init_parameters``) and only their names,
groups and hooks are checked; light ones also run their heads in PyNative, and the smallest model of each
structure (``helpers.smallest_per_structure``) its MindSpore backbone. GRAPH_MODE compiles are the cost here
(several seconds each, three per reset check), so the GRAPH_MODE reset checks (``slow``) run on one small
configuration per family: the compiled-graph refresh is family code (each family's ``reset_classifier``), not
variant code.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import mindspore as ms
from mindspore.common.dtype import float_type
from mindspore.nn.utils import no_init_parameters

import ms_models
import torch_ref
from convert.api import ms_twin
from convert.mapping import build_name_map
from ms_models._compat import compiled_graphs
from helpers import is_heavy, rel_err, sample_input, smallest_per_structure, torch_with_state
from specs.param_groups import group_with_matcher
from torch_ref.layers.binary import LearnableBias, PReLU

MODELS = torch_ref.list_models()
LIGHT = [n for n in MODELS if not is_heavy(n)]
STRUCTURES = smallest_per_structure(LIGHT)
SCHEDULED = {"vanillanet", "adabin"}         # families whose set_epoch changes the model (the others: nothing)
TOL = 1e-4   # float32 parity, relative to the output scale (as in test_registry.py)


def _family(name: str) -> str:
    return torch_ref.get_model_cfg(name).family


def _headless_width(name: str, shapes: dict) -> int:
    """The input width of the first classifier layer (``cfg.classifier[0]``): what a headless model outputs."""
    return shapes[f"{torch_ref.get_model_cfg(name).classifier[0]}.weight"][1]


def _filled(model):
    """A MindSpore model built under ``no_init_parameters`` with every parameter set to arbitrary positive
    values (for shape checks: the random initialisers of the large models take longer than the test)."""
    rs = np.random.RandomState(0)
    for _, p in model.parameters_and_names():
        value = rs.uniform(0.5, 1.5, p.shape) if p.dtype in float_type else np.zeros(p.shape)
        p.set_data(ms.Tensor(value, dtype=p.dtype))
    return model


def _features_shape(model) -> tuple[int, ...]:
    """A small shape of ``model``'s ``forward_features`` output: (2, C, 2, 2), or (2, 5, C) tokens for models
    whose ``output_fmt`` is 'NLC' (timm's transformers)."""
    nlc = getattr(model, "output_fmt", "NCHW") == "NLC"
    return (2, 5, model.num_features) if nlc else (2, model.num_features, 2, 2)


def _channels(model, shape: tuple) -> int:
    """The channel width of a ``forward_features`` output of ``shape`` (the last axis of 'NLC' tokens)."""
    return shape[-1] if getattr(model, "output_fmt", "NCHW") == "NLC" else shape[1]


def _head_params(model: torch.nn.Module) -> set[str]:
    """Names of the parameters of the modules ``forward_head`` runs (forward hooks; on the meta device, on
    pooled-size features: every family's head pools globally)."""
    ran: set[str] = set()
    handles = [m.register_forward_hook(lambda mod, i, o, n=n: ran.add(n)) for n, m in model.named_modules() if n]
    try:
        model.forward_head(torch.empty(_features_shape(model)))
    finally:
        for h in handles:
            h.remove()
    return {n for n in dict(model.named_parameters()) if n.rsplit(".", 1)[0] in ran}


@pytest.mark.parametrize("name", MODELS)
def test_weight_decay_groups_and_epoch_hook(name):
    """On models built without weights, both frameworks: ``no_weight_decay`` names trainable parameters (the same
    ones in both); ``group_matcher`` (fine and coarse) puts every parameter in exactly one group, stem first
    (the first conv, nothing of the head), head last (the classifier; no trainable parameter that
    ``forward_head`` does not run, so no block's: the ImageNet AdaBin's unused frozen cells are unmatched), the
    same groups in both frameworks, no more coarse groups than fine ones; ``set_epoch`` is accepted."""
    cfg = torch_ref.get_model_cfg(name)
    with torch.device("meta"):
        tm = torch_ref.create_model(name).eval()
        head_params = _head_params(tm)
    with no_init_parameters():
        mm = ms_models.create_model(name)
    to_torch = build_name_map(tm, mm, name).ms_to_torch
    t_params = dict(tm.named_parameters())
    m_params = dict(mm.parameters_and_names())

    assert tm.no_weight_decay() <= {n for n, p in t_params.items() if p.requires_grad}
    assert mm.no_weight_decay() <= {n for n, p in m_params.items() if p.requires_grad}
    assert {to_torch[n] for n in mm.no_weight_decay()} == tm.no_weight_decay()

    counts = {}
    for coarse in (False, True):
        groups = group_with_matcher(t_params, tm.group_matcher(coarse))
        flat = [n for g in groups for n in g]
        assert sorted(flat) == sorted(t_params) and all(groups)
        assert f"{cfg.first_conv}.weight" in groups[0] and not set(groups[0]) & head_params
        assert {f"{h}.weight" for h in cfg.classifier} <= set(groups[-1])
        assert {n for n in groups[-1] if t_params[n].requires_grad} <= head_params
        ms_groups = group_with_matcher(m_params, mm.group_matcher(coarse))
        assert sorted(n for g in ms_groups for n in g) == sorted(m_params)
        mapped = [{to_torch.get(n) for n in g} & set(t_params) for g in ms_groups]
        assert [m for m in mapped if m] == [set(g) for g in groups]
        counts[coarse] = len(groups)
    assert 2 < counts[True] <= counts[False]

    for model in (tm, mm):
        assert model.set_epoch(0, 10) is None


@pytest.mark.parametrize("name", STRUCTURES)
def test_torch_feature_api(name):
    """On the smallest model of each set of module types (the other variants differ in depth and width only, and
    their heads' shapes are in ``test_cfg_fields``): features ``(B, num_features, h, w)`` (tokens ``(B, L, num_features)`` for 'NLC' models), pre-logits
    ``(B, num_features)`` (timm's ``head_hidden_size`` where
    the head has a hidden layer: GhostNetV2's 1280-d ``conv_head``), logits; ``reset_classifier(7)`` then
    ``(0)`` change the head's output to 7 and to the removed classifier's input width; ``set_epoch`` of the
    families without a schedule leaves every tensor of the model unchanged. (The whole ``model(x)`` runs in
    ``test_registry.py``'s parity test.)"""
    model = torch_with_state(name)
    x = torch.from_numpy(sample_input(name))
    with torch.no_grad():
        feats = model.forward_features(x)
        out = model.forward_head(feats)
        pre = model.forward_head(feats, pre_logits=True)
    assert out.shape == (2, model.pretrained_cfg.num_classes)
    assert torch.isfinite(out).all()
    assert feats.shape[0] == 2 and _channels(model, feats.shape) == model.num_features
    assert pre.shape == (2, getattr(model, "head_hidden_size", model.num_features))
    headless = _headless_width(name, {k: tuple(v.shape) for k, v in model.state_dict().items()})
    with torch.no_grad():
        model.reset_classifier(7)
        assert model.forward_head(feats).shape == (2, 7)
        model.reset_classifier(0)
        assert model.forward_head(feats).shape == (2, headless)
    if _family(name) not in SCHEDULED:
        before = {k: v.clone() for k, v in model.state_dict().items()}
        model.set_epoch(3, 10)
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("name", STRUCTURES)
def test_mindspore_feature_api(name, pynative_mode):
    """MindSpore PyNative: ``forward_features`` gives torch's feature shape, ``forward_head(pre_logits=True)``
    torch's pre-logits shape (one model per structure: the variants differ only in depth and width)."""
    tm = torch_with_state(name)
    x = sample_input(name)
    with torch.no_grad():
        t_feats = tm.forward_features(torch.from_numpy(x))
        t_pre = tm.forward_head(t_feats, pre_logits=True)
    mm = ms_twin(tm)
    mm.set_train(False)
    feats = mm.forward_features(ms.Tensor(x))
    assert feats.shape == t_feats.shape and _channels(mm, feats.shape) == mm.num_features
    pre = mm.forward_head(feats, pre_logits=True)
    assert pre.shape == t_pre.shape and np.isfinite(pre.asnumpy()).all()


@pytest.mark.parametrize("name", LIGHT)
def test_mindspore_reset_classifier_pynative(name, pynative_mode):
    """PyNative: the head's output follows ``reset_classifier(7)`` and ``(0)``; pre-logits keep their width."""
    with no_init_parameters():
        mm = ms_models.create_model(name)
    _filled(mm).set_train(False)
    headless = _headless_width(name, {n: p.shape for n, p in mm.parameters_and_names()})
    feats = ms.Tensor(np.ones(_features_shape(mm), np.float32))
    pre = mm.forward_head(feats, pre_logits=True).shape
    assert mm.forward_head(feats).shape == (2, mm.pretrained_cfg.num_classes)
    mm.reset_classifier(7)
    assert mm.forward_head(feats).shape == (2, 7)
    mm.reset_classifier(0)
    assert mm.forward_head(feats).shape == (2, headless)
    assert mm.forward_head(feats, pre_logits=True).shape == pre


# one small configuration per family (kwargs override the cfg's architecture): fewer blocks, same cells
GRAPH_CASES = {
    "vanillanet": ("vanillanet_5", {}),
    "ghostnetv2": ("ghostnetv2_100", {}),
    "vig": ("vig_ti_224_gelu", dict(n_blocks=2)),
    "pvig": ("pvig_ti_224_gelu", dict(blocks=(1, 1, 1, 1))),
    "adabin": ("adabin_resnet20_cifar", dict(layers=(1, 1, 1))),
    "addernet": ("adder_resnet20", dict(layers=(1, 1, 1))),
    "beit": ("beitv2_base_patch16_224", dict(depth=2)),
    "bimlp": ("bimlp_s", dict(layers=(1, 1, 1, 1))),
    "convnextv2": ("convnextv2_atto", dict(depths=(1, 1, 1, 1))),
    "resnet": ("resnet18", dict(layers=(1, 1, 1, 1))),
    "swin": ("swin_tiny_patch4_window7_224", dict(embed_dim=24, depths=(2, 1, 1, 1))),
    "vit": ("vit_tiny_patch16_224", dict(depth=2)),
}


def test_graph_cases_cover_every_family():
    assert sorted(GRAPH_CASES) == sorted({_family(n) for n in MODELS})
    assert all(_family(name) == family for family, (name, _) in GRAPH_CASES.items())


@pytest.mark.slow
@pytest.mark.parametrize("family", GRAPH_CASES)
def test_mindspore_reset_classifier_graph_mode(family, graph_mode):
    """GRAPH_MODE: after a compiled call, ``reset_classifier(7)`` and ``(0)`` change the model's output shape
    (the compiled graph is dropped; a stale graph would still give the old head's shape)."""
    name, kwargs = GRAPH_CASES[family]
    with no_init_parameters():
        mm = ms_models.create_model(name, **kwargs)
    _filled(mm).set_train(False)
    headless = _headless_width(name, {n: p.shape for n, p in mm.parameters_and_names()})
    x = ms.Tensor(sample_input(name))
    assert mm(x).shape == (2, mm.pretrained_cfg.num_classes)
    mm.reset_classifier(7)
    assert mm(x).shape == (2, 7)
    mm.reset_classifier(0)
    assert mm(x).shape == (2, headless)


def test_vanillanet_set_epoch_schedule():
    """Official main.py: lambda = epoch / decay_epochs (cosine form: (1 - cos(pi e / d)) / 2), 1 from decay_epochs
    on; the total number of epochs plays no part."""
    with torch.device("meta"):
        linear = torch_ref.create_model("vanillanet_5")
        cosine = torch_ref.create_model("vanillanet_5", decay_epochs=40, decay_linear=False)
    for epoch, total, lam in ((0, 300, 0.0), (25, 300, 0.25), (25, 50, 0.25), (100, 300, 1.0), (250, 300, 1.0)):
        linear.set_epoch(epoch, total)
        assert linear.act_learn == lam and all(s.act_learn == lam for s in linear.stages)
    cosine.set_epoch(10, 300)
    assert cosine.act_learn == pytest.approx((1 - 0.5 ** 0.5) / 2)


def test_vanillanet_set_epoch_graph_mode_without_recompiling(graph_mode):
    """GRAPH_MODE: ``set_epoch`` after a compiled call moves the output, without a new graph, to the torch twin's
    output at that epoch (lambda = 37 / 100)."""
    tm = torch_with_state("vanillanet_5")
    mm = ms_twin(tm)
    mm.set_train(False)
    x = sample_input("vanillanet_5")
    first = mm(ms.Tensor(x)).asnumpy()
    compiled = compiled_graphs(mm)
    assert compiled                                          # the call above compiled a graph
    for model in (tm, mm):
        model.set_epoch(37, 300)
    second = mm(ms.Tensor(x)).asnumpy()
    assert compiled_graphs(mm) == compiled                 # no new graph
    assert rel_err(first, second) > 1e-2                     # ... yet the output moved
    with torch.no_grad():
        assert rel_err(tm(torch.from_numpy(x)).numpy(), second) <= TOL     # ... to torch's at lambda = 0.37


def test_bimlp_no_weight_decay_is_the_per_channel_vectors():
    """BiMLP: exactly the ``LearnableBias`` shifts and PReLU slopes (found here by module type), all (1, C, 1, 1)."""
    with torch.device("meta"):
        model = torch_ref.create_model("bimlp_s")
    expected = {f"{n}.bias" for n, m in model.named_modules() if isinstance(m, LearnableBias)}
    expected |= {f"{n}.w" for n, m in model.named_modules() if isinstance(m, PReLU)}
    shapes = {n: p.shape for n, p in model.named_parameters()}
    assert model.no_weight_decay() == expected
    assert all(len(shapes[n]) == 4 and shapes[n][0] == 1 and shapes[n][2:] == (1, 1) for n in expected)
