"""Shared fixtures. torch is imported before mindspore (libgomp clash otherwise)."""
from __future__ import annotations

import pytest
import torch

import mindspore as ms
from ms_models.context import execution_mode

torch.set_num_threads(2)
ms.set_device("CPU")


@pytest.fixture
def graph_mode():
    with execution_mode(ms.GRAPH_MODE):
        yield


@pytest.fixture
def pynative_mode():
    with execution_mode(ms.PYNATIVE_MODE):
        yield


@pytest.fixture(params=[ms.GRAPH_MODE, ms.PYNATIVE_MODE], ids=["graph", "pynative"])
def any_mode(request):
    """The test runs once in each execution mode; yields the mode."""
    with execution_mode(request.param) as mode:
        yield mode
