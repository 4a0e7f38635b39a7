"""Speed benchmark: MindSpore GRAPH_MODE and PyNative vs torch eager vs onnxruntime, in one run.

For each model, form (train/deploy) and batch size (each row in a fresh process) it prints the median latency
of each runtime with its spread, the ratio MindSpore graph / torch and the fraction of this machine's measured
fp32 matmul peak that the fastest runtime reaches. torch, MindSpore graph mode and onnxruntime are timed
interleaved in one process (rounds A B C A B C ...), so a change of machine load falls on all of them alike; the
ratio is the median of the per-round ratios, with its range. torch is also timed alone before MindSpore has run
anything in the process (``torch alone``): torch eager runs slower once MindSpore has run a graph in the same
process (``docs/benchmarks.md``), and a ratio against that slower torch would flatter MindSpore. The load average
is printed at the start and the end of the run. ``--convert`` also times ``torch2ms`` of a checkpoint against a
plain ``torch.load`` + ``torch.save`` of the same file and records peak memory (each in a fresh process).
Not a test: run it with ``make bench`` or ``python scripts/benchmark.py --help``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("GLOG_v", "3")   # MindSpore: errors only on the console

import torch  # noqa: F401  (before mindspore)
import mindspore as ms
import numpy as np

import torch_ref
from convert.api import ms_twin
from ms_models.context import execution_mode, in_execution_mode
from specs import check_input_size, get_model_cfg
from torch_ref.testing import deterministic_weights


def median_time(fn, repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved_times(fns: dict[str, Callable[[], object]], repeats: int, warmup: int) -> dict[str, list[float]]:
    """Seconds of each call of each runtime, timed in rounds (every function once per round, in the dict's order:
    A B C A B C ...) after ``warmup`` untimed rounds, so that a change of load falls on every runtime alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {key: [] for key in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t0)
    return times


def summarize(row: dict, times: dict[str, list[float]]) -> dict:
    """Adds to ``row`` each runtime's median (``row[key]``), its spread ``(max - min) / median``
    (``row[key + '_spread']``) and its raw times (``row['times']``), the median and the range of the per-round
    ratios MindSpore graph / torch (``row['ms_over_torch']``, ``row['ms_over_torch_range']``) and MindSpore's
    median over ``row['torch_alone']`` (``row['ms_over_torch_alone']``)."""
    row["times"] = times
    for key, ts in times.items():
        row[key] = statistics.median(ts)
        row[key + "_spread"] = (max(ts) - min(ts)) / row[key]
    per_round = [m / t for m, t in zip(times["ms_graph"], times["torch"])]
    row["ms_over_torch"] = statistics.median(per_round)
    row["ms_over_torch_range"] = [min(per_round), max(per_round)]
    row["ms_over_torch_alone"] = row["ms_graph"] / row["torch_alone"]
    return row


def load_average() -> float:
    """The machine's 1-minute load average."""
    return os.getloadavg()[0]


def fmt_time(row: dict, key: str, width: int = 15) -> str:
    """``123.4ms(5%)``: the median and the spread of one runtime, right-aligned in ``width``."""
    if key not in row:
        return f"{'-':>{width}}"
    return f"{row[key] * 1e3:.1f}ms({100 * row[key + '_spread']:.0f}%)".rjust(width)


def fmt_ratio(row: dict) -> str:
    """``0.95 (0.91-1.02)``: the median per-round ratio and its range."""
    lo, hi = row["ms_over_torch_range"]
    return f"{row['ms_over_torch']:.2f} ({lo:.2f}-{hi:.2f})".rjust(18)


def matmul_peak(threads: int) -> float:
    """The machine's practical fp32 peak: the best FLOP/s of torch, NumPy and onnxruntime square matmuls."""
    import onnxruntime as ort
    from onnx import TensorProto, helper
    torch.set_num_threads(threads)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    best = 0.0
    for n in (1024, 2048, 4096):
        a, b = torch.randn(n, n), torch.randn(n, n)
        an, bn = a.numpy(), b.numpy()
        io = [helper.make_tensor_value_info(k, TensorProto.FLOAT, [n, n]) for k in "ABC"]
        graph = helper.make_graph([helper.make_node("MatMul", ["A", "B"], ["C"])], "mm", io[:2], io[2:])
        sess = ort.InferenceSession(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
                                    .SerializeToString(), opts, providers=["CPUExecutionProvider"])
        for fn in (lambda: torch.mm(a, b), lambda: an @ bn, lambda: sess.run(None, {"A": an, "B": bn})):
            best = max(best, 2 * n ** 3 / median_time(fn, 3, 1))
    return best


def model_flops(model, x) -> int:
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops()


def _ort_session(tm, xt, threads: int, name: str):
    """An onnxruntime session of ``tm`` exported at ``xt``'s shape, or None (reported) when the export fails."""
    import onnxruntime as ort
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "m.onnx")
        try:
            with torch.no_grad():
                torch.onnx.export(tm, (xt,), path, dynamo=False, opset_version=17)
        except Exception as exc:  # noqa: BLE001  (report and go on: the other runtimes are measured)
            print(f"  {name}: onnx export failed ({type(exc).__name__}); onnxruntime skipped", flush=True)
            return None
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def bench_model(name: str, form: str, batch: int, size: int, repeats: int, warmup: int, threads: int,
                use_ort: bool, knn_share: bool = False) -> dict | None:
    """One row of timings; None for the deploy form of a model without one (no ``switch_to_deploy``). torch alone
    first, then torch, MindSpore graph mode and onnxruntime interleaved, then PyNative alone (it is not a target)."""
    torch.manual_seed(0)
    tm = torch_ref.create_model(name)
    if form == "deploy" and not hasattr(tm, "switch_to_deploy"):
        return None
    # BN statistics from images of the benchmark's size: calibrated at 64 px, GhostNetV2's activations at 224 px
    # grow ~500x and torch float32 itself drifts 0.7 % from float64 (no realistic network runs like that)
    tm = deterministic_weights(tm, input_size=size, batches=1, batch_size=2).eval()
    if form == "deploy":
        tm.switch_to_deploy()
    x = np.random.RandomState(0).randn(batch, 3, size, size).astype(np.float32)
    xt = torch.from_numpy(x)
    row = {"model": name, "form": form, "batch": batch, "size": size, "flops": model_flops(tm, xt),
           "load": [load_average()]}

    def run_torch():
        with torch.no_grad():
            tm(xt)
    row["torch_alone"] = median_time(run_torch, repeats, warmup)
    fns = {"torch": run_torch}
    sess = _ort_session(tm, xt, threads, name) if use_ort else None
    xm = ms.Tensor(x)
    with execution_mode(ms.GRAPH_MODE):
        mm = ms_twin(tm)
        mm.set_train(False)
        fns["ms_graph"] = lambda: mm(xm).asnumpy()
        if sess is not None:
            feed = {sess.get_inputs()[0].name: x}
            fns["onnxruntime"] = lambda: sess.run(None, feed)
        summarize(row, interleaved_times(fns, repeats, warmup))
        if knn_share:
            row.update(knn_times(tm, mm, x, repeats, warmup))
    with execution_mode(ms.PYNATIVE_MODE):
        mp = ms_twin(tm)
        mp.set_train(False)
        row["ms_pynative"] = median_time(lambda: mp(xm).asnumpy(), repeats, warmup)
    row["load"].append(load_average())
    return row


def bench_model_isolated(name: str, form: str, batch: int, size: int, repeats: int, warmup: int, threads: int,
                         use_ort: bool, knn_share: bool = False) -> dict | None:
    """:func:`bench_model` in a fresh process, so that every row starts clean (see ``torch alone``)."""
    return _isolated("row", [name, form, batch, size, repeats, warmup, threads, use_ort, knn_share])


TRAIN_MODELS = ["vanillanet_5", "ghostnetv2_100", "adabin_resnet18", "pvig_ti_224_gelu", "adder_resnet20"]
# the issues' sizes (FastMIM pretrains ViT-B and Swin-B at 128 px); every other model at --size (224)
TRAIN_SIZES = {"adder_resnet20": 32, "fastmim_vit_base_patch16": 128, "fastmim_swin_base_patch4": 128}
MASK_RATIO = 0.75                         # the MIM pretraining rows' (both methods' recipes)


def bench_train(name: str, batch: int, size: int, repeats: int, warmup: int, teacher: str | None = None) -> dict:
    """One training step (forward, cross-entropy, backward, SGD-momentum update) of ``name`` at ``batch``:
    torch eager against MindSpore GRAPH_MODE through the training engine's own step
    (:func:`ms_models.train.step.build_train_network`, :func:`ms_models.train.optim.create_optimizer`). With
    ``teacher``: VanillaKD's step (train-kd.py), the frozen teacher's forward (eval, no gradients) on the same
    batch and ``CE + KLDiv(T=1)``; in MindSpore inside the same compiled step (:mod:`ms_models.train.distill`).
    A masked-image-modeling pretraining model (FastMIM, LocalMIM) trains its own loss at mask ratio 0.75 instead of
    cross-entropy (in MindSpore through the engine's :class:`ms_models.train.mim.MimObjective`).
    torch's step is timed alone first, then every step interleaved (:func:`interleaved_times`)."""
    import ms_models
    from ms_models.distill import KLDiv
    from ms_models.train.config import OptimizerConfig, TrainConfig
    from ms_models.train.distill import DistillLoss, Teacher
    from ms_models.train.mim import MimObjective, ObjectiveLoss
    from specs.mim import is_pretraining
    from ms_models.train.optim import create_optimizer
    from ms_models.train.step import build_train_network
    from torch_ref.distill import KLDiv as TorchKLDiv
    r = np.random.RandomState(0)
    x = r.randn(batch, 3, size, size).astype(np.float32)
    pretraining = is_pretraining(name)
    y = r.randint(0, max(get_model_cfg(name).num_classes, 1), batch).astype(np.int64)
    row = {"model": name, "batch": batch, "size": size, "teacher": teacher, "load": [load_average()]}
    torch.manual_seed(0)
    tm = torch_ref.create_model(name).train()
    tt = torch_ref.create_model(teacher).eval() if teacher else None
    opt = torch.optim.SGD(tm.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    kd = TorchKLDiv()

    with torch.no_grad():
        cached = tt(xt) if tt is not None else None

    def torch_step(replay: bool = False):
        opt.zero_grad(set_to_none=True)
        if tt is not None:
            with torch.no_grad():
                z_t = cached if replay else tt(xt)
        if pretraining:
            out = tm(xt, MASK_RATIO)
            (out[0] if isinstance(out, tuple) else out).backward()
            opt.step()
            return
        z_s = tm(xt)
        loss = torch.nn.functional.cross_entropy(z_s, yt)
        (loss if tt is None else loss + kd(z_s, z_t)).backward()
        opt.step()
    row["torch_alone"] = median_time(torch_step, repeats, warmup)
    fns = {"torch": torch_step}
    if tt is not None:
        fns["torch_cached"] = lambda: torch_step(True)
    with execution_mode(ms.GRAPH_MODE):
        mm = ms_models.create_model(name)
        mm.set_train(True)
        steps = (2 if teacher else 1) * (repeats + warmup + 1) + 1     # the lr schedule covers every call below
        optimizer = create_optimizer(mm, OptimizerConfig(name="sgd", lr=1e-3, weight_decay=1e-4),
                                     np.full(steps, 1e-3, np.float32))
        ce = ms.nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")
        if teacher:
            step = build_train_network(mm, DistillLoss(ce, KLDiv()), optimizer, TrainConfig(),
                                       teacher=Teacher(ms_models.create_model(teacher)), return_teacher_logits=True)
        elif pretraining:
            step = build_train_network(MimObjective(mm, MASK_RATIO), ObjectiveLoss(), optimizer, TrainConfig())
        else:
            step = build_train_network(mm, ce, optimizer, TrainConfig())
        xm, ym = ms.Tensor(x), ms.Tensor(y.astype(np.int32))
        t0 = time.perf_counter()
        out = step(xm, ym)
        (out[0] if teacher else out).asnumpy()
        row["ms_compile"] = time.perf_counter() - t0
        if teacher:      # the live step, then the teacher cache's replay step (its second graph, compiled in warmup)
            z_t = ms.Tensor(out[1].asnumpy())
            fns["ms_graph"] = lambda: step(xm, ym)[0].asnumpy()
            fns["ms_graph_cached"] = lambda: step(xm, ym, z_t)[0].asnumpy()
        else:
            fns["ms_graph"] = lambda: step(xm, ym).asnumpy()
        summarize(row, interleaved_times(fns, repeats, warmup))
    row["load"].append(load_average())
    return row


def run_train(args) -> list[dict]:
    kd = f" + frozen teacher {args.teacher} forward + KL (VanillaKD)" if args.teacher else ""
    print(f"training step (forward + cross-entropy{kd}, or a MIM model's own loss at mask ratio {MASK_RATIO}, + "
          f"backward + SGD momentum update), batch {args.train_batch}; "
          f"median of {args.repeats} interleaved rounds, (x%) = (max - min) / median; ms/torch = median (range) of "
          f"the per-round ratios; each row in a fresh process; load average {load_average():.2f} at the start")
    head = (f"{'model':<24}{'size':>6}{'torch':>15}{'ms graph':>15}{'ms/torch':>18}{'torch alone':>13}"
            f"{'ms/alone':>10}{'compile':>9}{'img/s ms':>10}")
    print(head + "\n" + "-" * len(head))
    rows = []
    for name in args.models:
        size = TRAIN_SIZES.get(name, args.size)
        r = _isolated("train-row", [name, args.train_batch, size, args.repeats, args.warmup, args.teacher])
        rows.append(r)
        print(f"{name:<24}{size:>6}{fmt_time(r, 'torch')}{fmt_time(r, 'ms_graph')}{fmt_ratio(r)}"
              f"{r['torch_alone'] * 1e3:>11.1f}ms{r['ms_over_torch_alone']:>10.2f}{r['ms_compile']:>8.1f}s"
              f"{args.train_batch / r['ms_graph']:>10.1f}", flush=True)
        if "ms_graph_cached" in r:
            print(f"{'  teacher logits cached':<24}{size:>6}{fmt_time(r, 'torch_cached')}{fmt_time(r, 'ms_graph_cached')}"
                  f"{r['ms_graph_cached'] / r['torch_cached']:>18.2f}{'':>32}{args.train_batch / r['ms_graph_cached']:>10.1f}"
                  f"   (MindSpore: {r['ms_graph'] / r['ms_graph_cached']:.2f}x faster than live)", flush=True)
    print(f"load average {load_average():.2f} at the end")
    return rows


def bench_data(size: int, batch: int, batches: int = 20) -> dict:
    """Images/s of the data pipeline with the standard ImageNet train augmentation (RandomResizedCrop with random
    interpolation, flip, colour jitter 0.4, RandAugment rand-m9-mstd0.5-inc1, random erasing 0.25, Mixup/CutMix)
    on 2 workers, on builtin:shapes resized to ``size``; the first batch (worker start) is not timed."""
    from ms_models.train.config import config_from_dict
    from ms_models.train.data import create_loader
    cfg = config_from_dict({"model": {"name": "vanillanet_5", "num_classes": 10},
                            "data": {"dir": "builtin:shapes", "image_size": size, "batch_size": batch, "workers": 2,
                                     "interpolation": "random", "color_jitter": 0.4,
                                     "auto_augment": "rand-m9-mstd0.5-inc1", "reprob": 0.25, "mixup": 0.8,
                                     "cutmix": 1.0, "smoothing": 0.1}})
    loader = create_loader(cfg, "train", get_model_cfg("vanillanet_5"))
    it = iter(loader)
    next(it)
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    rate = batches * batch / (time.perf_counter() - t0)
    print(f"data pipeline, ImageNet train augmentation at {size} px, 2 workers: {rate:.0f} images/s", flush=True)
    return {"data_images_per_s": rate, "size": size, "workers": 2}


def _isolated(kind: str, spec: list) -> dict:
    """One benchmark row (``--row`` / ``--train-row``) run by this script in a fresh process."""
    proc = subprocess.run([sys.executable, __file__, f"--{kind}", json.dumps(spec)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark row {spec[:3]} failed: {(proc.stderr.strip().splitlines() or ['no output'])[-1]}")
    for line in proc.stdout.splitlines():
        if not line.startswith("ROW "):
            print(line, flush=True)
    return json.loads([line for line in proc.stdout.splitlines() if line.startswith("ROW ")][-1][4:])


def knn_times(tm, mm, x: np.ndarray, repeats: int, warmup: int) -> dict:
    """Time of graph construction (normalisation, distance, top-k, dilation) summed over the Graphers, each
    kNN module/cell run alone on the inputs it sees in the model: torch eager and MindSpore GRAPH_MODE."""
    inputs, handles = {}, []
    knn_t = {n: m for n, m in tm.named_modules() if type(m).__name__ == "DilatedKnnGraph"}
    knn_m = {n: c for n, c in mm.cells_and_names() if type(c).__name__ == "DilatedKnnGraph"}
    for n, m in knn_t.items():
        handles.append(m.register_forward_pre_hook(lambda mod, args, n=n: inputs.setdefault(n, args[:3])))
    with torch.no_grad():
        tm(torch.from_numpy(x))
    for h in handles:
        h.remove()
    t_torch = t_ms = 0.0
    for n, args in inputs.items():
        with torch.no_grad():
            t_torch += median_time(lambda: knn_t[n](*args), repeats, warmup)
        margs = tuple(None if a is None else ms.Tensor(a.numpy()) for a in args)
        t_ms += median_time(lambda: knn_m[n](*margs).asnumpy(), repeats, warmup)
    return {"knn_torch": t_torch, "knn_ms_graph": t_ms}


def _peak_rss_child(code: str) -> tuple[float, float, float]:
    """Run ``code`` in a fresh interpreter after importing torch and mindspore; returns (seconds of ``code``,
    RSS before it, peak RSS during it) in bytes. The peak counter (VmHWM) is reset to the current RSS just
    before ``code`` (``/proc/self/clear_refs``), so the imports' own transient peak is not counted."""
    wrapper = f"""
import time, json
import torch, mindspore
import convert.api

def status(key):
    for line in open('/proc/self/status'):
        if line.startswith(key):
            return int(line.split()[1]) * 1024

with open('/proc/self/clear_refs', 'w') as f:
    f.write('5')
base = status('VmRSS:')
t0 = time.perf_counter()
{code}
dt = time.perf_counter() - t0
print(json.dumps([dt, base, status('VmHWM:')]))
"""
    out = subprocess.run([sys.executable, "-c", wrapper], capture_output=True, text=True, check=True)
    return tuple(json.loads(out.stdout.strip().splitlines()[-1]))


def bench_convert(name: str, workdir: Path) -> dict:
    """torch2ms of a train-form checkpoint vs torch.load + torch.save of the same file."""
    src = workdir / f"{name}.pth"
    if not src.exists():
        torch.manual_seed(0)
        model = torch_ref.create_model(name)
        torch.save({"model_ema": model.state_dict()}, src)
        del model
    size = src.stat().st_size
    base = _peak_rss_child(f"sd = torch.load({str(src)!r}, map_location='cpu', weights_only=True)\n"
                           f"torch.save(sd, {str(workdir / 'resaved.pth')!r})")
    conv = {}
    for ext in (".ckpt", ".safetensors"):
        conv[ext] = _peak_rss_child(f"from convert.api import convert_file\n"
                                    f"convert_file({name!r}, {str(src)!r}, {str(workdir / ('out' + ext))!r})")
    row = {"model": name, "file_bytes": size, "load_save_s": base[0], "load_save_peak_above_base": base[2] - base[1]}
    for ext, (t, b, p) in conv.items():
        row[f"torch2ms{ext}_s"] = t
        row[f"torch2ms{ext}_peak_above_base"] = p - b
        row[f"torch2ms{ext}_peak_total"] = p
    return row


ADDER_SHAPES = {   # name: (batch, in channels, out channels, image size, kernel, stride)
    "r20_16ch_3x3@32": (32, 16, 16, 32, 3, 1),
    "r20_32ch_3x3@16": (32, 32, 32, 16, 3, 1),
    "r20_64ch_3x3@8": (32, 64, 64, 8, 3, 1),
    "r50_l1_3x3_64@56": (8, 64, 64, 56, 3, 1),
    "r50_l1_1x1_64-256@56": (8, 64, 256, 56, 1, 1),
    "r50_l3_3x3_256@14": (8, 256, 256, 14, 3, 1),
    "r50_l4_3x3_512@7": (8, 512, 512, 7, 3, 1),
}


@in_execution_mode(ms.GRAPH_MODE)
def bench_adder(name: str, repeats: int, warmup: int) -> dict:
    """Adder2d vs Conv2d of the same shape: forward and forward+backward (input and weight gradients),
    torch eager and MindSpore GRAPH_MODE."""
    import ms_models.layers.adder as ms_adder
    import torch_ref.layers.adder as t_adder
    batch, cin, cout, size, k, stride = ADDER_SHAPES[name]
    pad = k // 2
    r = np.random.RandomState(0)
    x = r.randn(batch, cin, size, size).astype(np.float32)
    w = r.randn(cout, cin, k, k).astype(np.float32)
    row = {"shape": name, "macs": batch * cout * cin * k * k * ((size + 2 * pad - k) // stride + 1) ** 2}
    tx, tw = torch.from_numpy(x), torch.from_numpy(w)
    t_layers = {"adder": lambda xx, ww: t_adder.adder2d(xx, ww, stride, pad),
                "conv": lambda xx, ww: torch.nn.functional.conv2d(xx, ww, None, stride, pad)}
    for kind, fn in t_layers.items():
        with torch.no_grad():
            row[f"torch_{kind}_fwd"] = median_time(lambda: fn(tx, tw), repeats, warmup)
        xg, wg = tx.clone().requires_grad_(), tw.clone().requires_grad_()
        g = torch.ones_like(fn(tx, tw))

        def step():
            fn(xg, wg).backward(g)
            xg.grad = wg.grad = None
        row[f"torch_{kind}_fwdbwd"] = median_time(step, repeats, warmup)
    mx = ms.Tensor(x)
    adder = ms_adder.Adder2d(cin, cout, k, stride, pad)
    conv = ms.nn.Conv2d(cin, cout, k, stride, pad_mode="pad", padding=pad, has_bias=False)
    for kind, cell in (("adder", adder), ("conv", conv)):
        cell.trainable_params()[0].set_data(ms.Tensor(w))
        row[f"ms_{kind}_fwd"] = median_time(lambda: cell(mx).asnumpy(), repeats, warmup)
        grad = ms.jit(ms.grad(cell, 0, cell.trainable_params()))
        row[f"ms_{kind}_fwdbwd"] = median_time(lambda: grad(mx)[0].asnumpy(), repeats, warmup)
    for fw in ("torch", "ms"):
        for step in ("fwd", "fwdbwd"):
            row[f"{fw}_{step}_ratio"] = row[f"{fw}_adder_{step}"] / row[f"{fw}_conv_{step}"]
    return row


def adder_peak_memory(framework: str, batch: int = 8, size: int = 224) -> tuple[float, float]:
    """(seconds, peak RSS above the after-import baseline in bytes) of one eval forward of adder ResNet-50
    in a fresh process (``_peak_rss_child``); MindSpore in GRAPH_MODE."""
    if framework == "torch":
        code = (f"import torch_ref\nm = torch_ref.create_model('adder_resnet50').eval()\n"
                f"x = torch.randn({batch}, 3, {size}, {size})\nwith torch.no_grad():\n    m(x)")
    else:
        code = (f"import ms_models, numpy as np\nwith ms_models.execution_mode(mindspore.GRAPH_MODE):\n"
                f"    m = ms_models.create_model('adder_resnet50')\n    m.set_train(False)\n"
                f"    m(mindspore.Tensor(np.random.randn({batch}, 3, {size}, {size}).astype(np.float32))).asnumpy()")
    t, base, peak = _peak_rss_child(code)
    return t, peak - base


def run_adder(args) -> list[dict]:
    rows = []
    if args.adder is not None:
        print("Adder2d vs Conv2d (same shape, stride 1, 'same' padding): median ms; ratio = adder / conv; "
              "fwd+bwd = input and weight gradients; MindSpore GRAPH_MODE")
        cols = [(fw, st) for fw in ("torch", "ms") for st in ("fwd", "fwdbwd")]
        head = f"{'':<28}" + "".join(f"{fw + ' ' + st.replace('fwdbwd', 'fwd+bwd'):^24}" for fw, st in cols)
        sub = f"{'shape':<22}{'GMAC':>6}" + f"{'adder':>8}{'conv':>8}{'ratio':>8}" * len(cols)
        print(head + "\n" + sub + "\n" + "-" * len(sub))
        for name in args.adder or list(ADDER_SHAPES):
            r = bench_adder(name, args.repeats, args.warmup)
            rows.append(r)
            cells = "".join(f"{r[f'{fw}_adder_{st}'] * 1e3:>8.1f}{r[f'{fw}_conv_{st}'] * 1e3:>8.1f}"
                            f"{r[f'{fw}_{st}_ratio']:>8.2f}" for fw, st in cols)
            print(f"{name:<22}{r['macs'] / 1e9:>6.2f}{cells}", flush=True)
    if args.adder_memory:
        for fw in ("torch", "mindspore"):
            t, above = adder_peak_memory(fw)
            rows.append({"adder_resnet50_forward": fw, "seconds": t, "peak_above_base": above})
            print(f"adder_resnet50 forward, batch 8 at 224, {fw}: {t:.1f} s, peak RSS {above / 2 ** 30:.2f} GiB "
                  f"above the after-import baseline", flush=True)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["vanillanet_5"])
    p.add_argument("--forms", nargs="+", default=["train", "deploy"], choices=["train", "deploy"])
    p.add_argument("--batch", nargs="+", type=int, default=[1, 8])
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--no-ort", action="store_true", help="skip onnxruntime")
    p.add_argument("--knn-share", action="store_true",
                   help="graph models: also time graph construction (kNN) alone, torch and MindSpore graph")
    p.add_argument("--convert", nargs="*", default=None, metavar="MODEL",
                   help="also benchmark torch2ms on these models' train-form checkpoints "
                        "(no name: vanillanet_13_x1_5)")
    p.add_argument("--workdir", default=None, help="where --convert writes its checkpoints (default: a temp dir)")
    p.add_argument("--adder", nargs="*", default=None, metavar="SHAPE", choices=list(ADDER_SHAPES),
                   help="instead: Adder2d vs Conv2d layer timings (no name: all of " + ", ".join(ADDER_SHAPES) + ")")
    p.add_argument("--adder-memory", action="store_true",
                   help="instead: peak memory of an adder ResNet-50 forward, batch 8 at 224, both frameworks")
    p.add_argument("--train", action="store_true",
                   help="instead: one training step, MindSpore GRAPH_MODE vs torch eager (--models; default the "
                        "issue-12 set), and with --data the data pipeline's images/s")
    p.add_argument("--train-batch", type=int, default=16)
    p.add_argument("--teacher", default=None, metavar="MODEL",
                   help="with --train: distillation steps from this frozen teacher (e.g. --models resnet50 "
                        "--teacher resnet152, the issue-16 pair)")
    p.add_argument("--data", action="store_true",
                   help="with --train: images/s of the ImageNet train augmentation (2 workers) on builtin:shapes")
    p.add_argument("--json", default=None, help="also write the rows to this file")
    p.add_argument("--row", default=None, help=argparse.SUPPRESS)    # internal: one row, in a child process
    p.add_argument("--train-row", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.row is not None:
        print("ROW " + json.dumps(bench_model(*json.loads(args.row))), flush=True)
        return 0
    if args.train_row is not None:
        print("ROW " + json.dumps(bench_train(*json.loads(args.train_row))), flush=True)
        return 0
    if args.train:
        if args.models == p.get_default("models"):
            args.models = TRAIN_MODELS
        rows = run_train(args)
        if args.data:
            rows.append(bench_data(args.size, args.train_batch))
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1))
        return 0
    if args.adder is not None or args.adder_memory:
        rows = run_adder(args)
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1))
        return 0
    for name in args.models:
        check_input_size(get_model_cfg(name), args.size)
    peak = matmul_peak(args.threads)
    print(f"fp32 matmul peak (best torch/NumPy/onnxruntime square matmul, {args.threads} threads): "
          f"{peak / 1e9:.1f} GFLOP/s\n%peak = model FLOPs (torch FlopCounterMode, 2 per MAC) / time / peak, for "
          f"MindSpore graph mode and for the fastest runtime")
    print(f"median of {args.repeats} rounds of torch, MindSpore graph mode and onnxruntime interleaved; (x%) = "
          f"(max - min) / median; ms/torch = median (range) of the per-round ratios; torch alone = torch timed before "
          f"MindSpore ran in the process; PyNative timed alone after; each row in a fresh process; load average "
          f"{load_average():.2f} at the start")
    rows = []
    head = (f"{'model':<24}{'form':<7}{'batch':>5}{'GFLOP':>7}{'ms graph':>15}{'torch':>15}{'ms/torch':>18}"
            f"{'torch alone':>13}{'ms/alone':>9}{'ms pynat':>11}{'onnxrt':>15}{'%peak ms':>9}{'best':>6}")
    print(head + "\n" + "-" * len(head))
    for name in args.models:
        forms = args.forms
        if "deploy" in forms and not hasattr(torch_ref.registry.model_class(name), "switch_to_deploy"):
            print(f"{name}: no deploy form (no switch_to_deploy); benchmarking train form only")
            forms = [f for f in forms if f != "deploy"]
        for form in forms:
            for batch in args.batch:
                r = bench_model_isolated(name, form, batch, args.size, args.repeats, args.warmup, args.threads,
                                         not args.no_ort, args.knn_share)
                if r is None:
                    print(f"{name:<24}{form:<7}{batch:>5}  skipped: no deploy form", flush=True)
                    continue
                r["peak_fraction"] = r["flops"] / r["ms_graph"] / peak
                r["peak_fraction_best"] = r["flops"] / min(r[k] for k in ("ms_graph", "ms_pynative", "torch",
                                                                          "torch_alone", "onnxruntime") if k in r) / peak
                rows.append(r)
                print(f"{name:<24}{form:<7}{batch:>5}{r['flops'] / 1e9:>7.1f}{fmt_time(r, 'ms_graph')}"
                      f"{fmt_time(r, 'torch')}{fmt_ratio(r)}{r['torch_alone'] * 1e3:>11.1f}ms"
                      f"{r['ms_over_torch_alone']:>9.2f}{r['ms_pynative'] * 1e3:>9.1f}ms{fmt_time(r, 'onnxruntime')}"
                      f"{100 * r['peak_fraction']:>8.1f}%{100 * r['peak_fraction_best']:>5.0f}%", flush=True)
    print(f"load average {load_average():.2f} at the end")
    for r in rows:
        if "knn_torch" in r:
            print(f"{r['model']} batch {r['batch']}: graph construction (kNN alone, summed over Graphers) torch "
                  f"{r['knn_torch'] * 1e3:.1f} ms = {r['knn_torch'] / r['torch']:.0%} of torch; MindSpore graph "
                  f"{r['knn_ms_graph'] * 1e3:.1f} ms = {r['knn_ms_graph'] / r['ms_graph']:.0%} of MindSpore graph")
    by_key = {(r["model"], r["form"], r["batch"]): r for r in rows}
    for name in args.models:
        for batch in args.batch:
            tr, de = by_key.get((name, "train", batch)), by_key.get((name, "deploy", batch))
            if tr and de:
                print(f"{name} batch {batch}: deploy speed-up torch {tr['torch'] / de['torch']:.2f}x, "
                      f"MindSpore graph {tr['ms_graph'] / de['ms_graph']:.2f}x")
    if args.convert is not None:
        with tempfile.TemporaryDirectory(dir=args.workdir) as d:
            for name in args.convert or ["vanillanet_13_x1_5"]:
                c = bench_convert(name, Path(d))
                rows.append(c)
                gib = c["file_bytes"] / 2 ** 30
                print(f"\nconvert {name}: file {gib:.2f} GiB; torch.load+torch.save {c['load_save_s']:.2f} s")
                for ext in (".ckpt", ".safetensors"):
                    t, above, total = (c[f"torch2ms{ext}_s"], c[f"torch2ms{ext}_peak_above_base"],
                                       c[f"torch2ms{ext}_peak_total"])
                    print(f"  torch2ms -> {ext:<12} {t:6.2f} s = {t / c['load_save_s']:.2f}x load+save; peak RSS "
                          f"{above / c['file_bytes']:.2f}x file above the imports, {total / c['file_bytes']:.2f}x in all")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
