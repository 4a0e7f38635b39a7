"""``specs.param_groups.group_with_matcher``: timm's ``group_matcher`` semantics, framework-free (the models'
matchers are checked on every registered model in ``tests/models/test_api.py``)."""
from __future__ import annotations

from specs.param_groups import MATCH_PREV_GROUP, group_with_matcher


def test_group_with_matcher_follows_timm():
    """timm's semantics on a hand-made name list: stem first, numeric (not string) order of the captured block
    indices, ``(regex, ordinal)`` lists, ``MATCH_PREV_GROUP`` joining the group before, unmatched names last,
    names kept in their order inside a group."""
    names = ["head.weight", "layer10.0.w", "conv1.weight", "layer2.1.w", "layer2.0.b", "layer2.0.a", "bn1.bias",
             "norm.weight", "extra"]
    matcher = dict(stem=r"^(?:conv1|bn1)\.", blocks=[(r"^layer(\d+)\.(\d+)\.", None),
                                                   (r"^norm\.", (MATCH_PREV_GROUP,))])
    assert group_with_matcher(names, matcher) == [
        ["conv1.weight", "bn1.bias"], ["layer2.0.b", "layer2.0.a"], ["layer2.1.w"], ["layer10.0.w", "norm.weight"],
        ["head.weight", "extra"]]
    staged = dict(stem=r"^conv1\.", blocks=[(r"^layer10\.", (0,)), (r"^layer2\.", (1,))])
    assert group_with_matcher(names, staged) == [
        ["conv1.weight"], ["layer10.0.w"], ["layer2.1.w", "layer2.0.b", "layer2.0.a"],
        ["head.weight", "bn1.bias", "norm.weight", "extra"]]
