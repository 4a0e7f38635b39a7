"""Error types shared by both frameworks and the converter.

Every message is one line that names the problem, so a CLI can print ``f"error: {exc}"`` and exit 1.
"""
from __future__ import annotations

from typing import Iterable


class ZooError(Exception):
    """Base class of the errors this project raises on bad input."""


class UnknownModelError(ZooError, ValueError):
    """A model name that no registry knows."""


class CheckpointError(ZooError):
    """A file that is not a readable checkpoint, or a container without a state dict."""


class InputSizeError(ZooError, ValueError):
    """An input image size the model cannot take."""


class ConfigError(ZooError, ValueError):
    """A training config (file or ``KEY=VALUE`` override) with an unknown key, a wrong type or a bad value."""


class DataError(ZooError, ValueError):
    """Training or validation data that cannot be used: a missing folder or split, an empty class folder, val
    classes unknown to train, a class count that disagrees with the model, an unreadable image (named)."""


class NonFiniteError(ZooError, FloatingPointError):
    """A training step whose loss or gradients are not finite (the message names the step), in a run that stops
    on one (``train.skip_nonfinite`` false)."""


def _preview(names: Iterable[str], limit: int = 5) -> str:
    names = sorted(names)
    more = f" (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


class KeyMismatchError(CheckpointError):
    """A state dict whose keys or shapes do not fit the model; the lists stay available to callers."""

    def __init__(self, model: str, missing: Iterable[str] = (), unexpected: Iterable[str] = (),
                 mismatched: Iterable[tuple[str, tuple, tuple]] = ()):
        self.model = model
        self.missing = sorted(missing)
        self.unexpected = sorted(unexpected)
        self.mismatched = sorted(mismatched)
        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} missing key(s): {_preview(self.missing)}")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected key(s): {_preview(self.unexpected)}")
        if self.mismatched:
            shown = [f"{k} checkpoint {tuple(a)} vs model {tuple(b)}" for k, a, b in self.mismatched]
            parts.append(f"{len(self.mismatched)} shape mismatch(es): {_preview(shown, 3)}")
        super().__init__(f"checkpoint does not fit {model}: " + "; ".join(parts))
