"""benchmarks/gpu_check.py, where no GPU is lent: the CPU side runs, the file is written, exit 3."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: run benchmarks/gpu_check.sh itself")
def test_the_gpu_check_runs_its_cpu_side_and_says_the_gpu_is_missing(tmp_path):
    out = tmp_path / "gpu-check.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 3, done.stderr[-2000:]
    assert "cuda: not available here" in done.stderr
    report = json.loads(out.read_text())
    assert report["available"] is False and report["speed"]["cpu fp32 passes/s"] > 0 and report["checks"] == {}
