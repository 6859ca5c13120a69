"""What runs next: the study loop over an executor (:mod:`micro_doe.studies.executors`).

Each pass of the loop, in order:

1. renew this driver's lease, and say when other drivers join the study;
2. actors back from quarantine take work again; trials of lost actors, and of actors Ray shows
   away (their node died; Ray may restart them), are failed and re-queued at once to the actors
   left (:meth:`Scheduler.check_actors`); with no generator or evaluator left the run stops;
3. past ``timeout_s``, the trials in flight are failed and re-queued, and the run ends;
4. free generators get work: trials that passed a pruning decision first, then new trials
   (:meth:`Scheduler.start_trials`), while the budget lasts and evaluation is not backed up;
5. wait for one call to finish (:meth:`Scheduler.wait_once`): finished generation is sent to
   the evaluators (:meth:`Scheduler.on_generated`); a trial whose evaluations are all in is
   decided (pruner), finished or failed (:meth:`Scheduler.on_evaluated`).

**Pipelining.** Each generator holds one trial at a time; the moment its volumes are back it
gets the next trial, while the evaluators work on the previous one. At most as many trials wait
for evaluation as there are generators (backpressure). ``pipelining=False`` waits for each
trial's evaluation before the next generation.

**Pruning.** With a pruner a trial generates ``every`` volumes at a time; after each batch is
evaluated the pruner decides, and a trial that goes on waits for a free generator.
``pruner.in_order`` keeps the order of a study without a pruner: a trial keeps its generator
through its decisions, the next trial is asked only once every earlier trial but the newest is
told, and a pruned trial is told only after the next one is asked.

**Stalls.** When no call finishes for :data:`STALL_WARNING_S` while some actor waits for a node,
the progress display and the log say so, with the free resources.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from typing import Any, cast

from micro_doe.actors.cluster import CapacityLostError
from micro_doe.platform.interrupts import interrupts_deferred, last_signal
from micro_doe.studies.executors import PROBE, ActorLost, Executor, reason
from micro_doe.studies.spec import StudySpec
from micro_doe.studies.study_storage import live_drivers, renew_lease, trials_using_budget
from micro_doe.studies.trial_lifecycle import TrialContext, TrialLifecycle

log = logging.getLogger("micro_doe.studies")

STALL_WARNING_S = 60.0  # no event for this long: tell the user what the executor is waiting for
WAIT_S = 5.0  # one wait for a finished call, at most


class Scheduler:
    """Runs trials on ``executor`` until the budget is used, the time is up, or it is stopped.

    ``report(running, note)`` is called after every event (the progress display)."""

    def __init__(self, spec: StudySpec, lifecycle: TrialLifecycle, executor: Executor, budget: int,
                 timeout: float | None, start: float, pipelining: bool = True,
                 report: Callable[[int, str], None] = lambda running, note: None) -> None:  # fmt: skip
        self.spec, self.trials, self.executor = spec, lifecycle, executor
        self.budget, self.timeout, self.start, self.pipelining = budget, timeout, start, pipelining
        self._report = report
        self.idle: list[int] = []  # generators without work (set when run() starts)
        self.n_generators = 0
        self.generating: dict[Any, TrialContext] = {}
        self.evaluating: list[TrialContext] = []
        self.continuing: list[TrialContext] = []  # pruning: trials that passed a decision and wait for a generator
        self.to_prune: list[TrialContext] = []  # pruner.in_order: told only once the next trial has been asked
        self.in_order = spec.pruner is not None and spec.pruner.in_order
        self.asked: list[int] = []  # trial numbers, in the order this driver asked them
        self.busy = 0.0  # generator seconds
        self.first_submit: float | None = None
        self._others: set[str] = set()
        self.arrived: set[Any] = set()  # evaluations back whose trial still waits for others: not waited on again
        self.owned: dict[int, TrialContext] = {}  # every trial this driver asked and has not told yet

    # ------------------------------------------------------------------ the loop

    def run(self) -> None:
        """The loop (module doc), on an executor that has started. Ctrl-C / SIGTERM fail and
        re-queue the trials in flight, then raise."""
        self.idle = sorted(self.executor.live_generators)
        self.n_generators = len(self.idle)
        try:
            if not self.tell_about_others():
                self.report()
            renewed = time.time()
            last_event = time.perf_counter()
            while True:
                before, renewed = renewed, renew_lease(self.trials.study, self.trials.driver_id, renewed)
                if renewed != before:  # every LEASE_RENEW_S: has another driver joined?
                    self.tell_about_others()
                self.check_actors()
                timed_out = self.timeout is not None and time.perf_counter() - self.start > self.timeout
                if timed_out and self.in_flight():
                    self.requeue_in_flight(f"timeout_s ({self.timeout:g} s) reached; re-queued for the next run")
                    self.report()
                    break
                self.start_trials(timed_out)
                while self.to_prune:  # in order: the next trial was asked with these still running, as without pruning
                    self.prune(self.to_prune.pop(0))
                if not self.in_flight() and not (self.executor.quarantined() and self.remaining() > 0):
                    break  # (with every free generator in quarantine: wait for it to answer, or to be lost)
                if self.wait_once():
                    last_event = time.perf_counter()
                elif time.perf_counter() - last_event > STALL_WARNING_S:
                    self.warn_stall(time.perf_counter() - last_event)
                    last_event = time.perf_counter()  # again after another STALL_WARNING_S
        except KeyboardInterrupt:
            how = "SIGTERM" if last_signal() == signal.SIGTERM else "Ctrl-C"
            with interrupts_deferred():  # a second Ctrl-C must not cut the bookkeeping short
                self.requeue_in_flight(f"interrupted ({how}); re-queued for the next run")
            raise
        finally:
            while self.to_prune:  # decided before the run stopped (interrupt, timeout, lost capacity): they stay pruned
                try:
                    self.prune(self.to_prune.pop(0))
                except Exception:  # noqa: BLE001 — the run's own error, if any, is the one to raise
                    log.warning("could not tell a pruned trial", exc_info=True)

    def start_trials(self, timed_out: bool) -> None:
        """Trials that survived a pruning decision go on first, then new ones, unless evaluation
        is backed up (or, in order, an earlier trial is still undecided)."""
        while self.idle and self.continuing and not timed_out:
            ctx = self.continuing.pop(0)
            ctx.generator = self.idle.pop(0)
            self.submit(ctx)
        while (self.idle and not timed_out and self.remaining() > 0 and self.backlog_ok() and self.history_settled()):
            g = self.idle.pop(0)
            new = self.trials.ask(g, self.budget)
            if new is None:  # another driver took the last slot first
                self.idle.append(g)
                break
            self.asked.append(new.number)
            self.owned[new.number] = new
            self.submit(new)
            log.debug("trial %d: generating on generator %d %s", new.number, g, new.params)
            if self.first_submit is None:
                self.first_submit = time.perf_counter()

    def submit(self, ctx: TrialContext) -> None:
        n, seed = self.trials.next_batch(ctx)
        self.generating[self.executor.sample(ctx.generator, ctx.params, n, seed)] = ctx

    def wait_once(self) -> bool:
        """Wait for one call; handle it. Whether anything happened (a probe counts as nothing)."""
        pending = list(self.generating) + [h for ctx in self.evaluating for h in ctx.eval_handles if h not in self.arrived]
        ready = self.executor.wait(pending, WAIT_S)
        if ready is None or ready is PROBE:
            return False  # a probe: check_actors reads it
        if ready in self.generating:
            if not self.on_generated(ready):
                return True
        else:
            self.arrived.add(ready)
        self.on_evaluated()
        return True

    # ------------------------------------------------------------------ events

    def on_generated(self, handle: Any) -> bool:
        """A trial's volumes are back: send them to the evaluators. Whether to look for finished
        evaluations now (not in order: the next trial is asked first, however fast they are)."""
        ctx = self.generating.pop(handle)
        try:
            out = self.executor.result(handle)
        except ActorLost as err:  # its process or node died: not the trial's fault
            self.fail(ctx, f"{err}; re-queued", requeue=True)
            self.report()
            return False
        except Exception as err:  # noqa: BLE001 — any failure ends this trial, not the study
            self.idle.append(ctx.generator)
            self.fail(ctx, reason(err))
            self.report()
            return False
        try:
            self.busy += float(out.get("busy_seconds", sum(out["seconds"])))
            self.trials.check_volumes(out["volumes"])
        except Exception as err:  # noqa: BLE001
            self.idle.append(ctx.generator)
            self.fail(ctx, reason(err))
            self.report()
            return False
        if not (self.in_order and len(ctx.volumes) + len(out["volumes"]) < self.spec.samples_per_trial):
            self.idle.append(ctx.generator)  # in order, it waits for the trial's decision instead
        ctx.volumes += out["volumes"]
        ctx.seconds += out["seconds"]
        ctx.predicted += out["predicted"]
        e = self.spec.evaluation
        evaluation = {"phase": e.phase, "tortuosity_axis": e.tortuosity_axis, "periodic": e.periodic}
        ctx.eval_handles = [self.executor.describe(v, evaluation) for v in out["volumes"]]
        self.evaluating.append(ctx)
        log.debug("trial %d: generated in %.2f s, evaluating", ctx.number, sum(ctx.seconds))
        return not self.in_order

    def on_evaluated(self) -> None:
        """Every trial whose evaluations are all in: decided (pruner), finished, or failed."""
        for ctx in list(self.evaluating):
            if not self.executor.done(ctx.eval_handles):
                continue
            self.evaluating.remove(ctx)
            self.arrived -= set(ctx.eval_handles)
            try:
                ctx.descriptors += [self.executor.result(h) for h in ctx.eval_handles]
            except ActorLost as err:  # its process or node died: not the trial's fault
                self.fail(ctx, f"{err}; re-queued", requeue=True)
                self.report()
                continue
            except Exception as err:  # noqa: BLE001
                self.fail(ctx, reason(err))
                self.report()
                continue
            finally:
                self.executor.forget(ctx.eval_handles)
            if self.trials.pruning is not None and len(ctx.volumes) < self.spec.samples_per_trial:
                self.after_decision(ctx, self.trials.decide(ctx))
            else:
                log.debug("trial %d: evaluated, finishing", ctx.number)
                self.finish(ctx)
            self.report()

    def after_decision(self, ctx: TrialContext, decision: str) -> None:
        """A trial that goes on gets its generator back (in order) or waits for a free one."""
        held = self.in_order and ctx.generator in self.executor.live_generators  # its generator waited
        if decision == "continue" and held:
            self.submit(ctx)
        elif decision == "continue":
            self.continuing.append(ctx)
        else:
            if held:
                self.idle.append(ctx.generator)
            if decision == "prune" and self.in_order:
                self.to_prune.append(ctx)
            elif decision == "prune":
                self.prune(ctx)

    # ------------------------------------------------------------------ actors, stalls, drivers

    def check_actors(self) -> None:
        """Actors back from quarantine take work again; lost ones take their trials with them
        (failed and re-queued); with no generator or no evaluator left the run stops."""
        recovered, lost = self.executor.check()
        for g in recovered:
            self.idle.append(g)
            log.info("generator actor %s answers again", g)
        for gone in lost:
            if gone.kind == "generator":
                if gone.generator in self.idle:
                    self.idle.remove(gone.generator)
                victims = [self.generating.pop(h) for h, c in list(self.generating.items()) if c.generator == gone.generator]
            else:
                orphans = set(gone.handles)
                victims = [c for c in self.evaluating if orphans & set(c.eval_handles)]
                for ctx in victims:
                    self.evaluating.remove(ctx)
                    self.executor.forget(ctx.eval_handles)
            word = "lost" if gone.for_good else "away"
            for ctx in victims:
                self.fail(ctx, f"{gone.kind} actor {word}: {gone.why}; re-queued", requeue=True)
            if not gone.for_good:  # quarantined: it takes work again once it answers (check: recovered)
                note = (f"{gone.kind} actor away ({gone.why}); {len(victims)} trial(s) re-queued to the actors left; it "
                        f"rejoins once Ray restarts it, or is given up after {self.spec.resources.placement_timeout_s:g} s")
                log.warning(note)
                self.report(note)
                continue
            if self.executor.live_generators and self.executor.n_evaluators:
                note = (f"{gone.kind} actor lost ({gone.why}); {len(victims)} trial(s) re-queued; going on with "
                        f"{len(self.executor.live_generators)} generator(s) and {self.executor.n_evaluators} evaluator(s)")
                log.warning(note)
                self.report(note)
        if self.executor.live_generators and self.executor.n_evaluators:
            return
        gone_kind = "generator" if not self.executor.live_generators else "evaluator"
        self.requeue_in_flight(f"the study lost every {gone_kind}; re-queued for the next run")
        raise CapacityLostError(
            f"resources: every {gone_kind} actor was lost (its node died, and no node took it within "
            f"resources.placement_timeout_s = {self.spec.resources.placement_timeout_s:g} s; "
            f"{self.executor.resources_note()}); the trials in flight were re-queued: run the study again once "
            "the cluster has room"
        )

    def warn_stall(self, quiet: float) -> None:
        """Say what the executor waits for (a lost node, a full cluster); silent when every actor
        is alive (long trials are not a stall)."""
        away = self.executor.waiting()
        if away:
            named = [(cast(tuple[str, Any], key), state) for key, state in sorted(away.items(), key=str)]
            which = ", ".join(f"{kind} {str(key)[:8]} {state}" for (kind, key), state in named)
            note = (f"no trial has progressed for {quiet:.0f} s; waiting: {which}; {self.executor.resources_note()}. "
                    "A lost node restarts its actors elsewhere once there is room, or after "
                    "resources.placement_timeout_s the study goes on without them: see `ray status`")
            log.warning(note)
            self.report(note)

    def tell_about_others(self) -> bool:
        """Say when drivers join this study (its trials, budget and initial design are theirs
        too); whether anything was said."""
        others = live_drivers(self.trials.study) - {self.trials.driver_id}
        if not others - self._others:
            return False
        self._others |= others
        note = (f"{len(others)} other driver(s) run this study too: the trials and the budget "
                f"({self.budget}) are shared, and the initial design was enqueued once")
        log.warning(note)
        self.report(note)
        return True

    # ------------------------------------------------------------------ telling (the lifecycle's, and forgetting the trial)

    def finish(self, ctx: TrialContext) -> None:
        self.trials.finish(ctx)
        self.owned.pop(ctx.number, None)

    def fail(self, ctx: TrialContext, why: str, requeue: bool = False) -> None:
        self.trials.fail(ctx, why, requeue)
        self.owned.pop(ctx.number, None)

    def prune(self, ctx: TrialContext) -> None:
        self.trials.prune(ctx)
        self.owned.pop(ctx.number, None)

    # ------------------------------------------------------------------ helpers

    def in_flight(self) -> list[TrialContext]:
        return list(self.generating.values()) + self.evaluating + self.continuing

    def requeue_in_flight(self, why: str) -> None:
        """Fail and re-queue every trial this driver asked and has not told (interrupt, timeout,
        capacity lost): the ones in flight, and one caught between two steps (asked but not yet
        submitted, or out of the queues while it was being finished)."""
        decided = {id(ctx) for ctx in self.to_prune}  # pruned already: told PRUNED when the run stops
        for ctx in list(self.owned.values()):
            if id(ctx) not in decided and not self.trials.is_told(ctx):
                self.fail(ctx, why, requeue=True)
        self.owned = {n: ctx for n, ctx in self.owned.items() if id(ctx) in decided}
        self.generating.clear()
        self.evaluating.clear()
        self.continuing.clear()

    def remaining(self) -> int:
        """Budget left: every driver's trials, finished ones that count and running ones."""
        return self.budget - trials_using_budget(self.trials.study)

    def backlog_ok(self) -> bool:
        if self.pipelining:  # one trial per generator may wait for evaluation while the next generates
            return len(self.evaluating) <= len(self.executor.live_generators)
        return not self.generating and not self.evaluating

    def history_settled(self) -> bool:
        """in_order: ask only once every trial but the newest ``generators`` asked is finished, so
        the sampler sees the same finished trials whatever the evaluators' speed."""
        if not self.in_order:
            return True
        newest = set(self.asked[-self.n_generators:])
        return all(ctx.number in newest for ctx in [*self.in_flight(), *self.to_prune])

    def report(self, note: str = "") -> None:
        self._report(len(self.in_flight()), note)
