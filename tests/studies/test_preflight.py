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


def test_checking_the_stores_of_an_open_study_keeps_its_write_ahead_log(tmp_path):
    """Regression (a data loss seen in `micro-doe tune`, which opens its study before the run
    checks its stores): the check read the database header with open()/close(), which drops every
    SQLite lock this process holds on the file, so another program reading the study then took it
    for unused, checkpointed it and deleted the write-ahead log still being written."""
    import subprocess
    import sys

    import optuna

    from micro_doe.studies.study_storage import open_study

    spec = load_spec(write_study(tmp_path, "pretrained:spheres-32")).resolved_paths(tmp_path)
    study = open_study(spec)  # WAL mode, a pooled connection kept open
    study.enqueue_trial({"n_h": 0})
    check_before_start(spec, "study.yaml")  # the check a run makes, in this process
    reader = ("import optuna, sys; optuna.logging.set_verbosity(optuna.logging.ERROR); "
              "print(len(optuna.load_study(study_name=sys.argv[2], storage=sys.argv[1]).trials))")  # fmt: skip
    args = [sys.executable, "-c", reader, spec.storage, spec.name]
    assert subprocess.run(args, capture_output=True, text=True, check=True).stdout.strip() == "1"  # a dashboard, say
    study.enqueue_trial({"n_h": 1})  # written after that reader came and went
    assert (tmp_path / "optuna.db-wal").exists()  # the log this process writes is still the file's
    assert subprocess.run(args, capture_output=True, text=True, check=True).stdout.strip() == "2"
    assert len(optuna.load_study(study_name=spec.name, storage=spec.storage).trials) == 2
