"""The command lines of ``scripts/train.py`` and ``scripts/validate.py`` (thin wrappers over :func:`.loop.train`
and :func:`validate`). Bad input prints one ``error: ...`` line: exit 2 for a bad config or override (nothing
started), exit 1 for other bad input (data, checkpoint) and for a run stopped by a non-finite loss; an interrupted
run (Ctrl-C: 130, SIGTERM: 143) says where its last checkpoint is. Under ``msrun`` the same command line trains data
parallel (:mod:`.distributed`)."""
from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
from typing import Any, Sequence

from specs import get_model_cfg
from specs.mim import is_pretraining
from specs.errors import ConfigError, UnknownModelError, ZooError

from .config import Config, apply_overrides, config_from_dict, config_to_dict, load_config

FRAMEWORKS = ("mindspore", "torch")


def _train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scripts/train.py", description="Train a registered model in MindSpore.")
    p.add_argument("--config", required=True, help="YAML recipe (configs/<family>/*.yaml, configs/demo/*.yaml)")
    p.add_argument("--data-dir", default=None,
                   help="ImageFolder root with train/ and val/, or builtin:digits / builtin:digits_shifted / "
                        "builtin:shapes (data.dir)")
    p.add_argument("--output", default=None, help="run folder (default: runs/<config name>)")
    p.add_argument("--resume", default=None, help="a training checkpoint, or 'auto': OUTPUT/last.ckpt if present")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config keys, e.g. optimizer.lr=0.01")
    return p


def resolve_config(config: str, data_dir: str | None, overrides: Sequence[str]) -> Config:
    """The recipe with ``--data-dir`` and the overrides applied (validated; :class:`ConfigError` otherwise)."""
    items = ([f"data.dir={data_dir}"] if data_dir is not None else []) + list(overrides)
    return apply_overrides(load_config(config), items)


def _use_device(target: str) -> None:
    """The process's MindSpore device (the script owns its process; the library only checks it)."""
    import mindspore as ms
    if ms.get_context("device_target") == target:
        return
    try:
        ms.set_device(target)
    except (RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"config key 'train.device_target' is {target!r}, which this MindSpore cannot use "
                          f"({first}); set train.device_target=CPU to train here") from None


class _Terminated(KeyboardInterrupt):
    """SIGTERM (a job scheduler stopping the run) taken as an interrupt, so files being written are cleaned up."""


def _terminated(signum: int, frame: Any) -> None:
    raise _Terminated


def train_main(argv: Sequence[str] | None = None) -> int:
    args = _train_parser().parse_args(argv)
    try:
        cfg = resolve_config(args.config, args.data_dir, args.overrides)
        if cfg.data.dir is None:
            raise ConfigError("no data: give --data-dir DIR (or builtin:digits) or set data.dir in the config")
    except (ConfigError, UnknownModelError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    output = Path(args.output or Path("runs") / Path(args.config).stem)
    try:
        _use_device(cfg.train.device_target)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from .distributed import init_process_group
    init_process_group()      # under msrun: before any Tensor exists (HCCL); the scheduler process stays in it
    from .loop import train
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        result = train(cfg, output, resume=args.resume)
    except ZooError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        print(f"interrupted: {output} holds the last complete checkpoint (resume with --resume auto)",
              file=sys.stderr)
        return 143 if isinstance(exc, _Terminated) else 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(json.dumps({"output": str(result.output), "best_top1": result.best_top1,
                      "best_epoch": result.best_epoch + 1}))
    return 0


# --- validation ---------------------------------------------------------------------------------------------------

def eval_config(model: str, checkpoint: str, data_dir: str, num_classes: int | None = None,
                config: str | None = None, batch_size: int | None = None, image_size: int | None = None,
                crop_pct: float | None = None) -> Config:
    """The data and model settings to validate with: the recipe a training checkpoint was written with (or the
    ``config`` file), else the model cfg's; then the explicit arguments."""
    from convert.io import read_checkpoint_raw
    from .checkpoint import read_train_checkpoint
    get_model_cfg(model)                            # an unknown name first, with close matches
    base: dict[str, Any] = {}
    if config is not None:
        base = config_to_dict(load_config(config))
    elif checkpoint.endswith((".ckpt", ".safetensors")):
        try:
            base = read_train_checkpoint(checkpoint)[2]
        except ZooError:
            read_checkpoint_raw(checkpoint)         # unreadable: its own error; readable: plain model weights
    data = base.get("data", {})
    data.update(dir=data_dir, workers=min(data.get("workers", 2), 2))
    if batch_size is not None:
        data.update(batch_size=batch_size, val_batch_size=batch_size)
    if image_size is not None:
        data["image_size"] = image_size
    elif "image_size" not in data:
        data["image_size"] = get_model_cfg(model).input_size[-1]
    if crop_pct is not None:
        data["crop_pct"] = crop_pct
    kwargs = base.get("model", {}).get("kwargs", {}) if base.get("model", {}).get("name") == model else {}
    model_section = {"name": model, "kwargs": kwargs}
    classes = num_classes or base.get("model", {}).get("num_classes")
    if classes is None:       # a plain weights file and no recipe: the head size is the data's class count
        from .data import dataset_classes
        classes = len(dataset_classes(config_from_dict({"model": {"name": model}, "data": data})))
    model_section["num_classes"] = classes
    return config_from_dict({"model": model_section, "data": data, "seed": base.get("seed", 0)})


def validate(model: str, checkpoint: str, data_dir: str, framework: str = "mindspore", batch_size: int | None = None,
             num_classes: int | None = None, config: str | None = None, image_size: int | None = None,
             crop_pct: float | None = None, progress: bool = True) -> dict[str, float | int]:
    """Top-1 / top-5 / loss of ``checkpoint`` (any format the converter reads, either naming) on the ``val``
    split of ``data_dir``, with the eval preprocessing of the model cfg (or of the training recipe). With
    ``num_classes`` None, the training recipe's or else the number of classes in the data."""
    from tqdm import tqdm
    from .data import create_loader
    from .evaluate import evaluate, ms_predictor
    if framework not in FRAMEWORKS:
        raise ConfigError(f"framework must be one of {', '.join(FRAMEWORKS)}, got {framework!r}")
    if is_pretraining(model):
        raise ConfigError(f"{model} is a masked-image-modeling pretraining model, without a classifier to score: "
                          f"fine-tune its checkpoint (vit_base_patch16 with model.pretrained) and validate that")
    cfg = eval_config(model, checkpoint, data_dir, num_classes, config, batch_size, image_size, crop_pct)
    loader = create_loader(cfg, "val", get_model_cfg(model))
    if framework == "torch":
        import torch
        import torch_ref
        net = torch_ref.create_model(model, num_classes=cfg.model.num_classes, checkpoint=checkpoint,
                                     **cfg.model.kwargs).eval()

        def predict(images):
            with torch.no_grad():
                return net(torch.from_numpy(images)).numpy()
    else:
        from .. import create_model
        predict = ms_predictor(create_model(model, num_classes=cfg.model.num_classes, checkpoint=checkpoint,
                                            **cfg.model.kwargs))
    bar = (lambda it: tqdm(it, total=loader.steps, desc=f"validate {model} ({framework})", unit="batch",
                           disable=None, leave=False)) if progress else None
    return evaluate(predict, loader, bar)


def _validate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scripts/validate.py", description="Top-1/top-5 of a checkpoint on a val set.")
    p.add_argument("--model", required=True, help="registered model name")
    p.add_argument("--checkpoint", required=True, help="any format the converter reads, either framework's names")
    p.add_argument("--data-dir", required=True, help="ImageFolder root with val/ (and train/), or builtin:<name>")
    p.add_argument("--framework", choices=FRAMEWORKS, default="mindspore")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--config", default=None,
                   help="training config.yaml whose data settings (image size, mean/std, crop_pct) to use")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--crop-pct", type=float, default=None)
    return p


def validate_main(argv: Sequence[str] | None = None) -> int:
    args = _validate_parser().parse_args(argv)
    try:
        result = validate(args.model, args.checkpoint, args.data_dir, args.framework, args.batch_size,
                          args.num_classes, args.config, args.image_size, args.crop_pct)
    except (ConfigError, UnknownModelError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ZooError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{args.model} ({args.framework}) on {args.data_dir}: top-1 {result['top1']:.2f}%  "
          f"top-5 {result['top5']:.2f}%  loss {result['loss']:.4f}  ({result['images']} images)")
    print(json.dumps({k: result[k] for k in ("top1", "top5", "loss", "images")}))
    return 0
