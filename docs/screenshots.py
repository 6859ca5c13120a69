"""Screenshots of the review UIs for the docs (docs/how-to/review-a-study.md), with headless Chromium (Debian's `chromium`).

    python docs/screenshots.py [--runs DIR] [--study quickstart] [--n-trials 6]

Runs a small study (the bundled ``quickstart`` unless told otherwise) into ``--runs`` (a
temporary folder by default), starts optuna-dashboard and ``mlflow server`` on 127.0.0.1,
and saves what a reviewer opens first:

- ``docs/ui-dashboard-study.png``: the dashboard's study page (history, Pareto front);
- ``docs/ui-dashboard-trial.png``: its trial list with one trial's page (values, constraint
  and feasibility attributes, the montage);
- ``docs/ui-mlflow-runs.png``: the MLflow experiment's trials view (every trial run, best first);
- ``docs/ui-mlflow-run.png``: the trial's MLflow run (its description, parameters and metrics);
- ``docs/ui-mlflow-compare.png``: MLflow's comparison of the Pareto trials' runs.

Re-run it whenever a UI changes (a new optuna-dashboard or MLflow, new attributes).
Needs ``chromium`` on the PATH (``apt-get install chromium``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

DOCS = Path(__file__).resolve().parent
WINDOW = "1440,1000"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def wait_for(url: str, process: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited: {process.args}")
        try:
            get(url)
            return
        except Exception:  # noqa: BLE001 — not up yet
            time.sleep(0.5)
    raise SystemExit(f"no answer from {url}")


def shoot(chromium: str, url: str, out: Path, window: str = WINDOW) -> None:
    """One full-window screenshot after the page's scripts had 12 s of virtual time."""
    subprocess.run([chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--window-size={window}", "--virtual-time-budget=12000", f"--screenshot={out}", url],
                   check=True, capture_output=True, timeout=120)
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, help="study folder (default: a fresh temporary one)")
    parser.add_argument("--study", default="quickstart")
    parser.add_argument("--n-trials", type=int, default=8)
    args = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if chromium is None:
        raise SystemExit("needs chromium on the PATH (apt-get install chromium)")
    runs = args.runs or Path(tempfile.mkdtemp(prefix="micro-doe-screens-"))
    runs.mkdir(parents=True, exist_ok=True)
    storage, tracking = f"sqlite:///{runs}/optuna.db", f"sqlite:///{runs}/mlflow.db"

    from micro_doe.studies.runner import Study
    from micro_doe.studies.study_yaml import load_spec
    from micro_doe.tracking.registry import ML_LAYOUT, TRIALS_VIEW_QUERY

    spec = load_spec(args.study, {"storage": storage, "tracking": tracking, "artifacts": str(runs / "artifacts")})
    result = Study(spec).run(n_trials=args.n_trials)
    name = result.name

    dash_port, mlflow_port = free_port(), free_port()
    from micro_doe.studies.dashboard import dashboard_command

    dash = subprocess.Popen(dashboard_command(storage, runs / "artifacts" / "optuna", port=dash_port),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    mlf = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", tracking,
                            "--host", "127.0.0.1", "--port", str(mlflow_port), "--workers", "1"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        dash_url, mlflow_url = f"http://127.0.0.1:{dash_port}", f"http://127.0.0.1:{mlflow_port}"
        wait_for(f"{dash_url}/api/studies", dash)
        api = f"{mlflow_url}/api/2.0/mlflow"
        wait_for(f"{api}/experiments/get-by-name?experiment_name={name}", mlf)
        study_id = next(s["study_id"] for s in get(f"{dash_url}/api/studies")["study_summaries"] if s["study_name"] == name)
        shoot(chromium, f"{dash_url}/dashboard/studies/{study_id}", DOCS / "ui-dashboard-study.png")
        trial = (result.best_trials or sorted(result.completed, key=lambda t: t.violation))[0].number
        shoot(chromium, f"{dash_url}/dashboard/studies/{study_id}/trials?numbers={trial}", DOCS / "ui-dashboard-trial.png",
              "1440,1250")
        experiment = get(f"{api}/experiments/get-by-name?experiment_name={name}")["experiment"]["experiment_id"]
        shoot(chromium, f"{mlflow_url}/#/experiments/{experiment}/runs?{TRIALS_VIEW_QUERY}", DOCS / "ui-mlflow-runs.png")
        best = get(f"{api}/runs/search", {"experiment_ids": [experiment], "max_results": 1,
                                          "filter": f"tags.optuna_trial_number = '{trial}'"})["runs"][0]["info"]["run_id"]
        shoot(chromium, f"{mlflow_url}/#/experiments/{experiment}/runs/{best}?{ML_LAYOUT}", DOCS / "ui-mlflow-run.png")
        runs_found = get(f"{api}/runs/search", {"experiment_ids": [experiment], "max_results": 200,
                                               "filter": "tags.`micro_doe.pareto` = 'true'"}).get("runs", [])
        if not runs_found:
            print("no feasible Pareto trial: ui-mlflow-compare.png left as it was (run more trials)")
            return
        ids = json.dumps([r["info"]["run_id"] for r in runs_found])
        shoot(chromium, f"{mlflow_url}/#/compare-runs?runs={urllib.request.quote(ids)}&experiments="
              f"{urllib.request.quote(json.dumps([experiment]))}&{ML_LAYOUT}", DOCS / "ui-mlflow-compare.png")
    finally:
        for process in (dash, mlf):
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()


if __name__ == "__main__":
    main()
