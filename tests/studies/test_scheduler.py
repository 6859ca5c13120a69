"""The scheduler with the in-process executor (no Ray): the same trials as on Ray, pipelined
asks, failures that do not stop the study, pruning in order, and the notebook API (a mapping,
in-memory storage, no MLflow)."""

from __future__ import annotations

import optuna
import pytest
import ray
import yaml
from optuna.trial import TrialState
from study_fixtures import write_study

import micro_doe as md
from micro_doe.studies import trial_attrs as attrs
from micro_doe.studies.runner import Study

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(autouse=True)
def quiet_env(monkeypatch):
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")


def spec_of(tmp_path, model, **changes) -> dict:  # type: ignore[no-untyped-def]
    """The end-to-end study as a mapping, in this process's memory and without MLflow."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    with open(write_study(tmp_path, model, tracking=None)) as f:  # no MLflow store to copy
        spec = yaml.safe_load(f)
    return spec | {"storage": "memory", "tracking": None, "sampler": {"kind": "random", "seed": 0}} | changes


@md.objective(direction="minimize")
def denoising_steps(sample: md.Sample) -> float:
    """The denoising steps of the trial: an objective that reads the parameters alone."""
    return float(sample.params["steps"])


@md.objective(direction="minimize")
def refuses_three_steps(sample: md.Sample) -> float:
    if sample.params["steps"] == 3:
        raise ValueError("three steps are refused")
    return float(sample.params["steps"])


def test_the_local_executor_runs_the_same_trials_as_ray(tmp_path, tiny_bundle):
    """Same parameters and seeds give the same volumes: the same S2 error, trial by trial."""
    ray.shutdown()
    path = write_study(tmp_path, tiny_bundle, sampler={"kind": "random", "seed": 0})
    on_ray = Study(path).run()
    ray.shutdown()
    local = Study(spec_of(tmp_path / "local", tiny_bundle, name="e2e-local"), executor="local").run()
    assert not ray.is_initialized()  # no Ray was started for it
    assert len(local.completed) == len(on_ray.completed) == 3
    for a, b in zip(sorted(on_ray.completed, key=lambda t: t.number), sorted(local.completed, key=lambda t: t.number)):
        assert a.params == b.params and a.values[0] == pytest.approx(b.values[0], rel=1e-6)


def test_a_notebook_study_runs_in_memory_without_ray_or_mlflow(tmp_path, tiny_bundle, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = spec_of(tmp_path, tiny_bundle, budget={"n_trials": 2}, artifacts=str(tmp_path / "pictures"))
    study = md.Study(spec, objectives=[denoising_steps, "s2_error"], executor="local")
    result = study.run()
    assert result.objective_names == ["denoising_steps", "s2_error"] and len(result.completed) == 2
    assert all(t.values[0] == t.params["steps"] for t in result.completed)
    assert not (tmp_path / "micro-doe-runs").exists() and not list(tmp_path.glob("*.db"))  # nothing but the pictures
    assert len(list((tmp_path / "pictures" / "montages").glob("*.png"))) == 2
    assert "no MLflow" in result.mlflow_command()
    # The same study object resumes from memory: two more trials, four in all.
    assert len(study.run(n_trials=4).completed) == 4


def test_pictures_false_draws_no_montage_or_curves(tmp_path, tiny_bundle):
    spec = spec_of(tmp_path, tiny_bundle, budget={"n_trials": 2}, pictures=False, name="no-pictures",
                   tracking=f"sqlite:///{tmp_path}/mlflow.db", artifacts=str(tmp_path / "art"))
    result = Study(spec, executor="local").run()
    assert len(result.completed) == 2
    files = [p.name for p in (tmp_path / "art").rglob("*") if p.is_file()]
    assert "sample-0.nc" in files  # the volumes are still logged
    assert not [f for f in files if f.endswith(".png") and f != "pareto.png"]  # no montage, no curves


def test_a_failing_trial_is_recorded_and_the_study_goes_on(tmp_path, tiny_bundle):
    spec = spec_of(tmp_path, tiny_bundle, constraints=[], budget={"n_trials": 6}, search={"steps": {"int": [2, 4]}},
                   fixed={"n_h": 0}, name="failing")
    result = Study(spec, objectives=[refuses_three_steps], executor="local").run()
    assert len(result.trials) == 6
    failed = [t for t in result.trials if t.params["steps"] == 3]
    assert failed and all(t.state == "FAIL" and "three steps are refused" in t.reason for t in failed)
    assert all(t.state == "COMPLETE" for t in result.trials if t.params["steps"] != 3)


def test_pipelining_asks_the_next_trial_before_the_last_is_told(tmp_path, tiny_bundle):
    """With one generator, trial k + 1 is asked as soon as trial k's volumes are back, before
    trial k is evaluated and told; without pipelining, only after."""
    for pipelining in (True, False):
        name = f"pipelined-{pipelining}".lower()
        spec = spec_of(tmp_path, tiny_bundle, name=name, constraints=[], budget={"n_trials": 3})
        Study(spec, executor="local").run(pipelining=pipelining)
        trials = sorted(optuna.load_study(study_name=name, storage=md_memory()).trials, key=lambda t: t.number)
        overlapped = [trials[k + 1].datetime_start < trials[k].datetime_complete for k in range(2)]
        assert overlapped == [pipelining, pipelining]


def test_pruning_in_order_with_the_local_executor(tmp_path, tiny_bundle):
    """A median pruner in order: trial k + 1 is asked once trials 0 … k − 1 are told and before
    trial k is; the pruned trials keep what they measured."""
    spec = spec_of(tmp_path, tiny_bundle, name="pruned", constraints=[], samples_per_trial=3, budget={"n_trials": 8},
                   search={"steps": {"int": [2, 12]}}, fixed={"n_h": 0},
                   pruner={"kind": "median", "n_startup_trials": 1, "every": 1, "in_order": True})
    result = Study(spec, objectives=[denoising_steps], executor="local").run()
    assert result.pruned and not result.failed and len(result.trials) == 8
    trials = sorted(optuna.load_study(study_name="pruned", storage=md_memory()).trials, key=lambda t: t.number)
    for k in range(1, len(trials) - 1):
        asked = trials[k + 1].datetime_start
        assert all(t.datetime_complete <= asked for t in trials[:k]) and trials[k].datetime_complete > asked, k
    for t in trials:
        if t.state == TrialState.PRUNED:
            assert t.user_attrs[attrs.PARTIAL_VALUES] == [float(t.params["steps"])]


def test_a_mapping_with_mistakes_names_every_field(tmp_path, tiny_bundle):
    for mistake, field in (({"samples_per_trial": 0}, "samples_per_trial"), ({"search": {"n_hh": {"int": [0, 1]}}}, "search.n_hh"),
                           ({"storage": "optuna.db"}, "storage")):  # fmt: skip
        with pytest.raises(md.SpecError, match=field):
            md.Study(spec_of(tmp_path, tiny_bundle, **mistake), executor="local")
    with pytest.raises(ValueError, match="not a registered objective"):
        md.Study(spec_of(tmp_path, tiny_bundle), objectives=[lambda sample: 0.0])
    with pytest.raises(ValueError, match="executor"):
        md.Study(spec_of(tmp_path, tiny_bundle), executor="threads")  # type: ignore[arg-type]


def md_memory():  # type: ignore[no-untyped-def]
    from micro_doe.studies.study_storage import memory_storage

    return memory_storage()


def test_the_quickstart_constraint_binds(tmp_path):
    """The bundled quickstart's constraint judges what no setting steers, so it separates
    trials: the paper's algorithm fails it, the anchored variant with a few cycles meets it."""
    import micro_doe.studies.study_yaml as study_yaml
    from micro_doe.studies.study_storage import open_study

    data = yaml.safe_load(study_yaml.bundled_studies()["quickstart"].read_text())
    data |= {"name": "quickstart-binds", "storage": "memory", "tracking": None, "artifacts": str(tmp_path / "pictures"),
             "samples_per_trial": 1, "budget": {"n_trials": 2}}  # fmt: skip
    study = Study(data, executor="local")
    optuna_study = open_study(study.spec)
    for variant in ("paper", "anchored"):
        optuna_study.enqueue_trial({"variant": variant, "n_h": 3, "steps": 25})
    result = study.run()
    feasible = {t.params["variant"]: t.violation <= 0 for t in result.completed}
    assert feasible == {"paper": False, "anchored": True}
