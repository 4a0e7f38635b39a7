"""The architecture checks of ``specs`` are the one rule both frameworks apply: each bad argument raises the
same one-line ValueError from the specs function and from both twins' constructors."""
from __future__ import annotations

import pytest
import torch  # noqa: F401  (before mindspore)

import ms_models
import torch_ref
from specs import adabin, addernet, bimlp, ghostnetv2, vanillanet

CASES = [   # (model, constructor kwargs, message fragment)
    ("adabin_resnet20_cifar", dict(layers=(3, 3)), "3 or 4 stages"),
    ("adabin_resnet20_cifar", dict(stem="tiny"), "unknown AdaBin stem"),
    ("adder_resnet20", dict(layers=(3, 3, 3, 3, 3)), "3 or 4 stages"),
    ("vanillanet_5", dict(strides=(2, 2)), "one entry more than strides"),
    ("ghostnetv2_100", dict(dfc_upsample="cubic"), "dfc_upsample must be one of"),
    ("bimlp_s", dict(norm="layer"), "norm must be 'batch' or 'group'"),
    ("bimlp_s", dict(act_binarize="ternary"), "act_binarize must be one of"),
]


@pytest.mark.parametrize("name,kwargs,message", CASES, ids=[f"{c[0]}-{next(iter(c[1]))}" for c in CASES])
@pytest.mark.parametrize("framework", ["torch", "mindspore"])
def test_both_twins_reject_a_bad_architecture(framework, name, kwargs, message):
    create = torch_ref.create_model if framework == "torch" else ms_models.create_model
    with pytest.raises(ValueError, match=message):
        create(name, **kwargs)


def test_spec_checks_accept_the_official_values_and_reject_others():
    adabin.check_arch((3, 3, 3), "cifar", "A")
    addernet.check_arch((3, 4, 6, 3))
    vanillanet.check_arch((64, 128, 256), (2, 2))
    assert vanillanet.check_act_learn(0.0) == 0.0 and vanillanet.check_act_learn(1) == 1.0
    assert ghostnetv2.check_dfc_upsample("bilinear") == "bilinear"
    assert bimlp.check_norm("group") == "group" and bimlp.check_act_binarize("sign") == "sign"
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match=r"slope must lie in \[0, 1\]"):
            vanillanet.check_act_learn(bad)
