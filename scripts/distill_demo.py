"""VanillaKD on a CPU: train a teacher, then the same student without and with distillation, and compare.

1. ``configs/demo/kd_teacher_digits.yaml``: a ResNet-18 on the built-in digits;
2. ``configs/demo/kd_student_digits.yaml`` with ``distill.method=null``: a 1/8-width one-block ResNet-18 alone;
3. the same student, same epochs and seed, distilled from step 1's ``best.ckpt`` (vanilla KD, train-kd.py's loss).

Prints a table (best val top-1, wall time per run) and writes it to ``OUTPUT/summary.json`` (atomically). Each
run is the training engine's (``ms_models.train.loop.train``), in MindSpore GRAPH_MODE; ``--teacher CKPT`` skips
step 1. ``--set KEY=VALUE`` applies to every run (e.g. ``train.epochs=2``); ``--student-set`` to steps 2-3 only.
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
TEACHER = ROOT / "configs" / "demo" / "kd_teacher_digits.yaml"
STUDENT = ROOT / "configs" / "demo" / "kd_student_digits.yaml"


def _run(label: str, config: Path, overrides: list[str], output: Path) -> dict:
    from ms_models.train.cli import resolve_config
    from ms_models.train.loop import train
    cfg = resolve_config(str(config), None, overrides)
    print(f"\n== {label}: {cfg.model.name} {cfg.model.kwargs or ''}, {cfg.train.epochs} epochs"
          + (f", {cfg.distill.method} from {cfg.distill.teacher.checkpoint}" if cfg.distill.method else ""), flush=True)
    t0 = time.perf_counter()
    result = train(cfg, output)
    return {"run": label, "best_top1": result.best_top1, "best_epoch": result.best_epoch + 1,
            "last_top1": result.records[-1]["val_top1"], "seconds": time.perf_counter() - t0, "output": str(output)}


def run_demo(output: Path, common: list[str], student: list[str], teacher_ckpt: str | None = None) -> list[dict]:
    """The three runs (module docstring) under ``output``; returns their rows."""
    rows = []
    if teacher_ckpt is None:
        rows.append(_run("teacher", TEACHER, common, output / "teacher"))
        teacher_ckpt = str(output / "teacher" / "best.ckpt")
    rows.append(_run("student", STUDENT, common + student + ["distill.method=null"], output / "student"))
    rows.append(_run("student + KD", STUDENT, common + student + [f"distill.teacher.checkpoint={teacher_ckpt}"],
                     output / "student_kd"))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--output", default="runs/distill_demo")
    p.add_argument("--teacher", default=None, metavar="CKPT", help="a trained teacher checkpoint: skip step 1")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for every run")
    p.add_argument("--student-set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for the students")
    args = p.parse_args(argv)
    import torch  # noqa: F401  (before mindspore)
    from specs.errors import ZooError
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    try:
        rows = run_demo(output, args.set, args.student_set, args.teacher)
    except ZooError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    from convert.io import atomic_output
    with atomic_output(output / "summary.json") as tmp:
        tmp.write_text(json.dumps(rows, indent=1))
    print(f"\n{'run':<14}{'best val top-1':>16}{'(epoch)':>9}{'last':>8}{'wall time':>11}")
    for r in rows:
        print(f"{r['run']:<14}{r['best_top1']:>15.2f}%{r['best_epoch']:>9}{r['last_top1']:>7.2f}%{r['seconds']:>10.0f}s")
    print(f"{output / 'summary.json'}; each run's folder holds metrics.jsonl, curves.png and its checkpoints")
    return 0


if __name__ == "__main__":
    sys.exit(main())
