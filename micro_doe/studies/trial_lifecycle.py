"""One trial's life in the stores: asked, then finished, failed or pruned.

:class:`TrialLifecycle` owns what a trial writes (Optuna storage, MLflow, the artifact
store); the scheduler decides *when*. Order of operations:

- **ask** (:meth:`TrialLifecycle.ask`): re-queued trials before any other, then
  ``study.ask()``; a point breaking a constraint known from its parameters alone
  (``passes_per_volume``) is told PRUNED unrun (``skipped``, infeasible: it uses no budget, and
  TPE learns to avoid it); so is, with ``volume_seeds: common``, a point some trial has measured
  already (``repeat_of``: the same parameters on the same seeds give the same volumes), unless
  ``MAX_REPEATS`` points in a row were repeats (a search space nearly exhausted: measured again);
  the trial gets a budget slot (or is released as surplus), its parameters
  (the searched ones plus the fixed ones), its seed (from its number, the study's one seed with
  ``volume_seeds: common``, or the seed it had when it was re-queued) and its owner;
- **finish**: objectives as the mean over the trial's samples, constraint metrics
  (:func:`~micro_doe.studies.study_storage.set_constraints`), each objective per volume, the
  montage (optuna-dashboard) and the MLflow run, then ``study.tell``;
- **fail**: the reason on the trial and its MLflow run, ``tell(FAIL)``, and, for a trial that
  was not at fault (interrupted, timed out, its actor lost), its parameters and seed enqueued
  again (``requeued``: it counts nowhere);
- **decide** / **prune** (with a pruner): report the running mean to the pruner, and a pruned
  trial keeps what its volumes measured (:data:`~micro_doe.studies.trial_attrs.PARTIAL_VALUES`).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from micro_doe.errors import InputError
from micro_doe.platform.descriptors import Descriptors
from micro_doe.studies import trial_attrs as attrs
from micro_doe.studies.executors import reason
from micro_doe.studies.objectives import (
    PARAM_METRICS,
    Direction,
    Objective,
    Sample,
    evaluate_objectives,
    labelled,
    means_over_samples,
    per_sample_objectives,
    trial_metrics,
)
from micro_doe.studies.pareto_pruner import running_summary
from micro_doe.studies.spec import StudySpec
from micro_doe.studies.study_storage import (
    CONSTRAINTS_KEY,
    claim_budget_slot,
    claim_requeued_trial,
    release_surplus_trial,
    set_constraints,
)

log = logging.getLogger("micro_doe.studies")
MAX_SKIPS = 200  # points in a row that break a constraint on their parameters before the study gives up
MAX_REPEATS = 10  # repeats of measured points in a row before one is measured again (a space nearly exhausted)


def trial_seed(sampler_seed: int | None, number: int, common: bool = False) -> int:
    """The seed of a fresh trial's first volume (volume i: seed + i); 1 000 volumes a trial
    before two trials' seeds could meet. ``common`` (``volume_seeds: common``): the same for
    every trial of the study, so trials are compared on the same noise."""
    return (sampler_seed or 0) * 1_000_003 + (0 if common else number * 1_000)


@dataclass
class TrialContext:
    """A trial in flight: what it asked for and what it has produced so far."""

    trial: optuna.trial.Trial
    params: dict[str, Any]
    seed: int
    started: float
    started_at: float  # wall clock [s since the epoch], for MLflow's run times
    generator: int
    volumes: list[Any] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    predicted: list[dict[str, float]] = field(default_factory=list)
    descriptors: list[dict[str, Any]] = field(default_factory=list)  # of the volumes evaluated so far
    eval_handles: list[Any] = field(default_factory=list)  # evaluations of the latest batch of volumes
    reporter: optuna.trial.Trial | None = None  # where intermediate values go (pruning), once reported
    running_means: dict[str, list[float]] = field(default_factory=dict)  # pareto_halving: step → every objective
    running_errors: dict[str, list[float | None]] = field(default_factory=dict)  # ... and their standard errors
    reported: float = math.nan  # the running mean of the first objective last reported to the pruner

    @property
    def number(self) -> int:
        return self.trial.number


class TrialLifecycle:
    """Writes trials into the study, the pruning study, MLflow and the artifact store."""

    def __init__(self, spec: StudySpec, objectives: list[tuple[Objective, Direction]], driver_id: str, study: optuna.Study,
                 tracker: Any, reference: Descriptors | None, pruning: optuna.Study | None, store: Any = None,
                 example_image: Any = None) -> None:  # fmt: skip
        """``tracker``: the study's MLflow tracker, or None (no MLflow); ``store``: the Optuna
        artifact store for the trial montages (None: none); ``example_image``: a training image
        shown atop every montage."""
        self.spec, self.objectives, self.driver_id = spec, objectives, driver_id
        self.study, self.tracker, self.reference, self.pruning = study, tracker, reference, pruning
        self.store, self.example_image = store, example_image

    # ------------------------------------------------------------------ ask

    def ask(self, generator: int, budget: int) -> TrialContext | None:
        """The next trial (re-queued ones first), or None when it got no budget slot. A point
        that breaks a constraint known from its parameters (:data:`~micro_doe.studies.objectives.PARAM_METRICS`)
        is told PRUNED unsampled, infeasible, and another is asked (at most ``MAX_SKIPS`` in a row);
        so is a point measured already on the same seeds (at most ``MAX_REPEATS`` in a row)."""
        study, repeats = self.study, 0
        for _ in range(MAX_SKIPS + MAX_REPEATS):
            trial = claim_requeued_trial(study) or study.ask()
            trial.set_user_attr(attrs.OWNER, self.driver_id)  # at once: a driver that resumes knows whose it is
            params = {name: p.suggest(trial, name) for name, p in self.spec.search.items()}
            if self.skip_if_over_bounds(trial, params | self.spec.fixed):
                continue
            if repeats < MAX_REPEATS and self.skip_if_measured(trial, params):
                repeats += 1
                continue
            break
        else:
            raise InputError(f"constraints: {MAX_SKIPS} points in a row broke a constraint on their parameters "
                             f"({', '.join(c.describe() for c in self.param_constraints())}); widen it or narrow search")
        if not claim_budget_slot(study, trial, budget):
            queued = {k: v for k, v in trial.user_attrs.items() if k in (attrs.REQUEUED_FROM, attrs.INITIAL_DESIGN, attrs.SEED)}
            from_queue = "fixed_params" in study._storage.get_trial(trial._trial_id).system_attrs
            release_surplus_trial(study, trial, params, queued, from_queue)
            return None
        params.update(self.spec.fixed)
        seed = trial.user_attrs.get(attrs.SEED)
        if seed is None:  # a fresh trial; a re-queued one keeps the seed it had
            seed = trial_seed(self.spec.sampler.seed, trial.number, common=self.spec.volume_seeds == "common")
            trial.set_user_attr(attrs.SEED, seed)
        return TrialContext(trial, params, int(seed), time.perf_counter(), time.time(), generator)

    def param_constraints(self) -> list[Any]:
        return [c for c in self.spec.constraints if c.metric in PARAM_METRICS]

    def skip_if_over_bounds(self, trial: optuna.trial.Trial, params: dict[str, Any]) -> bool:
        """Tell ``trial`` PRUNED, marked skipped and infeasible, when its parameters break a
        constraint on a parameter metric; constraints measured only on volumes read 0 (unknown)."""
        known = {c.metric: PARAM_METRICS[c.metric](params) for c in self.param_constraints()}
        broken = [c for c in self.param_constraints() if c.violation(known[c.metric]) > 0]
        if not broken:
            return False
        self._skip(trial, f"{broken[0].metric} {known[broken[0].metric]:g} breaks {broken[0].describe()}",
                   [(c.describe(), c.violation(known[c.metric]), known[c.metric])
                    if c.metric in known else (c.describe(), 0.0, None) for c in self.spec.constraints])  # fmt: skip
        return True

    def skip_if_measured(self, trial: optuna.trial.Trial, params: dict[str, Any]) -> bool:
        """With ``volume_seeds: common``, tell ``trial`` PRUNED unrun (skipped, ``repeat_of``)
        when a trial that is running, COMPLETE or pruner-PRUNED has its parameters: the same
        parameters on the same seeds give the same volumes. It carries the earlier trial's
        constraints (none yet while it runs), so TPE sees a point it need not propose again; a
        re-queued trial is always run."""
        if self.spec.volume_seeds != "common" or attrs.REQUEUED_FROM in trial.user_attrs:
            return False
        states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
        earlier = next((t for t in self.study.get_trials(deepcopy=False, states=states)
                        if t.number != trial.number and t.params == params and not t.user_attrs.get(attrs.SKIPPED)),
                       None)  # fmt: skip
        if earlier is None:
            return False
        violations = earlier.system_attrs.get(CONSTRAINTS_KEY, [])
        names = [c.describe() for c in self.spec.constraints]
        trial.set_user_attr(attrs.REPEAT_OF, earlier.number)
        self._skip(trial, f"trial {earlier.number} measured these parameters on the same seeds",
                   [(name, v, earlier.user_attrs.get(attrs.CONSTRAINT_PREFIX + name)) for name, v in zip(names, violations)])
        return True

    def _skip(self, trial: optuna.trial.Trial, why: str, constraints: list[tuple[str, float, float | None]]) -> None:
        """Tell ``trial`` PRUNED unrun: its constraints, ``skipped`` and why ("not run: ...")."""
        set_constraints(self.study, trial, constraints)
        trial.set_user_attr(attrs.SKIPPED, True)
        trial.set_user_attr(attrs.FAIL_REASON, f"not run: {why}")
        self.study.tell(trial, state=TrialState.PRUNED)
        log.debug("trial %d: skipped (%s)", trial.number, why)

    def next_batch(self, ctx: TrialContext) -> tuple[int, int]:
        """(volumes, first seed) of the trial's next generation call: all of its volumes, or with
        a pruner the next ``every``; volume i of a trial always comes from seed ``seed + i``."""
        done = len(ctx.volumes)
        n = self.spec.samples_per_trial - done
        if self.spec.pruner is not None:
            n = min(n, self.spec.pruner.every)
        return n, ctx.seed + done

    @staticmethod
    def check_volumes(volumes: list[Any]) -> None:
        for i, vol in enumerate(volumes):
            labels = np.unique(vol.values)
            if labels.size < 2:
                raise ValueError(f"sample {i} is all one phase (label {int(labels[0])}): an unusable volume")

    # ------------------------------------------------------------------ finish, fail

    def finish(self, ctx: TrialContext) -> None:
        """Objectives, constraints, per-volume values, montage and MLflow run; then tell."""
        try:
            samples = self.samples(ctx)
            per_volume = per_sample_objectives(self.objectives, samples)
            values = means_over_samples(per_volume)
            metrics = self.metrics(samples, values)
            set_constraints(self.study, ctx.trial, self.constraints(metrics))
            ctx.trial.set_user_attr(attrs.VALUES_PER_VOLUME, _rounded(per_volume))  # the spread behind each mean
            for o, _ in self.objectives:  # named, with units, as a person reads them on the trial page
                ctx.trial.set_user_attr(labelled(o.name), float(f"{values[o.name]:.4g}"))
        except Exception as err:  # noqa: BLE001
            self.fail(ctx, reason(err))
            return
        montage = self._montage(ctx)
        self._log_run(ctx, "FINISHED", values, metrics, montage=montage)
        self.study.tell(ctx.trial, [values[o.name] for o, _ in self.objectives])
        if ctx.reporter is not None and ctx.reporter is not ctx.trial and self.pruning is not None:
            self.pruning.tell(ctx.reporter, values[self.objectives[0][0].name])

    def _montage(self, ctx: TrialContext) -> Path | None:
        """The trial's slice montage into the artifact store, where optuna-dashboard shows it;
        returns its file (MLflow logs the same picture), None when there is none."""
        from micro_doe.studies.dashboard import trial_montage, upload_trial_image

        if self.store is None or not self.spec.pictures:
            return None
        png = Path(self.spec.artifacts) / "montages" / f"trial-{ctx.number}.png"
        try:
            trial_montage(ctx.volumes, png, self.example_image, title=f"trial {ctx.number}")
            upload_trial_image(self.study, ctx.trial, png, self.store)
        except Exception as err:  # noqa: BLE001 — a picture never costs a trial
            ctx.trial.set_user_attr(attrs.MONTAGE_ERROR, reason(err))
            return None
        return png

    def fail(self, ctx: TrialContext, why: str, requeue: bool = False) -> None:
        """Tell FAIL with the reason; ``requeue``: the trial was not at fault, run it again."""
        ctx.trial.set_user_attr(attrs.FAIL_REASON, why)
        if requeue:
            ctx.trial.set_user_attr(attrs.REQUEUED, True)
        try:
            self._log_run(ctx, "FAILED", {}, {}, why=why)
        finally:
            self.study.tell(ctx.trial, state=TrialState.FAIL)
            if ctx.reporter is not None and ctx.reporter is not ctx.trial and self.pruning is not None:
                self.pruning.tell(ctx.reporter, state=TrialState.FAIL)
            if requeue:
                self.study.enqueue_trial(ctx.trial.params, user_attrs={attrs.SEED: ctx.seed, attrs.REQUEUED_FROM: ctx.number})

    def is_told(self, ctx: TrialContext) -> bool:
        """Whether the trial is finished in the storage (told COMPLETE, FAIL or PRUNED)."""
        return self.study._storage.get_trial(ctx.trial._trial_id).state.is_finished()

    # ------------------------------------------------------------------ pruning

    def decide(self, ctx: TrialContext) -> str:
        """Report the running mean of the first objective over the volumes so far (step = their
        number; for ``pareto_halving`` every objective's, as
        :data:`~micro_doe.studies.trial_attrs.RUNNING_MEANS`, with their standard errors from two
        volumes on, :data:`~micro_doe.studies.trial_attrs.RUNNING_ERRORS`) and let the pruner
        decide: "continue", "prune" (the caller then tells it PRUNED with :meth:`prune`, at once
        or, with ``pruner.in_order``, once the next trial is asked), or "failed" (told FAIL here)."""
        assert self.pruning is not None and self.spec.pruner is not None
        try:
            pareto = self.spec.pruner.kind == "pareto_halving"
            judged = self.objectives if pareto else self.objectives[:1]
            means, errors = running_summary(per_sample_objectives(judged, self.samples(ctx)))
            if ctx.reporter is None:
                ctx.reporter = ctx.trial if self.pruning is self.study else self.pruning.ask()
                if ctx.reporter is not ctx.trial:
                    ctx.reporter.set_user_attr(attrs.STUDY_TRIAL, ctx.number)
            step = len(ctx.volumes)
            if pareto:
                ctx.running_means[str(step)] = means
                ctx.reporter.set_user_attr(attrs.RUNNING_MEANS, ctx.running_means)
                if step > 1:  # a standard error needs two volumes (margin: min_resource ≥ 2)
                    ctx.running_errors[str(step)] = errors
                    ctx.reporter.set_user_attr(attrs.RUNNING_ERRORS, ctx.running_errors)
            ctx.reporter.report(means[0], step=step)
            ctx.reported = means[0]
            return "prune" if ctx.reporter.should_prune() else "continue"
        except Exception as err:  # noqa: BLE001
            self.fail(ctx, reason(err))
            return "failed"

    def prune(self, ctx: TrialContext) -> None:
        """Tell the trial PRUNED (and its companion trial), after logging it to MLflow with its
        volumes and storing the objectives measured on them (:data:`~micro_doe.studies.trial_attrs.PARTIAL_VALUES`,
        and per volume :data:`~micro_doe.studies.trial_attrs.VALUES_PER_VOLUME`) and its constraints."""
        ctx.trial.set_user_attr(attrs.PRUNED_AFTER, len(ctx.volumes))
        samples = self.samples(ctx)
        try:
            per_volume = per_sample_objectives(self.objectives, samples)
            values = means_over_samples(per_volume)
            ctx.trial.set_user_attr(attrs.PARTIAL_VALUES, [float(values[o.name]) for o, _ in self.objectives])
            ctx.trial.set_user_attr(attrs.VALUES_PER_VOLUME, _rounded(per_volume))
            metrics = self.metrics(samples, values)
            if all(c.metric in metrics for c in self.spec.constraints):  # as measured on its volumes
                set_constraints(self.study, ctx.trial, self.constraints(metrics))
        except Exception:  # noqa: BLE001 — the decision stands; the run just shows less
            values, metrics = {self.objectives[0][0].name: ctx.reported}, {}
        try:
            self._log_run(ctx, "PRUNED", values, metrics)
        finally:
            self.study.tell(ctx.trial, state=TrialState.PRUNED)
            if ctx.reporter is not None and ctx.reporter is not ctx.trial and self.pruning is not None:
                self.pruning.tell(ctx.reporter, state=TrialState.PRUNED)
        log.debug("trial %d: pruned after %d volumes", ctx.number, len(ctx.volumes))

    # ------------------------------------------------------------------ measured values

    def samples(self, ctx: TrialContext) -> list[Sample]:
        descriptors = [Descriptors.model_validate(d) for d in ctx.descriptors]
        return [Sample(volume=v, descriptors=d, params=ctx.params, predicted=p, seconds=s, reference=self.reference)
                for v, d, p, s in zip(ctx.volumes, descriptors, ctx.predicted, ctx.seconds)]  # fmt: skip

    def metrics(self, samples: list[Sample], values: dict[str, float]) -> dict[str, float]:
        """Every metric of a trial's samples: the trial metrics, the objectives that constraints
        name (registered ones need not be objectives of this study), and the objective ``values``."""
        extra = evaluate_objectives([(o, o.direction) for o in self.spec.constraint_objectives()], samples)
        return trial_metrics(samples) | extra | values

    def constraints(self, metrics: dict[str, float]) -> list[tuple[str, float, float]]:
        """Each constraint's description, violation (≤ 0: feasible) and measured value; a
        ValueError names a constraint metric that was not measured."""
        missing = [c.metric for c in self.spec.constraints if c.metric not in metrics]
        if missing:
            raise ValueError(f"constraint metric {missing[0]!r} was not measured")
        return [(c.describe(), c.violation(metrics[c.metric]), metrics[c.metric]) for c in self.spec.constraints]

    def _log_run(self, ctx: TrialContext, state: str, values: dict[str, float], metrics: dict[str, float],
                 why: str | None = None, montage: Path | None = None) -> None:  # fmt: skip
        """The trial's MLflow run (its parameters with the seed, volumes, real start and duration),
        and its link on the trial, which the dashboard shows (nothing without tracking)."""
        if self.tracker is None:
            return
        run_id = self.tracker.log_trial(
            trial_number=ctx.number, params=ctx.params | {"seed": ctx.seed}, values=values, metrics=metrics,
            volumes=ctx.volumes, reference=self.reference, predicted=ctx.predicted, state=state, reason=why,
            seconds=time.perf_counter() - ctx.started, started_at=ctx.started_at, montage=montage,
        )  # fmt: skip
        ctx.trial.set_user_attr(attrs.MLFLOW_RUN, self.tracker.run_url(run_id))


def _rounded(per_volume: dict[str, list[float]]) -> dict[str, list[float]]:
    """Per-volume values to 6 significant digits: the trial page shows them, and 16 digits
    stretch it without telling more."""
    return {name: [float(f"{v:.6g}") for v in values] for name, values in per_volume.items()}
