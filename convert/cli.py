"""``python -m convert``: torch2ms, ms2torch, ms2ms, onnx, parity, quantize. Each subcommand wraps one function of
:mod:`convert.api`, :mod:`convert.onnx`, :mod:`convert.parity` or :mod:`convert.quantize`; bad input exits 1
with a one-line error."""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from typing import Sequence

from specs.errors import ConfigError, KeyMismatchError, ZooError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m convert", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for cmd, what in (("torch2ms", "torch checkpoint -> MindSpore .ckpt/.safetensors"),
                      ("ms2torch", "MindSpore checkpoint -> torch .pth/.bin/.safetensors"),
                      ("ms2ms", "official MindSpore checkpoint -> our MindSpore names (.ckpt/.safetensors)")):
        s = sub.add_parser(cmd, help=what)
        s.add_argument("--model", required=True, help="registered model name (see list_models())")
        s.add_argument("--deploy", action="store_true", help="also fuse a train-form checkpoint to deploy form")
        s.add_argument("--key", default=None, help="container key to read (default: EMA, then model weights)")
        if cmd != "torch2ms":
            s.add_argument("--source", choices=("ours", "mindspore-official"),
                           default="mindspore-official" if cmd == "ms2ms" else "ours",
                           help="naming of the MindSpore source: ours, or an official mindspore-ai/models "
                                "checkpoint (e.g. ghostnetv2_1x.ckpt; build with dfc_upsample='bilinear')")
        if cmd == "ms2torch":
            s.add_argument("--container", default=None, help="wrap the torch output as {CONTAINER: state_dict}")
        s.add_argument("src")
        s.add_argument("dst")
    s = sub.add_parser("onnx", help="export to ONNX, verified with onnxruntime")
    s.add_argument("--model", required=True)
    s.add_argument("--framework", choices=("torch", "mindspore"), default="torch")
    s.add_argument("--input-size", type=int, default=None)
    s.add_argument("--deploy", action="store_true", help="switch to deploy form before export")
    s.add_argument("checkpoint")
    s.add_argument("out")
    s = sub.add_parser("parity", help="layer-by-layer torch vs MindSpore comparison")
    s.add_argument("--model", required=True)
    s.add_argument("--checkpoint", default=None, help="default: deterministic test weights")
    s.add_argument("--input-size", type=int, default=None)
    s.add_argument("--batch", type=int, default=None, help="images per batch (default 2; 4 with --train-steps)")
    s.add_argument("--tol", type=float, default=None, help="max error relative to each layer's output scale "
                   "(with --train-steps: the floor of the per-tensor bound)")
    s.add_argument("--deploy", action="store_true")
    s.add_argument("--graph", choices=("shared", "free"), default="shared",
                   help="graph models (ViG): feed torch's neighbour indices to MindSpore (shared) or not (free)")
    s.add_argument("--steps", choices=("shared", "free"), default="shared",
                   help="binary models (step layers): feed torch's binarised values to MindSpore (shared) or "
                        "not (free); flips are counted and classified in both")
    s.add_argument("--float64", action="store_true",
                   help="float64 mode: torch f64 vs its float32 graph, MindSpore f64 where its kernels allow")
    s.add_argument("--train-steps", type=int, default=None, metavar="K",
                   help="training parity: K updates of the engine's train step (MindSpore GRAPH_MODE) against "
                        "torch.optim, per step the losses and the tensor with the largest relative difference")
    s.add_argument("--optimizer", choices=("sgd", "adamw"), action="append", default=None,
                   help="with --train-steps: the optimizer to compare (repeatable; default: both)")
    s.add_argument("--json", action="store_true")
    s = sub.add_parser("quantize", help="AdderNet post-training quantization (arXiv 2212.10200)")
    s.add_argument("--model", required=True)
    s.add_argument("--bits", type=int, required=True, help="4, 5, 6 or 8")
    s.add_argument("--groups", type=int, required=True, help="k-means groups of output kernels per layer")
    s.add_argument("--framework", choices=("torch", "mindspore"), default="torch")
    s.add_argument("--calib-batches", type=int, default=8, help="calibration (and BN re-estimation) batches")
    s.add_argument("--batch-size", type=int, default=32)
    s.add_argument("--source", choices=("digits", "synthetic"), default=None,
                   help="calibration images (default: digits at 32 px, synthetic otherwise)")
    s.add_argument("checkpoint")
    s.add_argument("out")
    return p


def _run(args: argparse.Namespace) -> int:
    if args.cmd in ("torch2ms", "ms2torch", "ms2ms"):
        from .api import convert_file
        t0 = time.perf_counter()
        out = convert_file(args.model, args.src, args.dst, args.cmd, deploy=args.deploy, key=args.key,
                           container=getattr(args, "container", None), source=getattr(args, "source", "ours"))
        print(f"wrote {out} ({args.cmd}{', deploy form' if args.deploy else ''}) in {time.perf_counter() - t0:.2f} s")
        return 0
    if args.cmd == "onnx":
        from .api import ms_twin, torch_model_from      # torch before mindspore
        import mindspore as ms
        from specs import check_input_size, get_model_cfg
        from .onnx import export_onnx
        cfg = get_model_cfg(args.model)
        size = check_input_size(cfg, args.input_size or cfg.input_size[-1])
        model = torch_model_from(args.model, args.checkpoint).eval()
        if args.deploy:
            model.switch_to_deploy()
        if args.framework == "mindspore":
            model = ms_twin(model, ms.GRAPH_MODE)
        print(export_onnx(model, args.out, args.framework, size))
        return 0
    if args.cmd == "quantize":
        from .quantize import quantize_file
        t0 = time.perf_counter()
        out = quantize_file(args.model, args.checkpoint, args.out, args.bits, args.groups, args.framework,
                            args.calib_batches, args.batch_size, args.source)
        print(f"wrote {out} ({args.bits}-bit, {args.groups} groups, {args.framework}) in "
              f"{time.perf_counter() - t0:.2f} s")
        return 0
    if args.train_steps is not None:
        return _train_parity(args)
    if args.optimizer:
        raise ConfigError("--optimizer goes with --train-steps")
    from .parity import DEFAULT_TOL, F64_TOL, float64_check, run_parity
    if args.float64:
        report = float64_check(args.model, args.checkpoint, args.input_size, args.batch or 2, tol=args.tol or F64_TOL)
        print(json.dumps(asdict(report) | {"ok": report.ok}, indent=1) if args.json else report.table())
        return 0 if report.ok else 1
    report = run_parity(args.model, args.checkpoint, args.input_size, args.batch or 2, args.tol or DEFAULT_TOL,
                        deploy=args.deploy, graph_mode=args.graph, steps=args.steps)
    print(report.to_json() if args.json else report.table())
    return 0 if report.ok else 1


def _train_parity(args: argparse.Namespace) -> int:
    """``parity --train-steps K``: one table per optimizer (:mod:`convert.train_parity`); 1 if any fails."""
    if args.deploy or args.float64:
        raise ConfigError("--train-steps compares the train form in float32: drop --deploy and --float64")
    if args.train_steps < 1:
        raise ConfigError(f"--train-steps must be at least 1, got {args.train_steps}")
    from .train_parity import TRAIN_TOL, run_train_parity
    ok = True
    for optimizer in args.optimizer or ("sgd", "adamw"):
        report = run_train_parity(args.model, optimizer, args.train_steps, args.checkpoint, args.input_size,
                                  args.batch or 4, tol=args.tol or TRAIN_TOL, graph=args.graph,
                                  shared_steps=args.steps)
        print(report.to_json() if args.json else report.table(), flush=True)
        ok = ok and report.ok
    return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except KeyMismatchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        for label, items in (("missing", exc.missing), ("unexpected", exc.unexpected),
                             ("shape mismatch", [f"{k}: checkpoint {a} vs model {b}" for k, a, b in exc.mismatched])):
            for item in items:
                print(f"  {label}: {item}", file=sys.stderr)
        return 1
    except (ZooError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; nothing was written", file=sys.stderr)
        return 130
