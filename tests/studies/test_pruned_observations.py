"""pruned_observations: a model-based sampler fed pruned trials as complete ones with their
partial values proposes what it would on a history where those trials had completed with
them, and storage keeps them PRUNED."""

from __future__ import annotations

import math

import numpy as np
import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from micro_doe.studies.pruned_observations import PARTIAL_VALUES, LearnFromPruned, as_seen
from micro_doe.studies.spec import GPSamplerSpec, TPESamplerSpec
from micro_doe.studies.study_storage import make_sampler

SPACE = {"x": FloatDistribution(0.0, 1.0), "y": FloatDistribution(0.0, 1.0)}


def history(pruned: bool, n: int = 12) -> optuna.Study:
    """``n`` seeded trials of two objectives, x + y and 1 − x + y (the front: y = 0). The four
    with the smallest y, the best ones, are PRUNED carrying their values as PARTIAL_VALUES
    when ``pruned``; every other trial is COMPLETE with its values."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(directions=["minimize", "minimize"])
    points = np.random.default_rng(0).random((n, 2))
    best = set(np.argsort(points[:, 1])[:4].tolist())
    for i, (x, y) in enumerate(points):
        values = [float(x + y), float(1 - x + y)]
        params = {"x": float(x), "y": float(y)}
        if pruned and i in best:
            study.add_trial(create_trial(state=TrialState.PRUNED, params=params, distributions=SPACE,
                                         user_attrs={PARTIAL_VALUES: values}))  # fmt: skip
        else:
            study.add_trial(create_trial(state=TrialState.COMPLETE, values=values, params=params, distributions=SPACE))
    return study


def proposal(study: optuna.Study, sampler: optuna.samplers.BaseSampler) -> dict[str, float]:
    study.sampler = sampler
    return study.ask(SPACE).params


@pytest.mark.parametrize("spec", [TPESamplerSpec(seed=3, n_startup_trials=4), GPSamplerSpec(seed=3, n_startup_trials=4)])
def test_a_learning_sampler_proposes_as_if_the_pruned_trials_had_completed(spec):
    learning = make_sampler(spec.model_copy(update={"learn_from_pruned": True}))
    assert isinstance(learning, LearnFromPruned)
    completed = proposal(history(pruned=False), make_sampler(spec))
    study = history(pruned=True)
    assert proposal(study, learning) == completed
    # Optuna's own treatment of the same history proposes elsewhere: the pruned trials count as bad (TPE) or absent (GP)
    assert proposal(history(pruned=True), make_sampler(spec)) != completed
    # storage is untouched: the four trials are still PRUNED, with no values
    pruned = study.get_trials(states=(TrialState.PRUNED,))
    assert len(pruned) == 4 and all(t.values is None for t in pruned)


def test_as_seen_converts_only_pruned_trials_with_usable_values():
    def pruned(values: object) -> optuna.trial.FrozenTrial:
        return create_trial(state=TrialState.PRUNED, params={"x": 0.5}, distributions={"x": SPACE["x"]},
                            user_attrs={PARTIAL_VALUES: values})  # fmt: skip

    seen = as_seen(pruned([1.0, math.inf]), 2)  # ±inf is a value, as for a complete trial in Optuna
    assert seen.state == TrialState.COMPLETE and seen.values == [1.0, math.inf] and seen.params == {"x": 0.5}
    for values in ([1.0], [1.0, math.nan], None, "1, 2", [1.0, "2"]):
        trial = pruned(values)
        assert as_seen(trial, 2) is trial, values
    complete = create_trial(state=TrialState.COMPLETE, values=[1.0, 2.0], user_attrs={PARTIAL_VALUES: [3.0, 4.0]})
    assert as_seen(complete, 2) is complete
