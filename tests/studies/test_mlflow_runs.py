"""StudyTracker against a real MLflow sqlite store, checked through MLflow's own API."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

PNG = b"\x89PNG\r\n\x1a\n"
SPEC = {
    "name": "quick",
    "generator": {"kind": "micro3diff", "model": "pretrained:spheres-32", "size": 16},
    "search": {"n_h": {"int": [0, 4]}, "steps": {"int": [2, 8], "log": True}},
    "objectives": [{"name": "s2_error", "direction": "minimize"}],
    "sampler": {"kind": "tpe", "seed": 0},
    "budget": {"n_trials": 2},
}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One MLflow sqlite store per test session (creating its tables takes seconds)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        mp.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        root = tmp_path_factory.getbasetemp() / "mlflow-store"
        yield f"sqlite:///{root / 'mlflow.db'}", root


@pytest.fixture(scope="module")
def trial_volumes(tiny_bundle):
    from micro_doe.platform.micro3diff.generator import Micro3DiffGenerator, SamplingSettings

    generator = Micro3DiffGenerator(tiny_bundle, device="cpu")
    return generator.sample(2, SamplingSettings(n_h=0, steps=2)), generator.bundle.reference


def test_invocation_and_trials_are_logged(store, trial_volumes, tmp_path, monkeypatch):
    import mlflow
    from mlflow import MlflowClient

    from micro_doe.platform.volumes import read_volume
    from micro_doe.studies.mlflow_runs import StudyTracker

    uri, root = store
    volumes, reference = trial_volumes
    tracker = StudyTracker(uri, "track-e2e", root / "artifacts")
    hint = tracker.run_url_hint
    assert "--host 127.0.0.1" in hint and tracker.tracking_uri in hint
    assert hint.endswith(f"/#/experiments/{tracker.experiment_id}/runs?viewStateShareKey=micro-doe-trials&workflowType=machine_learning")
    parent = tracker.start_invocation(SPEC, tags={"study": "quick"})
    predicted = [{"phi": 0.41}, {"phi": 0.52}]
    ok = tracker.log_trial(
        trial_number=0,
        params={"n_h": 0, "steps": 2},
        values={"s2_error": 12.5},
        metrics={"lineal_path_error": 20.0, "vf_error": 0.01, "seconds_per_volume": 0.2, "label": "not a number"},
        volumes=volumes,
        reference=reference,
        predicted=predicted,
        state="COMPLETE",
        seconds=0.4,
    )
    bad = tracker.log_trial(
        trial_number=1,
        params={"n_h": 4, "steps": 8},
        values={},
        metrics={},
        volumes=[],
        reference=reference,
        predicted=[],
        state="FAIL",
        reason="generator OOM",
    )
    tracker.finish_invocation(summary={"n_complete": 1, "best_trial": "0"})

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracker.tracking_uri)
    top = mlflow.search_runs(experiment_names=["track-e2e"], filter_string=f"attributes.run_id = '{parent}'")
    assert len(top) == 1
    row = top.iloc[0]
    assert row["status"] == "FINISHED" and row["tags.study"] == "quick"
    assert row["params.search.n_h.int"] == "[0, 4]" and row["params.objectives.0.name"] == "s2_error"
    assert row["params.budget.n_trials"] == "2" and row["metrics.n_complete"] == 1.0

    children = mlflow.search_runs(
        experiment_names=["track-e2e"],
        filter_string=f"tags.mlflow.parentRunId = '{parent}'",
        order_by=["attributes.start_time ASC"],
    )
    assert list(children["run_id"]) == [ok, bad]
    first, second = children.iloc[0], children.iloc[1]
    assert first["status"] == "FINISHED" and first["tags.mlflow.runName"] == "trial-0"
    assert first["tags.optuna_trial_number"] == "0" and first["params.steps"] == "2"
    assert first["metrics.s2_error"] == 12.5 and first["metrics.lineal_path_error"] == 20.0
    assert first["metrics.trial_seconds"] == pytest.approx(0.4)
    assert "metrics.label" not in children.columns
    assert second["status"] == "FAILED" and second["tags.reason"] == "generator OOM"
    assert second["tags.optuna_trial_number"] == "1" and second["params.n_h"] == "4"

    client = MlflowClient(tracker.tracking_uri)
    names = {a.path for a in client.list_artifacts(ok)} | {a.path for a in client.list_artifacts(ok, "volumes")}
    assert {"montage.png", "curves.png", "predicted.json", "volumes/sample-0.nc", "volumes/sample-1.nc"} <= names
    assert not any(k.startswith("tags.warning.") and v for k, v in first.items() if isinstance(v, str))
    back = read_volume(client.download_artifacts(ok, "volumes/sample-0.nc", str(tmp_path)))
    xr.testing.assert_equal(back, volumes[0])
    assert back.dtype == np.int8 and back.attrs["seed"] == volumes[0].attrs["seed"]
    for png in ("montage.png", "curves.png"):
        assert Path(client.download_artifacts(ok, png, str(tmp_path))).read_bytes()[:8] == PNG
    assert json.loads(Path(client.download_artifacts(ok, "predicted.json", str(tmp_path))).read_text()) == predicted
    assert Path(client.download_artifacts(bad, "reason.txt", str(tmp_path))).read_text().strip() == "generator OOM"
    assert "predicted.json" not in {a.path for a in client.list_artifacts(bad)}  # it predicted nothing
    from micro_doe.studies.mlflow_runs import flatten_params

    made = flatten_params(json.loads(volumes[0].attrs["generator_params"]))  # as MLflow params are written
    logged = client.get_run(ok).data.params
    assert re.fullmatch(r"[0-9a-f]{16}", logged["model_sha256"]) and "setting.precision" in logged
    for key, value in made.items():  # enough to sample the volumes again: the model, its hash, every setting
        if key in ("model", "model_sha256"):
            assert logged[key] == value
        elif key not in ("seconds", "target_fractions"):
            assert logged[f"setting.{key}"] == value, key
    assert json.loads(Path(client.download_artifacts(parent, "study.json", str(tmp_path))).read_text()) == SPEC


def test_artifact_failure_is_a_warning_not_a_crash(store):
    from mlflow import MlflowClient

    from micro_doe.studies.mlflow_runs import StudyTracker

    uri, root = store
    tracker = StudyTracker(uri, "track-robust", root / "artifacts")
    floats = xr.DataArray(np.zeros((4, 4, 4)), dims=("z", "y", "x"))  # not int8 labels: NetCDF export refuses
    run_id = tracker.log_trial(
        trial_number=3, params={}, values={"s2_error": float("nan")}, metrics={}, volumes=[floats],
        reference=None, predicted=[{"x": np.float32(1.5)}], state="COMPLETE",
    )
    run = MlflowClient(tracker.tracking_uri).get_run(run_id)
    assert run.info.status == "FINISHED"
    assert "int8" in run.data.tags["warning.sample-0.nc"]
    assert "mlflow.parentRunId" not in run.data.tags  # no invocation open: a top-level run
    with pytest.raises(ValueError, match="state"):
        tracker.log_trial(trial_number=4, params={}, values={}, metrics={}, volumes=[], reference=None,
                          predicted=[], state="WEIRD")


def test_fail_stale_runs_spares_every_driver_with_a_live_lease(store):
    import time

    import optuna
    from mlflow import MlflowClient

    from micro_doe.studies.mlflow_runs import DRIVER_TAG, StudyTracker
    from micro_doe.studies.study_storage import LEASE_PREFIX, acquire_lease, live_drivers

    uri, root = store
    study = optuna.create_study()  # the leases live in the study's storage, as in a real run
    dead = StudyTracker(uri, "track-stale", root / "artifacts", driver="dead-driver")
    left_running = dead.start_invocation({"name": "x"})  # its driver "dies": never finished, no lease
    tracker = StudyTracker(uri, "track-stale", root / "artifacts", driver="this-driver")
    acquire_lease(study, "this-driver")
    client = MlflowClient(tracker.tracking_uri)
    # a driver on another host, its heartbeat fresh: alive, though no pid here can say so
    fresh = {"host": "elsewhere", "pid": 1, "heartbeat": time.time()}
    study._storage.set_study_system_attr(study._study_id, LEASE_PREFIX + "other-host", fresh)
    other_host = client.create_run(tracker.experiment_id, tags={DRIVER_TAG: "other-host"}).info.run_id
    old = fresh | {"heartbeat": time.time() - 3600}  # another host's driver that stopped renewing
    study._storage.set_study_system_attr(study._study_id, LEASE_PREFIX + "gone-host", old)
    gone_host = client.create_run(tracker.experiment_id, tags={DRIVER_TAG: "gone-host"}).info.run_id
    mine = tracker.start_invocation({"name": "x"})
    assert tracker.driver == "this-driver" and client.get_run(mine).data.tags[DRIVER_TAG] == "this-driver"

    assert live_drivers(study) == {"this-driver", "other-host"}
    assert tracker.fail_stale_runs(live_drivers(study)) == 2
    for run_id in (left_running, gone_host):
        run = client.get_run(run_id)
        assert run.info.status == "FAILED" and run.data.tags["reason"] == "driver died"
    assert client.get_run(other_host).info.status == "RUNNING"  # another host's live driver keeps its run
    assert client.get_run(mine).info.status == "RUNNING"
    tracker.finish_invocation()
    client.set_terminated(other_host, "KILLED")
    assert client.get_run(mine).info.status == "FINISHED"


def test_the_parent_run_tells_what_the_study_found_and_trials_keep_their_real_times(store, tmp_path):
    import time

    from mlflow import MlflowClient

    from micro_doe.studies.mlflow_runs import StudyTracker

    uri, root = store
    tracker = StudyTracker(uri, "outcome", root / "artifacts")
    parent = tracker.start_invocation(SPEC)
    started = time.time() - 60.0  # a trial that started a minute before it was logged, and took 12 s
    runs = {}
    for number, values in ((0, [1.0, 5.0]), (1, [2.0, 1.0]), (2, [3.0, 3.0]), (3, [0.5, 0.5])):
        runs[number] = tracker.log_trial(trial_number=number, params={"n_h": number}, values=dict(zip("ab", values)),
                                         metrics={}, volumes=[], reference=None, predicted=[], state="COMPLETE",
                                         seconds=12.0, started_at=started)
    rows = [{"number": n, "state": "COMPLETE", "values": v, "params": {"n_h": n}, "feasible": n != 3, "pareto": n in (0, 1)}
            for n, v in ((0, [1.0, 5.0]), (1, [2.0, 1.0]), (2, [3.0, 3.0]), (3, [0.5, 0.5]))]
    rows.append({"number": 4, "state": "FAIL", "values": None, "params": {"n_h": 4}, "feasible": False, "pareto": False})
    summary = tracker.log_outcome(rows, ["a", "b"], ["minimize", "minimize"])
    tracker.finish_invocation(summary=summary)

    assert summary == {"trials_complete": 4, "trials_feasible": 3, "trials_failed": 1, "trials_pruned": 0, "trials_pareto": 2,
                       "best_a": 1.0, "best_b": 1.0}  # the infeasible trial 3 is never "best"
    client = MlflowClient(tracker.tracking_uri)
    info = client.get_run(runs[0]).info
    assert info.start_time == int(1000 * started) and info.end_time == int(1000 * (started + 12.0))
    assert {n: client.get_run(r).data.tags["micro_doe.pareto"] for n, r in runs.items()} == {
        0: "true", 1: "true", 2: "false", 3: "false"}
    table = Path(client.download_artifacts(parent, "pareto.csv", str(tmp_path))).read_text().splitlines()
    assert table == ["trial,a,b,n_h", "0,1,5,0", "1,2,1,1"]
    assert Path(client.download_artifacts(parent, "pareto.png", str(tmp_path))).read_bytes()[:8] == PNG
    assert client.get_run(parent).data.metrics["trials_pareto"] == 2
