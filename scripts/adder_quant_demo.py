"""AdderNet post-training quantization demonstration (arXiv 2212.10200) that runs in CI time.

Trains a small adder ResNet-20-style network (``torch_ref.models.addernet.AdderResNet``: one BasicBlock per stage,
width 8 instead of 3 blocks and width 16, for time) on scikit-learn's digits upsampled to 16x16 (1437
train / 360 test images, seeded split) for a few epochs with the official recipe scaled down (SGD momentum 0.9,
weight decay 5e-4, cosine learning rate, AdderNet's adaptive gradient scaling), then quantizes it to 8, 6 and 4
bits (``--bits`` for others) with the paper's method (k-means groups + lossless clamp + outlier clamp) and with a single shared
scale without clamp (the prior method the paper improves on), each followed by BN re-estimation on the
calibration batches, and prints the test accuracies. ``--framework mindspore`` quantizes and evaluates
the trained network in MindSpore instead.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("GLOG_v", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from builtin_data import digits  # noqa: E402
from torch_ref.models.addernet import AdderResNet  # noqa: E402


def data(size: int, seed: int = 0):
    x, y = digits(size)
    order = np.random.RandomState(seed).permutation(len(x))
    x, y = x[order], y[order]
    return (x[:1437], y[:1437]), (x[1437:], y[1437:])


def train(model: torch.nn.Module, x: np.ndarray, y: np.ndarray, epochs: int, batch: int, lr: float,
          seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    steps = epochs * (len(x) // batch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + np.cos(np.pi * s / steps)))
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(len(x) // batch):
            idx = perm[i * batch:(i + 1) * batch]
            loss = torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()


def accuracy(predict, x: np.ndarray, y: np.ndarray, batch: int = 180) -> float:
    hits = sum(int((predict(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum()) for i in range(0, len(x), batch))
    return 100.0 * hits / len(x)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--size", type=int, default=16)
    p.add_argument("--groups", type=int, default=4)
    p.add_argument("--bits", type=int, nargs="+", default=[8, 6, 4])
    p.add_argument("--calib-batches", type=int, default=4)
    p.add_argument("--framework", choices=("torch", "mindspore"), default="torch")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    torch.manual_seed(0)
    torch.set_num_threads(1)   # tiny layers: a second thread only adds synchronisation (and stalls under load)
    (xtr, ytr), (xte, yte) = data(args.size)
    model = AdderResNet(layers=(1, 1, 1), width=args.width, num_classes=10)
    train(model, xtr, ytr, args.epochs, 32, 0.1)
    t_train = time.perf_counter() - t0

    def calib():
        return (xtr[i * 64:(i + 1) * 64] for i in range(args.calib_batches))

    if args.framework == "torch":
        from torch_ref.methods.quantize import quantize
        mode = contextlib.nullcontext()

        def prepare(m):
            return copy.deepcopy(m)

        def predictor(m):
            def run(x):
                with torch.no_grad():
                    return m(torch.from_numpy(x)).numpy()
            return run
    else:
        import mindspore as ms
        from convert.mapping import build_name_map, torch_to_ms
        from ms_models.models.addernet import AdderResNet as MsAdderResNet
        from ms_models.context import execution_mode
        from ms_models.methods.quantize import quantize
        mode = execution_mode(ms.PYNATIVE_MODE)

        def prepare(m):
            mm = MsAdderResNet(layers=(1, 1, 1), width=args.width, num_classes=10)
            state = torch_to_ms({k: v.numpy() for k, v in m.state_dict().items()}, build_name_map(m, mm))
            ms.load_param_into_net(mm, {k: ms.Parameter(ms.Tensor(v), name=k) for k, v in state.items()})
            mm.set_train(False)
            return mm

        def predictor(m):
            return lambda x: m(ms.Tensor(x)).asnumpy()

    with mode:
        rows = [("float32", "-", accuracy(predictor(prepare(model)), xte, yte))]
        for bits in args.bits:
            for label, groups, clamp in ((f"{args.groups} groups + clamp (2212.10200)", args.groups, True),
                                         ("single shared scale (prior)", 1, False)):
                q = prepare(model)
                quantize(q, calib, bits, groups, clamp=clamp, progress=False)
                rows.append((f"{bits}-bit", label, accuracy(predictor(q), xte, yte)))
    print(f"Adder ResNet (3 stages x 1 BasicBlock, width {args.width}) on digits {args.size}x{args.size}: "
          f"{args.epochs} epochs in {t_train:.1f} s; quantized in {args.framework}; "
          f"test set {len(xte)} images; calibration/BN {args.calib_batches} x 64 training images")
    print(f"{'precision':<10} {'method':<34} {'top-1 %':>8}")
    for prec, method, acc in rows:
        print(f"{prec:<10} {method:<34} {acc:>8.2f}")
    print(f"total {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
