"""The only place that touches MindSpore's private API, guarded by the version it was checked on.

MindSpore caches one compiled graph per cell object (keyed by the cell and its creation time) and does not
look at Python attributes or child cells again: a swapped head still runs the old graph (measured on 2.8.0).
:func:`drop_compiled_graphs` clears those caches. It needs three private names:

- ``mindspore.common.api._cell_graph_executor`` and its ``del_net_res(cell, keys)``: frees a cell's graphs;
- ``Cell.compile_cache``: the keys of the graphs compiled for a cell (a set);
- ``Cell._create_time``: part of the graph key; a new value makes the next call compile afresh.

:func:`check` verifies all three exist and behave as relied on; ``tests/test_compat.py`` runs it and fails
loudly when the pinned MindSpore version changes (see :data:`CHECKED_VERSIONS`).
"""
from __future__ import annotations

import time

import mindspore as ms
from mindspore import nn

__all__ = ["CHECKED_VERSIONS", "compiled_graphs", "drop_compiled_graphs", "check", "version_checked"]

CHECKED_VERSIONS = ("2.8.0",)      # versions whose private API below was read and tested


def version_checked() -> bool:
    """Whether the running MindSpore is one of :data:`CHECKED_VERSIONS`."""
    return ms.__version__ in CHECKED_VERSIONS


def _executor():
    from mindspore.common.api import _cell_graph_executor
    return _cell_graph_executor


def compiled_graphs(cell: nn.Cell) -> frozenset:
    """The keys of the graphs compiled for ``cell`` so far (a new key after a call: it was compiled anew)."""
    return frozenset(cell.compile_cache)


def drop_compiled_graphs(cell: nn.Cell) -> None:
    """Free the compiled graphs of ``cell`` and of every cell below it and give each a new creation time, so
    the next GRAPH_MODE call compiles the cell's current structure."""
    executor = _executor()
    stamp = time.time_ns()
    for _, sub in cell.cells_and_names():
        if sub.compile_cache:
            executor.del_net_res(sub, sub.compile_cache)
            sub.compile_cache.clear()
        object.__setattr__(sub, "_create_time", stamp)
        stamp += 1


def check() -> list[str]:
    """What of the private API relied on is missing or changed in the running MindSpore (empty: all there)."""
    problems = []
    try:
        executor = _executor()
    except ImportError as e:
        return [f"mindspore.common.api._cell_graph_executor: {e}"]
    if not callable(getattr(executor, "del_net_res", None)):
        problems.append("_cell_graph_executor.del_net_res is gone")
    cell = nn.Cell()
    if not isinstance(getattr(cell, "compile_cache", None), set):
        problems.append(f"Cell.compile_cache is {type(getattr(cell, 'compile_cache', None)).__name__}, not a set")
    if not isinstance(getattr(cell, "_create_time", None), int):
        problems.append(f"Cell._create_time is {type(getattr(cell, '_create_time', None)).__name__}, not an int")
    return problems
