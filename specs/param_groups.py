"""Parameter groups for layer-wise learning-rate decay, framework-free (timm's ``group_matcher`` semantics).

Every model's ``group_matcher(coarse)`` returns a dict in timm's format: ``stem`` and ``blocks`` (in that order)
map either to one regex or to a list of ``(regex, ordinal)`` pairs. A parameter name's sort key is the index of
the dict entry (stem 0, blocks 1) of the first regex that matches (``re.match``), then the regex's captured
integers, then the pair's ordinal; ordinal ``(MATCH_PREV_GROUP,)`` joins the group before it (timm: a final norm
or ``conv_head`` goes with the last block). Unmatched names (the head) sort last. :func:`group_with_matcher` turns
a matcher and the names of a model (torch ``named_parameters`` or MindSpore ``parameters_and_names``) into the
ordered groups, for a trainer's layer-wise learning-rate decay in either framework.
"""
from __future__ import annotations

import math
import re
from typing import Iterable, Mapping, Sequence, Union

MATCH_PREV_GROUP = 99999

Spec = Union[str, Sequence[tuple[str, Union[tuple[int, ...], None]]]]
Matcher = Mapping[str, Spec]


def _compile(matcher: Matcher) -> list[tuple[re.Pattern, int, tuple[int, ...]]]:
    rules = []
    for ordinal, spec in enumerate(matcher.values()):
        if isinstance(spec, str):
            rules.append((re.compile(spec), ordinal, ()))
        else:
            rules += [(re.compile(regex), ordinal, tuple(suffix or ())) for regex, suffix in spec]
    return rules


def _sort_key(name: str, rules: list) -> tuple[float, ...]:
    for regex, ordinal, suffix in rules:
        m = regex.match(name)
        if m:
            return (ordinal, *(float(g) for g in m.groups() if g is not None), *suffix)
    return (math.inf,)


def group_with_matcher(names: Iterable[str], matcher: Matcher) -> list[list[str]]:
    """The names in ordered groups (stem first, head last): every name in exactly one group, names kept in
    their given order inside a group. Same grouping as timm's ``group_with_matcher`` (dict matchers)."""
    rules = _compile(matcher)
    by_key: dict[tuple, list[str]] = {}
    for name in names:
        by_key.setdefault(_sort_key(name, rules), []).append(name)
    groups: list[list[str]] = []
    for key in sorted(by_key):
        if groups and key[-1] == MATCH_PREV_GROUP:
            groups[-1] += by_key[key]
        else:
            groups.append(list(by_key[key]))
    return groups


def resnet_matcher(stem: Sequence[str], coarse: bool) -> dict:
    """timm's ResNet matcher (``resnet.py``): the stem modules, then ``layer{i}`` (coarse) or ``layer{i}.{j}``
    blocks; the classifier is unmatched (the head group)."""
    return dict(stem=r"^(?:%s)\." % "|".join(stem), blocks=r"^layer(\d+)\." if coarse else r"^layer(\d+)\.(\d+)\.")
