"""What a run shows and keeps: the progress bar, ``train.log``, ``metrics.jsonl`` and ``curves.png``.

Only the writing rank (rank 0 under msrun) writes files or shows progress; the others get a :class:`RunLog` that
does nothing. On a terminal each epoch has a tqdm bar (loss, lr, images/s, ETA); elsewhere (CI logs, msrun
worker logs) the same figures are plain log lines every ``train.log_interval`` steps. ``metrics.jsonl`` and
``curves.png`` are replaced atomically, so an interrupted run leaves the last complete version.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

from tqdm import tqdm

from convert.io import atomic_output

CURVES = "curves.png"
METRICS = "metrics.jsonl"
LOG = "train.log"


class RunLog:
    """The writer of one run's files in ``output``; ``enabled=False`` (other ranks) makes every call a no-op.

    On resume, ``metrics.jsonl`` keeps the records of the epochs before ``start_epoch`` (a record written after
    the checkpoint that is resumed from is dropped, so every epoch appears once)."""

    def __init__(self, output: str | os.PathLike, enabled: bool = True, start_epoch: int = 0):
        self.output = Path(output)
        self.enabled = enabled
        self.records: list[dict[str, Any]] = []
        self.logger = logging.getLogger(f"ms_models.train.{id(self)}")
        self.logger.propagate = False
        self.logger.setLevel(logging.INFO)
        if not enabled:
            return
        self.output.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(self.output / LOG, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        self.logger.addHandler(handler)
        console = logging.StreamHandler(sys.stdout)
        console.setFormatter(logging.Formatter("%(message)s"))
        self.logger.addHandler(console)
        metrics = self.output / METRICS
        if metrics.exists():
            with open(metrics, encoding="utf-8") as f:
                self.records = [r for r in map(json.loads, filter(str.strip, f)) if r["epoch"] < start_epoch]
            self._write_metrics()

    def info(self, message: str) -> None:
        if self.enabled:
            self.logger.info(message)

    def close(self) -> None:
        for handler in list(self.logger.handlers):
            handler.close()
            self.logger.removeHandler(handler)

    def epoch(self, record: dict[str, Any]) -> None:
        """Append one epoch's record to ``metrics.jsonl``, log it and redraw ``curves.png``."""
        if not self.enabled:
            return
        self.records.append(record)
        self._write_metrics()
        plot_curves(self.records, self.output / CURVES)
        shown = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items())
        self.info(f"epoch {shown}")

    def _write_metrics(self) -> None:
        with atomic_output(self.output / METRICS) as tmp:
            with open(tmp, "w", encoding="utf-8") as f:
                f.writelines(json.dumps(r) + "\n" for r in self.records)

    def progress(self, batches: Iterable, total: int, epoch: int, epochs: int, log_interval: int,
                 done: int = 0) -> "Progress":
        return Progress(self, batches, total, f"epoch {epoch + 1}/{epochs}", log_interval, done)


class Progress:
    """Iterates ``batches`` (the steps after ``done`` of ``total``: a resumed epoch); :meth:`update` reports a
    step's loss, lr and batch size (bar or log lines)."""

    def __init__(self, log: RunLog, batches: Iterable, total: int, desc: str, log_interval: int, done: int = 0):
        self.log, self.batches, self.total, self.desc = log, batches, total, desc
        self.interval = log_interval
        terminal = log.enabled and sys.stdout.isatty()
        self.bar = tqdm(total=total, initial=done, desc=desc, unit="step", dynamic_ncols=True, leave=False,
                        disable=not terminal)
        self.start = time.perf_counter()
        self.images = 0
        self.done = done
        self.steps = done

    def __iter__(self) -> Iterator:
        try:
            yield from self.batches
        finally:
            self.bar.close()

    def update(self, loss: float, lr: float, batch: int) -> None:
        self.steps += 1
        self.images += batch
        speed = self.images / max(time.perf_counter() - self.start, 1e-9)
        if not self.bar.disable:
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.3g}", img_s=f"{speed:.1f}", refresh=False)
            self.bar.update()
        elif self.steps % self.interval == 0 or self.steps == self.total:
            left = (self.total - self.steps) * (time.perf_counter() - self.start) / (self.steps - self.done)
            self.log.info(f"{self.desc} step {self.steps}/{self.total} loss {loss:.4f} lr {lr:.3g} "
                          f"{speed:.1f} img/s eta {left:.0f}s")

    @property
    def images_per_s(self) -> float:
        return self.images / max(time.perf_counter() - self.start, 1e-9)


def plot_curves(records: list[dict[str, Any]], path: str | os.PathLike) -> None:
    """Loss (train, val), learning rate and top-1/top-5 by epoch, as three panels in one PNG (two when no epoch
    has a top-1: a pretraining run)."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator
    epochs = [r["epoch"] + 1 for r in records]

    def line(ax, key, style, label=None):
        """``key`` by epoch, skipping the epochs without it (null: not validated that epoch)."""
        points = [(e, r[key]) for e, r in zip(epochs, records) if r.get(key) is not None]
        if points:
            ax.plot(*zip(*points), style, label=label)
    scored = any(r.get("val_top1") is not None for r in records)     # a pretraining run has no top-1
    fig = Figure(figsize=(12 if scored else 8, 3.6), layout="constrained")
    loss, lr, *acc = fig.subplots(1, 3 if scored else 2)
    line(loss, "train_loss", "o-", "train")
    line(loss, "val_loss", "s-", "val")
    loss.set(title="loss", xlabel="epoch")
    loss.legend()
    line(lr, "lr", "o-")
    lr.set(title="learning rate (epoch end)", xlabel="epoch")
    lr.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    for ax in acc:
        line(ax, "val_top1", "o-", "top-1")
        line(ax, "val_top5", "s-", "top-5")
        line(ax, "ema_top1", "^--", "EMA top-1")
        ax.set(title="val accuracy (%)", xlabel="epoch")
        ax.legend()
    for ax in (loss, lr, *acc):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    with atomic_output(path, ".png") as tmp:
        fig.savefig(tmp, dpi=90)
