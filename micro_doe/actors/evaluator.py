"""Evaluator actors: descriptors of volumes on CPUs, in a round-robin pool.

:class:`EvaluatorWorker` owns nothing but a single-threaded torch (taufactor's solver uses
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
from typing import Any

import ray
import xarray as xr

from micro_doe.actors.cluster import evaluator_options, in_actor, restarted
from micro_doe.platform.descriptors.describe import describe


class EvaluatorWorker:
    """Computes the descriptor set of one volume per call (on one torch thread in an actor)."""

    def __init__(self) -> None:
        if in_actor():  # in-process (CLI, tests) the caller's thread settings are left alone
            import torch

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
        return describe(volume, phase, periodic=periodic, tortuosity_axis=tortuosity_axis).model_dump()


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
        self._actors = [
            EvaluatorActor.options(**opts, **({"name": f"{name}-{i}"} if name else {})).remote() for i in range(n)
        ]
        self._next = 0

    def __len__(self) -> int:
        return len(self._actors)

    def submit(self, volume: xr.DataArray | ray.ObjectRef, **kwargs: Any) -> ray.ObjectRef:
        """Describe ``volume`` (a DataArray, or an ObjectRef to one) on the next actor in turn."""
        if not self._actors:
            raise RuntimeError("evaluator pool: already killed")
        actor = self._actors[self._next % len(self._actors)]
        self._next += 1
        return actor.describe.remote(volume, **kwargs)

    def actors(self) -> list:
        return list(self._actors)

    def kill(self) -> None:
        """Stop every actor for good (no restart); calls in flight fail with ``RayActorError``."""
        for actor in self._actors:
            ray.kill(actor, no_restart=True)
        self._actors = []
