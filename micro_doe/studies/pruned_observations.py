"""Let a model-based sampler learn from pruned trials: it sees each one as complete, with the
objective values of the volumes it generated before it was stopped.

Why: a pruned trial was measured on some volumes, yet in a multi-objective study Optuna 5
keeps no intermediate values on it, so TPE ranks every pruned trial alike, after all complete
ones, and GP leaves pruned trials out altogether. With this view both rank a pruned trial
by what its volumes measured. For TPE that matters only when a pruned trial would rank
among its "good" group (in multi-objective studies the best ceil(n/10) trials); a trial
pruned for looking worse rarely does, so TPE's proposals then do not change
(``benchmarks/pruning.py``, arms with ``learn_from_pruned=1``).

How:
1. When the runner prunes a trial it stores the objectives' means over the volumes generated
   so far as the user attribute :data:`PARTIAL_VALUES` (a list in the study's objective
   order; constraint values are stored as for a complete trial).
2. :class:`LearnFromPruned` wraps a sampler. Every call it forwards hands the wrapped sampler
   a read-only view of the study in which each PRUNED trial carrying :data:`PARTIAL_VALUES`
   appears COMPLETE with those values. Storage, Optuna's dashboard and MLflow still show it
   PRUNED; nothing is written through the view.

Means over fewer volumes are noisier, and a trial is pruned for looking worse, so the view
shows the sampler a noisier history, not a biased one: the values are what was measured.
"""

from __future__ import annotations

from collections.abc import Container, Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from micro_doe.studies.trial_attrs import PARTIAL_VALUES


def as_seen(trial: FrozenTrial, n_objectives: int) -> FrozenTrial:
    """``trial`` as the wrapped sampler sees it: a PRUNED trial with ``n_objectives``
    :data:`PARTIAL_VALUES` (none NaN) becomes a COMPLETE copy with those values; any other trial is itself."""
    values = trial.user_attrs.get(PARTIAL_VALUES)
    if trial.state != TrialState.PRUNED or not _usable(values, n_objectives):
        return trial
    return FrozenTrial(
        number=trial.number, state=TrialState.COMPLETE, value=None, values=[float(v) for v in values],  # type: ignore[union-attr]
        datetime_start=trial.datetime_start, datetime_complete=trial.datetime_complete, params=trial.params,
        distributions=trial.distributions, user_attrs=trial.user_attrs, system_attrs=trial.system_attrs,
        intermediate_values=trial.intermediate_values, trial_id=trial._trial_id,
    )  # fmt: skip


def _usable(values: Any, n_objectives: int) -> bool:
    if not isinstance(values, Sequence) or len(values) != n_objectives:
        return False
    return all(isinstance(v, (int, float)) and v == v for v in values)  # NaN: not a value; ±inf is, as in Optuna


class _StudyView:
    """The study with pruned trials shown by :func:`as_seen`; everything else is the study's."""

    def __init__(self, study: optuna.Study) -> None:
        self._study = study

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _get_trials(self, deepcopy: bool = True, states: Container[TrialState] | None = None,
                    use_cache: bool = False) -> list[FrozenTrial]:  # fmt: skip
        n = len(self._study.directions)
        trials = [as_seen(t, n) for t in self._study._get_trials(deepcopy=deepcopy, use_cache=use_cache)]
        return [t for t in trials if states is None or t.state in states]

    def get_trials(self, deepcopy: bool = True, states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        return self._get_trials(deepcopy=deepcopy, states=states)

    @property
    def trials(self) -> list[FrozenTrial]:
        return self.get_trials()


class LearnFromPruned(BaseSampler):
    """``base``, fed pruned trials as complete ones with their :data:`PARTIAL_VALUES`.

    Only the sampling calls see the view; ``before_trial`` and ``after_trial`` get the study
    itself, since they may write to it.
    """

    def __init__(self, base: BaseSampler) -> None:
        self.base = base

    def __str__(self) -> str:
        return f"LearnFromPruned({self.base})"

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self.base.infer_relative_search_space(_StudyView(study), trial)  # type: ignore[arg-type]

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:  # fmt: skip
        return self.base.sample_relative(_StudyView(study), trial, search_space)  # type: ignore[arg-type]

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:  # fmt: skip
        return self.base.sample_independent(_StudyView(study), trial, param_name, param_distribution)  # type: ignore[arg-type]

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.base.before_trial(study, trial)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:  # fmt: skip
        self.base.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.base.reseed_rng()
