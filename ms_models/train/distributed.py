"""Data-parallel training under ``msrun``: the process group, the auto-parallel context of a run, and the few
host-side reductions the loop needs.

``msrun --worker_num=N ... scripts/train.py ...`` starts N workers (and a scheduler process running the same
script) with ``MS_ROLE`` and the cluster variables set. In such a process :func:`init_process_group` calls
``mindspore.communication.init()`` once (HCCL on Ascend, NCCL on GPU, MindSpore's own MCCL over TCP on CPU; in
the scheduler process ``init()`` serves the cluster and never returns), and :func:`distributed` sets the
auto-parallel context to ``DATA_PARALLEL`` with ``gradients_mean=True`` for the run (the train step then averages
its gradients with ``nn.DistributedGradReducer``: :mod:`.step`) and restores the caller's context afterwards.
Without ``msrun`` it yields rank 0 of 1 and changes nothing: the same command line trains on one process.

The communication itself is a process resource: ``mindspore.communication.release()`` cannot be followed by
another ``init()`` (measured on MindSpore 2.8, CPU: the worker dies), so it is left to the end of the process.

What the loop does with it (docs/training_distributed.md): each rank reads its shard of every epoch
(``create_loader(num_shards=world, shard_id=rank)``), trains on it with gradients averaged over ranks and batch
norm statistics per rank (no SyncBN: timm without ``--sync-bn``, mindcv), averages the running statistics at each
epoch end and checkpoint (timm's ``distribute_bn`` "reduce"), evaluates its shard of the val set and sums the
counts (:meth:`Distributed.all_sum`); rank 0 alone writes files and shows progress.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

import mindspore as ms
from mindspore import Parameter, ops
from mindspore.context import ParallelMode

from ..context import execution_mode

__all__ = ["Distributed", "distributed", "init_process_group", "launched_by_msrun"]

_CONTEXT_KEYS = ("parallel_mode", "gradients_mean", "device_num")


def launched_by_msrun() -> bool:
    """Whether this process is part of a MindSpore dynamic cluster (``msrun`` sets ``MS_ROLE``)."""
    return bool(os.environ.get("MS_ROLE"))


def init_process_group() -> None:
    """``mindspore.communication.init()`` once per process, when launched by ``msrun`` (else nothing). Call it
    after choosing the device and before creating any Tensor (HCCL's rule); the trainer calls it too."""
    from mindspore.communication import GlobalComm, init
    if launched_by_msrun() and not GlobalComm.INITED:
        init()


@dataclass(frozen=True)
class Distributed:
    """This process's place in the job: ``rank`` of ``world`` processes (0 of 1 without ``msrun``)."""

    rank: int = 0
    world: int = 1

    @property
    def writer(self) -> bool:
        """Whether this process writes the run's files and shows progress (rank 0)."""
        return self.rank == 0

    def all_sum(self, values: Sequence[float] | np.ndarray) -> np.ndarray:
        """The element-wise sum of ``values`` over all ranks, in float64 (exact for counts below 2**53); every rank
        must call it with the same shape. One all-reduce (none on a single process)."""
        values = np.asarray(values, np.float64)
        if self.world == 1:
            return values
        with execution_mode(ms.PYNATIVE_MODE):
            return ops.AllReduce()(ms.Tensor(values)).asnumpy()

    def broadcast(self, params: Sequence[Parameter]) -> None:
        """Give every rank rank 0's values of ``params`` (one all-reduce: rank 0's values plus zeros, exact)."""
        self._combine(params, keep=self.rank == 0, scale=1.0)

    def average(self, params: Sequence[Parameter]) -> None:
        """Replace each of ``params`` by its mean over the ranks (one all-reduce of their concatenation, in
        float64, rounded back to each Parameter's dtype)."""
        self._combine(params, keep=True, scale=1.0 / self.world)

    def _combine(self, params: Sequence[Parameter], keep: bool, scale: float) -> None:
        if self.world == 1 or not params:
            return
        values = [p.asnumpy() for p in params]
        flat = np.concatenate([v.ravel().astype(np.float64) for v in values])
        flat = self.all_sum(flat if keep else np.zeros_like(flat)) * scale
        offset = 0
        for param, value in zip(params, values):
            param.set_data(ms.Tensor(flat[offset:offset + value.size].reshape(value.shape), param.dtype))
            offset += value.size


@contextlib.contextmanager
def distributed() -> Iterator[Distributed]:
    """The run's data-parallel context (module docstring): under ``msrun`` with more than one worker,
    ``DATA_PARALLEL`` with ``gradients_mean=True`` over all ranks for the block, the caller's auto-parallel
    settings restored after; otherwise rank 0 of 1 and nothing changed."""
    if not launched_by_msrun():
        yield Distributed()
        return
    from mindspore.communication import get_group_size, get_rank
    init_process_group()
    dist = Distributed(get_rank(), get_group_size())
    if dist.world == 1:
        yield dist
        return
    previous = {key: ms.get_auto_parallel_context(key) for key in _CONTEXT_KEYS}
    ms.set_auto_parallel_context(parallel_mode=ParallelMode.DATA_PARALLEL, gradients_mean=True, device_num=dist.world)
    try:
        yield dist
    finally:
        ms.set_auto_parallel_context(**previous)
