"""Data-parallel training under ``msrun`` (issue 13 section 1; docs/training_distributed.md): 2 workers on
127.0.0.1, CPU (MindSpore's MCCL collectives over TCP).

- After 60 steps both ranks hold the same weights bit for bit, and they equal a single-process run on the same
  global batches in the same order within float32 reduction-order rounding; the sharded validation (uneven shards:
  11 images as 6 + 5) gives exactly the single-process top-1 of the same weights.
- A worker killed with SIGKILL makes the job exit non-zero within the cluster's node timeout instead of hanging; the
  ``last.ckpt`` it leaves is whole, and ``--resume auto`` under ``msrun`` finishes the run (batch-norm running
  statistics averaged over the ranks: every rank validates the same weights).

``msrun`` starts ``python`` from PATH: the venv's bin folder goes first. ``MS_NODE_TIMEOUT`` (the scheduler's
heartbeat timeout, 30 s by default on MindSpore 2.8) is set to 10 s here to keep the dead-worker test short.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from convert.io import read_checkpoint_raw
from ms_models.train import loop
from ms_models.train.checkpoint import read_train_checkpoint
from ms_models.train.cli import resolve_config, validate

from helpers import ROOT, write_tree

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
PROBE = str(Path(__file__).with_name("msrun_probe.py"))
SCRIPT = str(ROOT / "scripts" / "train.py")
DEMO = str(ROOT / "configs" / "demo" / "adabin_resnet20_digits.yaml")
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "GLOG_v": "3", "MS_NODE_TIMEOUT": "10"}
# VanillaNet-5 at 32 px, 0.05 M parameters, in its deploy form (no batch norm: per-rank batch statistics would make
# 2 x 2 images differ from one batch of 4); 120 train images: 30 steps of 2 per rank (of 4 in one process) an epoch
RUN = ["model.name=vanillanet_5", "model.kwargs={dims: [8, 16, 32, 64], deploy: true}", "model.num_classes=3",
       "data.image_size=32", "data.workers=1", "data.random_crop_padding=null", "data.hflip=0.5",
       "data.val_batch_size=4", "train.epochs=2", "train.eval_interval=2", "train.ema_decay=0.9", "optimizer.lr=0.05",
       "train.save_every_steps=5", "train.log_interval=10"]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return str(write_tree(tmp_path_factory.mktemp("data"), {"train": {"a": 40, "b": 40, "c": 40},
                                                            "val": {"a": 3, "b": 3, "c": 5}}, size=(40, 36)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _msrun(script: str, args: list[str], logs: Path) -> subprocess.Popen:
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / "msrun.out", "w") as out:
        return subprocess.Popen([str(BIN / "msrun"), "--worker_num=2", "--local_worker_num=2",
                                 "--master_addr=127.0.0.1", f"--master_port={_free_port()}", f"--log_dir={logs}",
                                 "--join=True", "--cluster_time_out=60", script, *args],
                                stdout=out, stderr=subprocess.STDOUT, env=ENV, start_new_session=True)


def _finished(job: subprocess.Popen, logs: Path, timeout: float = 300) -> None:
    assert job.wait(timeout=timeout) == 0, (logs / "worker_0.log").read_text()[-3000:]


def _records(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def _same_ranks(folder: Path) -> int:
    r0, r1 = np.load(folder / "rank0.npz"), np.load(folder / "rank1.npz")
    assert r0.files == r1.files
    assert [k for k in r0.files if not np.array_equal(r0[k], r1[k])] == []
    return len(r0.files)


@pytest.fixture(scope="module")
def data_parallel(images, tmp_path_factory):
    """The 2-worker run (2 images a step per rank), through the probe that also saves rank 1's weights."""
    out = tmp_path_factory.mktemp("dp") / "run"
    logs = out.parent / "logs"
    _finished(_msrun(PROBE, ["--config", DEMO, "--data-dir", images, "--output", str(out), *RUN,
                             "data.batch_size=2"], logs), logs)
    return out


def test_two_workers_hold_the_weights_of_one_process(data_parallel, images, tmp_path):
    assert _same_ranks(data_parallel) > 0          # model and EMA weights, bit for bit
    assert "data parallel over 2 processes" in (data_parallel / "train.log").read_text()
    single = tmp_path / "single"
    loop.train(resolve_config(DEMO, images, RUN + ["data.batch_size=4"]), single)
    dp, one = read_checkpoint_raw(data_parallel / "last.ckpt"), read_checkpoint_raw(single / "last.ckpt")
    assert dp.keys() == one.keys()
    assert int(dp["train_state.meta.global_step"]) == int(one["train_state.meta.global_step"]) == 60
    worst = 0.0
    for key in dp:
        if dp[key].dtype.kind == "f" and not key.startswith("train_state.meta."):
            # float32: each rank's mean over its 2 images, all-reduced and halved, against one mean over 4 images
            # summed in another order; ~1e-7 relative rounding a step, carried through 60 SGD-momentum steps
            # (measured: 8e-8 at most on weights of order 0.1-1)
            worst = max(worst, float(np.abs(dp[key].astype(np.float64) - one[key]).max()))
            np.testing.assert_allclose(dp[key], one[key], rtol=1e-5, atol=1e-6, err_msg=key)
    print(f"max |2 workers - 1 process| over weights, EMA and optimizer state after 60 steps: {worst:.2e}")
    for a, b in zip(_records(data_parallel), _records(single)):
        assert a["lr"] == b["lr"] and a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)


def test_sharded_validation_equals_one_process(data_parallel, images):
    last = _records(data_parallel)[-1]
    alone = validate("vanillanet_5", str(data_parallel / "last.ckpt"), images,
                     config=str(data_parallel / "config.yaml"), progress=False)
    assert alone["images"] == 11
    assert last["val_top1"] == alone["top1"] and last["val_top5"] == alone["top5"]      # counts: exact
    assert last["val_loss"] == pytest.approx(alone["loss"], rel=1e-6)       # float32 logits of other batchings


def test_dead_worker_fails_the_job_and_the_run_resumes(images, tmp_path):
    out, logs = tmp_path / "run", tmp_path / "logs"
    args = ["--config", DEMO, "--data-dir", images, "--output", str(out), *RUN, "data.batch_size=2",
            "model.kwargs={dims: [8, 16, 32, 64], decay_epochs: 2}"]        # batch norm, a set_epoch slope
    job = _msrun(SCRIPT, args, logs)
    deadline = time.monotonic() + 300
    while not (out / "last.ckpt").exists():          # the first step checkpoint: training is under way
        assert job.poll() is None and time.monotonic() < deadline, (logs / "worker_0.log").read_text()[-3000:]
        time.sleep(0.02)
    worker = [p for p in psutil.Process(job.pid).children(recursive=True)
              if p.environ().get("MS_ROLE") == "MS_WORKER" and p.environ().get("RANK_ID") == "1"
              and any(a.endswith("train.py") for a in p.cmdline())]
    assert len(worker) == 1
    killed = time.monotonic()
    worker[0].send_signal(signal.SIGKILL)
    assert job.wait(timeout=120) != 0
    elapsed = time.monotonic() - killed
    assert elapsed < 60, elapsed           # MS_NODE_TIMEOUT 10 s + msrun's clean-up; hangs would hit the timeout
    print(f"job exited {elapsed:.1f} s after the worker was killed")
    _, state, _ = read_train_checkpoint(out / "last.ckpt")           # whole, whatever rank 0 was doing
    assert state.world == 2 and state.global_step % 5 == 0 and state.global_step < 60

    resumed_logs = tmp_path / "logs2"
    _finished(_msrun(PROBE, [*args, "--resume", "auto"], resumed_logs), resumed_logs)
    assert [r["epoch"] for r in _records(out)] == [0, 1]
    assert f"resumed from {out / 'last.ckpt'}" in (out / "train.log").read_text()
    assert _same_ranks(out) > 0            # batch-norm statistics averaged over the ranks before validation
    assert not list(out.glob(".*partial*"))
