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

import json
import os
import time
from typing import Any

import ray
import torch

from micro_doe.actors.cluster import in_actor, restarted
from micro_doe.platform.bundles import REGISTRY_PREFIX
from micro_doe.platform.ldm.generator import LDMGenerator
from micro_doe.platform.ldm.verify import DEFAULT_VERIFY, VerifySettings
from micro_doe.platform.micro3diff.generator import Micro3DiffGenerator, SamplingSettings
from micro_doe.platform.synthetic.anneal import AnnealedFilmGenerator

SPEC_KEYS = {"kind", "model", "device", "batch_size", "allow_extrapolation", "tracking_uri", "size", "verify", "phases"}
KINDS = ("micro3diff", "ldm", "cahn-hilliard")
TARGET_PARAM = "target."


def verify_settings(value: Any) -> VerifySettings | None:
    """The LDM's verification from a spec's ``verify``: absent (None) → the default
    verification, ``False`` → raw samples, a mapping → those settings."""
    if value is False:
        return None
    return DEFAULT_VERIFY if value is None else VerifySettings.model_validate(value)


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
    """Owns one loaded generator model; ``sample`` turns parameters into volumes.

    ``spec``: ``{"kind": "micro3diff" | "ldm", "model": "pretrained:NAME" | bundle path |
    "models:/NAME@ALIAS", "device": None | "cpu" | "cuda", "tracking_uri": str | None}``
    plus ``"batch_size": int`` (micro3diff: slices per pass; ldm: candidates denoised together),
    ``"allow_extrapolation": bool`` (targets beyond the model's documented range) and, for the
    LDM, ``"verify": {"tolerance", "max_candidates"}`` (verified generation; absent: the
    default verification, ``False``: raw samples);
    optional ``"size"``: Micro3Diff's cube edge N (any N ≥ the training size that its U-Net takes),
    for the LDM checked against the model's.
    A bundle path is opened by the actor's process (a local instance shares the driver's
    working directory; on a cluster use a shared filesystem or ``models:/…``).
    """

    def __init__(self, spec: dict[str, Any]) -> None:
        unknown = sorted(set(spec) - SPEC_KEYS)
        if unknown:
            raise ValueError(f"generator spec: unknown keys {unknown}; expected some of {sorted(SPEC_KEYS)}")
        kind = spec.get("kind", "micro3diff")
        if kind not in KINDS:
            raise ValueError(f"generator spec: kind {kind!r} is not supported here; expected one of {list(KINDS)}")
        self.kind = kind
        self.size: int | None = None  # Micro3Diff: the cube edge to sample (None: the training size)
        if kind == "cahn-hilliard":  # the forward route: a solver, no model to load
            self._init_solver(spec)
            return
        if not spec.get("model"):
            raise ValueError("generator spec: 'model' is required (pretrained:NAME, bundle path, models:/NAME@ALIAS)")
        self.model_ref = str(spec["model"])
        # None: Micro3Diff chooses slices per pass by the volume size; the LDM denoises 64 candidates
        self.batch_size: int | None = None if spec.get("batch_size") is None else int(spec["batch_size"])
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"generator spec: batch_size must be at least 1, got {self.batch_size}")
        path = self.model_ref
        if path.startswith(REGISTRY_PREFIX):
            from micro_doe.tracking.registry import resolve_model  # written alongside; needed only here

            path = resolve_model(path, spec.get("tracking_uri"))
        self.device = choose_device(spec.get("device"))
        self.allow_extrapolation = bool(spec.get("allow_extrapolation", False))
        if spec.get("verify") not in (None, False) and kind != "ldm":
            raise ValueError("generator spec: verify is an option of the ldm kind")
        self.verify = verify_settings(spec.get("verify")) if kind == "ldm" else None
        start = time.perf_counter()
        self.generator: Micro3DiffGenerator | LDMGenerator | AnnealedFilmGenerator
        if kind == "ldm":
            self.generator = LDMGenerator(path, device=self.device)
        else:
            self.generator = Micro3DiffGenerator(path, device=self.device)
        self.load_seconds = time.perf_counter() - start
        size = spec.get("size")
        if isinstance(self.generator, Micro3DiffGenerator):
            self.size = None if size is None else self.generator.volume_size(int(size))
        elif size is not None and int(size) != self.generator.size:
            raise ValueError(f"generator spec: size {size} but {self.model_ref} makes {self.generator.size}³ volumes")

    def _init_solver(self, spec: dict[str, Any]) -> None:
        extra = sorted(k for k in ("model", "verify", "allow_extrapolation") if spec.get(k))
        if extra:
            raise ValueError(f"generator spec: {extra} are not options of the cahn-hilliard kind")
        self.device = choose_device(spec.get("device"))
        start = time.perf_counter()
        self.generator = AnnealedFilmGenerator(int(spec.get("size") or 32), int(spec.get("phases") or 2), self.device)
        self.model_ref = f"cahn-hilliard:{self.generator.n_phases}-phase"
        self.load_seconds = time.perf_counter() - start

    def info(self) -> dict[str, Any]:
        """Where this worker lives and what it holds."""
        return {
            "pid": os.getpid(),
            "node_ip": ray.util.get_node_ip_address(),
            "device": self.device,
            "model": self.model_ref,
            "size": self.size or self.generator.size,
            "gpu_ids": _gpu_ids(),
            "load_seconds": self.load_seconds,
            "restarted": restarted(),
        }

    def settings(self, params: dict[str, Any]) -> SamplingSettings:
        """Generator parameters → sampling settings (``target.<name>`` → ``targets``); unknown
        keys or bad values → ValueError."""
        known = set(SamplingSettings.model_fields) - {"targets"}
        targets = {k[len(TARGET_PARAM) :]: v for k, v in params.items() if k.startswith(TARGET_PARAM)}
        plain = {k: v for k, v in params.items() if not k.startswith(TARGET_PARAM)}
        unknown = sorted(set(plain) - known)
        if unknown:
            raise ValueError(f"{self.kind}: unknown generator parameters {unknown}; expected some of {sorted(known)}")
        try:
            return SamplingSettings(**plain, targets=targets)
        except ValueError as err:  # pydantic's ValidationError: re-raised plain so it pickles through Ray
            raise ValueError(f"{self.kind}: invalid generator parameters: {err}") from None

    def sample(self, params: dict[str, Any], n: int, seed: int) -> dict[str, Any]:
        """``n`` volumes (volume i from seed ``seed + i``) with per-volume seconds.

        Returns ``{"volumes", "seconds", "predicted", "busy_seconds", "device"}``;
        ``predicted`` holds, per volume, the LDM's predicted descriptors and manufacturing
        parameters (an empty dict for Micro3Diff, which predicts nothing).
        """
        start = time.perf_counter()
        if n < 1:
            raise ValueError(f"n: expected at least 1 volume, got {n}")
        if isinstance(self.generator, AnnealedFilmGenerator):
            return self.generator.sample(params, n, seed) | {"busy_seconds": time.perf_counter() - start,
                                                             "device": self.device}  # fmt: skip
        if isinstance(self.generator, LDMGenerator):
            params = dict(params) | {"allow_extrapolation": self.allow_extrapolation}
            try:
                out = self.generator.sample(params, n, seed, verify=self.verify, batch_size=self.batch_size or 64)
            except ValueError as err:  # pydantic's ValidationError: re-raised plain so it pickles through Ray
                raise ValueError(f"{self.kind}: {err}") from None
            return out | {"busy_seconds": time.perf_counter() - start, "device": self.device}
        settings = self.settings(params)
        # All n volumes in batched loops (each still reproducible alone from its seed).
        volumes = self.generator.sample(
            n, settings, seed=seed, batch_size=self.batch_size, allow_extrapolation=self.allow_extrapolation,
            size=self.size,
        )
        seconds = [json.loads(v.attrs["generator_params"])["seconds"] for v in volumes]
        return {
            "volumes": volumes,
            "seconds": seconds,
            "predicted": [{} for _ in volumes],
            "busy_seconds": time.perf_counter() - start,
            "device": self.device,
        }


GeneratorActor = ray.remote(GeneratorWorker)
