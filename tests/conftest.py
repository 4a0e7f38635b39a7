"""Shared fixtures. torch is imported before mindspore (libgomp clash otherwise)."""
from __future__ import annotations

import pytest
import torch

import mindspore as ms

torch.set_num_threads(2)
ms.set_device("CPU")


def _in_mode(mode):
    prev = ms.get_context("mode")
    ms.set_context(mode=mode)
    yield
    ms.set_context(mode=prev)


@pytest.fixture
def graph_mode():
    yield from _in_mode(ms.GRAPH_MODE)


@pytest.fixture
def pynative_mode():
    yield from _in_mode(ms.PYNATIVE_MODE)
