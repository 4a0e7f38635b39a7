"""The per-family checkpoint rules declared beside the cfgs (``ModelCfg.ms_only_params``, ``checkpoint_filter``,
``official_ms_entry``) agree with what the converter derives from the two model definitions."""
from __future__ import annotations

import fnmatch

import numpy as np
import pytest

import ms_models
from convert.api import name_map
from convert.official_ms import official_ms_to_ours
from specs import get_model_cfg
from specs.errors import CheckpointError


# one small model per family (the rules are per family; building every variant's name map takes a minute)
ONE_PER_FAMILY = ("vanillanet_5", "ghostnetv2_100", "vig_ti_224_gelu", "pvig_ti_224_gelu", "adabin_resnet20_cifar",
                  "bimlp_s", "adder_resnet20", "vit_tiny_patch16_224", "resnet18", "convnextv2_atto",
                  "swin_tiny_patch4_window7_224", "beitv2_base_patch16_224")


def test_one_model_of_every_family_is_checked():
    assert {get_model_cfg(n).family for n in ONE_PER_FAMILY} == {get_model_cfg(n).family
                                                                  for n in ms_models.list_models()}


@pytest.mark.parametrize("name", ONE_PER_FAMILY)
def test_declared_mindspore_only_parameters_are_the_name_maps(name):
    """The torch-free loader treats the cfg's ``ms_only_params`` as the parameters a torch-named state cannot
    hold; the name map finds them from the two models. Both must name the same set."""
    nm = name_map(name)
    declared = {k for k in nm.ms_shapes if any(fnmatch.fnmatchcase(k, p) for p in get_model_cfg(name).ms_only_params)}
    assert declared == set(nm.ms_only)


def test_families_without_an_official_mindspore_layout_say_so():
    with pytest.raises(CheckpointError, match="no official MindSpore checkpoint layout is declared for vanillanet"):
        official_ms_to_ours("vanillanet_5", {"stem1.0.weight": np.zeros((1,), np.float32)})


def test_checkpoint_filter_applies_to_its_family_only():
    """The AdderQuant layout filter drops ``adder_new``/``scale_para`` and optimizer state of AdderNet files;
    other states pass unchanged."""
    rule = get_model_cfg("adder_resnet20").checkpoint_filter
    official = {"conv1.weight": np.ones(1), "layer1.0.conv1.adder": np.ones(1), "layer1.0.conv1.adder_new": np.ones(1),
                "layer1.0.conv1.scale_para": np.ones(1), "moments.conv1.weight": np.ones(1),
                "learning_rate": np.ones(1)}
    assert list(rule(official)) == ["conv1.weight", "layer1.0.conv1.adder"]
    quantized = {"layer1.0.conv1.adder": np.ones(1), "layer1.0.conv1.scale_para": np.ones(2)}
    assert list(rule(quantized)) == list(quantized)
    assert get_model_cfg("vanillanet_5").checkpoint_filter is None
