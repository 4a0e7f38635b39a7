"""``scripts/benchmark.py``'s method (issue 19): interleaved rounds, medians with their spread, per-round ratios,
torch timed alone first, the load average at the start and the end. Not a speed test: the timings are only
checked for their bookkeeping."""
from __future__ import annotations

import json
import re
import sys
import time

import pytest

from tests.helpers import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import benchmark  # noqa: E402


def test_interleaved_rounds_call_every_runtime_once_per_round_in_order():
    calls = []
    fns = {k: (lambda k=k: calls.append(k)) for k in "ABC"}
    times = benchmark.interleaved_times(fns, repeats=3, warmup=2)
    assert calls == list("ABC") * 5                      # 2 untimed warmup rounds, then 3 timed ones: ABCABC...
    assert {k: len(v) for k, v in times.items()} == {"A": 3, "B": 3, "C": 3}


def test_interleaved_times_are_the_calls_own():
    fns = {"slow": lambda: time.sleep(0.02), "fast": lambda: None}
    times = benchmark.interleaved_times(fns, repeats=3, warmup=0)
    assert all(t >= 0.02 for t in times["slow"])
    assert all(t < 0.01 for t in times["fast"])


def test_summarize_gives_medians_spreads_and_per_round_ratios():
    times = {"ms_graph": [3.0, 1.0, 2.0], "torch": [1.0, 2.0, 4.0]}
    row = benchmark.summarize({"torch_alone": 1.0}, times)
    assert row["ms_graph"] == 2.0 and row["torch"] == 2.0
    assert row["ms_graph_spread"] == pytest.approx(1.0)         # (3 - 1) / 2
    assert row["torch_spread"] == pytest.approx(1.5)            # (4 - 1) / 2
    # per-round ratios 3, 0.5, 0.5: the median of the ratios (0.5), not the ratio of the medians (1.0)
    assert row["ms_over_torch"] == 0.5
    assert row["ms_over_torch_range"] == [0.5, 3.0]
    assert row["times"] == times
    assert row["ms_over_torch_alone"] == 2.0                    # the MindSpore median over torch alone
    assert benchmark.fmt_time(row, "ms_graph").strip() == "2000.0ms(100%)"
    assert benchmark.fmt_ratio(row).strip() == "0.50 (0.50-3.00)"


@pytest.mark.slow   # a benchmark row in its own process
def test_inference_table_on_a_tiny_model(monkeypatch, capsys, tmp_path):
    """One row end to end (its own process): the table prints each runtime's spread, the ratio's range, torch
    alone, and the load average at the start and the end; the JSON row holds the interleaved raw times."""
    monkeypatch.setattr(benchmark, "matmul_peak", lambda threads: 1e11)     # the peak's matmuls are not tested here
    out = tmp_path / "rows.json"
    assert benchmark.main(["--models", "vanillanet_5", "--forms", "train", "--batch", "1", "--size", "32",
                           "--repeats", "3", "--warmup", "1", "--no-ort", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert re.search(r"load average \d+\.\d\d at the start", text)
    assert re.search(r"load average \d+\.\d\d at the end", text)
    row_line = next(line for line in text.splitlines() if line.startswith("vanillanet_5"))
    assert len(re.findall(r"\d+\.\dms\(\d+%\)", row_line)) == 2          # ms graph and torch, each with its spread
    (row,) = json.loads(out.read_text())
    assert set(row["times"]) == {"torch", "ms_graph"}
    assert all(len(v) == 3 for v in row["times"].values())
    ratios = sorted(m / t for m, t in zip(row["times"]["ms_graph"], row["times"]["torch"]))
    assert row["ms_over_torch"] == pytest.approx(ratios[1])
    assert f"{ratios[1]:.2f} ({ratios[0]:.2f}-{ratios[2]:.2f})" in row_line
    assert row["torch_alone"] > 0 and row["ms_pynative"] > 0
    assert row["ms_over_torch_alone"] == pytest.approx(row["ms_graph"] / row["torch_alone"])
    assert len(row["load"]) == 2
