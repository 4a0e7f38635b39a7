#!/usr/bin/env python
"""Train a registered model in MindSpore from a YAML recipe (``ms_models.train.cli.train_main``).

    python scripts/train.py --config FILE [--data-dir DIR] [--output DIR] [--resume PATH|auto] [KEY=VALUE ...]
"""
import contextlib
import sys

with contextlib.suppress(ImportError):
    import torch  # noqa: F401  (before mindspore: train.export_torch converts in this process)

from ms_models.train.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main())
