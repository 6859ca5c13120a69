"""A small study.yaml for end-to-end study tests (several test modules write one)."""

from __future__ import annotations

import yaml


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
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)
