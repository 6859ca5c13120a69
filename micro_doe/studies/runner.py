"""The study driver: Optuna ask/tell over Ray generator and evaluator actors, logged to MLflow.

One trial, top to bottom:

1. ``study.ask()``; the trial's parameters come from the spec's search space (plus the
   fixed ones) and its seed from its number, or with ``volume_seeds: common`` the study's
   one seed for every trial (a re-queued trial keeps its original seed);
2. a ``GeneratorActor`` samples ``samples_per_trial`` volumes;
3. the ``EvaluatorPool`` describes every volume (vf, S2, L, τ, interface area);
4. objectives and constraint metrics are computed from the samples
   (:mod:`micro_doe.studies.objectives`); constraints are stored with
   :func:`~micro_doe.studies.study_storage.set_constraints` (feasible when ≤ 0), in the form
   both Optuna's samplers and optuna-dashboard read;
5. an MLflow child run gets the parameters, values, metrics and artifacts, the Optuna
   artifact store the slice montage (shown by optuna-dashboard), then ``study.tell``.

**Pipelining.** Each generator actor holds one trial at a time; the moment its volumes
are back it gets the next trial, while the evaluators work on the previous one. At most
as many trials wait for evaluation as there are generators (backpressure), so a slow
evaluator pool slows the study instead of piling up volumes.

**Pruning.** With a pruner a trial generates ``every`` volumes at a time; after each batch is
evaluated the pruner decides, and a trial that goes on waits for a free generator (its own
was handed the next trial meanwhile). So pruning changes *when* the sampler is asked, and
with it the finished trials it sees and the trials it proposes. ``pruner.in_order`` keeps
the order of a study without a pruner: a trial keeps its generator through its decisions,
the next trial is asked only once every earlier trial but the newest is told, and a pruned
trial is told only after the next one is asked. Each decision then costs its evaluation
time in wall time, but the sampler proposes the trials it would have without the pruner,
unless a pruned trial would have ranked among its best.

**Per volume.** A complete or pruned trial stores each objective's value on each of its
volumes in the ``values_per_volume`` user attribute; its values are their means.

**Failures.** A trial whose generation or evaluation fails for good (after Ray's actor
restart and task retry), or whose volume is unusable (all one phase), is told FAIL with
its reason in the ``fail_reason`` user attribute and in MLflow; the study goes on.

**Resume.** Every trial is stamped with the id of the driver that asked it. A rerun finds
trials left RUNNING by a driver that died, tells them FAIL ("driver died"), marks them
``requeued`` and enqueues their parameters (and seed) again. Budgets count COMPLETE trials
and FAIL trials that were not re-queued, so a resumed study ends with exactly
``n_trials`` counted trials, none lost and none counted twice. Re-queued trials run before
any other.

**Timeout and stalls.** ``timeout_s`` bounds the whole run: trials in flight when it passes
are failed and re-queued, so they run first next time. When no trial moves for 60 s (a lost
node, a cluster without room for a restarting actor) the progress display and the log say
so, with Ray's free resources.

**Lost nodes.** A call that fails because its actor's process or node died (after Ray's own
restart and retry) fails its trial with that reason and re-queues it, and the actor takes no
work until it answers a probe again (:class:`~micro_doe.actors.ActorHealth`). An actor that
stays unanswering, or waits for a node, for longer than ``resources.placement_timeout_s``,
or that Ray gave up, is lost: its trials are re-queued and the study goes on with the actors
left. When no generator or no evaluator is left, every trial in flight is re-queued and the
run stops with :class:`~micro_doe.actors.CapacityLostError`.

**Several drivers per study.** Each driver holds its own lease (a heartbeat in the storage,
:func:`~micro_doe.studies.study_storage.acquire_lease`) taken before it touches any trial,
renewed while it runs and released at the end; stale-trial detection fails only trials of
drivers whose lease is gone (expired after 60 s, released, or, on the same host, a dead
process), never a live driver's. The budget is shared: a driver asks for a trial only while
fewer than ``n_trials`` trials of any driver use the budget, and a trial that started after
the budget was taken (two drivers asking at once) gets no slot
(:func:`~micro_doe.studies.study_storage.claim_budget_slot`): it is marked surplus, counts
nowhere, and its point goes back to the queue if it came from there.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import ray
from optuna.trial import TrialState

from micro_doe.actors import (
    ActorHealth,
    CapacityLostError,
    ClusterInfo,
    EvaluatorPool,
    GeneratorActor,
    check_capacity,
    check_workers,
    connect,
    evaluator_options,
    generator_options,
    is_actor_failure,
)
from micro_doe.platform.bundles import load_held_out, load_reference
from micro_doe.platform.descriptors import Descriptors
from micro_doe.platform.interrupts import interrupts_deferred, interrupts_raise, last_signal
from micro_doe.studies.objectives import (
    METRIC_PATTERN_NAMES,
    METRICS,
    Sample,
    evaluate_objectives,
    labelled,
    means_over_samples,
    per_sample_objectives,
    trial_metrics,
)
from micro_doe.studies.pareto_pruner import RUNNING_ERRORS, RUNNING_MEANS, running_summary
from micro_doe.studies.preflight import check_before_start
from micro_doe.studies.pruned_observations import PARTIAL_VALUES
from micro_doe.studies.spec import StudySpec
from micro_doe.studies.study_storage import (
    CONSTRAINTS_KEY,
    acquire_lease,
    claim_budget_slot,
    claim_requeued_trial,
    describe_study,
    enqueue_initial_design,
    live_drivers,
    open_pruning_study,
    open_study,
    release_lease,
    release_surplus_trial,
    renew_lease,
    requeue_stale_trials,
    set_constraints,
    trials_using_budget,
)
from micro_doe.studies.study_yaml import load_spec

log = logging.getLogger("micro_doe.studies")
STALL_WARNING_S = 60.0  # no event for this long: tell the user what Ray is waiting for
OWNER_ATTR = "driver"
MLFLOW_RUN_ATTR = "mlflow run"  # the trial's MLflow run, as a link the dashboard shows
SEED_ATTR = "seed"
REASON_ATTR = "fail_reason"
VALUES_PER_VOLUME = "values_per_volume"  # {objective name: [its value on volume 0, 1, ...]}


def trial_seed(sampler_seed: int | None, number: int, common: bool = False) -> int:
    """The seed of a fresh trial's first volume (volume i: seed + i); 1 000 volumes a trial
    before two trials' seeds could meet. ``common`` (``volume_seeds: common``): the same for
    every trial of the study, so trials are compared on the same noise."""
    return (sampler_seed or 0) * 1_000_003 + (0 if common else number * 1_000)


@dataclass
class TrialRecord:
    """A finished trial as the result reports it."""

    number: int
    state: str
    params: dict[str, Any]
    values: list[float] | None
    reason: str | None = None
    violation: float = 0.0  # sum of positive constraint values; 0 when feasible


@dataclass
class StudyProgress:
    """What a progress display shows; handed to ``on_progress`` after every event."""

    done: int
    failed: int
    running: int
    budget: int
    best: list[TrialRecord] = field(default_factory=list)
    note: str = ""
    pruned: int = 0  # e.g. that nothing has happened for a while, and what Ray is waiting for


@dataclass
class StudyResult:
    """The outcome of :meth:`Study.run`: every trial, the best (Pareto) ones, where to look."""

    name: str
    directions: list[str]
    objective_names: list[str]
    trials: list[TrialRecord]
    best_trials: list[TrialRecord]
    storage: str
    tracking: str
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
        return [t for t in self.trials if t.state == "FAIL"]

    @property
    def pruned(self) -> list[TrialRecord]:
        return [t for t in self.trials if t.state == "PRUNED"]

    def dashboard_command(self) -> str:
        return f"micro-doe dashboard {self.name}  # or: optuna-dashboard {self.storage} --host 127.0.0.1"

    def mlflow_command(self) -> str:
        """``mlflow ui …`` for a database store; the server's URL for a tracking server."""
        from micro_doe.tracking.registry import ui_hint

        return self.mlflow_hint or ui_hint(self.tracking)


@dataclass
class _Trial:
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
    eval_refs: list[Any] = field(default_factory=list)  # evaluations of the latest batch of volumes
    reporter: optuna.trial.Trial | None = None  # where intermediate values go (pruning), once reported
    running_means: dict[str, list[float]] = field(default_factory=dict)  # pareto_halving: step → every objective
    running_errors: dict[str, list[float | None]] = field(default_factory=dict)  # ... and their standard errors
    reported: float = math.nan  # the running mean of the first objective last reported to the pruner


class Study:
    """A design-of-experiments study: ``Study(spec).run()`` or ``Study.from_yaml(path).run()``."""

    def __init__(self, spec: StudySpec, base_dir: str | Path | None = None, *, file: str = "<study>") -> None:
        self.spec = spec.resolved_paths(Path(base_dir) if base_dir is not None else Path.cwd())
        self.file = file  # named in error messages
        self.objectives = self.spec.resolved_objectives()
        self.driver_id = uuid.uuid4().hex
        self.completed_trials = 0  # COMPLETE trials in the storage when the last run() ended

    @classmethod
    def from_yaml(cls, ref: str | Path, overrides: dict[str, Any] | None = None) -> Study:
        """Load a study.yaml (or a bundled study by name); relative paths are relative to the cwd."""
        return cls(load_spec(ref, overrides), file=str(ref))

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
        info = connect()
        r = spec.resources
        check_capacity(info, r.generators, r.evaluators, r.gpus_per_generator)
        check_workers(info)  # a cluster's nodes run this micro_doe, or nothing is created
        with interrupts_raise():  # after ray.init, which sets its own SIGTERM handler (sys.exit)
            study = open_study(spec)
            acquire_lease(study, self.driver_id)  # before touching any trial
            try:
                return self._drive(study, budget, timeout, start, info, on_progress, pipelining)
            finally:
                release_lease(study, self.driver_id)

    def _drive(
        self,
        study: optuna.Study,
        budget: int,
        timeout: float | None,
        start: float,
        info: ClusterInfo,
        on_progress: Callable[[StudyProgress], None] | None,
        pipelining: bool,
    ) -> StudyResult:
        from micro_doe.studies.dashboard import artifact_store, upload_trial_image
        from micro_doe.studies.mlflow_runs import StudyTracker

        spec = self.spec
        describe_study(study, spec, [o.name for o, _ in self.objectives])
        requeue_stale_trials(study, self.driver_id, OWNER_ATTR, SEED_ATTR, REASON_ATTR)
        enqueue_initial_design(study, spec, self.driver_id)
        store = artifact_store(Path(spec.artifacts) / "optuna")
        tracker = StudyTracker(spec.tracking, spec.name, spec.artifacts, driver=self.driver_id)
        tracker.fail_stale_runs(live_drivers(study))  # another live driver's runs, on any host, stay
        tracker.describe_experiment([(o.name, d) for o, d in self.objectives], METRICS | METRIC_PATTERN_NAMES)
        parent = tracker.start_invocation(spec.model_dump(mode="json", by_alias=True), {"driver": self.driver_id})
        reference = self._reference()
        tracker.example_image = self._example_image()
        pruning = open_pruning_study(spec, study) if spec.pruner is not None else None

        prefix = f"micro-doe:{spec.name}:{self.driver_id[:8]}"
        generators = [
            GeneratorActor.options(
                **generator_options(spec.resources.gpus_per_generator, info, name=f"{prefix}:generator-{i}")
            ).remote(self._generator_spec())
            for i in range(spec.resources.generators)
        ]
        pool = EvaluatorPool(spec.resources.evaluators, evaluator_options(name=f"{prefix}:evaluator"))
        idle = list(range(len(generators)))
        live = set(idle)  # generators not lost with their node
        health = ActorHealth(spec.resources.placement_timeout_s)
        generating: dict[Any, _Trial] = {}
        evaluating: list[_Trial] = []
        continuing: list[_Trial] = []  # pruning: trials that passed a decision and wait for a generator
        # pruner.in_order: pruned trials told only once the next trial has been asked
        to_prune: list[_Trial] = []
        in_order = spec.pruner is not None and spec.pruner.in_order
        asked: list[int] = []  # trial numbers, in the order this driver asked them
        busy = 0.0
        status = "FINISHED"
        first_submit: float | None = None

        def remaining() -> int:  # every driver's trials: finished ones that count and running ones
            return budget - trials_using_budget(study)

        def backlog_ok(n_generating: int, n_evaluating: int) -> bool:
            if pipelining:  # one trial per generator may wait for evaluation while the next generates
                return n_evaluating <= len(live)
            return n_generating == 0 and n_evaluating == 0

        def history_settled() -> bool:
            """in_order: ask only once every trial but the last `generators` asked is finished, so
            the sampler sees the same finished trials whatever the evaluators' speed."""
            if not in_order:
                return True
            newest = set(asked[-len(generators):])
            return all(ctx.trial.number in newest for ctx in [*generating.values(), *evaluating, *continuing, *to_prune])

        def report(note: str = "") -> None:
            if on_progress is not None:
                progress = self._progress(study, budget, len(generating) + len(evaluating) + len(continuing))
                progress.note = note
                on_progress(progress)

        def tell_about_others(known: set[str]) -> bool:
            """Say when drivers join this study (its trials, budget and initial design are
            theirs too); whether anything was said."""
            others = live_drivers(study) - {self.driver_id}
            if not others - known:
                return False
            known |= others
            note = (f"{len(others)} other driver(s) run this study too: the trials and the budget "
                    f"({budget}) are shared, and the initial design was enqueued once")
            log.warning(note)
            report(note)
            return True

        def check_actors() -> None:
            """Actors back from quarantine take work again; lost ones (no node, or dead, within
            placement_timeout_s) take their trials with them (failed and re-queued); with no
            generator or no evaluator left the run stops."""
            actors = {("generator", i): generators[i] for i in live}
            actors |= {("evaluator", a._actor_id.hex()): a for a in pool.actors()}
            recovered, lost = health.poll(actors)
            for key in recovered:
                if key[0] == "generator":
                    idle.append(key[1])
                else:
                    pool.restore(actors[key])
                log.info("%s actor %s answers again", *key)
            for key, why in lost:
                kind = key[0]
                reason = f"{kind} actor lost: {why}; re-queued"
                if kind == "generator":
                    live.discard(key[1])
                    if key[1] in idle:
                        idle.remove(key[1])
                    ray.kill(generators[key[1]], no_restart=True)
                    hit = [ref for ref, ctx in generating.items() if ctx.generator == key[1]]
                    victims = [generating.pop(ref) for ref in hit]
                else:
                    orphans = set(pool.remove(actors[key]))
                    victims = [ctx for ctx in evaluating if orphans & set(ctx.eval_refs)]
                    for ctx in victims:
                        evaluating.remove(ctx)
                        pool.forget(ctx.eval_refs)
                for ctx in victims:
                    self._fail(study, tracker, ctx, reason, reference, requeue=True, pruning=pruning)
                if live and len(pool):  # (with none of a kind left, the error below says it all)
                    note = (f"{kind} actor lost ({why}); {len(victims)} trial(s) re-queued; "
                            f"going on with {len(live)} generator(s) and {len(pool)} evaluator(s)")
                    log.warning(note)
                    report(note)
            if live and len(pool):
                return
            gone = "generator" if not live else "evaluator"
            for ctx in list(generating.values()) + evaluating + continuing:
                self._fail(study, tracker, ctx, f"the study lost every {gone}; re-queued for the next run", reference,
                           requeue=True, pruning=pruning)
            for in_flight in (generating, evaluating, continuing):
                in_flight.clear()
            raise CapacityLostError(
                f"resources: every {gone} actor was lost (its node died, and no node took it within "
                f"resources.placement_timeout_s = {spec.resources.placement_timeout_s:g} s; {_free_resources()}); "
                "the trials in flight were re-queued: run the study again once the cluster has room"
            )

        try:
            known_others: set[str] = set()
            if not tell_about_others(known_others):
                report()
            renewed = time.time()
            last_event = time.perf_counter()
            while True:
                before, renewed = renewed, renew_lease(study, self.driver_id, renewed)
                if renewed != before:  # every LEASE_RENEW_S: has another driver joined?
                    tell_about_others(known_others)
                check_actors()
                timed_out = timeout is not None and time.perf_counter() - start > timeout
                if timed_out and (generating or evaluating or continuing):
                    # timeout_s bounds the whole run: trials still in flight are failed and
                    # re-queued (the next run starts with them), never left RUNNING or lost.
                    for ctx in list(generating.values()) + evaluating + continuing:
                        self._fail(study, tracker, ctx, f"timeout_s ({timeout:g} s) reached; re-queued for the next run",
                                   reference, requeue=True, pruning=pruning)
                    generating.clear()
                    evaluating.clear()
                    continuing.clear()
                    report()
                    break
                # Trials that survived a pruning decision go on first, then new ones, unless
                # evaluation is backed up.
                while idle and continuing and not timed_out:
                    ctx = continuing.pop(0)
                    ctx.generator = idle.pop(0)
                    generating[self._submit(generators[ctx.generator], ctx)] = ctx
                while (idle and not timed_out and remaining() > 0 and backlog_ok(len(generating), len(evaluating))
                       and history_settled()):  # fmt: skip
                    g = idle.pop(0)
                    ctx = self._ask(study, g, budget)
                    if ctx is None:  # another driver took the last slot first
                        idle.append(g)
                        break
                    asked.append(ctx.trial.number)
                    ref = self._submit(generators[g], ctx)
                    generating[ref] = ctx
                    log.debug("trial %d: generating on generator %d %s", ctx.trial.number, g, ctx.params)
                    if first_submit is None:
                        first_submit = time.perf_counter()
                while to_prune:  # in order: the next trial was asked with these still running, as without pruning
                    self._prune(study, tracker, to_prune.pop(0), reference, pruning)
                if not generating and not evaluating and not continuing:
                    if not (health.quarantined and remaining() > 0):
                        break
                    # every free generator is in quarantine: wait for it to answer, or to be lost
                pending = list(generating) + [r for ctx in evaluating for r in ctx.eval_refs]
                waiting = pending + health.probe_refs()
                if not waiting:  # only actors in quarantine whose next probe is not due yet
                    time.sleep(0.5)
                    continue
                ready, _ = ray.wait(waiting, num_returns=1, timeout=5.0)
                if ready and ready[0] not in pending:
                    continue  # a probe: check_actors reads it
                if not ready:
                    quiet = time.perf_counter() - last_event
                    if quiet > STALL_WARNING_S:
                        away = health.waiting()  # every actor ALIVE: long trials, not a stall: say nothing
                        if away:  # say so instead of stalling silently (a lost node, a full cluster)
                            note = _stall_note(quiet, away)
                            log.warning(note)
                            report(note)
                        last_event = time.perf_counter()  # again after another STALL_WARNING_S
                    continue
                last_event = time.perf_counter()
                if ready[0] in generating:
                    ctx = generating.pop(ready[0])
                    try:
                        out = ray.get(ready[0])
                    except Exception as err:  # noqa: BLE001 — any failure ends this trial, not the study
                        if is_actor_failure(err):  # its process or node died: not the trial's fault
                            health.fail(("generator", ctx.generator), err)
                            self._fail(study, tracker, ctx, f"generator actor unavailable ({_reason(err)}); re-queued",
                                       reference, requeue=True, pruning=pruning)
                        else:
                            idle.append(ctx.generator)
                            self._fail(study, tracker, ctx, _reason(err), reference, pruning=pruning)
                        report()
                        continue
                    try:
                        busy += float(out.get("busy_seconds", sum(out["seconds"])))
                        self._check_volumes(out["volumes"])
                    except Exception as err:  # noqa: BLE001
                        idle.append(ctx.generator)
                        self._fail(study, tracker, ctx, _reason(err), reference, pruning=pruning)
                        report()
                        continue
                    if not (in_order and len(ctx.volumes) + len(out["volumes"]) < spec.samples_per_trial):
                        idle.append(ctx.generator)  # in order, it waits for the trial's decision instead
                    ctx.volumes += out["volumes"]
                    ctx.seconds += out["seconds"]
                    ctx.predicted += out["predicted"]
                    e = spec.evaluation
                    ctx.eval_refs = [
                        pool.submit(v, phase=e.phase, tortuosity_axis=e.tortuosity_axis, periodic=e.periodic)
                        for v in out["volumes"]
                    ]
                    evaluating.append(ctx)
                    log.debug("trial %d: generated in %.2f s, evaluating", ctx.trial.number, sum(ctx.seconds))
                    if in_order:  # ask the next trial (loop top) before this one can be told, however fast its evaluation
                        continue
                for ctx in list(evaluating):
                    done, _ = ray.wait(ctx.eval_refs, num_returns=len(ctx.eval_refs), timeout=0)
                    if len(done) < len(ctx.eval_refs):
                        continue
                    evaluating.remove(ctx)
                    try:
                        ctx.descriptors += self._described(ctx.eval_refs, pool, health)
                    except Exception as err:  # noqa: BLE001
                        requeue = is_actor_failure(err)  # its process or node died: not the trial's fault
                        reason = f"evaluator actor unavailable ({_reason(err)}); re-queued" if requeue else _reason(err)
                        self._fail(study, tracker, ctx, reason, reference, requeue=requeue, pruning=pruning)
                        report()
                        continue
                    finally:
                        pool.forget(ctx.eval_refs)
                    if pruning is not None and len(ctx.volumes) < spec.samples_per_trial:
                        decision = self._decide(study, tracker, ctx, reference, pruning)
                        held = in_order and ctx.generator in live  # its generator waited for this decision
                        if decision == "continue" and held:
                            generating[self._submit(generators[ctx.generator], ctx)] = ctx
                        elif decision == "continue":
                            continuing.append(ctx)
                        else:
                            if held:
                                idle.append(ctx.generator)
                            if decision == "prune" and in_order:
                                to_prune.append(ctx)
                            elif decision == "prune":
                                self._prune(study, tracker, ctx, reference, pruning)
                        report()
                        continue
                    log.debug("trial %d: evaluated, finishing", ctx.trial.number)
                    self._finish(study, tracker, store, upload_trial_image, ctx, reference, pruning)
                    report()
        except KeyboardInterrupt:
            status = "KILLED"
            how = "SIGTERM" if last_signal() == signal.SIGTERM else "Ctrl-C"
            with interrupts_deferred():  # a second Ctrl-C must not cut the bookkeeping short
                for ctx in list(generating.values()) + evaluating + continuing:
                    self._fail(study, tracker, ctx, f"interrupted ({how}); re-queued for the next run", reference,
                               requeue=True, pruning=pruning)
            raise
        except BaseException:
            status = "FAILED"
            raise
        finally:
            while to_prune:  # decided before the run stopped (interrupt, timeout, lost capacity): they stay pruned
                try:
                    self._prune(study, tracker, to_prune.pop(0), reference, pruning)
                except Exception:  # noqa: BLE001 — the run's own error, if any, is the one to raise
                    log.warning("could not tell a pruned trial", exc_info=True)
            try:
                for actor in generators:
                    ray.kill(actor, no_restart=True)
                pool.kill()
            except Exception:  # noqa: BLE001 — Ray itself may be gone; nothing left to free
                log.warning("could not stop the study's actors", exc_info=True)
            summary: dict[str, Any] = {"completed": sum(t.state == TrialState.COMPLETE for t in study.trials)}
            self.completed_trials = summary["completed"]
            try:
                names = [o.name for o, _ in self.objectives]
                summary |= tracker.log_outcome(_outcome(study), names, [d for _, d in self.objectives])
            except Exception:  # noqa: BLE001 — the trials are safe in both stores; the summary is extra
                log.warning("could not log the study's outcome to MLflow", exc_info=True)
            tracker.finish_invocation(status, summary)

        end = time.perf_counter()
        result = self._result(study, parent, end - start, busy, (first_submit or end) - start)
        result.mlflow_hint = tracker.run_url_hint
        return result

    # ------------------------------------------------------------------ steps

    def _ask(self, study: optuna.Study, generator: int, budget: int) -> _Trial | None:
        """The next trial (re-queued ones first), or None when it got no budget slot."""
        trial = claim_requeued_trial(study) or study.ask()  # re-queued trials before any other
        params = {name: p.suggest(trial, name) for name, p in self.spec.search.items()}
        if not claim_budget_slot(study, trial, budget):
            queued = {k: v for k, v in trial.user_attrs.items() if k in ("requeued_from", "initial_design", SEED_ATTR)}
            from_queue = "fixed_params" in study._storage.get_trial(trial._trial_id).system_attrs
            release_surplus_trial(study, trial, params, queued, from_queue, REASON_ATTR)
            return None
        params.update(self.spec.fixed)
        seed = trial.user_attrs.get(SEED_ATTR)
        if seed is None:  # a fresh trial; a re-queued one keeps the seed it had
            seed = trial_seed(self.spec.sampler.seed, trial.number, common=self.spec.volume_seeds == "common")
            trial.set_user_attr(SEED_ATTR, seed)
        trial.set_user_attr(OWNER_ATTR, self.driver_id)
        return _Trial(trial, params, int(seed), time.perf_counter(), time.time(), generator)

    def _submit(self, generator: Any, ctx: _Trial) -> Any:
        """Ask ``generator`` for the trial's next volumes: all of them, or with a pruner the next
        ``every``; volume i of a trial always comes from seed ``seed + i``."""
        done = len(ctx.volumes)
        n = self.spec.samples_per_trial - done
        if self.spec.pruner is not None:
            n = min(n, self.spec.pruner.every)
        return generator.sample.remote(ctx.params, n, ctx.seed + done)

    @staticmethod
    def _described(refs: list[Any], pool: EvaluatorPool, health: ActorHealth) -> list[dict[str, Any]]:
        """The descriptors of finished evaluation calls; an actor failure suspends its actor
        (quarantine, :class:`~micro_doe.actors.ActorHealth`) and is raised."""
        out = []
        for ref in refs:
            try:
                out.append(ray.get(ref))
            except Exception as err:
                actor = pool.actor_of(ref)
                if is_actor_failure(err) and actor is not None:
                    pool.suspend(actor)
                    health.fail(("evaluator", actor._actor_id.hex()), err)
                raise
        return out

    def _samples(self, ctx: _Trial, reference: Any) -> list[Sample]:
        descriptors = [Descriptors.model_validate(d) for d in ctx.descriptors]
        return [Sample(volume=v, descriptors=d, params=ctx.params, predicted=p, seconds=s, reference=reference)
                for v, d, p, s in zip(ctx.volumes, descriptors, ctx.predicted, ctx.seconds)]  # fmt: skip

    def _decide(self, study, tracker, ctx: _Trial, reference, pruning: optuna.Study) -> str:  # type: ignore[no-untyped-def]
        """Report the running mean of the first objective over the volumes so far (step = their
        number; for ``pareto_halving`` every objective's, as the user attribute
        :data:`~micro_doe.studies.pareto_pruner.RUNNING_MEANS`, with their standard errors from
        two volumes on, :data:`~micro_doe.studies.pareto_pruner.RUNNING_ERRORS`) and let the pruner decide:
        "continue", "prune" (the caller then tells it PRUNED with :meth:`_prune`, at once or, with
        ``pruner.in_order``, once the next trial is asked), or "failed" (told FAIL here)."""
        try:
            first, direction = self.objectives[0]
            pareto = self.spec.pruner.kind == "pareto_halving"
            judged = self.objectives if pareto else [(first, direction)]
            means, errors = running_summary(per_sample_objectives(judged, self._samples(ctx, reference)))
            value = means[0]  # the first objective's
            if ctx.reporter is None:
                ctx.reporter = ctx.trial if pruning is study else pruning.ask()
                if ctx.reporter is not ctx.trial:
                    ctx.reporter.set_user_attr("trial", ctx.trial.number)
            if pareto:
                ctx.running_means[str(len(ctx.volumes))] = means
                ctx.reporter.set_user_attr(RUNNING_MEANS, ctx.running_means)
                if len(ctx.volumes) > 1:  # a standard error needs two volumes (margin: min_resource ≥ 2)
                    ctx.running_errors[str(len(ctx.volumes))] = errors
                    ctx.reporter.set_user_attr(RUNNING_ERRORS, ctx.running_errors)
            ctx.reporter.report(value, step=len(ctx.volumes))
            ctx.reported = value
            if not ctx.reporter.should_prune():
                return "continue"
        except Exception as err:  # noqa: BLE001
            self._fail(study, tracker, ctx, _reason(err), reference, pruning=pruning)
            return "failed"
        return "prune"

    def _prune(self, study, tracker, ctx: _Trial, reference, pruning: optuna.Study) -> None:  # type: ignore[no-untyped-def]
        """Tell the trial PRUNED (and its companion trial), after logging it to MLflow with its
        volumes and storing the objectives measured on them (:data:`PARTIAL_VALUES`, and per volume
        :data:`VALUES_PER_VOLUME`) and its constraints."""
        ctx.trial.set_user_attr("pruned_after_volumes", len(ctx.volumes))
        samples = self._samples(ctx, reference)
        try:
            per_volume = per_sample_objectives(self.objectives, samples)
            values = means_over_samples(per_volume)
            ctx.trial.set_user_attr(PARTIAL_VALUES, [float(values[o.name]) for o, _ in self.objectives])
            ctx.trial.set_user_attr(VALUES_PER_VOLUME, _rounded(per_volume))
            metrics = self._metrics(samples, values)
            if all(c.metric in metrics for c in self.spec.constraints):  # as measured on its volumes
                set_constraints(study, ctx.trial, self._constraints(metrics))
        except Exception:  # noqa: BLE001 — the decision stands; the run just shows less
            values, metrics = {self.objectives[0][0].name: ctx.reported}, {}
        try:
            self._log_run(tracker, ctx, reference, "PRUNED", values, metrics)
        finally:
            study.tell(ctx.trial, state=TrialState.PRUNED)
            if ctx.reporter is not None and ctx.reporter is not ctx.trial:
                pruning.tell(ctx.reporter, state=TrialState.PRUNED)
        log.debug("trial %d: pruned after %d volumes", ctx.trial.number, len(ctx.volumes))

    @staticmethod
    def _log_run(  # type: ignore[no-untyped-def]
        tracker, ctx: _Trial, reference, state: str, values: dict[str, float], metrics: dict[str, float],
        reason: str | None = None,
    ) -> None:
        """The trial's MLflow run (its parameters with the seed, volumes, real start and duration),
        and its link on the trial, which the dashboard shows."""
        run_id = tracker.log_trial(
            trial_number=ctx.trial.number, params=ctx.params | {"seed": ctx.seed}, values=values, metrics=metrics,
            volumes=ctx.volumes, reference=reference, predicted=ctx.predicted, state=state, reason=reason,
            seconds=time.perf_counter() - ctx.started, started_at=ctx.started_at,
        )  # fmt: skip
        ctx.trial.set_user_attr(MLFLOW_RUN_ATTR, tracker.run_url(run_id))

    def _metrics(self, samples: list[Sample], values: dict[str, float]) -> dict[str, float]:
        """Every metric of a trial's samples: the trial metrics, the objectives that constraints
        name (registered ones need not be objectives of this study), and the objective ``values``."""
        extra = evaluate_objectives([(o, o.direction) for o in self.spec.constraint_objectives()], samples)
        return trial_metrics(samples) | extra | values

    def _constraints(self, metrics: dict[str, float]) -> list[tuple[str, float, float]]:
        """Each constraint's description, violation (≤ 0: feasible) and measured value; a
        ValueError names a constraint metric that was not measured."""
        missing = [c.metric for c in self.spec.constraints if c.metric not in metrics]
        if missing:
            raise ValueError(f"constraint metric {missing[0]!r} was not measured")
        return [(c.describe(), c.violation(metrics[c.metric]), metrics[c.metric]) for c in self.spec.constraints]

    @staticmethod
    def _check_volumes(volumes: list[Any]) -> None:
        for i, vol in enumerate(volumes):
            labels = np.unique(vol.values)
            if labels.size < 2:
                raise ValueError(f"sample {i} is all one phase (label {int(labels[0])}): an unusable volume")

    def _finish(self, study, tracker, store, upload, ctx: _Trial, reference, pruning=None) -> None:  # type: ignore[no-untyped-def]
        try:
            samples = self._samples(ctx, reference)
            per_volume = per_sample_objectives(self.objectives, samples)
            values = means_over_samples(per_volume)
            metrics = self._metrics(samples, values)
            set_constraints(study, ctx.trial, self._constraints(metrics))
            ctx.trial.set_user_attr(VALUES_PER_VOLUME, _rounded(per_volume))  # the spread behind each mean
            for o, _ in self.objectives:  # named, with units, as a person reads them on the trial page
                ctx.trial.set_user_attr(labelled(o.name), float(f"{values[o.name]:.4g}"))
        except Exception as err:  # noqa: BLE001
            self._fail(study, tracker, ctx, _reason(err), reference, pruning=pruning)
            return
        png = Path(self.spec.artifacts) / "montages" / f"trial-{ctx.trial.number}.png"
        try:
            tracker.montage_png(ctx.volumes, png)
            upload(study, ctx.trial, png, store)
        except Exception as err:  # noqa: BLE001 — a picture never costs a trial
            ctx.trial.set_user_attr("montage_error", _reason(err))
        self._log_run(tracker, ctx, reference, "FINISHED", values, metrics)
        study.tell(ctx.trial, [values[o.name] for o, _ in self.objectives])
        if ctx.reporter is not None and ctx.reporter is not ctx.trial and pruning is not None:
            pruning.tell(ctx.reporter, values[self.objectives[0][0].name])

    def _fail(self, study, tracker, ctx: _Trial, reason: str, reference, requeue: bool = False, pruning=None) -> None:  # type: ignore[no-untyped-def]
        ctx.trial.set_user_attr(REASON_ATTR, reason)
        if requeue:
            ctx.trial.set_user_attr("requeued", True)
        try:
            self._log_run(tracker, ctx, reference, "FAILED", {}, {}, reason=reason)
        finally:
            study.tell(ctx.trial, state=TrialState.FAIL)
            if ctx.reporter is not None and ctx.reporter is not ctx.trial and pruning is not None:
                pruning.tell(ctx.reporter, state=TrialState.FAIL)
            if requeue:
                study.enqueue_trial(ctx.trial.params, user_attrs={SEED_ATTR: ctx.seed, "requeued_from": ctx.trial.number})

    # ------------------------------------------------------------------ helpers

    def _generator_spec(self) -> dict[str, Any]:
        # What a trial is judged against (reference) is the driver's business, not the actor's.
        return self.spec.generator.model_dump(exclude={"reference"}) | {"tracking_uri": self.spec.tracking}

    def _reference(self) -> Descriptors | None:
        """The model's training-data reference, for error-rate objectives (read on the driver;
        the network itself is only loaded by the generator actors). An LDM bundle has none:
        its samples are judged against their requested targets, and the Cahn–Hilliard solver
        has no training data."""
        from micro_doe.tracking.registry import resolve_model

        if self.spec.generator.kind != "micro3diff":
            return None
        path = resolve_model(self.spec.generator.model, self.spec.tracking)
        return load_held_out(path) if self.spec.generator.reference == "held_out" else load_reference(path)

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
        failed = sum(t.state == TrialState.FAIL and not t.user_attrs.get("requeued") and not t.user_attrs.get("surplus")
                     for t in trials)  # fmt: skip
        pruned = sum(t.state == TrialState.PRUNED for t in trials)
        best = [_record(t) for t in _best(study)] if done else []
        return StudyProgress(done=done, failed=failed, running=running, budget=budget, best=best, pruned=pruned)

    def _result(self, study: optuna.Study, parent: str | None, seconds: float, busy: float, startup: float) -> StudyResult:
        spec = self.spec
        return StudyResult(
            name=spec.name,
            directions=[d for _, d in self.objectives],
            objective_names=[o.name for o, _ in self.objectives],
            trials=[_record(t) for t in study.get_trials(deepcopy=False)
                    if t.state.is_finished() and not t.user_attrs.get("surplus")],  # surplus: never run
            best_trials=[_record(t) for t in _best(study)],
            storage=spec.storage,
            tracking=spec.tracking,
            artifacts=spec.artifacts,
            parent_run_id=parent,
            seconds=seconds,
            generator_busy_seconds=busy,
            startup_seconds=startup,
        )


def _best(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Feasible Pareto-optimal trials (the single best for one objective)."""
    try:
        return list(study.best_trials)
    except ValueError:
        return []


def _free_resources() -> str:
    """Ray's free resources as ``free resources: CPU 0/2, GPU 0/1`` (never raises)."""
    try:
        free = ray.available_resources()
        total = ray.cluster_resources()
        shown = ", ".join(f"{k} {free.get(k, 0):g}/{total[k]:g}" for k in ("CPU", "GPU") if k in total)
    except Exception:  # noqa: BLE001 — the note must never fail the study
        shown = "unknown"
    return f"Ray's free resources: {shown}"


def _rounded(per_volume: dict[str, list[float]]) -> dict[str, list[float]]:
    """Per-volume values to 6 significant digits: the trial page shows them, and 16 digits
    stretch it without telling more."""
    return {name: [float(f"{v:.6g}") for v in values] for name, values in per_volume.items()}


def _stall_note(seconds: float, waiting: Mapping[Any, str]) -> str:
    """What to tell a user when no trial has moved for ``seconds`` while actors are ``waiting``
    (key → state): which ones, and Ray's free resources."""
    which = ", ".join(f"{kind} {str(key)[:8]} {state}" for (kind, key), state in sorted(waiting.items(), key=str))
    return (f"no trial has progressed for {seconds:.0f} s; waiting: {which}; {_free_resources()}. A lost node "
            "restarts its actors elsewhere once there is room, or after resources.placement_timeout_s the study "
            "goes on without them: see `ray status`")


def _outcome(study: optuna.Study) -> list[dict[str, Any]]:
    """Finished trials as :meth:`StudyTracker.log_outcome` takes them (re-queued failures left out)."""
    front = {t.number for t in _best(study)}
    rows = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)):
        if t.user_attrs.get("requeued") or t.user_attrs.get("surplus"):
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
    return TrialRecord(t.number, t.state.name, dict(t.params), values, t.user_attrs.get(REASON_ATTR), violation)


def _reason(err: BaseException) -> str:
    """The root cause of an error, also when Ray wrapped it in a RayTaskError."""
    cause = getattr(err, "cause", None) or err
    text = f"{type(cause).__name__}: {cause}"
    return text.splitlines()[0][:500] if text else type(err).__name__


def default_env() -> None:
    """Quiet, offline defaults for the libraries the driver uses (never weakens Ray's token auth)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
