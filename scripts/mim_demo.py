"""FastMIM and LocalMIM on a CPU: pretrain a small ViT on unlabelled digits, fine-tune it, compare with scratch.

1. ``configs/demo/fastmim_pretrain_digits.yaml`` and ``localmim_pretrain_digits.yaml``: the same small ViT
   pretrained with each method on the built-in digits' train split, labels unused (``ms_models.train.mim``);
2. ``configs/demo/mim_finetune_digits.yaml``: each pretrained encoder fine-tuned on the labels (upstream's
   ``--finetune`` path), and the same ViT trained from scratch with the same recipe and epochs.

Prints a table (pretraining loss first -> last epoch, fine-tune val top-1, wall times) and writes it to
``OUTPUT/summary.json`` (atomically). Every run is ``scripts/train.py`` (MindSpore GRAPH_MODE) in its own process:
a run gives the same figures whatever ran before it (in one process, a later run of the same network can draw
other drop-path masks; docs/mim.md). ``--set KEY=VALUE`` applies to the pretraining runs (e.g.
``train.epochs=2``), ``--finetune-set`` to the fine-tuning runs.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "demo"
METHODS = ("fastmim", "localmim")


def _train(config: Path, output: Path, overrides: list[str]) -> tuple[list[dict], float]:
    """``scripts/train.py`` on ``config`` in a child process; its ``metrics.jsonl`` records and wall time."""
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "train.py"), "--config", str(config), "--output",
                           str(output), *overrides])
    if done.returncode:
        raise RuntimeError(f"scripts/train.py --config {config.name} stopped with exit code {done.returncode}")
    records = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    return records, time.perf_counter() - t0


def run_demo(output: Path, pretrain_set: list[str], finetune_set: list[str]) -> list[dict]:
    """The runs of the module docstring under ``output``; returns one row per fine-tuned model."""
    rows = []
    for method in METHODS + ("scratch",):
        row = {"start": method}
        pretrained = "null"
        if method != "scratch":
            print(f"\n== {method} pretraining", flush=True)
            records, seconds = _train(DEMO / f"{method}_pretrain_digits.yaml", output / method, pretrain_set)
            row.update(pretrain_loss=[r["train_loss"] for r in records],
                       pretrain_val_loss=[r["val_loss"] for r in records], pretrain_seconds=seconds)
            pretrained = str(output / method / "last.ckpt")
        print(f"\n== fine-tuning from {method}", flush=True)
        records, seconds = _train(DEMO / "mim_finetune_digits.yaml", output / f"finetune_{method}",
                                  finetune_set + [f"model.pretrained={pretrained}"])
        row.update(top1=max(r["val_top1"] for r in records), val_top1=[r["val_top1"] for r in records],
                   finetune_seconds=seconds)
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--output", default="runs/mim_demo")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for the pretraining runs")
    p.add_argument("--finetune-set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="overrides for the fine-tuning runs")
    args = p.parse_args(argv)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    try:
        rows = run_demo(output, args.set, args.finetune_set)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    from convert.io import atomic_output
    with atomic_output(output / "summary.json") as tmp:
        tmp.write_text(json.dumps(rows, indent=1))
    print(f"\n{'start':<10}{'pretrain loss':>22}{'pretrain':>10}{'val top-1':>11}{'fine-tune':>11}")
    for r in rows:
        loss = f"{r['pretrain_loss'][0]:.4f} -> {r['pretrain_loss'][-1]:.4f}" if "pretrain_loss" in r else "-"
        pre = f"{r['pretrain_seconds']:.0f}s" if "pretrain_seconds" in r else "-"
        print(f"{r['start']:<10}{loss:>22}{pre:>10}{r['top1']:>10.2f}%{r['finetune_seconds']:>10.0f}s")
    print(f"{output / 'summary.json'}; each run folder holds metrics.jsonl, curves.png and last.ckpt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
