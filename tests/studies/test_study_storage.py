"""study_storage: the samplers that can use constraints do, and random search does not."""

from __future__ import annotations

import optuna
import pytest

from micro_doe.studies import study_storage
from micro_doe.studies.spec import GPSamplerSpec, NSGA2SamplerSpec, RandomSamplerSpec, TPESamplerSpec
from micro_doe.studies.study_storage import (
    acquire_lease,
    make_sampler,
    release_lease,
    requeue_stale_trials,
    set_constraints,
)

TRIALS, TAIL = 24, 12


def feasible_in_tail(sampler_spec) -> int:  # type: ignore[no-untyped-def]
    """Two objectives pulling x towards 0 and 1, a constraint x ≥ 0.6 (random: 40 % feasible);
    how many of the last TAIL trials the sampler put in the feasible region."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=make_sampler(sampler_spec))
    feasible = []
    for _ in range(TRIALS):
        trial = study.ask()
        x, y = trial.suggest_float("x", 0.0, 1.0), trial.suggest_float("y", 0.0, 1.0)
        set_constraints(study, trial, [("x ≥ 0.6", 0.6 - x, x)])
        study.tell(trial, [x + y, (1.0 - x) + y])
        feasible.append(x >= 0.6)
    assert study.trials[-1].constraints == pytest.approx({"0": 0.6 - study.trials[-1].params["x"]})  # what samplers read
    assert study.trials[-1].user_attrs["constraint: x ≥ 0.6"] == study.trials[-1].params["x"]  # what a person reads
    return sum(feasible[-TAIL:])


def test_constraints_steer_tpe_gp_and_nsga2_but_not_random_search():
    random = feasible_in_tail(RandomSamplerSpec(seed=0))
    for spec in (TPESamplerSpec(seed=0), GPSamplerSpec(seed=0), NSGA2SamplerSpec(seed=0, population_size=8)):
        assert feasible_in_tail(spec) >= random + 3, spec.kind


def close_to_trials_in_flight(sampler_spec, in_flight: int = 4, trials: int = 40, close: float = 0.1) -> int:
    """Pipelined as the runner with several generators: ``in_flight`` trials asked before the
    oldest is told. How many proposals (after TPE's 10 random start-up trials) land within
    ``close`` (unit square, /√2) of a trial still in flight."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=make_sampler(sampler_spec))
    running, count = [], 0
    for i in range(trials):
        if len(running) == in_flight:
            trial = running.pop(0)
            x, y = trial.params["x"], trial.params["y"]
            study.tell(trial, [x + (y - 0.5) ** 2, (1.0 - x) + (y - 0.5) ** 2])
        trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1),
                           "y": optuna.distributions.FloatDistribution(0, 1)})  # fmt: skip
        p = (trial.params["x"], trial.params["y"])
        if i >= 10 and any(((p[0] - q.params["x"]) ** 2 + (p[1] - q.params["y"]) ** 2) ** 0.5 / 2**0.5 < close
                           for q in running):  # fmt: skip
            count += 1
        running.append(trial)
    return count


def test_constant_liar_keeps_tpe_proposals_away_from_trials_in_flight():
    with_liar = sum(close_to_trials_in_flight(TPESamplerSpec(seed=s)) for s in range(2))
    without = sum(close_to_trials_in_flight(TPESamplerSpec(seed=s, constant_liar=False)) for s in range(2))
    assert TPESamplerSpec().constant_liar  # the default
    assert with_liar + 5 <= without, (with_liar, without)


def distance_after_start(sampler_spec, seeds: range = range(3)) -> float:
    """Minimise (x − 0.8)² on [0, 1]: the mean |x − 0.8| of trials 5–10, just after a 4-trial start."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    gaps = []
    for seed in seeds:
        study = optuna.create_study(sampler=make_sampler(sampler_spec.model_copy(update={"seed": seed})))
        study.optimize(lambda t: (t.suggest_float("x", 0.0, 1.0) - 0.8) ** 2, n_trials=10)
        gaps += [abs(t.params["x"] - 0.8) for t in study.trials[4:]]
    return sum(gaps) / len(gaps)


# TPE models four trials weakly (one "good", three "bad"), a GP strongly.
@pytest.mark.parametrize(("kind", "factor"), [(TPESamplerSpec, 0.85), (GPSamplerSpec, 0.5)])
def test_model_samplers_take_over_right_after_the_initial_design(kind, factor):  # type: ignore[no-untyped-def]
    start = {"initial_design": {"kind": "sobol", "n": 4}}
    default = kind.model_validate(start)
    assert default.startup_trials() == 4 and kind().startup_trials() == 10  # Optuna's default without a design
    optuna_default = kind.model_validate(start | {"n_startup_trials": 10})
    assert distance_after_start(default) < factor * distance_after_start(optuna_default)


def test_a_just_asked_trial_without_an_owner_is_not_requeued_by_another_driver(tmp_path, monkeypatch):
    """Two drivers starting together: driver A has asked a trial but not yet written its name
    when driver B sweeps for stale trials. B must leave it alone until it is older than the
    lease's time to live."""
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/optuna.db")
    acquire_lease(study, "a")  # every driver takes its lease before it asks a trial
    acquire_lease(study, "b")
    fresh = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    assert requeue_stale_trials(study, "b") == 0
    assert study.trials[fresh.number].state == optuna.trial.TrialState.RUNNING
    monkeypatch.setattr(study_storage, "LEASE_TTL_S", -1.0)  # now every ownerless trial is old enough
    assert requeue_stale_trials(study, "b") == 1
    failed, queued = study.trials
    assert failed.state == optuna.trial.TrialState.FAIL and failed.user_attrs["requeued"] is True
    assert queued.state == optuna.trial.TrialState.WAITING and queued.user_attrs["requeued_from"] == fresh.number


def test_a_trial_whose_driver_died_before_writing_its_name_is_requeued_at_once(tmp_path):
    """Driver A was killed between asking a trial and writing its name. With no other driver
    alive, B re-queues it at once instead of counting it against the budget for a minute."""
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/optuna.db")
    acquire_lease(study, "a")
    orphan = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    release_lease(study, "a")  # what a dead driver's lease reads as (its pid gone)
    acquire_lease(study, "b")
    assert requeue_stale_trials(study, "b") == 1
    failed, queued = study.trials
    assert failed.number == orphan.number and failed.state == optuna.trial.TrialState.FAIL
    assert queued.state == optuna.trial.TrialState.WAITING and queued.user_attrs["requeued_from"] == orphan.number


def test_describing_a_study_names_its_objectives_without_an_experimental_warning():
    import warnings

    from micro_doe.studies.study_yaml import load_spec

    spec = load_spec("micro3diff-tuning")
    study = optuna.create_study(directions=spec.directions())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        study_storage.describe_study(study, spec, spec.objective_names())
    assert study.metric_names == spec.objective_names()
    assert not [w for w in caught if issubclass(w.category, optuna.exceptions.ExperimentalWarning)], caught


def test_importing_the_study_modules_leaves_optunas_log_level_alone():
    import subprocess
    import sys

    code = ("import optuna; before = optuna.logging.get_verbosity(); "
            "import micro_doe.studies.study_storage, micro_doe.studies.runner; "
            "assert optuna.logging.get_verbosity() == before, optuna.logging.get_verbosity()")  # fmt: skip
    subprocess.run([sys.executable, "-c", code], check=True)
