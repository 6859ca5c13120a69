"""Checks before a study creates anything: here, stores that would vanish with a Ray job."""

from __future__ import annotations

import pytest
from study_fixtures import write_study

from micro_doe.studies.preflight import SpecError, check_before_start
from micro_doe.studies.study_yaml import load_spec


def test_stores_inside_a_ray_job_working_dir_copy_are_refused(tmp_path, monkeypatch):
    job = tmp_path / "session_x" / "runtime_resources" / "working_dir_files" / "_ray_pkg_abc"
    job.mkdir(parents=True)
    monkeypatch.chdir(job)
    outside = tmp_path / "kept"
    relative = write_study(job, "pretrained:spheres-32", storage="sqlite:///optuna.db",
                           tracking=f"sqlite:///{outside}/mlflow.db", artifacts=str(outside / "artifacts"))  # fmt: skip
    spec = load_spec(relative).resolved_paths(job)
    with pytest.raises(SpecError, match=r"storage: .*optuna\.db lies in the copy Ray made of `ray job submit"):
        check_before_start(spec, relative)
    assert sorted(p.name for p in job.iterdir()) == ["study.yaml"]  # nothing created
    kept = load_spec(write_study(job, "pretrained:spheres-32", storage=f"sqlite:///{outside}/optuna.db",
                                 tracking=f"sqlite:///{outside}/mlflow.db", artifacts=str(outside / "artifacts")))
    check_before_start(kept.resolved_paths(job), "study.yaml")  # absolute paths outside the copy: fine
