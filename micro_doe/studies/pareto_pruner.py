"""Pareto successive halving: asynchronous successive halving that ranks by every objective.

Optuna's pruners judge one value per step, so a multi-objective study pruned through them is
pruned on its first objective alone: a trial that is poor on it but good on another is
stopped although it would have joined the Pareto front. This pruner ranks trials the way the
front is built, after the multi-objective ASHA of Schmucker et al. (2021):

1. A trial reports, at each step (volumes so far), the running mean of *every* objective,
   stored as the user attribute :data:`RUNNING_MEANS` (``{"step": [value, ...]}``, in the
   study's objective order); the runner writes it before asking :meth:`prune`.
2. Rungs sit at ``min_resource · reduction_factor**k`` steps. A trial is judged once per rung,
   at its first report at or past the rung, against every trial (any state) that reported
   the same step: the *competitors*, itself included.
3. Competitors are ranked by non-dominated sorting of their running means (rank 0: the
   non-dominated ones; rank 1: non-dominated once rank 0 is removed; ...), every objective
   as a loss; or only the objectives in ``ranked`` (their indices), e.g. to leave out a
   wall-time objective whose fastest trials are always non-dominated.
4. With n competitors, the trial goes on when fewer than ``max(1, n // reduction_factor)``
   competitors have a strictly better rank; otherwise it is pruned. So with one objective
   this is successive halving on that objective (ties kept), and a trial on the current
   front is never pruned.

``margin`` (z ≥ 0, in standard errors; micro-doe's addition) makes step 3 give the judged
trial the benefit of the doubt: its losses are lowered by z standard errors of its running
means (the sample standard deviation over its volumes, divided by √volumes), stored as
:data:`RUNNING_ERRORS` beside the means, before it is ranked against the competitors' plain
means. It is a heuristic allowance for noise, not a confidence level: two volumes estimate a
standard error poorly, and the competitors' own noise is not counted. With z = 0 the rule is
the one above. An objective without a standard error (e.g. an infinite tortuosity) gets no
margin. A standard error needs two volumes, so z > 0 needs ``min_resource`` ≥ 2.

``margin_errors="pooled"`` counts the margin in the *pooled* standard error instead: per
objective, the root mean square of the standard errors of every competitor at that step, the
judged trial's included (with equal volumes per trial, the within-trial variance of a one-way
analysis of variance, over √volumes). Two volumes estimate a trial's own spread poorly: two
that happen to agree give a noisy trial almost no margin. The pooled one assumes the trials
are about equally noisy, and grows steadier as competitors accumulate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import optuna
from optuna.trial import FrozenTrial

from micro_doe.studies.trial_attrs import RUNNING_ERRORS, RUNNING_MEANS


def standard_error(values: Sequence[float]) -> float | None:
    """The standard error of the mean of ``values``: sample standard deviation (ddof 1) / √n;
    None (stored as JSON null) for fewer than two values, and when one is not finite."""
    v = np.asarray(values, dtype=float)
    if len(v) < 2 or not np.all(np.isfinite(v)):
        return None
    return float(v.std(ddof=1) / np.sqrt(len(v)))


def running_summary(per_volume: Mapping[str, Sequence[float]]) -> tuple[list[float], list[float | None]]:
    """Each objective's running mean over the volumes so far, and its :func:`standard_error`, in
    ``per_volume``'s order (``{objective name: [value per volume]}``): what a trial stores under
    :data:`RUNNING_MEANS` and :data:`RUNNING_ERRORS` for that step."""
    return [float(np.mean(v)) for v in per_volume.values()], [standard_error(v) for v in per_volume.values()]


def domination_ranks(losses: np.ndarray) -> np.ndarray:
    """Non-dominated sorting of ``losses`` (n points × m objectives, smaller is better): rank 0
    for the points no other point dominates, rank 1 for those only rank-0 points dominate, ...
    (a dominates b: a ≤ b everywhere and a < b somewhere)."""
    n = len(losses)
    dominated_by = np.zeros((n, n), dtype=bool)  # [i, j]: j dominates i
    for i in range(n):
        dominated_by[i] = np.all(losses <= losses[i], axis=1) & np.any(losses < losses[i], axis=1)
    ranks = np.full(n, -1)
    rank, remaining = 0, np.ones(n, dtype=bool)
    while remaining.any():
        front = remaining & ~(dominated_by & remaining[None, :]).any(axis=1)
        ranks[front] = rank
        remaining &= ~front
        rank += 1
    return ranks


class ParetoHalvingPruner(optuna.pruners.BasePruner):
    """Successive halving on Pareto rank (module docstring). ``directions``: the objectives'
    directions, in the order of the running means the trials store; ``ranked``: the indices
    of the objectives to rank by (all if None); ``margin``: the judged trial's benefit of the
    doubt, in standard errors (0: none); ``margin_errors``: whose standard errors, "own" or
    "pooled"."""

    def __init__(self, directions: Sequence[str], min_resource: int = 1, reduction_factor: int = 2,
                 ranked: Sequence[int] | None = None, margin: float = 0.0, margin_errors: str = "own") -> None:  # fmt: skip
        if min_resource < 1 or reduction_factor < 2:
            raise ValueError(f"min_resource must be ≥ 1 and reduction_factor ≥ 2, got {min_resource}, {reduction_factor}")
        if not (np.isfinite(margin) and margin >= 0):
            raise ValueError(f"margin must be a finite number of standard errors ≥ 0, got {margin}")
        if margin > 0 and min_resource < 2:
            raise ValueError(f"margin > 0 needs min_resource ≥ 2 (a standard error needs two volumes), got {min_resource}")
        if margin_errors not in ("own", "pooled"):
            raise ValueError(f"margin_errors must be 'own' or 'pooled', got {margin_errors!r}")
        self._margin = float(margin)
        self._margin_errors = margin_errors
        self._ranked = list(range(len(directions))) if ranked is None else list(ranked)
        bad = any(not 0 <= i < len(directions) for i in self._ranked) or len(set(self._ranked)) != len(self._ranked)
        if not self._ranked or bad:
            raise ValueError(f"ranked must be distinct indices of the {len(directions)} objectives, got {ranked}")
        self._sign = np.array([1.0 if d == "minimize" else -1.0 for d in directions])[self._ranked]
        self._min_resource = min_resource
        self._reduction_factor = reduction_factor

    def _rungs_passed(self, step: int) -> int:
        """How many rungs lie at or below ``step``."""
        count, rung = 0, self._min_resource
        while rung <= step:
            count, rung = count + 1, rung * self._reduction_factor
        return count

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None:
            return False
        earlier = [s for s in trial.intermediate_values if s < step]
        if self._rungs_passed(step) == self._rungs_passed(max(earlier, default=0)):
            return False  # no rung between the previous report and this one
        key = str(step)
        own = trial.user_attrs.get(RUNNING_MEANS, {}).get(key)
        if own is None:
            raise ValueError(f"trial {trial.number} reported step {step} without its running means ({RUNNING_MEANS!r})")
        competitors = [t for t in study.get_trials(deepcopy=False)
                       if t.number != trial.number and key in t.user_attrs.get(RUNNING_MEANS, {})]  # fmt: skip
        others = [t.user_attrs[RUNNING_MEANS][key] for t in competitors]
        losses = self._sign * np.array([own, *others], dtype=float)[:, self._ranked]
        losses = np.where(np.isnan(losses), np.inf, losses)  # an objective that could not be measured is worst
        if self._margin > 0:
            errors = trial.user_attrs.get(RUNNING_ERRORS, {}).get(key)
            if errors is None:
                raise ValueError(f"trial {trial.number} reported step {step} without the standard errors "
                                 f"of its running means ({RUNNING_ERRORS!r}), which margin > 0 needs")  # fmt: skip
            if self._margin_errors == "pooled":
                errors = self._pooled(errors, [t.user_attrs.get(RUNNING_ERRORS, {}).get(key) for t in competitors])
            errors = np.array(errors, dtype=float)[self._ranked]  # None (no standard error) → NaN
            losses[0] -= self._margin * np.where(np.isfinite(errors), errors, 0.0)
        ranks = domination_ranks(losses)
        promoted = max(1, len(losses) // self._reduction_factor)
        return int(np.sum(ranks < ranks[0])) >= promoted

    @staticmethod
    def _pooled(own: Sequence[float | None], others: Sequence[Sequence[float | None] | None]) -> list[float]:
        """Per objective, the root mean square of the finite standard errors among ``own`` and
        ``others`` (competitors without any count for nothing); NaN where none is finite."""
        rows = [own, *(o for o in others if o is not None)]
        errors = np.array([[np.nan if e is None else e for e in row] for row in rows], dtype=float)
        finite = np.isfinite(errors)
        counts = finite.sum(axis=0)
        squares = np.where(finite, errors, 0.0) ** 2
        return [float(np.sqrt(s / c)) if c else float("nan") for s, c in zip(squares.sum(axis=0), counts)]
