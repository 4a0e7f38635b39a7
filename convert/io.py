"""Reading and writing checkpoint files as ``{name: numpy array}``, safely and atomically.

Reads ``.pth``/``.pth.tar``/``.pt``/``.th``/``.bin`` (``torch.load(weights_only=True)``: never unpickles code),
``.safetensors`` and MindSpore ``.ckpt`` (these two without torch); unwraps the containers the official
repositories use. Writes to a temporary file in the destination folder and renames it, so an error or Ctrl-C
leaves nothing half-written. torch is imported only to read or write a torch file.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import struct
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np
from tqdm import tqdm

from specs.errors import CheckpointError

# Checked in this order, like timm's ``load_state_dict(use_ema=True)`` (EMA weights are the released ones).
CONTAINER_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model", "module")
DROPPED_SUFFIXES = ("total_ops", "total_params")      # thop profiling buffers
# A training checkpoint (``ms_models.train.checkpoint``) holds the model's weights under their own names, the EMA
# weights under ``ema.`` and the rest of the run (optimizer moments, step counters, loss scale, meta data) under
# ``train_state.``; read as a model checkpoint it gives the weights, or the EMA weights with ``key="ema"``.
TRAIN_STATE = "train_state."
EMA = "ema."
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".tar", ".th")   # .th: AdaBin's official model.th
# The one non-tensor class ``torch.load(weights_only=True)`` may rebuild: timm's ``CheckpointSaver`` stores the
# training ``args`` (an ``argparse.Namespace`` of plain values) beside ``state_dict`` / ``state_dict_ema``.
SAFE_GLOBALS = (argparse.Namespace,)

_ST_DTYPES = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(np.float64): "F64",
              np.dtype(np.int64): "I64", np.dtype(np.int32): "I32", np.dtype(np.int8): "I8",
              np.dtype(np.uint8): "U8", np.dtype(np.bool_): "BOOL"}


def file_format(path: str | os.PathLike) -> str:
    """'torch', 'safetensors' or 'ckpt', from the file name; anything else is a :class:`CheckpointError`."""
    name = str(path).lower()
    if name.endswith(".safetensors"):
        return "safetensors"
    if name.endswith(".ckpt"):
        return "ckpt"
    if name.endswith(TORCH_SUFFIXES):
        return "torch"
    raise CheckpointError(f"{path}: unknown checkpoint extension (use .pth, .pth.tar, .pt, .th, .bin, "
                          f".safetensors or .ckpt)")


def _to_numpy(value) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "asnumpy"):          # mindspore Tensor / Parameter
        return value.asnumpy()
    if hasattr(value, "detach"):           # torch Tensor
        import torch
        value = value.detach()
        if value.dtype == torch.bfloat16:
            value = value.float()
        return value.numpy()
    raise TypeError(type(value).__name__)


def unwrap(obj, source: str = "checkpoint", key: str | None = None) -> dict[str, np.ndarray]:
    """The state dict inside a loaded file: container keys, ``module.`` prefixes and thop buffers removed."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source}: not a checkpoint (holds a {type(obj).__name__}, not a state dict)")
    if any(isinstance(k, str) and k.startswith(TRAIN_STATE) for k in obj):
        obj = training_weights(obj, source, ema=key == "ema")
        key = None
    if key is not None:
        if key not in obj:
            raise CheckpointError(f"{source}: no key {key!r} (top-level keys: {', '.join(map(str, list(obj)[:8]))})")
        obj = obj[key]
    else:
        for k in CONTAINER_KEYS:
            if isinstance(obj.get(k), Mapping):
                obj = obj[k]
                break
    state: dict[str, np.ndarray] = {}
    for k, v in obj.items():
        if not isinstance(k, str) or k.endswith(DROPPED_SUFFIXES):
            continue
        try:
            state[k[7:] if k.startswith("module.") else k] = _to_numpy(v)
        except TypeError:
            raise CheckpointError(f"{source}: not a state dict (entry {k!r} is a {type(v).__name__}, "
                                  f"not a tensor; top-level keys: {', '.join(map(str, list(obj)[:8]))})") from None
    if not state:
        raise CheckpointError(f"{source}: holds no tensors")
    return state


def training_weights(state: Mapping, source: str = "checkpoint", ema: bool = False) -> dict:
    """The model weights of a training checkpoint: the plain names, or the ``ema.`` ones (prefix removed)."""
    if ema:
        weights = {k[len(EMA):]: v for k, v in state.items() if k.startswith(EMA)}
        if not weights:
            raise CheckpointError(f"{source}: a training checkpoint without EMA weights (train.ema_decay was off)")
        return weights
    return {k: v for k, v in state.items() if not k.startswith((EMA, TRAIN_STATE))}


def _load(path: Path, fmt: str):
    """The object a checkpoint file holds (a mapping for every supported format)."""
    try:
        if fmt == "safetensors":
            from safetensors.numpy import load_file
            return load_file(str(path))
        if fmt == "ckpt":
            import mindspore as ms
            return ms.load_checkpoint(str(path))
        try:
            import torch
        except ImportError:
            raise CheckpointError(f"{path}: reading a torch file needs torch, which is not installed") from None
        with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as exc:
                if "mmap" not in str(exc) and "zip" not in str(exc):
                    raise
                return torch.load(path, map_location="cpu", weights_only=True)   # legacy (non-zip) format
    except CheckpointError:
        raise
    except Exception as exc:  # each library raises its own types for a corrupt or foreign file
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a readable {fmt} checkpoint ({first})") from None


def _existing(path: str | os.PathLike) -> tuple[Path, str]:
    path = Path(path)
    fmt = file_format(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    return path, fmt


def read_checkpoint(path: str | os.PathLike, key: str | None = None) -> dict[str, np.ndarray]:
    """``{name: array}`` from any supported file; errors are one-line :class:`CheckpointError`."""
    path, fmt = _existing(path)
    return unwrap(_load(path, fmt), str(path), key)


def read_checkpoint_raw(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every entry of a flat ``.ckpt`` / ``.safetensors`` file as ``{name: array}``, nothing unwrapped (a training
    checkpoint's optimizer and meta entries included)."""
    path, fmt = _existing(path)
    if fmt == "torch":
        raise CheckpointError(f"{path}: a torch file; training checkpoints are .ckpt or .safetensors files")
    return {k: _to_numpy(v) for k, v in _load(path, fmt).items()}


@contextlib.contextmanager
def atomic_output(dst: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``dst``; rename it to ``dst`` only if the block finishes (its bytes flushed to
    disk first, so that ``dst`` is the old file or the whole new one, also after a crash of the machine)."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.parent / f".{dst.name}.{os.getpid()}.partial{suffix}"
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dst)
    finally:
        if tmp.exists():
            tmp.unlink()


def _progress(items, path: Path):
    """A progress bar over the tensors being written (shown on a terminal only)."""
    return tqdm(list(items), desc=f"writing {path.name}", unit="tensor", disable=None, leave=False)


def _write_safetensors(state: Mapping[str, np.ndarray], path: Path, metadata: Mapping[str, str] | None) -> None:
    """Stream a safetensors file tensor by tensor (no second copy of the whole state in memory)."""
    header: dict = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    arrays = {}
    for name, value in state.items():
        arr = np.asarray(value)
        if arr.dtype not in _ST_DTYPES:
            raise CheckpointError(f"{name}: dtype {arr.dtype} cannot be written to safetensors")
        header[name] = {"dtype": _ST_DTYPES[arr.dtype], "shape": list(arr.shape),
                        "data_offsets": [offset, offset + arr.nbytes]}
        offset += arr.nbytes
        arrays[name] = arr
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for arr in _progress(arrays.values(), path):
            f.write(np.require(arr, requirements="C").data if arr.ndim else arr.tobytes())


_MS_DTYPES = {np.dtype(np.float32): "Float32", np.dtype(np.float16): "Float16", np.dtype(np.float64): "Float64",
              np.dtype(np.int64): "Int64", np.dtype(np.int32): "Int32", np.dtype(np.int8): "Int8",
              np.dtype(np.uint8): "UInt8", np.dtype(np.bool_): "Bool"}


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload_len: int) -> bytes:
    """Key and length of a length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(payload_len)


def _write_ms_ckpt(state: Mapping[str, np.ndarray], path: Path) -> None:
    """Stream MindSpore's ``.ckpt`` (protobuf ``Checkpoint``, ``mindspore/train/checkpoint.proto``) tensor by
    tensor: each entry is one ``Checkpoint.value`` ``{tag, tensor {dims, tensor_type, tensor_content}}``,
    byte-identical to what ``mindspore.save_checkpoint`` writes, without its second in-memory copy."""
    with open(path, "wb") as f:
        for name, value in _progress(state.items(), path):
            arr = np.asarray(value)
            if arr.dtype not in _MS_DTYPES:
                raise CheckpointError(f"{name}: dtype {arr.dtype} cannot be written to a MindSpore checkpoint")
            tag = name.encode()
            ttype = _MS_DTYPES[arr.dtype].encode()
            dims = b"".join(b"\x08" + _varint(d) for d in arr.shape)
            tensor_head = dims + _field(2, len(ttype)) + ttype + _field(3, arr.nbytes)
            tensor_len = len(tensor_head) + arr.nbytes
            value_head = _field(1, len(tag)) + tag + _field(2, tensor_len)
            f.write(_field(1, len(value_head) + tensor_len) + value_head + tensor_head)
            f.write(np.require(arr, requirements="C").data if arr.ndim else arr.tobytes())


def write_checkpoint(state: Mapping[str, np.ndarray], dst: str | os.PathLike, container: str | None = None) -> Path:
    """Write ``state`` in the format ``dst``'s extension names, atomically.

    ``container`` wraps torch files as ``{container: state}`` (e.g. ``model``, like the official repos).
    """
    dst = Path(dst)
    fmt = file_format(dst)
    if fmt == "safetensors":
        with atomic_output(dst) as tmp:
            _write_safetensors(state, tmp, {"format": "pt"})
    elif fmt == "ckpt":
        with atomic_output(dst) as tmp:
            _write_ms_ckpt(state, tmp)
    else:
        import torch
        sd = {k: torch.from_numpy(np.require(v, requirements="C")) for k, v in state.items()}
        with atomic_output(dst) as tmp:
            torch.save({container: sd} if container else sd, tmp)
    return dst
