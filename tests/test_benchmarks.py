"""Smoke test of `benchmarks/run.py --quick` on CPU, so the benchmark cannot rot.

It checks what the run writes, never how fast anything is.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
IMPLEMENTATIONS = {"ours-int", "ours-float", "torchvision-eager", "torchvision-compile"}
MODES = {"forward", "forward+backward"}
ROW_FIELDS = set(
    "impl targets mode anchors classes dtype median_ms q25_ms q75_ms samples peak_extra_bytes min_bytes gbps "
    "copy_gbps pct_of_copy speedup_vs compile_s loss device device_name threads torch cuda git_commit date "
    "threading_env".split()
)


def extension_is_built() -> bool:
    probe = [sys.executable, "-c", "import focal_loss_ext._C"]
    return subprocess.run(probe, cwd=REPO_ROOT, capture_output=True).returncode == 0


@pytest.mark.slow
def test_quick_run_writes_rows_table_and_plot(tmp_path):
    if not extension_is_built():
        pytest.skip("focal_loss_ext._C is not built")
    command = [sys.executable, "benchmarks/run.py", "--quick", "--device", "cpu", "--out", str(tmp_path)]
    # Spinning OpenMP threads on cores shared with other jobs make a run several times slower.
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    run = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]

    (jsonl,) = tmp_path.glob("cpu-*-quick.jsonl")
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert {(row["impl"], row["mode"]) for row in rows} >= {(i, m) for i in IMPLEMENTATIONS for m in MODES}
    for row in rows:
        assert ROW_FIELDS <= row.keys(), ROW_FIELDS - row.keys()
        assert row["device"] == "cpu" and row["threads"] == 2 and row["dtype"] == "float32"
        assert 0 < row["q25_ms"] <= row["median_ms"] <= row["q75_ms"]
        assert row["samples"] >= 5 and row["gbps"] > 0 and row["copy_gbps"] > 0
        assert (row["compile_s"] is not None) == (row["impl"] == "torchvision-compile")
        if row["impl"].startswith("ours"):
            assert set(row["speedup_vs"]) >= {"torchvision-eager", "torchvision-compile"}
        if row["mode"] == "forward+backward" and row["peak_extra_bytes"] is not None:
            # The logits' gradient alone is a logits-sized buffer.
            assert row["peak_extra_bytes"] >= row["anchors"] * row["classes"] * 4

    assert jsonl.with_suffix(".png").read_bytes().startswith(b"\x89PNG")
    assert "| mode |" in jsonl.with_suffix(".md").read_text()
    assert run.stdout.rstrip().splitlines()[-1].startswith("| forward+backward | float32 |")
