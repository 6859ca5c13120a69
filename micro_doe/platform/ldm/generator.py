"""Conditional generation from an LDM bundle: targets in, volumes and predicted recipes out.

    targets {name: value} ──check──► Normaliser ──► context (1, F)
      │ sample_latents (DDPM / DDIM over S steps, guidance w), seed per sample
      ▼
    z0 ──/ latent_scale──► VAE decoder ──► int8 volume (z, y, x)
                       └──► feature predictor ──► predicted descriptors and recipe

**Targets.** Exactly the bundle's conditioning labels (e.g. ``vf_donor``, ``tau_donor``,
``tau_acceptor``), in physical units (τ ≥ 1, or ``inf`` for "not percolating" when the
training data held non-percolating samples). Unknown names and missing names are errors
(there is no default: a silently filled-in τ could contradict the given volume fraction;
the messages quote the training medians as a starting point). A value outside the
training range of its label (``LDMConfig.label_ranges``) is a ``ValueError`` naming the
target and the range unless ``allow_extrapolation=True``. The check is per label: a
combination of in-range values can still be one the training data never held.

**Predictions.** The feature predictor's de-normalised outputs on the sample's own latent
(z0 / latent_scale, the μ it was trained on): descriptors (vf, τ, interfacial area) and the
manufacturing parameters φ (initial donor fraction), χ (Flory–Huggins) and ``log_time``,
plus ``time = 10**log_time`` (annealing time, the solver's nondimensional units). A
predicted 1/τ ≤ 0 is reported as τ = inf (not percolating).

**Seeds.** Sample i of a call uses seed ``seed + i`` and is generated alone, so each
sample is reproducible by itself (:meth:`LDMGenerator.sample` is a pure function of
``(params, n, seed)``, as a Ray actor needs).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import xarray as xr
from pydantic import BaseModel, ConfigDict, Field

from micro_doe.platform.bundles import GenerationError
from micro_doe.platform.diffusion import DDIMSampler, DDPMSampler, Sampler
from micro_doe.platform.diffusion.training import default_device
from micro_doe.platform.ldm.bundle import LDMBundle, LDMSamplingDefaults, load_ldm_bundle
from micro_doe.platform.ldm.sampling import decode_volumes, sample_latents
from micro_doe.platform.volumes import make_volume

TARGET_PREFIX = "target."
RANGE_TOLERANCE = 1e-9  # relative slack on the training range (float round-off of stored bounds)


class LDMSamplingSettings(BaseModel):
    """One sampling request; unset fields take the bundle's defaults."""

    model_config = ConfigDict(extra="forbid")
    steps: int | None = Field(None, ge=1)
    sampler: Literal["ddpm", "ddim"] | None = None
    guidance: float | None = Field(None, ge=0.0)

    def resolved(self, defaults: LDMSamplingDefaults) -> LDMSamplingDefaults:
        return LDMSamplingDefaults.model_validate(
            defaults.model_dump() | {k: v for k, v in self.model_dump().items() if v is not None}
        )


@dataclass
class LDMSample:
    """One generated microstructure.

    ``volume``: int8 (z, y, x) phase labels (attrs: ``targets``, ``settings``, ``predicted``
    as JSON, ``model``, ``seed``, ``generator_params``); ``predicted``: the feature
    predictor's outputs in physical units plus ``time``; ``seconds``: wall time of this
    sample; ``data_config``: the training data set's config (what
    :func:`~micro_doe.platform.ldm.recipe.check_recipe` simulates with).
    """

    volume: xr.DataArray
    predicted: dict[str, float]
    seconds: float
    targets: dict[str, float]
    seed: int
    model: str
    data_config: dict[str, Any] = field(default_factory=dict)


class LDMGenerator:
    """Sample volumes with targeted descriptors from an LDM bundle (``pretrained:NAME``, a path, or loaded)."""

    def __init__(self, model: str | os.PathLike[str] | LDMBundle, device: str | None = None) -> None:
        self.device = device or default_device()
        if isinstance(model, LDMBundle):
            self.bundle = model
            for net in (model.vae, model.fp, model.unet):
                net.to(self.device).eval()
        else:
            self.bundle = load_ldm_bundle(model, self.device)
        self.model_ref = str(model.path if isinstance(model, LDMBundle) else model)

    @property
    def size(self) -> int:
        return self.bundle.config.volume_size

    @property
    def conditioning(self) -> list[str]:
        return list(self.bundle.config.conditioning)

    def target_ranges(self) -> dict[str, tuple[float, float]]:
        """The training range (finite min, max) of every conditioning label."""
        ranges = self.bundle.config.label_ranges
        return {n: tuple(ranges[n]) for n in self.conditioning if n in ranges}  # type: ignore[misc]

    def check_targets(self, targets: Mapping[str, float], allow_extrapolation: bool = False) -> dict[str, float]:
        """Validated targets as floats, in conditioning order (module docstring for the rules)."""
        config = self.bundle.config
        allowed = self.conditioning
        unknown = sorted(set(targets) - set(allowed))
        if unknown:
            raise ValueError(f"targets: unknown names {unknown}; this model is conditioned on {allowed}")
        missing = [n for n in allowed if n not in targets]
        if missing:
            medians = ", ".join(f"{n}={config.condition_medians.get(n, math.nan):.4g}" for n in missing)
            raise ValueError(f"targets: missing {missing}; give every conditioning label {allowed} "
                             f"(training medians: {medians})")
        inverse = set(self.bundle.condition_normaliser.inverse)
        checked: dict[str, float] = {}
        for name in allowed:
            try:
                value = float(targets[name])
            except (TypeError, ValueError):
                raise ValueError(f"target {name}: expected a number, got {targets[name]!r}") from None
            if math.isnan(value) or (name in inverse and value <= 0) or (math.isinf(value) and name not in inverse):
                kind = "a positive number or inf" if name in inverse else "a finite number"
                raise ValueError(f"target {name}: expected {kind}, got {value}")
            if not allow_extrapolation:
                self._check_range(name, value)
            checked[name] = value
        return checked

    def _check_range(self, name: str, value: float) -> None:
        config = self.bundle.config
        infinite_ok = name in config.infinite_labels
        if math.isinf(value) and infinite_ok:
            return
        lo, hi = config.label_ranges.get(name, (math.nan, math.nan))
        slack = RANGE_TOLERANCE * max(abs(lo), abs(hi), 1.0)
        if not (lo - slack <= value <= hi + slack):
            allowed = f"[{lo:.4g}, {hi:.4g}]" + (" or inf" if infinite_ok else "")
            raise ValueError(f"target {name} = {value:.4g} is outside the training range {allowed}; to sample "
                             "there anyway pass allow_extrapolation=True (CLI: --allow-extrapolation; "
                             "study: allow_extrapolation: true)")

    def context(self, targets: Mapping[str, float]) -> torch.Tensor:
        """Normalised conditioning vector (1, F) of checked targets."""
        values = torch.tensor([[targets[n] for n in self.conditioning]], dtype=torch.float64)
        return self.bundle.condition_normaliser.transform(values).float()

    def sampler(self, settings: LDMSamplingDefaults) -> Sampler:
        schedule = self.bundle.config.noise_schedule()
        if settings.steps > schedule.T:
            raise ValueError(f"steps: at most the model's T = {schedule.T}, got {settings.steps}")
        if settings.sampler == "ddim":
            return DDIMSampler(schedule, steps=settings.steps, eta=0.0)
        return DDPMSampler(schedule, steps=settings.steps)

    def predict(self, latents: torch.Tensor) -> list[dict[str, float]]:
        """The feature predictor's outputs on sampled latents (B, C, d, d, d), physical units, plus ``time``."""
        b = self.bundle
        with torch.no_grad():
            mu = latents.to(self.device, torch.float32) / b.config.latent_scale
            values = b.feature_normaliser.inverse_transform(b.fp(mu).double().cpu())
        inverse = [b.feature_normaliser.names.index(n) for n in b.feature_normaliser.inverse]
        if inverse:
            col = values[:, inverse]
            values[:, inverse] = torch.where(torch.isfinite(col) & (col > 0), col, torch.full_like(col, math.inf))
        out = []
        for row in values.tolist():
            predicted = dict(zip(b.feature_normaliser.names, row))
            if "log_time" in predicted:
                log_time = predicted["log_time"]
                predicted["time"] = 10.0**log_time if log_time < 300 else math.inf
            out.append(predicted)
        return out

    def generate(
        self,
        targets: Mapping[str, float],
        n: int = 1,
        steps: int | None = None,
        guidance: float | None = None,
        sampler: Literal["ddpm", "ddim"] | None = None,
        seed: int = 0,
        allow_extrapolation: bool = False,
    ) -> list[LDMSample]:
        """``n`` samples conditioned on ``targets``; sample i from seed ``seed + i``."""
        if n < 1:
            raise ValueError(f"n: expected at least 1 sample, got {n}")
        checked = self.check_targets(targets, allow_extrapolation)
        settings = LDMSamplingSettings(steps=steps, sampler=sampler, guidance=guidance).resolved(
            self.bundle.config.sampling
        )
        diffusion = self.sampler(settings)
        context = self.context(checked)
        config = self.bundle.config
        samples = []
        for i in range(n):
            start = time.perf_counter()
            z0 = sample_latents(
                self.bundle.unet, diffusion, context, config.latent_shape(),
                guidance=settings.guidance, seed=seed + i, device=self.device,
            )  # fmt: skip
            if not bool(torch.isfinite(z0).all()):
                raise GenerationError(f"{self.model_ref}: sampling produced non-finite latents (seed {seed + i})")
            labels = decode_volumes(self.bundle.vae, z0, latent_scale=config.latent_scale, device=self.device)[0]
            predicted = self.predict(z0)[0]
            seconds = time.perf_counter() - start
            samples.append(self._sample(labels, predicted, seconds, checked, settings, seed + i))
        return samples

    def _sample(
        self,
        labels: np.ndarray,
        predicted: dict[str, float],
        seconds: float,
        targets: dict[str, float],
        settings: LDMSamplingDefaults,
        seed: int,
    ) -> LDMSample:
        params = settings.model_dump() | {"targets": targets, "model": self.model_ref, "seconds": seconds}
        volume = make_volume(
            labels, phase_names=self.bundle.config.phase_names, source=f"ldm:{self.bundle.name}", seed=seed,
            params=params,
        )  # fmt: skip
        volume.attrs.update(
            targets=json.dumps(targets), settings=settings.model_dump_json(), model=self.model_ref,
            predicted=json.dumps(predicted),
        )  # fmt: skip
        data_config = dict(self.bundle.config.recipe.data_config)
        return LDMSample(volume, predicted, seconds, dict(targets), seed, self.model_ref, data_config)

    def sample(self, params: Mapping[str, Any], n: int, seed: int) -> dict[str, Any]:
        """The actor-facing call: ``params`` holds ``target.<name>`` values and optionally
        ``guidance``, ``steps``, ``sampler``, ``allow_extrapolation``.

        Returns ``{"volumes", "seconds", "predicted"}``, one entry per sample (sample i from seed ``seed + i``).
        """
        settings_keys = {"guidance", "steps", "sampler", "allow_extrapolation"}
        targets: dict[str, float] = {}
        settings: dict[str, Any] = {}
        for key, value in params.items():
            if key.startswith(TARGET_PREFIX):
                targets[key[len(TARGET_PREFIX) :]] = value
            elif key in settings_keys:
                settings[key] = value
            else:
                allowed = sorted(settings_keys | {TARGET_PREFIX + n for n in self.conditioning})
                raise ValueError(f"ldm: unknown generator parameter {key!r}; expected some of {allowed}")
        samples = self.generate(targets, n, seed=seed, **settings)
        return {
            "volumes": [s.volume for s in samples],
            "seconds": [s.seconds for s in samples],
            "predicted": [s.predicted for s in samples],
        }
