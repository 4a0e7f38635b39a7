"""Build a C++ kernel source of the project (``*/csrc/*.cc``) into a shared library on first use.

Framework-free: ``ms_models`` loads the libraries as MindSpore AOT custom ops, ``torch_ref`` through ctypes.
The system C++ compiler (``$CXX``, ``g++`` or ``c++``) builds ``-O3 -march=native`` with OpenMP into a per-user
cache (``$XDG_CACHE_HOME/ms_models``), one file per source, flags and CPU kind. :func:`build` returns None --
callers then use native framework ops -- if ``MS_MODELS_NATIVE_KERNELS=1`` is set, there is no compiler or
the build fails (it is retried with OpenMP off first, for compilers without it).
"""
from __future__ import annotations

import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c++17"]


def cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "ms_models"


def _cpu_id() -> bytes:
    """The CPU's instruction-set flags: a ``-march=native`` build is cached per CPU kind (shared home dirs)."""
    try:
        with open("/proc/cpuinfo", "rb") as f:
            flags = next((line for line in f if line.startswith((b"flags", b"Features"))), b"")
    except OSError:
        flags = b""
    return platform.machine().encode() + flags


def _compile(cxx: str, src: Path, flags: list[str]) -> str | None:
    digest = hashlib.sha256(src.read_bytes() + " ".join(flags).encode() + _cpu_id()).hexdigest()[:16]
    out = cache_dir() / f"{src.stem}-{digest}.so"
    if out.exists():
        return str(out)
    tmp = None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
        os.close(fd)
        subprocess.run([cxx, *flags, str(src), "-o", tmp], check=True, capture_output=True, timeout=300)
        os.replace(tmp, out)
    except (OSError, subprocess.SubprocessError):
        return None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return str(out)


def build(src: Path) -> str | None:
    """Path of the compiled library of ``src``, building it if needed; None where it cannot be used."""
    return None if os.environ.get("MS_MODELS_NATIVE_KERNELS") == "1" else _build(src)


@functools.lru_cache(maxsize=None)
def _build(src: Path) -> str | None:
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        return None
    return _compile(cxx, src, FLAGS) or _compile(cxx, src, [f for f in FLAGS if f != "-fopenmp"])
