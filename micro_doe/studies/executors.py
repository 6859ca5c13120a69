"""Where a study's work runs: generation and evaluation calls, behind one small interface.

The scheduler (:mod:`micro_doe.studies.scheduler`) decides *what* runs next; an executor runs
it and says what finished. Two executors:

- :class:`RayExecutor` (the default): generator actors (on GPUs when the cluster has them) and
  a pool of CPU evaluator actors, with their health (:class:`~micro_doe.actors.ActorHealth`):
  an actor whose process or node died is quarantined until it answers a probe again, or lost
  after ``resources.placement_timeout_s``.
- :class:`LocalExecutor` (``executor="local"``): one generator and one evaluator in this
  process, no Ray. Calls run one at a time, oldest first, when the scheduler waits for them:
  a quick study in a notebook, or a test of the scheduling itself.

A call is submitted (:meth:`Executor.sample`, :meth:`Executor.describe`) and returns a
handle; :meth:`Executor.wait` returns a finished handle, and :meth:`Executor.result` its value,
or raises its error (:class:`ActorLost` when the call failed because its actor's process or node
died: not the trial's fault, so the trial is re-queued).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from micro_doe.errors import ExecutionError

PROBE = object()  # wait(): something other than a call finished (a health probe); look again
REPLACEMENTS_PER_ACTOR = 3  # fresh actors a study may start per actor it asked for, when Ray gives one up
GAVE_UP = ("Ray gave it up", "it died for good")  # ActorHealth's reasons for an actor Ray declared DEAD


class ActorLost(ExecutionError):
    """A call failed because its actor's process or node died (the trial is re-queued)."""


@dataclass
class Lost:
    """An actor given up (``for_good``) or away for now (its node was lost; Ray may restart it,
    and it takes work again once it answers): its kind, the generator's index (generators), why,
    and the handles of its calls in flight (evaluators; a generator's trial is known by its
    index). Either way its calls in flight are not coming back soon."""

    kind: str
    why: str
    generator: int | None = None
    handles: list[Any] = field(default_factory=list)
    for_good: bool = True


class Executor(Protocol):
    """What the scheduler needs from where the work runs."""

    live_generators: set[int]  # indices of the generators that can take work

    @property
    def n_evaluators(self) -> int: ...

    def start(self, generator_spec: dict[str, Any], n_generators: int, n_evaluators: int, name: str) -> None: ...
    def sample(self, generator: int, params: dict[str, Any], n: int, seed: int) -> Any: ...
    def describe(self, volume: Any, evaluation: dict[str, Any]) -> Any: ...
    def wait(self, handles: list[Any], timeout: float) -> Any: ...
    def done(self, handles: list[Any]) -> bool: ...
    def result(self, handle: Any) -> Any: ...
    def forget(self, handles: list[Any]) -> None: ...
    def check(self) -> tuple[list[int], list[Lost]]: ...
    def quarantined(self) -> bool: ...
    def waiting(self) -> dict[Hashable, str]: ...
    def resources_note(self) -> str: ...
    def stop(self) -> None: ...


# ============================================================================ in process


class LocalExecutor:
    """One generator and one evaluator in this process; calls run at :meth:`wait`, oldest first."""

    def __init__(self) -> None:
        self.live_generators: set[int] = set()
        self.n_evaluators = 0
        self._ids = itertools.count()
        self._queued: dict[int, tuple[Any, tuple[Any, ...]]] = {}  # handle → (function, args), in order
        self._finished: dict[int, tuple[Any, BaseException | None]] = {}

    def start(self, generator_spec: dict[str, Any], n_generators: int, n_evaluators: int, name: str) -> None:
        from micro_doe.actors.evaluator import EvaluatorWorker
        from micro_doe.actors.generator import GeneratorWorker

        self._generator = GeneratorWorker(generator_spec)
        self._evaluator = EvaluatorWorker()
        self.live_generators, self.n_evaluators = {0}, 1  # one of each, whatever the spec's resources

    def sample(self, generator: int, params: dict[str, Any], n: int, seed: int) -> int:
        return self._queue(self._generator.sample, params, n, seed)

    def describe(self, volume: Any, evaluation: dict[str, Any]) -> int:
        return self._queue(lambda v: self._evaluator.describe(v, **evaluation), volume)

    def _queue(self, fn: Any, *args: Any) -> int:
        handle = next(self._ids)
        self._queued[handle] = (fn, args)
        return handle

    def wait(self, handles: list[Any], timeout: float) -> Any:
        """Run the oldest queued call among ``handles`` (or return one already finished)."""
        for handle in handles:
            if handle in self._finished:
                return handle
        for handle in self._queued:
            if handle in handles:
                fn, args = self._queued.pop(handle)
                try:
                    self._finished[handle] = (fn(*args), None)
                except Exception as err:  # noqa: BLE001 — raised by result(), as Ray would
                    self._finished[handle] = (None, err)
                return handle
        return None

    def done(self, handles: list[Any]) -> bool:
        return all(h in self._finished for h in handles)

    def result(self, handle: Any) -> Any:
        value, err = self._finished.pop(handle)
        if err is not None:
            raise err
        return value

    def forget(self, handles: list[Any]) -> None:
        for h in handles:
            self._queued.pop(h, None)
            self._finished.pop(h, None)

    def check(self) -> tuple[list[int], list[Lost]]:
        return [], []  # nothing here can be lost but the process itself

    def quarantined(self) -> bool:
        return False

    def waiting(self) -> dict[Hashable, str]:
        return {}

    def resources_note(self) -> str:
        return "in process (executor: local)"

    def stop(self) -> None:
        self._queued.clear()
        self._finished.clear()


# ============================================================================ Ray


class RayExecutor:
    """Generator actors and an evaluator pool on a Ray cluster (local or remote), with health."""

    def __init__(self, info: Any, gpus_per_generator: float, placement_timeout_s: float) -> None:
        from micro_doe.actors import ActorHealth

        self._info = info
        self._gpus = gpus_per_generator
        self._health = ActorHealth(placement_timeout_s)
        self._generators: list[Any] = []
        self._pool: Any = None
        self._calls: dict[Any, int] = {}  # generation call → its generator's index
        self.live_generators: set[int] = set()
        self._start: tuple[dict[str, Any], str] = ({}, "")  # (generator spec, study name): for replacements
        self._replacements_left = 0

    @property
    def n_evaluators(self) -> int:
        return len(self._pool)

    def start(self, generator_spec: dict[str, Any], n_generators: int, n_evaluators: int, name: str) -> None:
        from micro_doe.actors import EvaluatorPool, GeneratorActor, evaluator_options, generator_options

        self._generators = [
            GeneratorActor.options(**generator_options(self._gpus, self._info, name=f"{name}:generator-{i}")).remote(generator_spec)
            for i in range(n_generators)
        ]
        self._pool = EvaluatorPool(n_evaluators, evaluator_options(name=f"{name}:evaluator"))
        self.live_generators = set(range(n_generators))
        self._start = (generator_spec, name)
        self._replacements_left = REPLACEMENTS_PER_ACTOR * (n_generators + n_evaluators)

    def sample(self, generator: int, params: dict[str, Any], n: int, seed: int) -> Any:
        ref = self._generators[generator].sample.remote(params, n, seed)
        self._calls[ref] = generator
        return ref

    def describe(self, volume: Any, evaluation: dict[str, Any]) -> Any:
        return self._pool.submit(volume, **evaluation)

    def wait(self, handles: list[Any], timeout: float) -> Any:
        """A finished call among ``handles``, :data:`PROBE` when a health probe answered first,
        None after ``timeout`` seconds; with nothing to wait for, a short sleep and None."""
        import ray

        waiting = list(handles) + self._health.probe_refs()
        if not waiting:  # only actors in quarantine whose next probe is not due yet
            time.sleep(0.5)
            return None
        ready, _ = ray.wait(waiting, num_returns=1, timeout=timeout)
        if not ready:
            return None
        return ready[0] if ready[0] in handles else PROBE

    def done(self, handles: list[Any]) -> bool:
        import ray

        finished, _ = ray.wait(handles, num_returns=len(handles), timeout=0)
        return len(finished) == len(handles)

    def result(self, handle: Any) -> Any:
        """The call's value; an error of a dead actor quarantines the actor and is raised as
        :class:`ActorLost`; any other error is raised as it is."""
        import ray

        from micro_doe.actors import is_actor_failure

        generator = self._calls.pop(handle, None)
        try:
            return ray.get(handle)
        except Exception as err:
            if not is_actor_failure(err):
                raise
            if generator is not None:
                self._health.fail(("generator", generator), err)
            elif (actor := self._pool.actor_of(handle)) is not None:
                self._pool.suspend(actor)
                self._health.fail(("evaluator", actor._actor_id.hex()), err)
            raise ActorLost(f"{'generator' if generator is not None else 'evaluator'} actor unavailable ({reason(err)})") from err

    def forget(self, handles: list[Any]) -> None:
        self._pool.forget(handles)
        for h in handles:
            self._calls.pop(h, None)

    def check(self) -> tuple[list[int], list[Lost]]:
        """(generators back from quarantine, actors lost or away). Evaluators back from
        quarantine go back into the pool here, away ones out of it; lost actors are stopped."""
        import ray

        actors: dict[Hashable, Any] = {("generator", i): self._generators[i] for i in self.live_generators}
        actors |= {("evaluator", a._actor_id.hex()): a for a in self._pool.actors()}
        recovered, lost = self._health.poll(actors)
        back = []
        for key in recovered:
            kind, index = cast(tuple[str, Any], key)
            if kind == "generator":
                back.append(index)
            else:
                self._pool.restore(actors[key])
        gone = []
        for key, why in self._health.take_newly_away():  # quarantined, not lost: it may come back
            kind, index = cast(tuple[str, Any], key)
            if kind == "generator":
                self._forget_calls_of(index)
                gone.append(Lost("generator", why, generator=index, for_good=False))
            elif key in actors:
                self._pool.suspend(actors[key])
                gone.append(Lost("evaluator", why, handles=self._pool.calls_of(actors[key]), for_good=False))
        for key, why in lost:
            kind, index = cast(tuple[str, Any], key)
            if why.startswith(GAVE_UP) and self._replacements_left > 0:  # restarts used up, as node after node died
                gone.append(self._replace(kind, index, actors[key], why))
                continue
            if kind == "generator":
                self.live_generators.discard(index)
                ray.kill(self._generators[index], no_restart=True)
                gone.append(Lost("generator", why, generator=index))
            else:
                gone.append(Lost("evaluator", why, handles=list(self._pool.remove(actors[key]))))
        return back, gone

    def _replace(self, kind: str, index: Any, actor: Any, why: str) -> Lost:
        """A fresh actor in the place of one Ray gave up (its restarts used up), in quarantine
        until it answers a probe: the study goes on with it once it is placed, or gives it up after
        ``placement_timeout_s`` like any actor."""
        import ray

        from micro_doe.actors import GeneratorActor, generator_options

        self._replacements_left -= 1
        why = f"{why}; a fresh actor takes its place"
        if kind == "generator":
            ray.kill(actor, no_restart=True)
            spec, name = self._start
            options = generator_options(self._gpus, self._info, name=f"{name}:generator-{index}-r{self._replacements_left}")
            self._generators[index] = GeneratorActor.options(**options).remote(spec)
            self._forget_calls_of(index)
            self._health.fail(("generator", index), RuntimeError("a fresh actor, starting"))
            return Lost("generator", why, generator=index, for_good=False)
        new, orphans = self._pool.replace(actor)
        self._health.fail(("evaluator", new._actor_id.hex()), RuntimeError("a fresh actor, starting"))
        return Lost("evaluator", why, handles=orphans, for_good=False)

    def _forget_calls_of(self, generator: int) -> None:
        """Drop the record of ``generator``'s calls in flight (their trials were re-queued)."""
        for ref in [r for r, g in self._calls.items() if g == generator]:
            del self._calls[ref]

    def quarantined(self) -> bool:
        return bool(self._health.quarantined)

    def waiting(self) -> dict[Hashable, str]:
        return self._health.waiting()

    def resources_note(self) -> str:
        """Ray's free resources as ``Ray's free resources: CPU 0/2, GPU 0/1`` (never raises)."""
        import ray

        try:
            free, total = ray.available_resources(), ray.cluster_resources()
            shown = ", ".join(f"{k} {free.get(k, 0):g}/{total[k]:g}" for k in ("CPU", "GPU") if k in total)
        except Exception:  # noqa: BLE001 — the note must never fail the study
            shown = "unknown"
        return f"Ray's free resources: {shown}"

    def stop(self) -> None:
        import ray

        for actor in self._generators:
            ray.kill(actor, no_restart=True)
        if self._pool is not None:
            self._pool.kill()


def reason(err: BaseException) -> str:
    """The root cause of an error, also when Ray wrapped it in a RayTaskError, on one line."""
    cause = getattr(err, "cause", None) or err
    text = f"{type(cause).__name__}: {cause}"
    return text.splitlines()[0][:500] if text else type(err).__name__
