"""What a study writes on its trials (Optuna user attributes), and which trials use the budget.

Every module that reads or writes one of these attributes takes its name from here, so the
names a user sees on optuna-dashboard's trial page are defined once.
"""

from __future__ import annotations

import optuna
from optuna.trial import TrialState

OWNER = "driver"  # the id of the driver that asked the trial (resume: whose trials are stale)
SEED = "seed"  # volume i of the trial comes from seed + i; a re-queued trial keeps it
FAIL_REASON = "fail_reason"  # why a FAIL trial failed, one line
REQUEUED = "requeued"  # a FAIL trial whose parameters were enqueued again: it counts nowhere
REQUEUED_FROM = "requeued_from"  # on the re-queued copy: the number of the trial it repeats
SURPLUS = "surplus"  # started after other drivers' trials took the budget: never run, counts nowhere
SKIPPED = "skipped"  # PRUNED unrun, counts nowhere: broke a constraint known from its parameters, or REPEAT_OF
REPEAT_OF = "repeat_of"  # on a skipped trial: the trial that measured the same parameters on the same seeds
INITIAL_DESIGN = "initial_design"  # enqueued by the initial design ("sobol", "tuning start", ...)
MLFLOW_RUN = "mlflow run"  # the trial's MLflow run, as a link the dashboard shows
VALUES_PER_VOLUME = "values_per_volume"  # {objective name: [its value on volume 0, 1, ...]}
PARTIAL_VALUES = "partial_values"  # a pruned trial: [mean of each objective over the volumes it generated]
PRUNED_AFTER = "pruned_after_volumes"
RUNNING_MEANS = "running_means"  # pareto_halving: {"step": [running mean of every objective]}
RUNNING_ERRORS = "running_standard_errors"  # {"step": [standard error of each running mean]}
MONTAGE_ERROR = "montage_error"  # why a trial has no montage (a picture never costs a trial)
FEASIBLE = "feasible"
CONSTRAINT_PREFIX = "constraint: "  # "constraint: vf_error ≤ 0.05" → the measured value
STUDY_TRIAL = "trial"  # on a pruning-study trial: the number of the study trial it reports for


def is_requeued_or_surplus(t: optuna.trial.FrozenTrial) -> bool:
    """A FAIL that stands for nothing: its point was re-queued, or it never ran."""
    return bool(t.user_attrs.get(REQUEUED) or t.user_attrs.get(SURPLUS))


def counted_failure(t: optuna.trial.FrozenTrial) -> bool:
    """A FAIL that counts (toward the budget, in the progress line and the outcome)."""
    return t.state == TrialState.FAIL and not is_requeued_or_surplus(t)


def uses_budget(t: optuna.trial.FrozenTrial) -> bool:
    """The budget rule: COMPLETE, PRUNED and RUNNING trials use a slot, and a FAIL that was
    neither re-queued nor surplus; a point skipped unrun (a constraint on its parameters, or a
    repeat of a measured one) uses none.
    A resumed study thus ends with exactly ``n_trials`` of them."""
    if t.user_attrs.get(SKIPPED):
        return False
    return t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING) or counted_failure(t)
