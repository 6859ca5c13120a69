"""End-to-end studies on a real local Ray instance with real sqlite Optuna and MLflow stores."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import mlflow
import numpy as np
import optuna
import pytest
import ray
import torch
import yaml
from live_processes import free_port, get_json, serving, start_driver, wait_for_trials
from optuna.trial import TrialState
from study_fixtures import write_study

from micro_doe.platform.volumes import read_volume
from micro_doe.studies.pareto_pruner import RUNNING_ERRORS, RUNNING_MEANS
from micro_doe.studies.pruned_observations import PARTIAL_VALUES
from micro_doe.studies.runner import VALUES_PER_VOLUME, Study
from micro_doe.studies.study_yaml import load_spec

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(autouse=True)
def quiet_env(monkeypatch):
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")


def test_a_study_runs_end_to_end_and_is_readable_through_each_store(tmp_path, tiny_bundle, monkeypatch):
    from micro_doe.studies.mlflow_runs import StudyTracker

    def drawn_again(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("MLflow drew the trial's montage again")

    monkeypatch.setattr(StudyTracker, "montage_png", drawn_again)  # the dashboard's picture is logged as it is
    result = Study.from_yaml(write_study(tmp_path, tiny_bundle)).run()
    assert len(result.completed) == 3 and not result.failed and result.best_trials

    study = optuna.load_study(study_name="e2e", storage=f"sqlite:///{tmp_path}/optuna.db")
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 3
    assert study.metric_names == ["s2_error", "seconds_per_volume"]  # optuna-dashboard's axis titles
    attrs = study.user_attrs
    assert attrs["generator"] == "micro3diff" and attrs["model"] == str(tiny_bundle)
    assert attrs["objectives"] == "s2_error (minimize), seconds_per_volume (minimize)"
    assert attrs["constraints"] == "vf_error ≤ 0.5" and len(attrs["spec_sha256"]) == 16
    assert [t.user_attrs.get("initial_design") for t in trials[:2]] == ["sobol", "sobol"]
    assert all(len(t.system_attrs["constraints"]) == 1 and "feasible" in t.user_attrs for t in trials)  # the dashboard's form
    assert all(len(t.values) == 2 and t.values[1] > 0 for t in trials)

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")  # not the process-global setter
    runs = mlflow.search_runs(experiment_names=["e2e"], output_format="list")
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 3 and len(runs) == 4
    child = children[0]
    assert {"s2_error", "seconds_per_volume", "volume_fraction"} <= set(child.data.metrics)
    local = mlflow.artifacts.download_artifacts(run_id=child.info.run_id, artifact_path="volumes/sample-0.nc",
                                                dst_path=str(tmp_path / "dl"))
    assert read_volume(local).shape == (16, 16, 16)
    # Each trial's montage is in the Optuna artifact store, where optuna-dashboard shows it.
    store = optuna.artifacts.FileSystemArtifactStore(str(tmp_path / "artifacts" / "optuna"))
    for t in trials:
        metas = optuna.artifacts.get_all_artifact_meta(t, storage=study._storage)
        assert [m.mimetype for m in metas] == ["image/png"]
        with store.open_reader(metas[0].artifact_id) as png:
            picture = png.read()
        assert picture.startswith(b"\x89PNG\r\n\x1a\n")
        if t.number == int(child.data.tags["optuna_trial_number"]):  # drawn once: MLflow keeps the same picture
            logged = mlflow.artifacts.download_artifacts(run_id=child.info.run_id, artifact_path="montage.png",
                                                         dst_path=str(tmp_path / "dl"))
            assert Path(logged).read_bytes() == picture


def test_a_diverged_generator_fails_its_trials_with_the_reason(tmp_path, tiny_bundle, monkeypatch):
    broken = shutil.copytree(tiny_bundle, tmp_path / "nan-model")
    state = torch.load(broken / "model.pt", weights_only=True)
    torch.save({k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in state.items()},
               broken / "model.pt")
    result = Study.from_yaml(write_study(tmp_path, broken, budget={"n_trials": 2})).run()
    assert len(result.failed) == 2 and not result.completed
    assert all("non-finite" in (t.reason or "") for t in result.failed)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["e2e"], filter_string="attributes.status = 'FAILED'", output_format="list")
    assert len(runs) == 2


def test_a_killed_generator_actor_loses_no_trial(tmp_path, tiny_bundle):
    study = Study.from_yaml(write_study(tmp_path, tiny_bundle, search={"n_h": {"int": [3, 4]}, "steps": {"int": [8, 10]}}))
    killed = []

    def kill_generator_once() -> None:
        deadline = time.time() + 120
        while time.time() < deadline and not killed:
            if ray.is_initialized():
                names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if "generator" in a["name"]]
                if names:
                    time.sleep(1.0)  # let a sample call get under way
                    ray.kill(ray.get_actor(names[0]), no_restart=False)
                    killed.append(names[0])
            time.sleep(0.2)

    killer = threading.Thread(target=kill_generator_once, daemon=True)
    killer.start()
    result = study.run()
    killer.join(timeout=1)
    assert killed, "the generator actor was never killed"
    # A trial re-queued because its actor was lost (a FAIL marked requeued) counts nowhere.
    assert len(result.completed) == 3 and not result.failed
    assert all(t.requeued for t in result.trials if t.state == "FAIL")


def test_a_driver_killed_mid_study_resumes_without_losing_or_double_counting(tmp_path, tiny_bundle):
    path = write_study(tmp_path, tiny_bundle, budget={"n_trials": 4},
                       search={"n_h": {"int": [2, 3]}, "steps": {"int": [6, 8]}})
    storage = f"sqlite:///{tmp_path}/optuna.db"
    driver = start_driver(path)
    try:
        wait_for_trials(storage, "e2e", driver, lambda trials: {TrialState.COMPLETE, TrialState.RUNNING}
                        <= {t.state for t in trials})
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and everything it started
    finally:
        driver.wait(timeout=30)
    # The orphans: what the dead driver left RUNNING (read after the kill: a trial may finish
    # between the poll above and the kill).
    running = optuna.load_study(study_name="e2e", storage=storage).get_trials(states=(TrialState.RUNNING,))
    assert running, "the driver died with no trial running"

    result = Study.from_yaml(path).run()
    study = optuna.load_study(study_name="e2e", storage=storage)
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert len(complete) == 4 and len(result.completed) == 4  # the budget, exactly
    assert {t.number for t in failed} == {t.number for t in running}  # only the orphans
    assert all(t.user_attrs["requeued"] and "driver died" in t.user_attrs["fail_reason"] for t in failed)
    for orphan in running:  # its parameters and seed were run again
        redo = [t for t in complete if t.user_attrs.get("requeued_from") == orphan.number]
        assert len(redo) == 1 and redo[0].params == orphan.params
        assert redo[0].user_attrs["seed"] == orphan.user_attrs["seed"]


def test_invalid_studies_exit_2_before_creating_anything(tmp_path, tiny_bundle):
    bad = tmp_path / "bad.yaml"
    spec = yaml.safe_load(open(write_study(tmp_path, tiny_bundle)))
    spec["search"]["n_h"] = {"int": [3, 1]}
    bad.write_text(yaml.safe_dump(spec))
    (tmp_path / "study.yaml").unlink()
    before = sorted(os.listdir(tmp_path))
    proc = subprocess.run([sys.executable, "-m", "micro_doe.cli.app", "run", str(bad)], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and "search.n_h" in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(os.listdir(tmp_path)) == before


def test_custom_objectives_from_a_module(tmp_path, tiny_bundle, monkeypatch):
    (tmp_path / "my_objectives.py").write_text(textwrap.dedent('''
        import micro_doe as md

        @md.objective(direction="maximize")
        def interface_per_tortuosity(sample: md.Sample) -> float:
            s = sample.descriptors.scalars()
            return s["interfacial_area"] * s["volume_fraction"]
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    path = write_study(tmp_path, tiny_bundle, objectives=[{"name": "my_objectives:interface_per_tortuosity"}],
                       constraints=[], budget={"n_trials": 2})
    result = Study(load_spec(path)).run()
    assert result.directions == ["maximize"] and len(result.completed) == 2
    assert all(t.values[0] > 0 for t in result.completed)


def test_a_single_phase_volume_fails_its_trial(tmp_path, tiny_bundle):
    # A real bundle whose output layer predicts ε̂ = 50 everywhere: x̂0 is driven to −1, one phase.
    constant = shutil.copytree(tiny_bundle, tmp_path / "constant-model")
    state = torch.load(constant / "model.pt", weights_only=True)
    head = sorted(k for k in state if k.startswith("head.") and k.endswith(".weight"))[-1]
    state[head] = torch.zeros_like(state[head])
    state[head.replace("weight", "bias")] = torch.full_like(state[head.replace("weight", "bias")], 50.0)
    torch.save(state, constant / "model.pt")
    result = Study.from_yaml(write_study(tmp_path, constant, budget={"n_trials": 1})).run()
    assert len(result.failed) == 1 and "all one phase" in result.failed[0].reason


def test_a_study_runs_from_a_registered_model(tmp_path, tiny_bundle, monkeypatch):
    from micro_doe.tracking.registry import register_bundle

    monkeypatch.setenv("MICRO_DOE_CACHE", str(tmp_path / "cache"))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    register_bundle(tiny_bundle, "tiny-spheres", alias="champion", tracking_uri=uri)
    result = Study.from_yaml(write_study(tmp_path, "models:/tiny-spheres@champion", budget={"n_trials": 1})).run()
    assert len(result.completed) == 1


def test_an_ldm_study_searches_targets_and_logs_the_predicted_recipes(tmp_path, tiny_ldm_bundle, monkeypatch):
    from micro_doe.platform.ldm.bundle import load_ldm_bundle
    from micro_doe.tracking.registry import register_bundle

    monkeypatch.setenv("MICRO_DOE_CACHE", str(tmp_path / "cache"))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    register_bundle(tiny_ldm_bundle, "tiny-opv", alias="champion", tracking_uri=uri)  # an LDM in the registry
    config = load_ldm_bundle(tiny_ldm_bundle).config
    lo, hi = config.label_ranges["vf_donor"]
    path = write_study(
        tmp_path, "models:/tiny-opv@champion",
        generator={"kind": "ldm", "model": "models:/tiny-opv@champion"},
        search={"target.vf_donor": {"float": [lo, hi]}, "guidance": {"float": [1.0, 2.0]}},
        fixed={"target.tau_donor": config.condition_medians["tau_donor"],
               "target.tau_acceptor": config.condition_medians["tau_acceptor"], "steps": 3, "sampler": "ddim"},
        objectives=[{"name": "interfacial_area"}, {"name": "transport_tortuosity"}],
        constraints=[{"metric": "vf_error", "max": 0.5}],
        evaluation={"phase": "donor", "tortuosity_axis": "z"}, budget={"n_trials": 2},
    )  # fmt: skip
    result = Study.from_yaml(path).run()
    assert len(result.trials) == 2
    for trial in result.trials:  # a trial fails only for an unusable (one-phase) volume of the tiny model
        assert trial.state == "COMPLETE" or "all one phase" in (trial.reason or ""), trial.reason
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    children = [r for r in mlflow.search_runs(experiment_names=["e2e"], output_format="list")
                if "mlflow.parentRunId" in r.data.tags]  # fmt: skip
    assert len(children) == 2
    for run in children:
        assert {"predicted.phi", "predicted.chi", "predicted.log_time"} <= set(run.data.metrics)
        local = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="predicted.json",
                                                    dst_path=str(tmp_path / run.info.run_id))
        predicted = json.loads(open(local).read())
        assert len(predicted) == 2 and all({"phi", "chi", "time"} <= set(p) for p in predicted)
        mean_phi = sum(p["phi"] for p in predicted) / 2
        assert run.data.metrics["predicted.phi"] == pytest.approx(mean_phi)
        assert 0 <= float(run.data.params["target.vf_donor"]) - lo <= hi - lo


def test_an_ldm_study_verifies_its_volumes_and_logs_what_it_spent(tmp_path, tiny_ldm_bundle, monkeypatch):
    from micro_doe.platform.ldm.bundle import load_ldm_bundle

    config = load_ldm_bundle(tiny_ldm_bundle).config
    lo, hi = config.label_ranges["vf_donor"]
    path = write_study(
        tmp_path, str(tiny_ldm_bundle),
        generator={"kind": "ldm", "model": str(tiny_ldm_bundle), "verify": {"max_candidates": 2}},
        search={"target.vf_donor": {"float": [lo, hi]}, "tolerance": {"float": [1e-6, 1.0]}},  # τ free
        fixed={"steps": 2, "sampler": "ddim"},
        objectives=[{"name": "interfacial_area"}], evaluation={"phase": "donor", "tortuosity_axis": None},
        budget={"n_trials": 2},
    )  # fmt: skip
    result = Study.from_yaml(path).run()
    assert len(result.trials) == 2
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    children = [r for r in mlflow.search_runs(experiment_names=["e2e"], output_format="list")
                if "mlflow.parentRunId" in r.data.tags]  # fmt: skip
    assert len(children) == 2
    for run in children:
        m = run.data.metrics
        if "verify.candidates" not in m:  # a failed trial (one-phase volume of the tiny model) logs no samples
            continue
        assert 1.0 <= m["verify.candidates"] <= 2.0 and 0.0 <= m["verify.met"] <= 1.0
        assert m["verify.acceptance_rate"] == pytest.approx(m["verify.met"] / m["verify.candidates"])
        assert "verify.measured.vf_donor" in m and "predicted.phi" in m


def test_drivers_share_one_study_its_initial_design_and_its_exact_budget(tmp_path, tiny_bundle):
    """Drivers started together on one sqlite study: the initial design is enqueued once, no
    trial repeats another's parameters, none fails another's live trials, together they
    finish exactly n_trials counted trials, and each is told that others share the study.
    Three drivers (two was a case of its own, which three contain: every pair of them shares too)."""
    n_drivers = 3
    path = write_study(tmp_path, tiny_bundle, budget={"n_trials": 8}, constraints=[],
                       search={"n_h": {"int": [0, 2]}, "steps": {"int": [6, 30]}},
                       sampler={"kind": "tpe", "seed": 0, "initial_design": {"kind": "sobol", "n": 4}})  # fmt: skip
    storage = f"sqlite:///{tmp_path}/optuna.db"
    drivers = [start_driver(path, stderr=subprocess.PIPE) for _ in range(n_drivers)]
    try:
        errors = [d.communicate(timeout=400)[1].decode() for d in drivers]
    finally:
        for d in drivers:
            if d.poll() is None:
                os.killpg(d.pid, signal.SIGKILL)
                d.wait(timeout=30)
    assert [d.returncode for d in drivers] == [0] * n_drivers, "\n\n".join(e[-3000:] for e in errors)
    study = optuna.load_study(study_name="e2e", storage=storage)
    trials = study.get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 8 and not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert len([t for t in trials if t.user_attrs.get("initial_design") == "sobol"]) == 4  # enqueued once
    design = [tuple(sorted(t.params.items())) for t in trials if t.user_attrs.get("initial_design")]
    assert len(set(design)) == 4
    assert all("other driver(s) run this study too" in e for e in errors), errors
    for t in trials:
        if t.state == TrialState.FAIL:  # only a surplus trial (both asked for the last slot) may fail here
            assert t.user_attrs.get("surplus") and "driver died" not in t.user_attrs.get("fail_reason", ""), t.user_attrs
    assert len({t.user_attrs["driver"] for t in complete}) >= 2  # drivers ran trials side by side
    leases = {k: v for k, v in study._storage.get_study_system_attrs(study._study_id).items() if k.startswith("micro_doe:lease:")}
    assert len(leases) == n_drivers and all(v is None for v in leases.values())  # all released


def test_timeout_bounds_the_run_and_requeues_trials_in_flight(tmp_path, tiny_bundle):
    # One trial takes far longer than the timeout: it must be re-queued at the limit, not awaited.
    path = write_study(tmp_path, tiny_bundle, budget={"n_trials": 2, "timeout_s": 12}, constraints=[],
                       search={"n_h": {"int": [4, 5]}}, fixed={"steps": 900}, sampler={"kind": "random", "seed": 0})
    start = time.perf_counter()
    result = Study.from_yaml(path).run()
    elapsed = time.perf_counter() - start
    assert elapsed < 12 + 25, elapsed  # a trial alone takes about a minute here
    study = optuna.load_study(study_name="e2e", storage=f"sqlite:///{tmp_path}/optuna.db")
    assert not study.get_trials(states=(TrialState.RUNNING,))
    requeued = [t for t in study.get_trials(states=(TrialState.FAIL,)) if t.user_attrs.get("requeued")]
    assert requeued and all("timeout_s (12 s) reached" in t.user_attrs["fail_reason"] for t in requeued)
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert [t.user_attrs["requeued_from"] for t in waiting] == [t.number for t in requeued]  # first in line next time
    assert not result.completed


def test_a_recipe_study_anneals_films_in_the_generator_actor(tmp_path, monkeypatch):
    path = write_study(
        tmp_path, "unused",
        generator={"kind": "cahn-hilliard", "size": 12},
        search={"phi": {"float": [0.35, 0.65]}, "time": {"int": [40, 120]}}, fixed={"chi": 3.5},
        objectives=[{"name": "interfacial_area", "direction": "maximize"}, {"name": "transport_tortuosity"}],
        constraints=[{"metric": "volume_fraction", "min": 0.2, "max": 0.8}],
        evaluation={"phase": "donor", "tortuosity_axis": "z"}, budget={"n_trials": 2},
    )  # fmt: skip
    result = Study.from_yaml(path).run()
    assert [t.state for t in result.trials] == ["COMPLETE", "COMPLETE"], [t.reason for t in result.trials]
    for trial in result.trials:
        assert 0.35 <= trial.params["phi"] <= 0.65 and 40 <= trial.params["time"] <= 120
        assert trial.values[0] > 0  # a separated film has donor–acceptor interface
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    children = [r for r in mlflow.search_runs(experiment_names=["e2e"], output_format="list")
                if "mlflow.parentRunId" in r.data.tags]  # fmt: skip
    assert len(children) == 2 and all("interfacial_area" in r.data.metrics for r in children)


def test_with_a_tracking_server_every_artifact_goes_through_it(tmp_path, tiny_bundle):
    """Proxied artifact access: the experiment stores mlflow-artifacts:/ URIs, the server writes
    under its --artifacts-destination, and the driver's disk holds no MLflow artifacts."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    destination = tmp_path / "server-artifacts"
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{tmp_path}/server.db",
               "--artifacts-destination", str(destination), "--host", "127.0.0.1", "--port", str(port),
               "--workers", "1"]  # fmt: skip
    api = f"{base}/api/2.0/mlflow"
    with serving(command, f"{api}/experiments/get-by-name?experiment_name=Default"):
        path = write_study(tmp_path, tiny_bundle, tracking=base, budget={"n_trials": 1})
        result = Study.from_yaml(path).run()
        assert len(result.completed) == 1
        experiment = get_json(f"{api}/experiments/get-by-name?experiment_name=e2e")["experiment"]
    assert experiment["artifact_location"].startswith("mlflow-artifacts:")
    stored = {p.name for p in destination.rglob("*") if p.is_file()}
    assert any(name.endswith(".nc") for name in stored) and any(name.endswith(".png") for name in stored), stored
    assert not (tmp_path / "artifacts" / "e2e").exists()  # nothing of MLflow's on the driver's disk


def test_pareto_halving_stops_only_dominated_trials(tmp_path, tiny_bundle, monkeypatch):
    """Steps 2, 10, 6, 9, 12, 7 (the seeded random sampler, as above). Objectives (both
    minimised): steps, and steps for even / −steps for odd counts. An odd trial is never
    dominated (its second objective is negative, every even one's positive), though a pruner
    on the first objective alone would stop 9 and 7; an even trial above 2 is dominated by
    the trial with 2 steps."""
    (tmp_path / "pareto_objectives.py").write_text(textwrap.dedent('''
        import micro_doe as md

        @md.objective(direction="minimize")
        def steps_taken(sample: md.Sample) -> float:
            return float(sample.params["steps"])

        @md.objective(direction="minimize")
        def odd_steps_negated(sample: md.Sample) -> float:
            steps = sample.params["steps"]
            return float(steps if steps % 2 == 0 else -steps)
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    path = write_study(
        tmp_path, tiny_bundle, samples_per_trial=3, constraints=[], budget={"n_trials": 6},
        objectives=[{"name": "pareto_objectives:steps_taken"}, {"name": "pareto_objectives:odd_steps_negated"}],
        search={"steps": {"int": [2, 12]}}, fixed={"n_h": 0}, sampler={"kind": "random", "seed": 7},
        pruner={"kind": "pareto_halving", "min_resource": 1, "reduction_factor": 2, "every": 1},
    )  # fmt: skip
    result = Study.from_yaml(path).run()
    assert len(result.completed) + len(result.pruned) == 6 and not result.failed
    steps = sorted(t.params["steps"] for t in result.trials)
    pruned = {t.params["steps"] for t in result.pruned}
    assert pruned and all(s % 2 == 0 and s > min(steps) for s in pruned), (steps, pruned)
    assert all(t.params["steps"] not in pruned for t in result.completed if t.params["steps"] % 2)
    companion = optuna.load_study(study_name="e2e:pruning", storage=f"sqlite:///{tmp_path}/optuna.db")
    for t in companion.trials:  # every objective's running mean, per step
        means = t.user_attrs[RUNNING_MEANS]
        assert means and all(len(v) == 2 for v in means.values()), means
        # from two volumes on, their standard errors: 0, as every volume of a trial scores the same
        errors = t.user_attrs.get(RUNNING_ERRORS, {})
        assert set(errors) == {k for k in means if int(k) >= 2}, (means, errors)
        assert all(v == [0.0, 0.0] for v in errors.values()), errors


def test_pruning_in_order_leaves_the_search_path_unchanged(tmp_path, tiny_bundle, monkeypatch):
    """One generator, TPE: with ``pruner.in_order`` the sampler is asked for every trial with the
    same trials finished whether or not the pruner stops any, so it proposes the same trials.
    The reference is the same study whose median pruner never prunes (n_startup_trials beyond
    the budget): every decision is made, none stops a trial. (Against a study without a
    pruner the same holds when evaluating a trial takes less time than generating the next,
    as at the benchmark's sizes, not at this test's tiny ones.) The objectives read the
    parameters alone, so the trials that run to the end score the same in both studies."""
    (tmp_path / "path_objectives.py").write_text(textwrap.dedent('''
        import micro_doe as md

        @md.objective(direction="minimize")
        def steps_above_four(sample: md.Sample) -> float:
            return float(abs(sample.params["steps"] - 4))

        @md.objective(direction="minimize")
        def few_steps(sample: md.Sample) -> float:
            return float(sample.params["steps"])
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    proposed = {}
    for label, startup in (("reference", 100), ("in order", 1)):
        pruner = {"kind": "median", "n_startup_trials": startup, "every": 1, "in_order": True}
        folder = tmp_path / label.replace(" ", "-")
        folder.mkdir()
        path = write_study(
            folder, tiny_bundle, samples_per_trial=3, constraints=[], budget={"n_trials": 9}, pruner=pruner,
            objectives=[{"name": "path_objectives:steps_above_four"}, {"name": "path_objectives:few_steps"}],
            search={"steps": {"int": [2, 12]}}, fixed={"n_h": 0},
            sampler={"kind": "tpe", "seed": 3, "initial_design": {"kind": "sobol", "n": 2}},
        )  # fmt: skip
        result = Study.from_yaml(path).run()
        assert not result.failed
        proposed[label] = [t.params["steps"] for t in sorted(result.trials, key=lambda t: t.number)]
        assert bool(result.pruned) == (label == "in order"), proposed  # the pruner did stop trials
        trials = sorted(optuna.load_study(study_name="e2e", storage=f"sqlite:///{folder}/optuna.db").trials,
                        key=lambda t: t.number)  # fmt: skip
        for k in range(1, len(trials) - 1):  # trial k + 1 was asked once trials 0 … k − 1 were told, before trial k was
            asked = trials[k + 1].datetime_start
            assert all(t.datetime_complete <= asked for t in trials[:k]) and trials[k].datetime_complete > asked, (label, k)
    assert proposed["in order"] == proposed["reference"]


def test_a_pruner_stops_hopeless_trials_and_records_them(tmp_path, tiny_bundle, monkeypatch):
    """Two objectives (Optuna prunes single-objective studies only: a companion study takes the
    first objective's running means). The first objective is the trial's `steps` (2, 10, 6, 9, 12, 7 from
    the seeded random sampler), so every
    trial with more steps than the first complete one is hopeless at its first decision."""
    (tmp_path / "prune_objectives.py").write_text(textwrap.dedent('''
        import micro_doe as md

        @md.objective(direction="minimize")
        def steps_used(sample: md.Sample) -> float:
            return float(sample.params["steps"])
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    path = write_study(
        tmp_path, tiny_bundle, samples_per_trial=3, constraints=[{"metric": "prune_objectives:steps_used", "max": 5}],
        objectives=[{"name": "prune_objectives:steps_used"}, {"name": "seconds_per_volume"}], budget={"n_trials": 6},
        search={"steps": {"int": [2, 12]}}, fixed={"n_h": 0},
        sampler={"kind": "random", "seed": 7}, pruner={"kind": "median", "n_startup_trials": 1, "every": 1},
    )  # fmt: skip
    result = Study.from_yaml(path).run()
    assert len(result.completed) + len(result.pruned) == 6 and not result.failed
    assert result.pruned, [(t.params, t.state) for t in result.trials]
    study = optuna.load_study(study_name="e2e", storage=f"sqlite:///{tmp_path}/optuna.db")
    companion = optuna.load_study(study_name="e2e:pruning", storage=f"sqlite:///{tmp_path}/optuna.db")
    by_trial = {t.user_attrs["trial"]: t for t in companion.trials}
    best_complete = min(t.params["steps"] for t in result.completed)
    for t in study.get_trials(states=(TrialState.PRUNED,)):
        shadow = by_trial[t.number]
        assert shadow.state == TrialState.PRUNED and t.user_attrs["pruned_after_volumes"] < 3
        assert shadow.intermediate_values[t.user_attrs["pruned_after_volumes"]] == t.params["steps"]
        assert t.params["steps"] > best_complete  # only worse-than-median trials are stopped
        # what its volumes measured, for a sampler that learns from pruned trials, and its constraint
        partial = t.user_attrs[PARTIAL_VALUES]
        assert partial[0] == t.params["steps"] and len(partial) == 2 and partial[1] > 0, partial
        assert t.constraints == {"0": t.params["steps"] - 5}
        per_volume = t.user_attrs[VALUES_PER_VOLUME]  # one value per volume it generated
        assert per_volume["prune_objectives:steps_used"] == [t.params["steps"]] * t.user_attrs["pruned_after_volumes"]
        assert np.mean(per_volume["seconds_per_volume"]) == pytest.approx(partial[1], rel=1e-5)  # kept to 6 digits
    for t in study.get_trials(states=(TrialState.COMPLETE,)):  # the values are the means of the per-volume ones
        per_volume = t.user_attrs[VALUES_PER_VOLUME]
        assert [len(v) for v in per_volume.values()] == [3, 3]
        assert [np.mean(v) for v in per_volume.values()] == pytest.approx(t.values, rel=1e-5)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    runs = {int(r.data.tags["optuna_trial_number"]): r
            for r in mlflow.search_runs(experiment_names=["e2e"], output_format="list")
            if "optuna_trial_number" in r.data.tags}  # fmt: skip
    assert {runs[t.number].data.tags["optuna_state"] for t in result.completed} == {"COMPLETE"}
    for t in result.pruned:
        run = runs[t.number]
        assert run.data.tags["optuna_state"] == "PRUNED" and run.info.status == "FINISHED"
        logged = {k: v for k, v in run.data.metrics.items() if k.endswith("steps_used")}
        assert list(logged.values()) == [t.params["steps"]], run.data.metrics


def test_common_volume_seeds_give_every_trial_the_same_noise(tmp_path, tiny_bundle):
    """``volume_seeds: common``: volume i of every trial comes from the same seed, so two trials
    with the same parameters generate the same volumes; per trial (the default) they do not."""
    per_volume = {}
    for mode in ("common", "per_trial"):
        folder = tmp_path / mode
        folder.mkdir()
        path = write_study(folder, tiny_bundle, volume_seeds=mode, budget={"n_trials": 4}, constraints=[],
                           search={"steps": {"categorical": [3]}}, fixed={"n_h": 0}, sampler={"kind": "random", "seed": 5})  # fmt: skip
        assert not Study.from_yaml(path).run().failed
        study = optuna.load_study(study_name="e2e", storage=f"sqlite:///{folder}/optuna.db")
        trials = study.get_trials(states=(TrialState.COMPLETE,))  # a one-point space: repeats measured again
        seeds = {t.user_attrs["seed"] for t in trials}
        assert len(seeds) == (1 if mode == "common" else 4), seeds
        per_volume[mode] = [t.user_attrs[VALUES_PER_VOLUME]["s2_error"] for t in trials]
    first, *others = per_volume["common"]
    assert all(o == first for o in others) and first[0] != first[1]  # same noise across trials, not across volumes
    assert len({tuple(v) for v in per_volume["per_trial"]}) == 4


def test_a_setting_measured_on_common_seeds_is_not_measured_again(tmp_path, tiny_bundle):
    """``volume_seeds: common``: a point the sampler proposes again is skipped unrun (it would give
    the same volumes), uses no budget, and carries the measured trial's constraints for TPE."""
    from micro_doe.studies import trial_attrs as attrs

    path = write_study(tmp_path, tiny_bundle, volume_seeds="common", budget={"n_trials": 3}, samples_per_trial=1,
                       search={"n_h": {"categorical": [0, 1, 2]}}, fixed={"steps": 3},
                       sampler={"kind": "random", "seed": 0})  # fmt: skip
    result = Study.from_yaml(path).run()
    study = optuna.load_study(study_name="e2e", storage=f"sqlite:///{tmp_path}/optuna.db")
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert sorted(t.params["n_h"] for t in complete) == [0, 1, 2]  # three distinct settings for a budget of 3
    repeats = [t for t in study.trials if t.user_attrs.get(attrs.REPEAT_OF) is not None]
    assert repeats and len(result.skipped) == len(repeats) and len(result.completed) == 3
    for t in repeats:
        earlier = study.trials[t.user_attrs[attrs.REPEAT_OF]]
        assert t.state == TrialState.PRUNED and earlier.number < t.number and earlier.params == t.params
        # The measured trial's constraints for TPE; none when the repeat came while its twin ran.
        assert t.system_attrs.get("constraints", earlier.system_attrs["constraints"]) == earlier.system_attrs["constraints"]
        assert "measured these parameters" in t.user_attrs[attrs.FAIL_REASON]
