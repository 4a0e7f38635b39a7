"""The private MindSpore API :mod:`ms_models._compat` relies on, against the pinned MindSpore version.

Fails loudly when MindSpore changes: a version nobody checked, a private name gone or changed, or the refresh
no longer making a structural change visible in GRAPH_MODE. Re-read ``_compat``'s docstring against the new
MindSpore source, fix it, then add the version to ``CHECKED_VERSIONS``.
"""
from __future__ import annotations

import mindspore as ms
import numpy as np
from mindspore import nn

from ms_models import _compat
from ms_models.layers import refresh_graph


def test_running_mindspore_version_was_checked():
    assert _compat.version_checked(), (f"MindSpore {ms.__version__} is not in _compat.CHECKED_VERSIONS "
                                       f"{_compat.CHECKED_VERSIONS}: re-check the private API it relies on")


def test_private_api_relied_on_is_there():
    assert _compat.check() == []


class _Block(nn.Cell):
    def __init__(self, out: int):
        super().__init__()
        self.head = nn.Dense(4, out)

    def construct(self, x):
        return self.head(x)


class _Net(nn.Cell):
    """The swapped cell sits one level down, as a model's classifier inside its head block does."""

    def __init__(self):
        super().__init__()
        self.block = _Block(3)

    def construct(self, x):
        return self.block(x)


def test_refresh_graph_makes_a_swapped_child_visible_in_graph_mode(graph_mode):
    net = _Net()
    x = ms.Tensor(np.ones((2, 4), np.float32))
    assert net(x).shape == (2, 3)
    net.block.head = nn.Dense(4, 5)
    # the reason _compat exists: MindSpore reuses the compiled graph of the old structure. If this starts
    # failing, the pinned MindSpore sees the swap by itself and drop_compiled_graphs may no longer be needed.
    assert net(x).shape == (2, 3), "MindSpore now recompiles a swapped child by itself: revisit _compat"
    refresh_graph(net)
    assert net(x).shape == (2, 5)
    assert dict(net.parameters_and_names())["block.head.weight"].name == "block.head.weight"
