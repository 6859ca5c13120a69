"""Evaluator actors: descriptors of volumes on CPUs, in a round-robin pool.

:class:`EvaluatorWorker` owns nothing but a single-threaded torch (the reference τ solver, taufactor, is
torch; one thread per actor keeps a pool of k actors from oversubscribing k CPUs) and runs
:func:`~micro_doe.platform.descriptors.describe` on the volumes it is sent.
``EvaluatorActor = ray.remote(EvaluatorWorker)``. :class:`EvaluatorPool` owns k actors and
spreads calls over them round-robin, so k evaluations overlap.

Failures surface from ``ray.get`` of a submitted call: a bad volume or phase raises the
platform's error (``VolumeError``/``ValueError``) as a ``RayTaskError`` that is also an
instance of it; a dead actor process is restarted (options from
:func:`~micro_doe.actors.cluster.evaluator_options`) and the interrupted call is run again
(``describe`` is a pure function of its arguments).
"""

from __future__ import annotations

import os
import sys
from typing import Any

import ray
import xarray as xr

from micro_doe.actors.cluster import evaluator_options, in_actor, restarted
from micro_doe.platform.descriptors.describe import describe


class EvaluatorWorker:
    """Computes the descriptor set of one volume per call (on one torch thread in an actor)."""

    def __init__(self) -> None:
        torch = sys.modules.get("torch")  # describe needs no torch: an actor's worker never imports it
        if in_actor() and torch is not None:  # in-process (CLI, tests) the caller's thread settings are left alone
            torch.set_num_threads(1)
        self.calls = 0

    def info(self) -> dict[str, Any]:
        """Where this worker lives and how many volumes it has described since it started."""
        return {
            "pid": os.getpid(),
            "node_ip": ray.util.get_node_ip_address(),
            "calls": self.calls,
            "restarted": restarted(),
        }

    def describe(
        self,
        volume: xr.DataArray,
        phase: int | str = 1,
        tortuosity_axis: str | None = "z",
        periodic: bool = False,
    ) -> dict[str, Any]:
        """``Descriptors.model_dump()`` of ``phase`` in ``volume`` (see ``describe``)."""
        self.calls += 1
        return describe(volume, phase, periodic=periodic, tortuosity_axis=tortuosity_axis, workers=1).model_dump()


EvaluatorActor = ray.remote(EvaluatorWorker)


class EvaluatorPool:
    """``n`` evaluator actors used round-robin (``options`` default: :func:`evaluator_options`).

    With a ``name`` in ``options`` the actors are named ``NAME-0``, ``NAME-1``, ….
    """

    def __init__(self, n: int, options: dict[str, Any] | None = None) -> None:
        if n < 1:
            raise ValueError(f"evaluators: expected at least 1, got {n}")
        opts = dict(evaluator_options() if options is None else options)
        name = opts.pop("name", None)
        self._options, self._name, self._replaced = opts, name, 0
        self._actors = [
            EvaluatorActor.options(**opts, **({"name": f"{name}-{i}"} if name else {})).remote() for i in range(n)
        ]
        self._next = 0
        self._assigned: dict[ray.ObjectRef, Any] = {}  # call in flight → its actor
        self._suspended: list[Any] = []  # out of the rotation until they answer again

    def __len__(self) -> int:
        """Actors in the pool, suspended ones included."""
        return len(self._actors) + len(self._suspended)

    def submit(self, volume: xr.DataArray | ray.ObjectRef, **kwargs: Any) -> ray.ObjectRef:
        """Describe ``volume`` (a DataArray, or an ObjectRef to one) on the next actor in turn
        (a suspended one only when every actor is suspended: the call waits for it)."""
        rotation = self._actors or self._suspended
        if not rotation:
            raise RuntimeError("evaluator pool: no actor left (killed or removed)")
        actor = rotation[self._next % len(rotation)]
        self._next += 1
        ref = actor.describe.remote(volume, **kwargs)  # type: ignore[union-attr]
        self._assigned[ref] = actor
        return ref

    def actors(self) -> list:
        """Every actor of the pool, suspended ones included."""
        return self._actors + self._suspended

    def actor_of(self, ref: ray.ObjectRef) -> Any | None:
        """The actor a call in flight went to (None once forgotten)."""
        return self._assigned.get(ref)

    def forget(self, refs: list[ray.ObjectRef]) -> None:
        """Drop the record of calls that are done (or given up)."""
        for ref in refs:
            self._assigned.pop(ref, None)

    def calls_of(self, actor: Any) -> list[ray.ObjectRef]:
        """The calls in flight on ``actor``."""
        return [ref for ref, a in self._assigned.items() if a == actor]

    def suspend(self, actor: Any) -> None:
        """Take ``actor`` out of the rotation (its process or node failed) until :meth:`restore`."""
        if actor in self._actors:
            self._actors.remove(actor)
            self._suspended.append(actor)

    def restore(self, actor: Any) -> None:
        """Put a suspended ``actor`` back in the rotation."""
        if actor in self._suspended:
            self._suspended.remove(actor)
            self._actors.append(actor)

    def remove(self, actor: Any) -> list[ray.ObjectRef]:
        """Take ``actor`` out of the pool and stop it for good; return its calls in flight."""
        self._actors = [a for a in self._actors if a != actor]
        self._suspended = [a for a in self._suspended if a != actor]
        ray.kill(actor, no_restart=True)
        orphans = self.calls_of(actor)
        self.forget(orphans)
        return orphans

    def replace(self, actor: Any) -> tuple[Any, list[ray.ObjectRef]]:
        """Stop ``actor`` for good and start a fresh one in its place, suspended until it answers
        (:meth:`restore`); returns (the new actor, the old one's calls in flight)."""
        orphans = self.remove(actor)
        self._replaced += 1
        named = {"name": f"{self._name}-r{self._replaced}"} if self._name else {}
        new = EvaluatorActor.options(**self._options, **named).remote()
        self._suspended.append(new)
        return new, orphans

    def kill(self) -> None:
        """Stop every actor for good (no restart); calls in flight fail with ``RayActorError``."""
        for actor in self._actors + self._suspended:
            ray.kill(actor, no_restart=True)
        self._actors, self._suspended = [], []
        self._assigned.clear()
