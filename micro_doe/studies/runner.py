"""A design-of-experiments study: :class:`Study` runs it, :class:`StudyResult` reports it.

The parts, each with one job:

- :mod:`~micro_doe.studies.scheduler` decides what runs next (pipelining, pruning decisions in
  order, timeouts, lost actors, stalls);
- :mod:`~micro_doe.studies.executors` runs the calls: Ray generator and evaluator actors with
  their health (the default), or in this process (``executor="local"``);
- :mod:`~micro_doe.studies.trial_lifecycle` writes a trial's life into the stores (ask, finish,
  fail, prune);
- :mod:`~micro_doe.studies.trial_attrs` names what is written on trials, and the budget rule.

One trial, top to bottom: ``study.ask()`` (re-queued trials first) gives its parameters (the
spec's search space plus the fixed ones) and its seed; a generator samples
``samples_per_trial`` volumes; the evaluators describe every volume; objectives and constraint
metrics are computed from the samples (:mod:`micro_doe.studies.objectives`); an MLflow child
run gets the parameters, values, metrics and artifacts, the Optuna artifact store the slice
montage (shown by optuna-dashboard), then ``study.tell``.

**Failures.** A trial whose generation or evaluation fails for good (after Ray's actor
restart and task retry), or whose volume is unusable (all one phase), is told FAIL with its
reason in the ``fail_reason`` user attribute and in MLflow; the study goes on.

**Resume.** Every trial is stamped with the id of the driver that asked it. A rerun finds
trials left RUNNING by a driver that died, tells them FAIL ("driver died"), marks them
``requeued`` and enqueues their parameters (and seed) again. Budgets count COMPLETE trials
and FAIL trials that were not re-queued (:func:`~micro_doe.studies.trial_attrs.uses_budget`),
so a resumed study ends with exactly ``n_trials`` counted trials, none lost and none counted
twice. ``timeout_s`` bounds the whole run: trials in flight when it passes are failed and
re-queued, so they run first next time.

**Several drivers per study.** Each driver holds its own lease (a heartbeat in the storage,
:func:`~micro_doe.studies.study_storage.acquire_lease`) taken before it touches any trial,
renewed while it runs and released at the end; stale-trial detection fails only trials of
drivers whose lease is gone, never a live driver's. The budget is shared
(:func:`~micro_doe.studies.study_storage.claim_budget_slot`).
"""

from __future__ import annotations

import logging
import math
import os
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import optuna
from optuna.trial import TrialState

from micro_doe.platform.bundles import load_held_out, load_reference
from micro_doe.platform.descriptors import Descriptors
from micro_doe.platform.generators import BUILTIN_KINDS, find_generator_kind
from micro_doe.platform.interrupts import interrupts_raise
from micro_doe.studies import trial_attrs as attrs
from micro_doe.studies.executors import Executor, LocalExecutor, RayExecutor
from micro_doe.studies.objectives import METRIC_PATTERN_NAMES, METRICS, objective_name
from micro_doe.studies.preflight import check_before_start
from micro_doe.studies.scheduler import Scheduler
from micro_doe.studies.spec import StudySpec
from micro_doe.studies.study_storage import (
    CONSTRAINTS_KEY,
    acquire_lease,
    describe_study,
    enqueue_initial_design,
    live_drivers,
    open_pruning_study,
    open_study,
    release_lease,
    requeue_stale_trials,
)
from micro_doe.studies.study_yaml import load_spec, parse_spec
from micro_doe.studies.trial_attrs import SEED as SEED_ATTR  # noqa: F401 — re-exported for scripts
from micro_doe.studies.trial_attrs import VALUES_PER_VOLUME  # noqa: F401 — re-exported for scripts
from micro_doe.studies.trial_lifecycle import TrialLifecycle, trial_seed  # noqa: F401 — trial_seed re-exported

log = logging.getLogger("micro_doe.studies")

ExecutorKind = Literal["ray", "local"]


@dataclass
class TrialRecord:
    """A finished trial as the result reports it."""

    number: int
    state: str
    params: dict[str, Any]
    values: list[float] | None
    reason: str | None = None
    violation: float = 0.0  # sum of positive constraint values; 0 when feasible
    skipped: bool = False  # PRUNED unrun: a constraint on its parameters (passes_per_volume), or a repeat
    requeued: bool = False  # a FAIL not of its own making (its actor lost, interrupted): run again, counts nowhere


@dataclass
class StudyProgress:
    """What a progress display shows; handed to ``on_progress`` after every event."""

    done: int
    failed: int
    running: int
    budget: int
    best: list[TrialRecord] = field(default_factory=list)
    note: str = ""  # e.g. that nothing has happened for a while, and what Ray is waiting for
    pruned: int = 0
    skipped: int = 0  # over a constraint on their parameters, or repeats: never run, no budget used


@dataclass
class StudyResult:
    """The outcome of :meth:`Study.run`: every trial, the best (Pareto) ones, where to look."""

    name: str
    directions: list[str]
    objective_names: list[str]
    trials: list[TrialRecord]
    best_trials: list[TrialRecord]
    storage: str
    tracking: str | None
    artifacts: str
    parent_run_id: str | None
    seconds: float
    generator_busy_seconds: float
    startup_seconds: float
    mlflow_hint: str = ""  # how to open the study's experiment in the MLflow UI

    @property
    def busy_fraction(self) -> float:
        """Share of the time after start-up (Ray, actors, model load) that generators worked."""
        return self.generator_busy_seconds / max(self.seconds - self.startup_seconds, 1e-9)

    @property
    def completed(self) -> list[TrialRecord]:
        return [t for t in self.trials if t.state == "COMPLETE"]

    @property
    def failed(self) -> list[TrialRecord]:
        """Trials that failed of their own making (a re-queued one was run again: it counts nowhere)."""
        return [t for t in self.trials if t.state == "FAIL" and not t.requeued]

    @property
    def pruned(self) -> list[TrialRecord]:
        return [t for t in self.trials if t.state == "PRUNED" and not t.skipped]

    @property
    def skipped(self) -> list[TrialRecord]:
        """Points never run: they broke a constraint on their parameters, or repeat a measured one."""
        return [t for t in self.trials if t.skipped]

    def dashboard_command(self) -> str:
        return f"micro-doe dashboard {self.name}  # or: optuna-dashboard {self.storage} --host 127.0.0.1"

    def mlflow_command(self) -> str:
        """``mlflow ui …`` for a database store; the server's URL for a tracking server."""
        from micro_doe.tracking.registry import ui_hint

        if self.tracking is None:
            return "(no MLflow: tracking is null)"
        return self.mlflow_hint or ui_hint(self.tracking)


class Study:
    """A design-of-experiments study, from a study.yaml, a bundled study's name, a mapping with
    the same fields, or a :class:`~micro_doe.studies.spec.StudySpec`::

        Study("study.yaml").run()
        Study({"name": "quick", "generator": {...}, ..., "storage": "memory", "tracking": None},
              objectives=[my_objective], executor="local").run()

    ``objectives``: the study's objectives as functions registered with
    :func:`~micro_doe.studies.objectives.objective` (or names), replacing the spec's; each
    keeps its registered direction. ``executor``: ``"ray"`` (the default: generator and
    evaluator actors on the Ray cluster in ``RAY_ADDRESS``, or a local Ray instance) or
    ``"local"`` (one generator and one evaluator in this process, no Ray: quick studies and
    notebooks; ``timeout_s`` is then checked between calls, not during one). A mapping with a
    mistake raises :class:`~micro_doe.studies.study_yaml.SpecError` naming every field.
    Relative paths are relative to ``base_dir`` (default: the working directory).
    """

    def __init__(self, spec: StudySpec | Mapping[str, Any] | str | Path, base_dir: str | Path | None = None, *,
                 objectives: Sequence[Callable[..., float] | str] | None = None, file: str | None = None,
                 executor: ExecutorKind = "ray") -> None:  # fmt: skip
        if executor not in ("ray", "local"):
            raise ValueError(f"executor: expected 'ray' or 'local', got {executor!r}")
        base = Path(base_dir) if base_dir is not None else Path.cwd()
        chosen = None if objectives is None else {"objectives": [{"name": objective_name(o)} for o in objectives]}
        if isinstance(spec, str | Path):
            file = file or str(spec)
            spec = load_spec(spec, chosen)
        elif isinstance(spec, Mapping):
            spec = parse_spec(dict(spec) | (chosen or {}), base=base, file=file or "<study>")
        elif chosen is not None:
            spec = parse_spec(spec.model_dump(mode="json", by_alias=True) | chosen, base=base, file=file or "<study>")
        self.spec = spec.resolved_paths(base)
        self.file = file or "<study>"  # named in error messages
        self.executor = executor
        self.objectives = self.spec.resolved_objectives()
        self.driver_id = uuid.uuid4().hex
        self.completed_trials = 0  # COMPLETE trials in the storage when the last run() ended

    @classmethod
    def from_yaml(cls, ref: str | Path, overrides: Mapping[str, Any] | None = None, *, executor: ExecutorKind = "ray") -> Study:
        """Load a study.yaml (or a bundled study by name); relative paths are relative to the cwd."""
        return cls(load_spec(ref, overrides), file=str(ref), executor=executor)

    # ------------------------------------------------------------------ run

    def run(
        self,
        n_trials: int | None = None,
        timeout_s: float | None = None,
        on_progress: Callable[[StudyProgress], None] | None = None,
        *,
        pipelining: bool = True,
    ) -> StudyResult:
        """Run (or resume) the study until its budget is used; return every trial and the Pareto front.

        ``pipelining=False`` waits for each trial's evaluation before the next generation
        (the benchmark's reference; never faster). Ctrl-C or SIGTERM fail and re-queue the
        running trials, stop the actors, and raise :class:`~micro_doe.platform.interrupts.Interrupted`.
        """
        default_env()
        spec = self.spec
        budget = n_trials if n_trials is not None else spec.budget.n_trials
        timeout = timeout_s if timeout_s is not None else spec.budget.timeout_s
        start = time.perf_counter()
        if budget < 1 or (timeout is not None and not (math.isfinite(timeout) and timeout > 0)):
            raise ValueError(f"n_trials must be ≥ 1 and timeout_s a positive number of seconds, got {budget}, {timeout}")
        check_before_start(spec, self.file)  # stores, drivers, folders, registered models: creates nothing
        # Then Ray: an unreachable cluster, or one too small for the actors, creates no store either.
        executor = self._executor()
        with interrupts_raise():  # after ray.init, which sets its own SIGTERM handler (sys.exit)
            study = open_study(spec)
            acquire_lease(study, self.driver_id)  # before touching any trial
            try:
                return self._drive(study, executor, budget, timeout, start, on_progress, pipelining)
            finally:
                release_lease(study, self.driver_id)

    def _executor(self) -> Executor:
        """The local executor, or Ray's once the cluster is reachable, large enough, and runs this micro_doe."""
        if self.executor == "local":
            return LocalExecutor()
        from micro_doe.actors import check_capacity, check_workers, connect

        info = connect()
        r = self.spec.resources
        check_capacity(info, r.generators, r.evaluators, r.gpus_per_generator)
        check_workers(info)  # a cluster's nodes run this micro_doe, or nothing is created
        return RayExecutor(info, r.gpus_per_generator, r.placement_timeout_s)

    def _drive(self, study: optuna.Study, executor: Executor, budget: int, timeout: float | None, start: float,
               on_progress: Callable[[StudyProgress], None] | None, pipelining: bool) -> StudyResult:  # fmt: skip
        """Set the stores up, run the scheduler, and record the outcome whatever happens."""
        from micro_doe.studies.dashboard import artifact_store

        spec = self.spec
        tracker: Any = None
        status = "FINISHED"
        try:
            # First: the actors boot (a worker process, imports, the model) while the stores are set up.
            executor.start(self._generator_spec(), spec.resources.generators, spec.resources.evaluators,
                           f"micro-doe:{spec.name}:{self.driver_id[:8]}")
            describe_study(study, spec, [o.name for o, _ in self.objectives])
            requeue_stale_trials(study, self.driver_id)
            enqueue_initial_design(study, spec, self.driver_id)
            store = artifact_store(Path(spec.artifacts) / "optuna")
            example = self._example_image()
            tracker, parent = self._tracker(study, example)
            pruning = open_pruning_study(spec, study) if spec.pruner is not None else None
            trials = TrialLifecycle(spec, self.objectives, self.driver_id, study, tracker, self._reference(), pruning,
                                    store, example)

            def report(running: int, note: str) -> None:
                if on_progress is not None:
                    progress = self._progress(study, budget, running)
                    progress.note = note
                    on_progress(progress)

            scheduler = Scheduler(spec, trials, executor, budget, timeout, start, pipelining, report)
            scheduler.run()
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        except BaseException:
            status = "FAILED"
            raise
        finally:
            try:
                executor.stop()
            except Exception:  # noqa: BLE001 — Ray itself may be gone; nothing left to free
                log.warning("could not stop the study's actors", exc_info=True)
            summary: dict[str, Any] = {"completed": sum(t.state == TrialState.COMPLETE for t in study.trials)}
            self.completed_trials = summary["completed"]
            if tracker is not None:
                try:
                    names = [o.name for o, _ in self.objectives]
                    summary |= tracker.log_outcome(_outcome(study), names, [d for _, d in self.objectives])
                except Exception:  # noqa: BLE001 — the trials are safe in both stores; the summary is extra
                    log.warning("could not log the study's outcome to MLflow", exc_info=True)
                tracker.finish_invocation(status, summary)

        end = time.perf_counter()
        result = self._result(study, parent, end - start, scheduler.busy, (scheduler.first_submit or end) - start)
        result.mlflow_hint = "" if tracker is None else tracker.run_url_hint
        return result

    def _tracker(self, study: optuna.Study, example: Any) -> tuple[Any, str | None]:
        """(the study's MLflow tracker, its parent run of this invocation); (None, None) without tracking."""
        if self.spec.tracking is None:
            return None, None
        from micro_doe.studies.mlflow_runs import StudyTracker

        spec, tracking = self.spec, self.spec.tracking
        assert tracking is not None
        tracker = StudyTracker(tracking, spec.name, spec.artifacts, driver=self.driver_id)
        tracker.fail_stale_runs(live_drivers(study))  # another live driver's runs, on any host, stay
        tracker.describe_experiment([(o.name, d) for o, d in self.objectives], METRICS | METRIC_PATTERN_NAMES, spec.purpose,
                                    [c.metric for c in spec.constraints], list(spec.search))
        parent = tracker.start_invocation(spec.model_dump(mode="json", by_alias=True), {"driver": self.driver_id})
        tracker.example_image = example
        tracker.pictures = spec.pictures
        return tracker, parent

    # ------------------------------------------------------------------ helpers

    def _generator_spec(self) -> dict[str, Any]:
        # What a trial is judged against (reference) is the driver's business, not the actor's.
        spec = self.spec.generator.model_dump(exclude={"reference"}) | {"tracking_uri": self.spec.tracking}
        if self.spec.generator.kind not in BUILTIN_KINDS:  # a kind of your own: the class travels with the spec
            spec["factory"] = find_generator_kind(self.spec.generator.kind).factory
        return spec

    def _reference(self) -> Descriptors | None:
        """The model's training-data reference, for error-rate objectives (read on the driver;
        the network itself is only loaded by the generator actors). An LDM bundle has none:
        its samples are judged against their requested targets, and the Cahn–Hilliard solver
        has no training data."""
        from micro_doe.tracking.registry import resolve_model

        if self.spec.generator.kind != "micro3diff":
            return None
        path = resolve_model(self.spec.generator.model, self.spec.tracking)
        held_out = getattr(self.spec.generator, "reference", "training") == "held_out"
        return load_held_out(path) if held_out else load_reference(path)

    def _example_image(self) -> Any:
        """One training image of a Micro3Diff bundle (None for other kinds or a bundle without examples)."""
        from micro_doe.platform.bundles import load_examples
        from micro_doe.tracking.registry import resolve_model

        if self.spec.generator.kind != "micro3diff":
            return None
        examples = load_examples(resolve_model(self.spec.generator.model, self.spec.tracking))
        return None if examples is None else examples.isel(sample=0)

    def _progress(self, study: optuna.Study, budget: int, running: int) -> StudyProgress:
        trials = study.get_trials(deepcopy=False)
        done = sum(t.state == TrialState.COMPLETE for t in trials)
        failed = sum(attrs.counted_failure(t) for t in trials)
        skipped = sum(bool(t.user_attrs.get(attrs.SKIPPED)) for t in trials)
        pruned = sum(t.state == TrialState.PRUNED for t in trials) - skipped
        best = [_record(t) for t in _best(study, trials)] if done else []
        return StudyProgress(done=done, failed=failed, running=running, budget=budget, best=best, pruned=pruned,
                             skipped=skipped)

    def _result(self, study: optuna.Study, parent: str | None, seconds: float, busy: float, startup: float) -> StudyResult:
        spec = self.spec
        return StudyResult(
            name=spec.name,
            directions=[d for _, d in self.objectives],
            objective_names=[o.name for o, _ in self.objectives],
            trials=[_record(t) for t in study.get_trials(deepcopy=False)
                    if t.state.is_finished() and not t.user_attrs.get(attrs.SURPLUS)],  # surplus: never run
            best_trials=[_record(t) for t in _best(study)],
            storage=spec.storage,
            tracking=spec.tracking,
            artifacts=spec.artifacts,
            parent_run_id=parent,
            seconds=seconds,
            generator_busy_seconds=busy,
            startup_seconds=startup,
        )


def _best(study: optuna.Study, trials: list[optuna.trial.FrozenTrial] | None = None) -> list[optuna.trial.FrozenTrial]:
    """Feasible Pareto-optimal trials (for one objective, the best ones), as ``study.best_trials``
    gives them but read once without copies: Optuna's deep-copies every trial, which made the
    progress display the largest cost of a long study's trial. ``trials``: already read."""
    from optuna.study._multi_objective import _get_pareto_front_trials_by_trials

    trials = study.get_trials(deepcopy=False) if trials is None else trials
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    return _get_pareto_front_trials_by_trials(complete, study.directions, consider_constraint=True)


def _outcome(study: optuna.Study) -> list[dict[str, Any]]:
    """Finished trials as :meth:`StudyTracker.log_outcome` takes them (re-queued failures left out)."""
    front = {t.number for t in _best(study)}
    rows = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)):
        if attrs.is_requeued_or_surplus(t):
            continue
        rows.append({
            "number": t.number,
            "state": t.state.name,
            "values": list(t.values) if t.values else None,
            "params": dict(t.params),
            "feasible": _record(t).violation <= 0.0,
            "pareto": t.number in front,
        })
    return rows


def _record(t: optuna.trial.FrozenTrial) -> TrialRecord:
    violation = sum(max(0.0, float(v)) for v in t.system_attrs.get(CONSTRAINTS_KEY, ()))
    values = list(t.values) if t.values else None
    return TrialRecord(t.number, t.state.name, dict(t.params), values, t.user_attrs.get(attrs.FAIL_REASON), violation,
                       bool(t.user_attrs.get(attrs.SKIPPED)), bool(t.user_attrs.get(attrs.REQUEUED)))


def default_env() -> None:
    """Quiet, offline defaults for the libraries the driver uses (never weakens Ray's token auth)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
