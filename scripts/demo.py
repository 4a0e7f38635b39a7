"""The main job on a built-in default: torch checkpoint -> MindSpore -> parity -> deploy -> ONNX, then training.

Builds ``vanillanet_5`` in PyTorch with deterministic weights, saves them in the official checkpoint format
(``{'model_ema': state_dict}`` like the released ``vanillanet_5.pth``), converts to MindSpore, prints the
layer-by-layer parity report, switches both frameworks to deploy form and checks them again, and exports
ONNX from both, verified with onnxruntime. Then trains a small recipe (``configs/demo/adabin_resnet20_digits.yaml``) in
MindSpore GRAPH_MODE on the built-in digits, converts its best checkpoint to torch and validates it in both
frameworks (the same top-1 to within one image). Exits 1 if any check fails.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("GLOG_v", "3")   # MindSpore: errors only on the console

import torch  # noqa: F401  (before mindspore)
import mindspore as ms
import numpy as np

import ms_models
import torch_ref
from convert.api import convert_file, load_into_ms
from convert.io import write_checkpoint
from convert.onnx import export_onnx
from convert.parity import DEFAULT_TOL, compare, compare_models
from ms_models.context import execution_mode
from specs import check_input_size, get_model_cfg
from torch_ref.testing import deterministic_weights


ROOT = Path(__file__).resolve().parents[1]


def train_part(config: str, epochs: int | None, out: Path, step) -> bool:
    """Steps 6-8: train in MindSpore GRAPH_MODE, convert the best checkpoint to torch, validate both."""
    from ms_models.train.cli import resolve_config, validate
    from ms_models.train.loop import BEST, train
    cfg = resolve_config(config, None, [] if epochs is None else [f"train.epochs={epochs}"])
    step(f"6. train {cfg.model.name} in MindSpore GRAPH_MODE on {cfg.data.dir} ({cfg.train.epochs} epochs, {config})")
    t0 = time.perf_counter()
    result = train(cfg, out)
    print(f"best val top-1 {result.best_top1:.2f}% (epoch {result.best_epoch + 1}) in {time.perf_counter() - t0:.0f} s; "
          f"{out} holds config.yaml, metrics.jsonl, train.log, curves.png, last.ckpt, best.ckpt")

    step("7. convert the best checkpoint to torch (official key layout)")
    pth = convert_file(cfg.model.name, out / BEST, out / "best.pth", "ms2torch")
    print(f"wrote {pth}")

    step("8. validate in both frameworks (same preprocessing: the run's config.yaml)")
    scores = {}
    for fw, ckpt in (("mindspore", out / BEST), ("torch", pth)):
        r = validate(cfg.model.name, str(ckpt), cfg.data.dir, fw, config=str(out / "config.yaml"), progress=False)
        scores[fw] = r
        print(f"{fw:<10} {ckpt.name:<10} top-1 {r['top1']:.2f}%  top-5 {r['top5']:.2f}%  loss {r['loss']:.4f}  "
              f"({r['images']} images)")
    n = scores["torch"]["images"]
    agree = all(abs(a - b) * n / 100 <= 1 + 1e-9 for a, b in ((scores["mindspore"]["top1"], scores["torch"]["top1"]),
                                                             (scores["mindspore"]["top1"], result.best_top1)))
    print(f"top-1 of both frameworks and of the run agree to within one image in {n}: {'ok' if agree else 'FAIL'}")
    return agree


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="vanillanet_5")
    p.add_argument("--input-size", type=int, default=224)
    p.add_argument("--out", default="out", help="folder for the checkpoints and ONNX files")
    p.add_argument("--train-config", default=str(ROOT / "configs" / "demo" / "adabin_resnet20_digits.yaml"),
                   help="the recipe of the training part")
    p.add_argument("--train-epochs", type=int, default=None,
                   help="epochs of the training part (default: the recipe's; 0: skip it)")
    args = p.parse_args(argv)
    cfg = get_model_cfg(args.model)
    h, w = check_input_size(cfg, args.input_size)
    out = Path(args.out)
    ok = True

    def step(msg: str) -> None:
        print(f"\n== {msg}", flush=True)

    step(f"1. {args.model} in PyTorch, deterministic weights, official checkpoint format")
    torch.manual_seed(0)
    tm = deterministic_weights(torch_ref.create_model(args.model), seed=0, input_size=64)
    src = write_checkpoint({k: v.numpy() for k, v in tm.state_dict().items()}, out / f"{args.model}.pth",
                           container="model_ema")
    print(f"saved {src} ({src.stat().st_size / 2**20:.1f} MiB, {len(tm.state_dict())} keys)")

    step("2. convert torch -> MindSpore")
    t0 = time.perf_counter()
    dst = convert_file(args.model, src, out / f"{args.model}.ckpt", "torch2ms")
    print(f"wrote {dst} in {time.perf_counter() - t0:.2f} s")
    ms_models_by_mode = {}
    for mode in (ms.PYNATIVE_MODE, ms.GRAPH_MODE):
        with execution_mode(mode):
            ms_models_by_mode[mode] = load_into_ms(ms_models.create_model(args.model), dst)
    pyn, graph = ms_models_by_mode[ms.PYNATIVE_MODE], ms_models_by_mode[ms.GRAPH_MODE]

    x = np.random.RandomState(0).randn(1, 3, h, w).astype(np.float32)
    step(f"3. parity, train form, input {tuple(x.shape)}")
    report = compare_models(tm, pyn, x, DEFAULT_TOL, args.model, graph)
    print(report.table())
    ok &= report.ok
    with torch.no_grad():
        train_out = tm(torch.from_numpy(x)).numpy()

    step("4. deploy form (BN folded, conv pairs merged) in both frameworks")
    tm.switch_to_deploy()
    pyn.switch_to_deploy()
    graph.switch_to_deploy()
    print(f"deploy parameters: {sum(p.numel() for p in tm.parameters()) / 1e6:.2f} M")
    report = compare_models(tm, pyn, x, DEFAULT_TOL, args.model + " (deploy)", graph)
    print("\n".join(report.table().splitlines()[-3:]))
    ok &= report.ok
    with torch.no_grad():
        same = compare("deploy vs train (torch)", "logits", train_out, tm(torch.from_numpy(x)).numpy(), DEFAULT_TOL)
    with execution_mode(ms.GRAPH_MODE):
        same_ms = compare("deploy vs train (MindSpore)", "logits", train_out, graph(ms.Tensor(x)).asnumpy(),
                          DEFAULT_TOL)
    for d in (same, same_ms):
        print(f"{d.name}: max abs {d.max_abs:.3g}, relative {d.max_rel:.3g} -> {'ok' if d.ok else 'FAIL'}")
        ok &= d.ok

    step("5. ONNX export of the deploy form, checked with onnxruntime")
    for fw, model in (("torch", tm), ("mindspore", graph)):
        with execution_mode(ms.GRAPH_MODE if fw == "mindspore" else None):
            print(export_onnx(model, out / f"{args.model}_deploy_{fw}.onnx", fw, (h, w)))

    if args.train_epochs != 0:
        ok &= train_part(args.train_config, args.train_epochs, out / "train", step)

    print(f"\n{'DEMO OK' if ok else 'DEMO FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
