"""Conditional generation from an LDM bundle: targets in, volumes and predicted recipes out.

    targets {name: value} ──check──► Normaliser ──► context (1, F), NaN for free labels
      │ sample_latents (DDPM / DDIM over S steps, guidance w, rescale φ, optional
      │ feature-predictor guidance), one torch generator per candidate, in batches
      ▼
    z0 ──/ latent_scale──► VAE decoder ──► int8 volume (z, y, x) ──► [verify: measure]
                       └──► feature predictor ──► predicted descriptors and recipe

**Targets.** The bundle's conditioning labels (e.g. ``vf_donor``, ``tau_donor``,
``tau_acceptor``), in physical units (τ ≥ 1, or ``inf`` for "not percolating" when the
training data held non-percolating samples). Unknown names are errors. A model trained with
``label_dropout`` (any-subset conditioning) accepts any non-empty subset, the other labels
free (marginalised over the training data); a model trained without it needs every label
(the message quotes the training medians). A value outside the training range of its
label (``LDMConfig.label_ranges``) is a ``ValueError`` naming the target and the range
unless ``allow_extrapolation=True``. The check is per given label: a combination of
in-range values can still be one the training data never held.

**Verified generation** (``verify``, :mod:`~micro_doe.platform.ldm.verify`; on by default,
because raw samples can miss their targets by more than users accept): candidates
are measured by the evaluators that labelled the training data, and a sample is the first
candidate whose requested labels are all within tolerance, or the closest one, marked as
not meeting it. With ``verify=None`` (raw samples) every sample is candidate 0. With ``verify.correct`` later
rounds of candidates are conditioned on a request corrected by the measured miss.

**Predictions.** The feature predictor's de-normalised outputs on the sample's own latent
(z0 / latent_scale, the μ it was trained on): descriptors (vf, τ, interfacial area) and the
manufacturing parameters φ (initial donor fraction), χ (Flory–Huggins) and ``log_time``,
plus ``time = 10**log_time`` (annealing time, the solver's nondimensional units). A
predicted 1/τ ≤ 0 is reported as τ = inf (not percolating).

**Seeds and batches.** Sample i of a call uses seed ``seed + i`` (candidate j > 0:
:func:`~micro_doe.platform.ldm.verify.candidate_seed`), each with its own torch generator,
and up to ``batch_size`` candidates are denoised together: each sample is reproducible
alone and does not depend on the batch size beyond float round-off
(:meth:`LDMGenerator.sample` is a pure function of ``(params, n, seed)``, as a Ray actor needs).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import xarray as xr
from pydantic import BaseModel, ConfigDict, Field

from micro_doe.platform.bundles import GenerationError, model_digest
from micro_doe.platform.diffusion import DDIMSampler, DDPMSampler, Sampler
from micro_doe.platform.diffusion.training import default_device
from micro_doe.platform.generators import GeneratedBatch
from micro_doe.platform.ldm.bundle import LDMBundle, LDMSamplingConfig, load_ldm_bundle
from micro_doe.platform.ldm.sampling import decode_volumes, feature_guide, sample_latents
from micro_doe.platform.ldm.verify import (
    DEFAULT_VERIFY,
    Verification,
    VerifySettings,
    candidate_seed,
    corrected_request,
    distance,
    measurable,
    measure,
)
from micro_doe.platform.volumes import make_volume

TARGET_PREFIX = "target."
DEFAULT_BATCH_SIZE = 16  # candidates denoised together (latents are tiny: memory is not the limit)
RANGE_TOLERANCE = 1e-9  # relative slack on the training range (float round-off of stored bounds)


def physical_range(label: str) -> tuple[float, float]:
    """The values any volume can have for a conditioning label, training range or not: a volume
    fraction in [0, 1], an interfacial area ≥ 0, a tortuosity factor > 0 (inf: not percolating)."""
    if label.startswith("vf_"):
        return 0.0, 1.0
    if label.startswith("tau_"):
        return math.ulp(0.0), math.inf
    return 0.0, math.inf


class LDMSamplingSettings(BaseModel):
    """One sampling request; unset fields take the bundle's defaults."""

    model_config = ConfigDict(extra="forbid")
    steps: int | None = Field(None, ge=1)
    sampler: Literal["ddpm", "ddim"] | None = None
    guidance: float | None = Field(None, ge=0.0)
    guidance_rescale: float | None = Field(None, ge=0.0, le=1.0)
    feature_guidance: float | None = Field(None, ge=0.0)

    def resolved(self, defaults: LDMSamplingConfig) -> LDMSamplingConfig:
        return LDMSamplingConfig.model_validate(
            defaults.model_dump() | {k: v for k, v in self.model_dump().items() if v is not None}
        )


@dataclass
class LDMSample:
    """One generated microstructure.

    ``volume``: int8 (z, y, x) phase labels (attrs: ``targets``, ``settings``, ``predicted``
    and, when verified, ``verification`` as JSON, ``model``, ``seed``, ``generator_params``);
    ``predicted``: the feature predictor's outputs in physical units plus ``time``;
    ``seconds``: wall time of this sample, its share of every batch it took part in
    (all its candidates); ``data_config``: the training data set's config (what
    :func:`~micro_doe.platform.ldm.recipe.check_recipe` simulates with); ``verification``:
    what verified generation measured and spent (None without ``verify``).
    """

    volume: xr.DataArray
    predicted: dict[str, float]
    seconds: float
    targets: dict[str, float]
    seed: int
    model: str
    data_config: dict[str, Any] = field(default_factory=dict)
    verification: Verification | None = None


class LDMGenerator:
    """Sample volumes with targeted descriptors from an LDM bundle (``pretrained:NAME``, a path, or loaded)."""

    def __init__(self, model: str | os.PathLike[str] | LDMBundle, device: str | None = None, *,
                 verify: VerifySettings | None = DEFAULT_VERIFY, batch_size: int | None = None,
                 allow_extrapolation: bool = False, size: int | None = None) -> None:  # fmt: skip
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size: expected at least 1, got {batch_size}")
        self.device = device or default_device()
        if isinstance(model, LDMBundle):
            self.bundle = model
            for net in (model.vae, model.fp, model.unet):
                net.to(self.device).eval()
        else:
            self.bundle = load_ldm_bundle(model, self.device)
        self.model_ref = str(model.path if isinstance(model, LDMBundle) else model)
        self.model_sha256 = model_digest(self.bundle.path)
        # What sample_batch (a study's call) uses: verification, candidates per batch, extrapolation.
        self.verify, self.batch_size, self.allow_extrapolation = verify, batch_size or DEFAULT_BATCH_SIZE, allow_extrapolation
        if size is not None and int(size) != self.size:
            raise ValueError(f"size: {size}, but {self.model_ref} makes {self.size}³ volumes")

    @property
    def size(self) -> int:
        return self.bundle.config.volume_size

    @property
    def phase_names(self) -> list[str]:
        return list(self.bundle.config.phase_names)

    def sample_batch(self, params: Mapping[str, Any], n: int, seed: int) -> GeneratedBatch:
        """A study's call (:class:`~micro_doe.platform.generators.Generator`): :meth:`sample`
        with this generator's verification, batch size and extrapolation."""
        try:
            out = self.sample(dict(params) | {"allow_extrapolation": self.allow_extrapolation}, n, seed,
                              verify=self.verify, batch_size=self.batch_size)  # fmt: skip
        except ValueError as err:  # pydantic's ValidationError: re-raised plain so it pickles through Ray
            raise ValueError(f"ldm: {err}") from None
        return GeneratedBatch(out["volumes"], out["seconds"], out["predicted"])

    @property
    def conditioning(self) -> list[str]:
        return list(self.bundle.config.conditioning)

    @property
    def any_subset(self) -> bool:
        """Whether the model was trained with label dropout, so any subset of labels may be given."""
        return self.bundle.config.unet.label_dropout > 0

    def target_ranges(self) -> dict[str, tuple[float, float]]:
        """The training range (finite min, max) of every conditioning label."""
        ranges = self.bundle.config.label_ranges
        return {n: tuple(ranges[n]) for n in self.conditioning if n in ranges}  # type: ignore[misc]

    def check_targets(self, targets: Mapping[str, float], allow_extrapolation: bool = False) -> dict[str, float]:
        """Validated targets as floats, in conditioning order (module docstring for the rules);
        free labels (any-subset models) are left out."""
        config = self.bundle.config
        allowed = self.conditioning
        unknown = sorted(set(targets) - set(allowed))
        if unknown:
            raise ValueError(f"targets: unknown names {unknown}; this model is conditioned on {allowed}")
        missing = [n for n in allowed if n not in targets]
        if not targets:
            raise ValueError(f"targets: give at least one of {allowed}")
        if missing and not self.any_subset:
            medians = ", ".join(f"{n}={config.condition_medians.get(n, math.nan):.4g}" for n in missing)
            raise ValueError(f"targets: missing {missing}; this model was trained without label dropout, so give "
                             f"every conditioning label {allowed} (training medians: {medians})")
        inverse = set(self.bundle.condition_normaliser.inverse)
        checked: dict[str, float] = {}
        for name in (n for n in allowed if n in targets):
            try:
                value = float(targets[name])
            except (TypeError, ValueError):
                raise ValueError(f"target {name}: expected a number, got {targets[name]!r}") from None
            if math.isnan(value) or (name in inverse and value <= 0) or (math.isinf(value) and name not in inverse):
                kind = "a positive number or inf" if name in inverse else "a finite number"
                raise ValueError(f"target {name}: expected {kind}, got {value}")
            lo, hi = physical_range(name)
            if not lo <= value <= hi:  # extrapolation or not: no volume has such a value
                raise ValueError(f"target {name} = {value:.4g}: expected a value in [{lo:g}, {hi:g}]")
            if not allow_extrapolation:
                self._check_range(name, value)
            checked[name] = value
        fractions = {n: v for n, v in checked.items() if n.startswith("vf_")}
        if sum(fractions.values()) > 1.0 + RANGE_TOLERANCE:
            raise ValueError(f"targets {', '.join(fractions)}: volume fractions that sum to "
                             f"{sum(fractions.values()):.4g}; the phases of a volume sum to 1")
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
        """Normalised conditioning vector (1, F) of checked targets; NaN for free labels."""
        return self.contexts([targets])

    def contexts(self, requests: Sequence[Mapping[str, float]]) -> torch.Tensor:
        """:meth:`context` of each request, one row per request (B, F), normalised together."""
        values = torch.tensor([[r.get(n, math.nan) for n in self.conditioning] for r in requests], dtype=torch.float64)
        return self.bundle.condition_normaliser.transform(values).float()

    def check_verify(self, verify: VerifySettings, targets: Mapping[str, float]) -> dict[str, float]:
        """The tolerance of every given target; a label the evaluators cannot measure → ValueError."""
        phases = list(self.bundle.config.phase_names)
        unmeasurable = [n for n in targets if not measurable(n, phases)]
        if unmeasurable:
            raise ValueError(f"verify: labels {unmeasurable} cannot be measured on volumes with phases {phases}")
        return verify.tolerances(list(targets))

    def _feature_guide(self, requests: Sequence[Mapping[str, float]], scale: float):
        """:func:`~micro_doe.platform.ldm.sampling.feature_guide` towards one request per latent."""
        b = self.bundle
        names = list(b.feature_normaliser.names)
        rows = torch.tensor([[r.get(n, math.nan) for n in names] for r in requests], dtype=torch.float64)
        wanted = b.feature_normaliser.transform(rows).float()
        given = torch.isfinite(wanted)
        schedule = b.config.noise_schedule()
        return feature_guide(b.fp, wanted.nan_to_num(0.0).to(self.device), given.to(self.device),
                             schedule.alpha_bar, b.config.latent_scale, scale)  # fmt: skip

    def sampler(self, settings: LDMSamplingConfig) -> Sampler:
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
        guidance_rescale: float | None = None,
        feature_guidance: float | None = None,
        verify: VerifySettings | None = DEFAULT_VERIFY,
        batch_size: int = DEFAULT_BATCH_SIZE,
        on_candidates: Callable[[int], None] | None = None,
    ) -> list[LDMSample]:
        """``n`` samples conditioned on ``targets``; sample i from seed ``seed + i`` (module docstring).

        ``verify``: measure candidates and return, per sample, the first within tolerance
        (or the closest, marked); on by default (``DEFAULT_VERIFY``), ``None`` for raw samples
        (one candidate each, unmeasured); ``batch_size``: candidates denoised together;
        ``on_candidates(k)``: called after each batch of k candidates (progress).
        """
        if n < 1:
            raise ValueError(f"n: expected at least 1 sample, got {n}")
        if batch_size < 1:
            raise ValueError(f"batch_size: expected at least 1, got {batch_size}")
        checked = self.check_targets(targets, allow_extrapolation)
        settings = LDMSamplingSettings(
            steps=steps, sampler=sampler, guidance=guidance, guidance_rescale=guidance_rescale,
            feature_guidance=feature_guidance,
        ).resolved(self.bundle.config.sampling)  # fmt: skip
        tolerances = self.check_verify(verify, checked) if verify is not None else {}
        max_candidates = verify.max_candidates if verify is not None else 1
        correct = verify is not None and verify.correct
        diffusion = self.sampler(settings)
        config = self.bundle.config
        axis = config.tortuosity_axis
        ranges = None if allow_extrapolation else {k: tuple(v) for k, v in config.label_ranges.items()}
        infinite_ok = frozenset(config.infinite_labels)
        # requests[i][r]: what round r of sample i is conditioned on (one round without correction)
        requests: list[list[dict[str, float]]] = [[dict(checked)] for _ in range(n)]

        def request(i: int, j: int) -> dict[str, float]:
            return requests[i][j // verify.round_size] if correct else checked  # type: ignore[union-attr]

        # candidates[i]: (j, labels, predicted, measured, distance) in j order; seconds[i]: its share of batches
        candidates: list[list[tuple[int, np.ndarray, dict[str, float], dict[str, float], float]]] = [[] for _ in range(n)]
        seconds = [0.0] * n
        chosen: dict[int, int] = {}  # sample → index into candidates[sample]
        drawn = [0] * n
        while len(chosen) < n:
            pending = [i for i in range(n) if i not in chosen]
            if correct:  # whole rounds, so a round's request never depends on the batch size
                per = verify.round_size  # type: ignore[union-attr]
            elif verify is not None:
                per = max(1, batch_size // len(pending))
            else:
                per = 1
            jobs = [(i, j) for i in pending for j in range(drawn[i], min(drawn[i] + per, max_candidates))]
            for lo in range(0, len(jobs), batch_size):
                batch = jobs[lo : lo + batch_size]
                start = time.perf_counter()
                seeds = [candidate_seed(seed + i, j) for i, j in batch]
                labels, predicted = self._draw(diffusion, settings, [request(i, j) for i, j in batch], seeds)
                for k, (i, j) in enumerate(batch):
                    measured, dist = {}, 0.0
                    if verify is not None:
                        volume = make_volume(labels[k], phase_names=config.phase_names)
                        measured = measure(volume, list(checked), axis)
                        dist = distance(measured, checked, tolerances)
                    candidates[i].append((j, labels[k], predicted[k], measured, dist))
                share = (time.perf_counter() - start) / len(batch)
                for i, _ in batch:
                    seconds[i] += share
                if on_candidates is not None:
                    on_candidates(len(batch))
            for i in pending:
                before, drawn[i] = drawn[i], min(drawn[i] + per, max_candidates)
                met = [k for k, c in enumerate(candidates[i]) if c[4] <= 1.0]
                if met:
                    chosen[i] = min(met, key=lambda k: candidates[i][k][0])
                elif drawn[i] >= max_candidates:
                    chosen[i] = min(range(len(candidates[i])), key=lambda k: (candidates[i][k][4], candidates[i][k][0]))
                elif correct:
                    round_measured = [c[3] for c in candidates[i] if before <= c[0] < drawn[i]]
                    requests[i].append(corrected_request(requests[i][-1], checked, round_measured, ranges, infinite_ok))
        samples = []
        for i in range(n):
            j, labels_i, predicted_i, measured, dist = candidates[i][chosen[i]]
            verification = None
            if verify is not None:
                verification = Verification(met=dist <= 1.0, candidates=j + 1 if dist <= 1.0 else drawn[i],
                                            measured=measured, distance=dist, tolerance=tolerances)  # fmt: skip
                if correct:
                    verification.request, verification.rounds = request(i, j), len(requests[i])
            samples.append(self._sample(labels_i, predicted_i, seconds[i], checked, settings,
                                        candidate_seed(seed + i, j), verification))  # fmt: skip
        return samples

    def _draw(
        self, diffusion: Sampler, settings: LDMSamplingConfig, requests: list[dict[str, float]], seeds: list[int]
    ) -> tuple[np.ndarray, list[dict[str, float]]]:
        """One batch of candidates: candidate k conditioned on ``requests[k]`` from seed ``seeds[k]``;
        their decoded labels and the feature predictor's predictions."""
        config = self.bundle.config
        generators = [torch.Generator().manual_seed(s) for s in seeds]
        guide = self._feature_guide(requests, settings.feature_guidance) if settings.feature_guidance > 0 else None
        z0 = sample_latents(
            self.bundle.unet, diffusion, self.contexts(requests), config.latent_shape(),
            guidance=settings.guidance, rescale=settings.guidance_rescale, guide=guide,
            generators=generators, device=self.device,
        )  # fmt: skip
        if not bool(torch.isfinite(z0).all()):
            raise GenerationError(f"{self.model_ref}: sampling produced non-finite latents (candidate seed {seeds[0]})")
        labels = decode_volumes(self.bundle.vae, z0, latent_scale=config.latent_scale, device=self.device)
        return labels, self.predict(z0)

    def _sample(
        self,
        labels: np.ndarray,
        predicted: dict[str, float],
        seconds: float,
        targets: dict[str, float],
        settings: LDMSamplingConfig,
        seed: int,
        verification: Verification | None = None,
    ) -> LDMSample:
        params = settings.model_dump() | {"targets": targets, "model": self.model_ref, "model_sha256": self.model_sha256,
                                          "seconds": seconds}
        if verification is not None:
            params["verification"] = verification.as_attrs()
        volume = make_volume(
            labels, phase_names=self.bundle.config.phase_names, source=f"ldm:{self.bundle.name}", seed=seed,
            params=params,
        )  # fmt: skip
        volume.attrs.update(
            targets=json.dumps(targets), settings=settings.model_dump_json(), model=self.model_ref,
            predicted=json.dumps(predicted),
        )  # fmt: skip
        if verification is not None:
            volume.attrs["verification"] = json.dumps(verification.as_attrs())
        data_config = dict(self.bundle.config.recipe.data_config)
        return LDMSample(volume, predicted, seconds, dict(targets), seed, self.model_ref, data_config, verification)

    def sample(
        self,
        params: Mapping[str, Any],
        n: int,
        seed: int,
        verify: VerifySettings | None = DEFAULT_VERIFY,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> dict[str, Any]:
        """The actor-facing call: ``params`` holds ``target.<name>`` values and optionally
        ``guidance``, ``guidance_rescale``, ``feature_guidance``, ``steps``, ``sampler``,
        ``allow_extrapolation``, and ``tolerance`` / ``max_candidates`` (which override
        ``verify``'s, and turn verification on when ``verify`` is None: raw samples).

        Returns ``{"volumes", "seconds", "predicted"}``, one entry per sample (sample i from
        seed ``seed + i``). With verification each ``predicted`` row also holds
        ``verify.met`` (1 or 0), ``verify.candidates``, ``verify.distance`` and
        ``verify.measured.<label>``; with request correction also ``verify.rounds`` and
        ``verify.request.<label>``.
        """
        settings_keys = {"guidance", "guidance_rescale", "feature_guidance", "steps", "sampler", "allow_extrapolation"}
        verify_keys = {"tolerance", "max_candidates"}
        targets: dict[str, float] = {}
        settings: dict[str, Any] = {}
        overrides: dict[str, Any] = {}
        for key, value in params.items():
            if key.startswith(TARGET_PREFIX):
                targets[key[len(TARGET_PREFIX) :]] = value
            elif key in settings_keys:
                settings[key] = value
            elif key in verify_keys:
                overrides[key] = value
            else:
                allowed = sorted(settings_keys | verify_keys | {TARGET_PREFIX + n for n in self.conditioning})
                raise ValueError(f"ldm: unknown generator parameter {key!r}; expected some of {allowed}")
        if overrides:
            base = verify.model_dump() if verify is not None else {}
            verify = VerifySettings.model_validate(base | overrides)
        samples = self.generate(targets, n, seed=seed, verify=verify, batch_size=batch_size, **settings)
        predicted = []
        for s in samples:
            row = dict(s.predicted)
            if s.verification is not None:
                v = s.verification
                row |= {"verify.met": float(v.met), "verify.candidates": float(v.candidates),
                        "verify.distance": v.distance}  # fmt: skip
                row |= {f"verify.measured.{k}": value for k, value in v.measured.items()}
                if v.request is not None:  # request correction: rounds drawn, and the request of the returned one
                    row |= {"verify.rounds": float(v.rounds)}  # type: ignore[arg-type]  # set with request
                    row |= {f"verify.request.{k}": value for k, value in v.request.items()}
            predicted.append(row)
        return {
            "volumes": [s.volume for s in samples],
            "seconds": [s.seconds for s in samples],
            "predicted": predicted,
        }
