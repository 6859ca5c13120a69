"""A small study.yaml for end-to-end study tests (several test modules write one)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import yaml

_EMPTY_STORE: list[Path] = []  # this test process's empty MLflow store, as MLflow made it


def empty_tracking_store(path: str | Path) -> None:
    """Put an empty MLflow store (sqlite) at ``path`` unless something is there. MLflow makes one
    per test process, running its schema migrations (2–5 s on 2 cores); each study gets a copy."""
    path = Path(path)
    if path.exists():
        return
    if not _EMPTY_STORE:
        from mlflow.tracking import MlflowClient

        made = Path(tempfile.mkdtemp(prefix="micro-doe-empty-store-")) / "mlflow.db"
        MlflowClient(f"sqlite:///{made}").search_experiments()  # creates and migrates it
        _EMPTY_STORE.append(made)
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_EMPTY_STORE[0], path)


def write_study(tmp_path, model, **overrides) -> str:  # type: ignore[no-untyped-def]
    spec = {
        "name": "e2e",
        "generator": {"kind": "micro3diff", "model": str(model)},
        "search": {"n_h": {"int": [0, 1]}, "steps": {"int": [2, 4]}},
        "samples_per_trial": 2,
        "objectives": [{"name": "s2_error"}, {"name": "seconds_per_volume"}],
        "constraints": [{"metric": "vf_error", "max": 0.5}],
        "sampler": {"kind": "tpe", "seed": 0, "initial_design": {"kind": "sobol", "n": 2}},
        "budget": {"n_trials": 3},
        "storage": f"sqlite:///{tmp_path}/optuna.db",
        "tracking": f"sqlite:///{tmp_path}/mlflow.db",
        "artifacts": f"{tmp_path}/artifacts",
    } | overrides
    if "tracking" not in overrides:
        empty_tracking_store(tmp_path / "mlflow.db")
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)
