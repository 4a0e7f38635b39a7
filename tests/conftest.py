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


# --- make test-fast: the `--fast` option and the `slow` marker (declared in pyproject.toml) ---------------------
# `--fast` keeps, in every test parametrized over registered model names (`name`), only the smallest light model
# of each family (`helpers.smallest_per_family`), and deselects the tests marked `slow` (float64 gradient sweeps,
# whole-model runs beyond the registry parity test, training loops, subprocess demos; docs/testing.md lists them).
# `make test` runs everything.

def pytest_addoption(parser):
    parser.addoption("--fast", action="store_true",
                     help="representative subset: one small model per family, no tests marked slow (make test-fast)")


def pytest_collection_modifyitems(config, items):
    if not config.getoption("--fast"):
        return
    from helpers import is_heavy, smallest_per_family
    import torch_ref
    registered = set(torch_ref.list_models())
    fast = set(smallest_per_family([n for n in torch_ref.list_models() if not is_heavy(n)]))
    keep, drop = [], []
    for item in items:
        params = getattr(item, "callspec", None)
        name = params.params.get("name") if params else None
        if item.get_closest_marker("slow") or (name in registered and name not in fast):
            drop.append(item)
        else:
            keep.append(item)
    config.hook.pytest_deselected(items=drop)
    items[:] = keep
