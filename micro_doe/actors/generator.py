"""The generator actor: one loaded model, sampling volumes for trials.

:class:`GeneratorWorker` owns one generator model for its whole life: it resolves the
model reference and loads the weights once, on the GPU Ray assigned it (or the CPU), and
then only samples. ``GeneratorActor = ray.remote(GeneratorWorker)``; the plain class is
usable in-process too (CLI, unit tests).

Failures surface as exceptions from ``ray.get``:

- a bad spec or model (unknown keys, missing bundle, a registry error) raises in the
  constructor, so the actor dies and every call raises ``ray.exceptions.ActorDiedError``
  whose message carries the original error;
- bad parameters raise ``ValueError`` and a diverged model raises
  :class:`~micro_doe.platform.bundles.GenerationError`; Ray re-raises them as a
  ``RayTaskError`` that is also an instance of the original class. The actor stays up.
- a dead process (OOM, node lost, ``ray.kill``) is restarted with the options from
  :func:`~micro_doe.actors.cluster.generator_options`, which reloads the model, and the
  interrupted call is run again: sampling is a pure function of (params, n, seed).
"""

from __future__ import annotations

import os
import time
from typing import Any

import ray
import torch

from micro_doe.actors.cluster import in_actor, restarted
from micro_doe.platform.bundles import REGISTRY_PREFIX
from micro_doe.platform.generators import Generator, build_generator, generator_factory, takes_option


def _gpu_ids() -> list:
    return list(ray.get_gpu_ids()) if ray.is_initialized() else []


def choose_device(requested: str | None) -> str:
    """``requested`` if given; else CUDA when present (and, inside an actor, when Ray assigned
    it a GPU: Ray 2.60 no longer hides GPUs from actors that asked for none)."""
    if requested:
        return requested
    if not torch.cuda.is_available():
        return "cpu"
    if in_actor() and not _gpu_ids():
        return "cpu"
    return "cuda"


class GeneratorWorker:
    """Owns one generator for its whole life; ``sample`` turns parameters into volumes.

    ``spec``: ``{"kind": "micro3diff" | "ldm" | "cahn-hilliard" | a registered kind,
    "tracking_uri": str | None, ...}`` plus the kind's options, passed to its factory as
    keywords (:func:`~micro_doe.platform.generators.build_generator`): for the shipped kinds
    ``model`` (``pretrained:NAME``, a bundle path or ``models:/NAME@ALIAS``, resolved here),
    ``device`` (default: the actor's GPU if Ray gave it one, else the CPU), ``batch_size``,
    ``allow_extrapolation``, ``size``, and the LDM's ``verify``; for a kind of your own its
    ``options`` mapping (and ``device`` when its factory takes one), with ``factory`` the
    registered class itself (so an actor needs no import of your module).
    A bundle path is opened by the actor's process (a local instance shares the driver's
    working directory; on a cluster use a shared filesystem or ``models:/…``).
    """

    def __init__(self, spec: dict[str, Any]) -> None:
        spec = dict(spec)
        self.kind = str(spec.pop("kind", "micro3diff"))
        tracking_uri = spec.pop("tracking_uri", None)
        factory = spec.pop("factory", None) or generator_factory(self.kind)
        own = dict(spec.pop("options", None) or {})  # a kind of your own: its class's keyword arguments
        options = spec | own
        model = options.get("model")
        if model is not None and str(model).startswith(REGISTRY_PREFIX):
            from micro_doe.tracking.registry import resolve_model  # written alongside; needed only here

            options["model"] = str(resolve_model(str(model), tracking_uri))
        if takes_option(factory, "device"):
            options["device"] = choose_device(options.get("device"))
        start = time.perf_counter()
        self.generator: Generator = build_generator(self.kind, options, factory)
        self.load_seconds = time.perf_counter() - start
        self.device = options.get("device", "cpu")
        self.model_ref = str(model) if model is not None else getattr(self.generator, "model_ref", self.kind)

    def info(self) -> dict[str, Any]:
        """Where this worker lives and what it holds."""
        return {
            "pid": os.getpid(),
            "node_ip": ray.util.get_node_ip_address(),
            "device": self.device,
            "model": self.model_ref,
            "size": getattr(self.generator, "cube_size", None) or self.generator.size,
            "gpu_ids": _gpu_ids(),
            "load_seconds": self.load_seconds,
            "restarted": restarted(),
        }

    def sample(self, params: dict[str, Any], n: int, seed: int) -> dict[str, Any]:
        """``n`` volumes (volume i from seed ``seed + i``) with per-volume seconds.

        Returns ``{"volumes", "seconds", "predicted", "busy_seconds", "device"}``;
        ``predicted`` holds, per volume, what the generator predicted beside it (the LDM's
        descriptors and manufacturing parameters; an empty dict for the others).
        """
        start = time.perf_counter()
        if n < 1:
            raise ValueError(f"n: expected at least 1 volume, got {n}")
        batch = self.generator.sample_batch(params, n, seed)
        return {"volumes": batch.volumes, "seconds": batch.seconds, "predicted": batch.predicted,
                "busy_seconds": time.perf_counter() - start, "device": self.device}  # fmt: skip


GeneratorActor = ray.remote(GeneratorWorker)
