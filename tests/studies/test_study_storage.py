"""study_storage: the samplers that can use constraints do, and random search does not."""

from __future__ import annotations

import optuna
import pytest

from micro_doe.studies.spec import GPSamplerSpec, NSGA2SamplerSpec, RandomSamplerSpec, TPESamplerSpec
from micro_doe.studies.study_storage import make_sampler, set_constraints

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
        set_constraints(study, trial, [("x ≥ 0.6", 0.6 - x)])
        study.tell(trial, [x + y, (1.0 - x) + y])
        feasible.append(x >= 0.6)
    assert study.trials[-1].constraints == pytest.approx({"0": 0.6 - study.trials[-1].params["x"]})  # what samplers read
    return sum(feasible[-TAIL:])


def test_constraints_steer_tpe_gp_and_nsga2_but_not_random_search():
    random = feasible_in_tail(RandomSamplerSpec(seed=0))
    for spec in (TPESamplerSpec(seed=0), GPSamplerSpec(seed=0), NSGA2SamplerSpec(seed=0, population_size=8)):
        assert feasible_in_tail(spec) >= random + 3, spec.kind
