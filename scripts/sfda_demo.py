"""SFDA-DE on a CPU: train a source model, score it on a shifted target domain, adapt it without source data.

1. ``configs/demo/sfda_source_digits.yaml``: a small ResNet-18 on the built-in digits (the source domain);
2. the source model scored on ``builtin:digits_shifted`` (the same digits rendered otherwise: the target domain),
   before adaptation ("source only");
3. ``configs/demo/sfda_adapt_digits.yaml``: SFDA-DE adaptation of step 1's ``best.ckpt`` to the target's unlabelled
   train split (``ms_models.train.sfda``), scored on the target's val split after every loop.

Prints a table (target val top-1 and wall time per step) and writes it to ``OUTPUT/summary.json`` (atomically).
Every run is the training engine's, in MindSpore GRAPH_MODE; ``--source CKPT`` skips step 1. ``--set KEY=VALUE``
applies to both runs (e.g. ``train.epochs=2``), ``--adapt-set`` to step 3 only.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("GLOG_v", "3")   # MindSpore: errors only on the console

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "configs" / "demo" / "sfda_source_digits.yaml"
ADAPT = ROOT / "configs" / "demo" / "sfda_adapt_digits.yaml"


def run_demo(output: Path, common: list[str], adapt: list[str], source_ckpt: str | None = None) -> list[dict]:
    """The three steps (module docstring) under ``output``; returns their rows."""
    from ms_models.train.cli import resolve_config, validate
    from ms_models.train.loop import train
    rows = []
    if source_ckpt is None:
        cfg = resolve_config(str(SOURCE), None, common)
        print(f"\n== source: {cfg.model.name} {cfg.model.kwargs}, {cfg.train.epochs} epochs on {cfg.data.dir}",
              flush=True)
        t0 = time.perf_counter()
        result = train(cfg, output / "source")
        rows.append({"step": "source training", "data": cfg.data.dir, "top1": result.best_top1,
                     "seconds": time.perf_counter() - t0})
        source_ckpt = str(output / "source" / "best.ckpt")
    cfg = resolve_config(str(ADAPT), None, common + adapt + [f"model.pretrained={source_ckpt}"])
    t0 = time.perf_counter()
    before = validate(cfg.model.name, source_ckpt, cfg.data.dir, config=str(SOURCE), progress=False)
    rows.append({"step": "source only", "data": cfg.data.dir, "top1": before["top1"],
                 "seconds": time.perf_counter() - t0})
    print(f"\n== SFDA-DE: {cfg.train.epochs} loops of {cfg.sfda.iters_per_loop} steps on {cfg.data.dir}", flush=True)
    t0 = time.perf_counter()
    result = train(cfg, output / "adapt")
    rows.append({"step": "SFDA-DE adapted", "data": cfg.data.dir, "top1": result.records[-1]["val_top1"],
                 "seconds": time.perf_counter() - t0,
                 "pseudo_top1": [r["pseudo_top1"] for r in result.records],
                 "val_top1": [r["val_top1"] for r in result.records]})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--output", default="runs/sfda_demo")
    p.add_argument("--source", default=None, metavar="CKPT", help="a trained source checkpoint: skip step 1")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for both runs")
    p.add_argument("--adapt-set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for the adaptation")
    args = p.parse_args(argv)
    import torch  # noqa: F401  (before mindspore)
    from specs.errors import ZooError
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    try:
        rows = run_demo(output, args.set, args.adapt_set, args.source)
    except ZooError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    from convert.io import atomic_output
    with atomic_output(output / "summary.json") as tmp:
        tmp.write_text(json.dumps(rows, indent=1))
    print(f"\n{'step':<18}{'data':<24}{'val top-1':>10}{'wall time':>11}")
    for r in rows:
        print(f"{r['step']:<18}{r['data']:<24}{r['top1']:>9.2f}%{r['seconds']:>10.0f}s")
    print(f"{output / 'summary.json'}; the run folders hold metrics.jsonl (pseudo-label accuracy, kept fraction, "
          f"CDD per loop), curves.png and last.ckpt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
