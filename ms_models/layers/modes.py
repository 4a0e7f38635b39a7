"""Graph-level switches of a built model: refreshing its compiled graph after a structural change, and
running it layer by layer (the parity tool) or in export form (ONNX). MindSpore only: torch has no compiled
graph to keep in step."""
from __future__ import annotations

import contextlib

import mindspore as ms
from mindspore import Parameter, Tensor, nn
from mindspore.ops.primitive import constexpr

from .._compat import drop_compiled_graphs


@constexpr
def graph_compiled() -> bool:
    """True while GRAPH_MODE compiles (a compile-time constant there), False in PyNative."""
    return ms.get_context("mode") == ms.GRAPH_MODE


def refresh_graph(cell: nn.Cell) -> nn.Cell:
    """Make a structural change (deploy switch, new head) visible in GRAPH_MODE.

    MindSpore caches a compiled graph per cell object and does not look at Python attributes or child cells
    again (measured on 2.8.0: a swapped child still ran the old graph). This drops the cached graphs of
    ``cell`` and its children (:func:`ms_models._compat.drop_compiled_graphs`) and renames parameters to their
    structural names.
    """
    drop_compiled_graphs(cell)
    for name, param in cell.parameters_and_names():
        param.name = name
    return cell


def scalar_param(value: float, name: str) -> Parameter:
    """A non-trainable float32 scalar that GRAPH_MODE reads at run time (a Python float is frozen at compile)."""
    return Parameter(Tensor(value, ms.float32), name=name, requires_grad=False)


@contextlib.contextmanager
def layerwise_mode(model: nn.Cell, export: bool = False):
    """Inside the block ``model`` runs cell by cell on MindSpore's native ops: compiled custom kernels are
    replaced by native ops and conv + BN pairs are not folded (:class:`~ms_models.layers.ConvBn`), so every
    conv and BN cell runs and its forward hooks fire (the parity tool compares layer by layer this way). ``export``
    also switches the cells with a ``for_export`` form to it (adaptive pools as static slices, GELU without
    ``Erf``): only ops MindSpore's ONNX exporter can write (:func:`export_mode`). The compiled graph is refreshed on entry and on exit."""
    cells = [cell for _, cell in model.cells_and_names()]
    kernels = [(cell, cell.fused) for cell in cells if getattr(cell, "fused", None) is not None]
    folds = [cell for cell in cells if getattr(cell, "fold", False)]
    pools = [cell for cell in cells if export and hasattr(cell, "for_export")]
    for cell, _ in kernels:
        cell.fused = None
    for cell in folds:
        cell.fold = False
    for cell in pools:
        cell.for_export = True
    refresh_graph(model)
    try:
        yield model
    finally:
        for cell, op in kernels:
            cell.fused = op
        for cell in folds:
            cell.fold = True
        for cell in pools:
            cell.for_export = False
        refresh_graph(model)


def export_mode(model: nn.Cell):
    """:func:`layerwise_mode` for MindSpore's ONNX exporter: native ops only, the cells' export forms."""
    return layerwise_mode(model, export=True)

