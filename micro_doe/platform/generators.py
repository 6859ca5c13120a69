"""Generators: a model bundle turned into labelled volumes (what actors and the CLI call).

:class:`Micro3DiffGenerator` loads a bundle once and samples n×n×n volumes by multi-plane
denoising (see :mod:`micro_doe.platform.micro3diff`), with the bundle's default sampling
settings unless told otherwise. Every volume carries its sampling settings, seed, model
and seconds spent in its attrs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any, Literal

import xarray as xr
from pydantic import BaseModel, ConfigDict, Field

from micro_doe.platform.bundle import Micro3DiffBundle, SamplingDefaults, load_bundle
from micro_doe.platform.diffusion import DDIMSampler, DDPMSampler, Sampler
from micro_doe.platform.micro3diff import DenoisingPass, sample_multiplane, to_labels
from micro_doe.platform.training import default_device
from micro_doe.platform.volumes import make_volume

# Multi-plane variants, as keyword arguments of sample_multiplane. "paper" is the reference;
# the others are optional improvements with their own measured numbers (benchmarks/micro3diff.py).
# moment_match = 1.0 is E[x0²] of every channel that labels_to_channels makes (all ±1).
class GenerationError(RuntimeError):
    """A generator produced no usable volume (e.g. non-finite values from a diverged model)."""


VARIANTS: dict[str, dict[str, Any]] = {
    "paper": {"planes": "rotate"},
    "average": {"planes": "average"},
    "moment": {"planes": "rotate", "moment_match": 1.0},
}


class SamplingSettings(BaseModel):
    """One sampling request; unset fields take the bundle's defaults."""

    model_config = ConfigDict(extra="forbid")
    n_h: int | None = Field(None, ge=0)
    steps: int | None = Field(None, ge=1)
    sampler: Literal["ddpm", "ddim"] | None = None
    eta: float | None = Field(None, ge=0.0)
    variance: Literal["beta", "posterior"] | None = None
    variant: str | None = None

    def resolved(self, defaults: SamplingDefaults) -> SamplingDefaults:
        merged = defaults.model_dump() | {k: v for k, v in self.model_dump().items() if v is not None}
        if merged["variant"] not in VARIANTS:
            raise ValueError(f"variant: expected one of {sorted(VARIANTS)}, got {merged['variant']!r}")
        return SamplingDefaults.model_validate(merged)


class Micro3DiffGenerator:
    """Sample 3D volumes from a Micro3Diff bundle (``pretrained:NAME`` or a path)."""

    def __init__(self, model: str | os.PathLike[str] | Micro3DiffBundle, device: str | None = None) -> None:
        self.device = device or default_device()
        self.bundle = model if isinstance(model, Micro3DiffBundle) else load_bundle(model, self.device)
        self.model_ref = str(model) if not isinstance(model, Micro3DiffBundle) else str(model.path)

    @property
    def size(self) -> int:
        return self.bundle.config.image_size

    def sampler(self, settings: SamplingDefaults) -> Sampler:
        schedule = self.bundle.config.noise_schedule()
        if settings.steps > schedule.T:
            raise ValueError(f"steps: at most the model's T = {schedule.T}, got {settings.steps}")
        if settings.sampler == "ddim":
            return DDIMSampler(schedule, steps=settings.steps, eta=settings.eta)
        return DDPMSampler(schedule, steps=settings.steps, variance=settings.variance)

    def passes_per_volume(self, settings: SamplingSettings | None = None) -> int:
        s = (settings or SamplingSettings()).resolved(self.bundle.config.sampling)
        return (s.n_h + 1) * s.steps

    def sample(
        self,
        n: int = 1,
        settings: SamplingSettings | None = None,
        *,
        seed: int = 0,
        batch_size: int = 64,
        on_pass: Callable[[DenoisingPass], None] | None = None,
    ) -> list[xr.DataArray]:
        """``n`` volumes; volume i uses seed ``seed + i`` (so each is reproducible alone)."""
        if n < 1:
            raise ValueError(f"n: expected at least 1 volume, got {n}")
        s = (settings or SamplingSettings()).resolved(self.bundle.config.sampling)
        sampler = self.sampler(s)
        channels = self.bundle.config.unet.in_channels
        volumes = []
        for i in range(n):
            start = time.perf_counter()
            x0 = sample_multiplane(
                self.bundle.model,
                self.size,
                sampler,
                n_h=s.n_h,
                seed=seed + i,
                batch_size=batch_size,
                device=self.device,
                channels=channels,
                **VARIANTS[s.variant],
                callback=on_pass,
            )
            seconds = time.perf_counter() - start
            if not bool(x0.isfinite().all()):
                raise GenerationError(f"{self.model_ref}: sampling produced non-finite values (seed {seed + i})")
            params: dict[str, Any] = s.model_dump() | {"model": self.model_ref, "seconds": seconds}
            volumes.append(
                make_volume(
                    to_labels(x0, channel_dim=0),
                    phase_names=self.bundle.config.phase_names,
                    source=f"micro3diff:{self.bundle.name}",
                    seed=seed + i,
                    params=params,
                )
            )
        return volumes


def stack_volumes(volumes: list[xr.DataArray]) -> xr.DataArray:
    """Several volumes as one (sample, z, y, x) DataArray (attrs of the first; seeds listed)."""
    if len(volumes) == 1:
        return volumes[0]
    stacked = xr.concat(volumes, dim="sample", combine_attrs="override")
    stacked.attrs["seeds"] = [int(v.attrs["seed"]) for v in volumes]
    stacked.attrs.pop("seed", None)
    return stacked.astype("int8")
