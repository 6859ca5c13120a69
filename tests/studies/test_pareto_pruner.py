from __future__ import annotations

import numpy as np
import optuna
import pytest

from micro_doe.studies.pareto_pruner import (
    RUNNING_ERRORS,
    RUNNING_MEANS,
    ParetoHalvingPruner,
    domination_ranks,
    standard_error,
)


def test_domination_ranks_peel_fronts():
    losses = np.array([[1, 5], [2, 4], [3, 3], [2, 6], [4, 7], [1, 5]], dtype=float)
    # [1,5] twice: equal points do not dominate each other; [2,6] is dominated by [1,5] only
    # (and [2,4]); [4,7] by everything before it.
    assert domination_ranks(losses).tolist() == [0, 0, 0, 1, 2, 0]
    assert domination_ranks(np.array([[3.0], [1.0], [2.0], [1.0]])).tolist() == [2, 0, 1, 0]


def report(study: optuna.Study, pruner, means: dict[int, list[float]], errors: dict[int, list[float]] | None = None) -> list[bool]:
    """A companion trial that reports ``means`` (and their standard ``errors``) step by step; the
    pruner's decision at each step."""
    trial = study.ask()
    stored, decisions = {}, []
    for step, values in means.items():
        stored[str(step)] = values
        trial.set_user_attr(RUNNING_MEANS, stored)
        if errors is not None:
            trial.set_user_attr(RUNNING_ERRORS, {str(s): e for s, e in errors.items() if s <= step})
        trial.report(values[0], step=step)  # Optuna's own pruners read this (the first objective)
        decisions.append(pruner.prune(study, study._storage.get_trial(trial._trial_id)))
    return decisions


def test_a_trial_good_on_another_objective_survives_where_successive_halving_stops_it():
    pareto, halving = ParetoHalvingPruner(["minimize", "minimize"]), optuna.pruners.SuccessiveHalvingPruner(min_resource=1)
    ours, optunas = optuna.create_study(direction="minimize"), optuna.create_study(direction="minimize")
    decisions = []
    for point in ([1, 5], [2, 4], [3, 3], [4, 1], [5, 6], [6, 0.5]):
        # the same trials, judged by this pruner on both objectives and by Optuna's on the first
        decisions.append((report(ours, pareto, {1: point})[0], report(optunas, halving, {1: point})[0]))
    assert [ours for ours, _ in decisions] == [False, False, False, False, True, False]
    assert decisions[4] == (True, True)  # [5, 6] is dominated by all four before it: both stop it
    assert decisions[5] == (False, True)  # worst first objective, best second: only Optuna's stops it


def test_rungs_directions_and_missing_means():
    pruner = ParetoHalvingPruner(["maximize", "minimize"], min_resource=2, reduction_factor=2)
    study = optuna.create_study(direction="maximize")
    assert report(study, pruner, {1: [9, 0], 2: [9, 0], 3: [9, 0], 4: [9, 0]}) == [False] * 4
    # Dominated (less of the maximised objective, more of the minimised one): judged at the
    # rungs 2 and 4 only, so step 1 and step 3 never stop it.
    assert report(study, pruner, {1: [1, 5], 3: [1, 5]}) == [False, True]  # 3: first report past rung 2
    assert report(study, pruner, {1: [1, 5]}) == [False]
    trial = study.ask()
    trial.report(1.0, step=2)
    with pytest.raises(ValueError, match="without its running means"):
        pruner.prune(study, study._storage.get_trial(trial._trial_id))
    with pytest.raises(ValueError, match="reduction_factor"):
        ParetoHalvingPruner(["minimize"], reduction_factor=1)


def test_ranking_only_some_objectives():
    # The third objective (say, seconds per volume) makes [5, 6, 0.1] non-dominated: ranked on
    # all three it survives, ranked on the first two it is stopped.
    directions = ["minimize", "minimize", "minimize"]
    every, first_two = ParetoHalvingPruner(directions), ParetoHalvingPruner(directions, ranked=[0, 1])
    for pruner, stopped in ((every, False), (first_two, True)):
        study = optuna.create_study(direction="minimize")
        for point in ([1, 5, 9], [2, 4, 9], [3, 3, 9]):
            report(study, pruner, {1: point})
        assert report(study, pruner, {1: [5, 6, 0.1]}) == [stopped]
    for bad in ([3], [0, 0], []):
        with pytest.raises(ValueError, match="distinct indices of the 3 objectives"):
            ParetoHalvingPruner(directions, ranked=bad)


def test_standard_error():
    assert standard_error([1.0, 3.0]) == pytest.approx(1.0)  # std (ddof 1) √2, over √2
    assert standard_error([2.0, 2.0, 2.0]) == 0.0
    assert standard_error([1.0]) is None and standard_error([1.0, np.inf]) is None  # JSON null in storage


def test_a_margin_keeps_a_trial_dominated_within_its_noise():
    """Competitors [1, 1], [2, 2], [4, 4]. [3, 3] is dominated by two of them: successive halving
    on Pareto rank (4 competitors, 2 go on) stops it. With standard errors (1.5, 1.5) and
    margin 1 it is ranked as [1.5, 1.5], dominated by [1, 1] alone, and goes on; with errors
    (0.5, 0.5) it is ranked as [2.5, 2.5] and still stopped. A missing (None) or infinite
    standard error gives its objective no benefit of the doubt. Only the judged trial is
    moved: the competitors' large errors change nothing. The same with the first objective
    maximised (values negated): the margin moves it up."""
    for margin, errors, stopped in ((0.0, [1.5, 1.5], True), (1.0, [1.5, 1.5], False), (1.0, [0.5, 0.5], True),
                                    (1.0, [None, 0.5], True), (2.0, [np.inf, 0.5], True)):  # fmt: skip
        for directions, sign in ((["minimize", "minimize"], 1), (["maximize", "minimize"], -1)):
            pruner = ParetoHalvingPruner(directions, min_resource=2, margin=margin)
            study = optuna.create_study(direction=directions[0])
            for point in ([1, 1], [2, 2], [4, 4]):
                report(study, pruner, {2: [sign * point[0], point[1]]}, {2: [9.0, 9.0]})
            assert report(study, pruner, {2: [sign * 3, 3]}, {2: errors}) == [stopped], (margin, errors, directions)
    directions = ["minimize", "minimize"]
    pruner = ParetoHalvingPruner(directions, min_resource=2, margin=1.0)
    study = optuna.create_study(direction="minimize")
    with pytest.raises(ValueError, match="without the standard errors"):
        report(study, pruner, {2: [1, 1]})
    for bad in (-1.0, np.inf, np.nan):
        with pytest.raises(ValueError, match="margin must be a finite number"):
            ParetoHalvingPruner(directions, margin=bad)
    with pytest.raises(ValueError, match="needs min_resource ≥ 2"):
        ParetoHalvingPruner(directions, min_resource=1, margin=1.0)


def test_a_pooled_margin_counts_the_competitors_noise():
    """Competitors [1, 1], [2, 2], [4, 4] with standard errors (3, 3) each; the judged [3, 3]
    has errors (0, 0), its two volumes having agreed. Its own margin is then nothing and it is
    stopped. Pooled, its error is the root mean square of (3, 3, 3, 0): √(27/4) ≈ 2.6, so with
    margin 1 it is ranked as [0.4, 0.4], on the front, and goes on. A competitor without
    standard errors (None) counts for nothing in the pool."""
    directions = ["minimize", "minimize"]
    for margin_errors, stopped in (("own", True), ("pooled", False)):
        pruner = ParetoHalvingPruner(directions, min_resource=2, margin=1.0, margin_errors=margin_errors)
        study = optuna.create_study(direction="minimize")
        for point in ([1, 1], [2, 2], [4, 4]):
            report(study, pruner, {2: point}, {2: [3.0, 3.0]})
        report(study, pruner, {2: [9, 9]}, {2: [None, None]})
        assert report(study, pruner, {2: [3, 3]}, {2: [0.0, 0.0]}) == [stopped], margin_errors
    assert ParetoHalvingPruner._pooled([0.0, None], [[3.0, None], None, [3.0, 4.0]]) == pytest.approx([np.sqrt(6), 4.0])
    assert np.isnan(ParetoHalvingPruner._pooled([None], [[None]])[0])
    with pytest.raises(ValueError, match="margin_errors must be 'own' or 'pooled'"):
        ParetoHalvingPruner(directions, min_resource=2, margin=1.0, margin_errors="shared")
