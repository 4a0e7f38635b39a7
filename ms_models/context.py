"""The one place that switches MindSpore's global execution mode: :func:`execution_mode`.

Library code runs a block in GRAPH_MODE or PYNATIVE_MODE through it and always restores the caller's mode,
also on error, so nothing leaves the global context changed behind the caller's back.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Callable, Iterator, TypeVar

import mindspore as ms

__all__ = ["execution_mode", "in_execution_mode"]

F = TypeVar("F", bound=Callable)


@contextlib.contextmanager
def execution_mode(mode: int | None) -> Iterator[int]:
    """Run the block in ``mode`` (``ms.GRAPH_MODE`` or ``ms.PYNATIVE_MODE``; None: the current one), then restore
    the previous mode. Yields the mode in force."""
    prev = ms.get_context("mode")
    mode = prev if mode is None else mode
    if mode not in (ms.GRAPH_MODE, ms.PYNATIVE_MODE):
        raise ValueError(f"execution mode must be GRAPH_MODE (0) or PYNATIVE_MODE (1), not {mode!r}")
    if mode != prev:
        ms.set_context(mode=mode)
    try:
        yield mode
    finally:
        if ms.get_context("mode") != prev:
            ms.set_context(mode=prev)


def in_execution_mode(mode: int) -> Callable[[F], F]:
    """Decorator: the function always runs under :func:`execution_mode` ``(mode)``."""
    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def run(*args, **kwargs):
            with execution_mode(mode):
                return fn(*args, **kwargs)
        return run  # type: ignore[return-value]
    return wrap
