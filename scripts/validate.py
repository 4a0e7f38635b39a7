#!/usr/bin/env python
"""Top-1 / top-5 / loss of a checkpoint on a val set, in MindSpore or torch (``ms_models.train.cli.validate_main``).

    python scripts/validate.py --model NAME --checkpoint FILE --data-dir DIR [--framework mindspore|torch]
                               [--batch-size N] [--num-classes N] [--config FILE] [--image-size N] [--crop-pct F]
The last line printed is one JSON object: {"top1": ..., "top5": ..., "loss": ..., "images": N}.
"""
import contextlib
import sys

with contextlib.suppress(ImportError):
    import torch  # noqa: F401  (before mindspore: libgomp clash otherwise)

from ms_models.train.cli import validate_main

if __name__ == "__main__":
    sys.exit(validate_main())
