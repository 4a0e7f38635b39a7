"""The project's C++ kernels (``native/csrc/*.cc``) and the code that builds them into shared libraries on first use.

Framework-free: ``ms_models`` loads the libraries as MindSpore AOT custom ops (``ms_models/layers/kernels.py``,
``ms_models/layers/adder.py``), ``torch_ref`` through ctypes (``torch_ref/layers/adder.py``).

The system C++ compiler (``$CXX``, ``g++`` or ``c++``) builds ``-O3 -march=native`` with OpenMP into a per-user
cache (``$XDG_CACHE_HOME/ms_models``), one file per source, flags and CPU kind. :func:`build` returns None --
callers then use the frameworks' own ops -- when ``MS_MODELS_NATIVE_KERNELS=0`` switches the kernels off
(silently: that is a choice), or, with one :class:`NativeKernelWarning` naming the reason, when there is no
compiler or the build fails (it is retried with OpenMP off first, for compilers without it).
"""
from __future__ import annotations

import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

__all__ = ["build", "enabled", "source", "cache_dir", "NativeKernelWarning", "ENV"]

ENV = "MS_MODELS_NATIVE_KERNELS"       # "0" (or off/false/no) switches the compiled kernels off; default on
FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c++17"]
CSRC = Path(__file__).parent / "csrc"


class NativeKernelWarning(RuntimeWarning):
    """A compiled kernel could not be built; the framework's own (slower) ops run instead."""


def enabled() -> bool:
    """Whether the compiled kernels may be used (``MS_MODELS_NATIVE_KERNELS`` is not 0/off/false/no)."""
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "off", "false", "no")


def source(name: str) -> Path:
    """The path of kernel source ``name`` (``'adder'``, ``'dwconv'``)."""
    return CSRC / f"{name}.cc"


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


def _compile(cxx: str, src: Path, flags: list[str]) -> tuple[str | None, str]:
    """(library path, "") or (None, the reason it failed)."""
    digest = hashlib.sha256(src.read_bytes() + " ".join(flags).encode() + _cpu_id()).hexdigest()[:16]
    out = cache_dir() / f"{src.stem}-{digest}.so"
    if out.exists():
        return str(out), ""
    tmp = None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
        os.close(fd)
        subprocess.run([cxx, *flags, str(src), "-o", tmp], check=True, capture_output=True, timeout=300)
        os.replace(tmp, out)
    except subprocess.CalledProcessError as e:
        lines = (e.stderr or b"").decode(errors="replace").strip().splitlines()
        return None, f"{Path(cxx).name} failed: {lines[0] if lines else 'exit ' + str(e.returncode)}"
    except (OSError, subprocess.SubprocessError) as e:
        return None, f"{type(e).__name__}: {e}"
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return str(out), ""


def build(src: Path) -> str | None:
    """Path of the compiled library of ``src``, building it if needed; None where it cannot be used."""
    return _build(Path(src)) if enabled() else None


@functools.lru_cache(maxsize=None)
def _build(src: Path) -> str | None:
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        reason = "no C++ compiler ($CXX, g++ or c++)"
    else:
        path, reason = _compile(cxx, src, FLAGS)
        if path is None:
            path, _ = _compile(cxx, src, [f for f in FLAGS if f != "-fopenmp"])
        if path is not None:
            return path
    warnings.warn(f"native kernel {src.name} not built ({reason}); using the framework's own ops "
                  f"({ENV}=0 silences this)", NativeKernelWarning, stacklevel=3)
    return None
