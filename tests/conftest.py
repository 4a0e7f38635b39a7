"""Shared fixtures. torch is imported before mindspore (libgomp clash otherwise)."""
from __future__ import annotations

import pytest
import torch

import mindspore as ms

torch.set_num_threads(2)
ms.set_device("CPU")


@pytest.fixture
def graph_mode():
    prev = ms.get_context("mode")
    ms.set_context(mode=ms.GRAPH_MODE)
    yield
    ms.set_context(mode=prev)


@pytest.fixture
def pynative_mode():
    prev = ms.get_context("mode")
    ms.set_context(mode=ms.PYNATIVE_MODE)
    yield
    ms.set_context(mode=prev)
