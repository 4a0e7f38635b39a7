"""Evaluation: top-1 / top-5 / cross-entropy over a loader, for a MindSpore model or any predictor.

The metrics are computed on the host from the logits (numpy, float64 sums), so a torch model fed the same
batches is scored by exactly the same code (``scripts/validate.py --framework torch``). Under data parallel each
rank scores its shard of the val set (every image once, no padding) and the four sums are added over the ranks,
so top-1 and top-5 are exactly the single-process counts. A prediction tie (two
classes with equal float32 logits) counts as correct only when the label wins ``argmax``'s first-index rule, as
in timm's ``accuracy`` (``topk``).
"""
from __future__ import annotations

from typing import Callable, Iterable, Sequence

import numpy as np
from mindspore import nn

from ..context import execution_mode


class Meter:
    """Running top-1 / top-5 counts and the summed cross-entropy."""

    def __init__(self) -> None:
        self.images = 0
        self.top1 = 0
        self.top5 = 0
        self.loss = 0.0

    def update(self, logits: np.ndarray, labels: np.ndarray) -> None:
        logits = np.asarray(logits, np.float64)
        labels = np.asarray(labels).astype(np.int64)
        order = np.argsort(-logits, axis=1, kind="stable")[:, :5]
        hits = order == labels[:, None]
        self.top1 += int(hits[:, 0].sum())
        self.top5 += int(hits.any(axis=1).sum())
        peak = logits.max(axis=1)
        lse = peak + np.log(np.exp(logits - peak[:, None]).sum(axis=1))
        self.loss += float((lse - logits[np.arange(len(labels)), labels]).sum())
        self.images += len(labels)

    def totals(self) -> np.ndarray:
        """``[images, top1 hits, top5 hits, summed loss]`` (float64), the sums to add over ranks."""
        return np.array([self.images, self.top1, self.top5, self.loss], np.float64)

    def merge(self, totals: Sequence[float]) -> None:
        """Take ``totals`` (:meth:`totals` summed over every rank) as this meter's sums."""
        images, top1, top5, loss = totals
        self.images, self.top1, self.top5, self.loss = int(round(images)), int(round(top1)), int(round(top5)), loss

    def result(self) -> dict[str, float | int]:
        n = max(self.images, 1)
        return {"top1": 100.0 * self.top1 / n, "top5": 100.0 * self.top5 / n, "loss": self.loss / n,
                "images": self.images}


def evaluate(predict: Callable[[np.ndarray], np.ndarray], batches: Iterable[tuple[np.ndarray, np.ndarray]],
             progress: Callable[[Iterable], Iterable] | None = None,
             all_sum: Callable[[np.ndarray], np.ndarray] | None = None) -> dict[str, float | int]:
    """Score ``predict`` (images ``(B, 3, H, W)`` float32 -> logits ``(B, C)``) over ``(images, labels)`` batches;
    ``all_sum`` (data parallel: :meth:`.distributed.Distributed.all_sum`) adds the sums of every rank's batches."""
    meter = Meter()
    for images, labels in (progress(batches) if progress else batches):
        meter.update(predict(images), labels)
    if all_sum is not None:
        meter.merge(all_sum(meter.totals()))
    return meter.result()


def ms_predictor(model: nn.Cell, mode: int | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """``images -> logits`` of a MindSpore ``model`` in eval mode (its train flag is restored afterwards by
    the caller's next ``set_train``), run in ``mode`` (None: the current one)."""
    import mindspore as ms

    def predict(images: np.ndarray) -> np.ndarray:
        model.set_train(False)
        with execution_mode(mode):
            return model(ms.Tensor(images)).asnumpy()
    return predict
