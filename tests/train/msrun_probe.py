"""``scripts/train.py`` as ``msrun`` runs it in tests/train/test_distributed.py, plus one thing: every rank saves the
weights it validates (the model's and the EMA's, after the epoch-end averaging) to ``OUTPUT/rank<r>.npz``. Only rank
0 writes the run's files, so without this a test could not see what rank 1 holds."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from ms_models.train import loop
from ms_models.train.cli import train_main

_predictor = loop.ms_predictor


def _saving_predictor(model, mode=None):
    from mindspore.communication import get_rank
    path = Path(sys.argv[sys.argv.index("--output") + 1]) / f"rank{get_rank()}.npz"
    saved = dict(np.load(path)) if path.exists() else {}
    saved.update({p.name: p.asnumpy() for p in model.get_parameters()})
    np.savez(path, **saved)
    return _predictor(model, mode)


if __name__ == "__main__":
    loop.ms_predictor = _saving_predictor
    sys.exit(train_main())
