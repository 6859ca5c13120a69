"""The Micro3Diff generator: a model bundle turned into labelled volumes (what actors and the CLI call).

:class:`Micro3DiffGenerator` loads a bundle once and samples n×n×n volumes by multi-plane
denoising (see :mod:`micro_doe.platform.micro3diff.sampler`), with the bundle's default sampling
settings unless told otherwise. Order of operations of :meth:`Micro3DiffGenerator.sample`:
resolve the settings against the bundle's defaults and check them (targets against the bundle's
``vf_range``); then per batch of ``volumes_per_batch`` volumes, one :class:`Anchor` per volume
(anchored variant; with ``vf_spread`` its target drawn from the volume's own seed), one batched
multi-plane loop, and labels by sign / argmax, at the target fractions, or by the sign's phase
grown to the target fraction (``decode``: ``sign``, ``fractions``, ``hysteresis``). Every
volume carries its settings, target fractions, seed, model and seconds in its attrs.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import xarray as xr
from pydantic import BaseModel, ConfigDict, Field

from micro_doe.platform.bundles import GenerationError, model_digest
from micro_doe.platform.descriptors.correlation import window_fraction_std
from micro_doe.platform.diffusion import DDIMSampler, DDPMSampler, Sampler, make_generator
from micro_doe.platform.diffusion.channels import to_labels, to_labels_at_fractions, to_labels_by_hysteresis
from micro_doe.platform.diffusion.precision import default_precision, native_precisions, warn_once, why_not_native
from micro_doe.platform.diffusion.training import default_device
from micro_doe.platform.generators import GeneratedBatch
from micro_doe.platform.memory import check_memory
from micro_doe.platform.micro3diff.bundle import Micro3DiffBundle, SamplingConfig, load_bundle
from micro_doe.platform.micro3diff.sampler import Anchor, DenoisingPass, sample_multiplane_batch
from micro_doe.platform.micro3diff.spectrum import SpectralShape, spectral_shape
from micro_doe.platform.volumes import make_volume


@dataclass(frozen=True)
class Variant:
    """A multi-plane variant: how each step's planes are combined (``planes``, ``moment_match``:
    keyword arguments of :func:`sample_multiplane_batch`), whether each channel's mean is
    anchored to a target vf (``anchors``) and its radial power spectrum to the training images'
    (``spectral``: :mod:`~micro_doe.platform.micro3diff.spectrum`)."""

    planes: Literal["rotate", "average"] = "rotate"
    moment_match: float | None = None
    anchors: bool = False
    spectral: bool = False

    def sampler_kwargs(self) -> dict[str, Any]:
        return {"planes": self.planes} | ({"moment_match": self.moment_match} if self.moment_match is not None else {})


# "paper" is the reference; the others are optional improvements with their own measured numbers
# (benchmarks/micro3diff.py). moment_match = 1.0 is E[x0²] of every channel that
# labels_to_channels makes (all ±1).
VARIANTS: dict[str, Variant] = {
    "paper": Variant(),
    "average": Variant(planes="average"),
    "moment": Variant(moment_match=1.0),
    "anchored": Variant(anchors=True),
    "spectral": Variant(anchors=True, spectral=True),
}
TARGET_PREFIX = "vf_"
TARGET_PARAM = "target."  # a study's parameter target.vf_<phase> is the setting's targets["vf_<phase>"]
SPREAD_SEED = 7_919  # offsets a volume's seed for its vf draw, so it never equals the noise's stream


class SamplingSettings(BaseModel):
    """One sampling request; unset fields take the bundle's defaults.

    ``targets``: ``{"vf_<phase>": fraction}`` for the ``anchored`` variant (default: the
    training data's fractions); phases not named share the rest in their training proportions.
    """

    model_config = ConfigDict(extra="forbid")
    n_h: int | None = Field(None, ge=0)
    steps: int | None = Field(None, ge=1)
    sampler: Literal["ddpm", "ddim"] | None = None
    eta: float | None = Field(None, ge=0.0)
    variance: Literal["beta", "posterior"] | None = None
    variant: str | None = None
    anchor_strength: float | None = Field(None, gt=0.0, le=1.0)
    anchor_until: float | None = Field(None, ge=0.0, lt=1.0)
    anchor_per_slice: float | None = Field(None, ge=0.0, le=1.0)
    vf_spread: bool | None = None
    precision: Literal["fp32", "bf16", "fp16"] | None = None
    decode: Literal["sign", "fractions", "hysteresis"] | None = None
    calibrate: bool | None = None
    targets: dict[str, float] = Field(default_factory=dict)

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> SamplingSettings:
        """A study's generator parameters (``target.<name>`` → ``targets``); unknown names or
        bad values → a plain ValueError naming them."""
        known = set(cls.model_fields) - {"targets"}
        targets = {k[len(TARGET_PARAM) :]: v for k, v in params.items() if k.startswith(TARGET_PARAM)}
        plain = {k: v for k, v in params.items() if not k.startswith(TARGET_PARAM)}
        unknown = sorted(set(plain) - known)
        if unknown:
            raise ValueError(f"micro3diff: unknown generator parameters {unknown}; expected some of {sorted(known)}")
        try:
            return cls(**plain, targets=targets)
        except ValueError as err:  # pydantic's ValidationError: re-raised plain so it pickles through Ray
            raise ValueError(f"micro3diff: invalid generator parameters: {err}") from None

    def resolved(self, defaults: SamplingConfig) -> SamplingConfig:
        """The complete setting: the fields this request sets, the rest from ``defaults``."""
        given = {k: v for k, v in self.model_dump(exclude={"targets"}).items() if v is not None}
        merged = defaults.model_dump() | given
        if merged["variant"] not in VARIANTS:
            raise ValueError(f"variant: expected one of {sorted(VARIANTS)}, got {merged['variant']!r}")
        return SamplingConfig.model_validate(merged)


class Micro3DiffGenerator:
    """Sample 3D volumes from a Micro3Diff bundle (``pretrained:NAME`` or a path).

    ``batch_size``, ``allow_extrapolation`` and ``size`` (the cube edge; default the training
    images' side) are what :meth:`sample_batch` (a study's call) uses; :meth:`sample` takes them
    per call.
    """

    def __init__(self, model: str | os.PathLike[str] | Micro3DiffBundle, device: str | None = None, *,
                 batch_size: int | None = None, allow_extrapolation: bool = False, size: int | None = None) -> None:  # fmt: skip
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size: expected at least 1, got {batch_size}")
        self.device = device or default_device()
        self.bundle = model if isinstance(model, Micro3DiffBundle) else load_bundle(model, self.device)
        self.model_ref = str(model) if not isinstance(model, Micro3DiffBundle) else str(model.path)
        self.model_sha256 = model_digest(self.bundle.path)
        self.batch_size, self.allow_extrapolation = batch_size, allow_extrapolation
        self.cube_size = None if size is None else self.volume_size(int(size))
        self._spectral_shape: SpectralShape | None = None

    @property
    def size(self) -> int:
        """The training images' side: the default cube edge."""
        return self.bundle.config.image_size

    @property
    def phase_names(self) -> list[str]:
        return list(self.bundle.config.phase_names)

    def sample_batch(self, params: Mapping[str, Any], n: int, seed: int) -> GeneratedBatch:
        """A study's call (:class:`~micro_doe.platform.generators.Generator`): ``n`` volumes of
        the setting ``params`` names (:meth:`SamplingSettings.from_params`), in batched loops,
        volume i from seed ``seed + i``."""
        volumes = self.sample(n, SamplingSettings.from_params(params), seed=seed, batch_size=self.batch_size,
                              allow_extrapolation=self.allow_extrapolation, size=self.cube_size)  # fmt: skip
        seconds = [json.loads(v.attrs["generator_params"])["seconds"] for v in volumes]
        return GeneratedBatch(volumes, seconds)

    def volume_size(self, size: int | None = None) -> int:
        """The cube edge N of a request: the training size by default; any larger N that the
        fully convolutional U-Net takes (a multiple of 2^(levels − 1), since it halves the image
        at each level but the last)."""
        if size is None:
            return self.size
        factor = 2 ** (len(self.bundle.config.unet.channel_mults) - 1)
        if int(size) != size or size < self.size:
            raise ValueError(f"size: an integer ≥ {self.size}, the side of the model's training images, got {size}")
        if size % factor:
            raise ValueError(f"size: a multiple of {factor} (this model's U-Net halves an image "
                             f"{factor.bit_length() - 1} times), got {size}")
        return int(size)

    def slices_per_pass(self, size: int, batch_size: int | None = None) -> int:
        """Slices per network pass: ``batch_size``, or by default 64 slices of the training size
        and proportionally fewer of a larger N (the same activation memory per pass)."""
        if batch_size is not None:
            return batch_size
        return max(1, int(64 * (self.size / size) ** 2))

    def volumes_per_batch(self, requested: int | None = None) -> int:
        """Volumes sampled together in one loop: ``requested``, or 8 on CUDA and 4 on the CPU."""
        if requested is None:
            return 8 if str(self.device).startswith("cuda") else 4
        if requested < 1:
            raise ValueError(f"volumes_per_batch: expected at least 1, got {requested}")
        return requested

    def check_size(
        self, size: int | None, n: int, batch_size: int | None = None, volumes_per_batch: int | None = None
    ) -> tuple[int, int]:
        """The cube edge and slices per pass of a request of ``n`` volumes (:meth:`volume_size`,
        :meth:`slices_per_pass`), refused before anything runs when :meth:`memory_estimate`
        exceeds 80 % of the host memory available (on CUDA the GPU reports its own)."""
        edge = self.volume_size(size)
        slices = self.slices_per_pass(edge, batch_size)
        if not str(self.device).startswith("cuda"):
            together = min(n, self.volumes_per_batch(volumes_per_batch))
            check_memory(self.memory_estimate(edge, together, slices), f"size {edge}")
        return edge, slices

    def memory_estimate(self, size: int, volumes: int, batch_size: int) -> float:
        """Bytes a batch of ``volumes`` cubes of N = ``size`` needs while sampling: the volumes'
        state (x_t, x_0 and the noise estimate, fp32, per channel) plus the U-Net's activations
        for one pass of ``batch_size`` slices (taken as 24 feature maps of the widest level at full
        resolution: an estimate from the architecture, not yet measured against N)."""
        unet = self.bundle.config.unet
        state = 4 * volumes * unet.in_channels * size**3 * 4
        activations = 24 * batch_size * size**2 * unet.base_channels * max(unet.channel_mults) * 4
        return float(state + activations)

    def sampler(self, settings: SamplingConfig) -> Sampler:
        schedule = self.bundle.config.noise_schedule()
        if settings.steps > schedule.T:
            raise ValueError(f"steps: at most the model's T = {schedule.T}, got {settings.steps}")
        if settings.sampler == "ddim":
            return DDIMSampler(schedule, steps=settings.steps, eta=settings.eta)
        return DDPMSampler(schedule, steps=settings.steps, variance=settings.variance)

    def passes_per_volume(self, settings: SamplingSettings | None = None) -> int:
        s = (settings or SamplingSettings()).resolved(self.bundle.config.sampling)
        return (s.n_h + 1) * s.steps

    def training_fractions(self) -> dict[str, float]:
        """Every phase's volume fraction in the training data (from the bundle's reference)."""
        ref = self.bundle.reference.volume_fractions
        return {name: float(ref[name]) for name in self.bundle.config.phase_names}

    def target_fractions(self, targets: dict[str, float], allow_extrapolation: bool = False) -> dict[str, float]:
        """Every phase's target fraction from ``{"vf_<phase>": value}`` (see :class:`SamplingSettings`).

        A target outside the bundle's ``vf_range`` (multiples of the training fraction) is
        refused unless ``allow_extrapolation``; the message names the allowed range.
        """
        names = self.bundle.config.phase_names
        train = self.training_fractions()
        given: dict[str, float] = {}
        for key, value in targets.items():
            phase = key[len(TARGET_PREFIX) :] if key.startswith(TARGET_PREFIX) else None
            if phase not in names:
                expected = ", ".join(f"{TARGET_PREFIX}{n}" for n in names)
                raise ValueError(f"target {key}: not a phase of {self.model_ref}; expected one of {expected}")
            if not 0.0 < value < 1.0:
                raise ValueError(f"target {key}: expected a volume fraction in (0, 1), got {value}")
            lo, hi = (m * train[phase] for m in self.bundle.config.vf_range)
            if not allow_extrapolation and not lo <= value <= hi:
                raise ValueError(
                    f"target {key}={value:g} is outside the range this model reproduces plausibly, "
                    f"[{lo:.3f}, {hi:.3f}] (training vf {train[phase]:.3f}); allow extrapolation to sample there anyway"
                )
            given[phase] = float(value)
        rest = 1.0 - sum(given.values())
        free = [n for n in names if n not in given]
        if rest <= 0.0 or (not free and abs(rest) > 1e-6):
            raise ValueError(f"targets {targets}: the phase fractions must leave room for every phase and sum to 1")
        share = sum(train[n] for n in free)
        return given | {n: rest * train[n] / share for n in free}

    def volume_targets(self, s: SamplingConfig, fractions: dict[str, float], seeds: list[int],
                       size: int | None = None) -> list[dict[str, float]]:
        """Each volume's target phase fractions: ``fractions``, or with ``vf_spread`` a draw.

        With ``vf_spread``, volume i's fraction of the phase of interest is drawn (from its own
        seed) from N(target, σ²), σ the standard deviation of the training data's fraction in
        a window of the volume's size (:func:`window_fraction_std` of the reference's radial S2),
        clipped to [σ, 1 − σ]; the other phases share the rest in proportion. ``size``: the
        volume's edge (default: the training size).
        """
        if not s.vf_spread:
            return [dict(fractions) for _ in seeds]
        ref = self.bundle.reference
        sigma = window_fraction_std(ref.s2_radial, size or self.size)
        out = []
        for seed in seeds:
            z = float(torch.randn((), generator=torch.Generator().manual_seed(int(seed) + SPREAD_SEED)))
            out.append(self._with_fraction(fractions, min(max(fractions[ref.phase_name] + sigma * z, sigma), 1.0 - sigma)))
        return out

    def anchors(self, s: SamplingConfig, targets: list[dict[str, float]], size: int | None = None) -> list[Anchor] | None:
        """One :class:`Anchor` per volume for the ``anchored`` and ``spectral`` variants (None otherwise).

        With ``calibrate`` and a bundle ``vf_calibration`` (pairs of anchored fraction and the vf
        measured at the default setting, phase of interest), each volume is anchored at the
        fraction the calibration maps its target to (linear interpolation): the thresholded x_0
        comes out below the chain's anchored fraction, and this undoes the measured shortfall.
        """
        if not VARIANTS[s.variant].anchors:
            return None
        spectrum = self.spectral_shape(size or self.size) if VARIANTS[s.variant].spectral else None
        pairs = sorted(self.bundle.config.vf_calibration, key=lambda p: p[1])
        key = self.bundle.reference.phase_name
        out = []
        for target in targets:
            if s.calibrate and pairs:
                anchored = float(np.interp(target[key], [p[1] for p in pairs], [p[0] for p in pairs]))
                target = self._with_fraction(target, anchored)
            out.append(Anchor(self.channel_fractions(target), s.anchor_strength, s.anchor_until, s.anchor_per_slice,
                              spectrum))  # fmt: skip
        return out

    def spectral_shape(self, size: int) -> SpectralShape:
        """The ``spectral`` variant's target for a cube of ``size`` (from the bundle's ``autocovariance``)."""
        if self._spectral_shape is None or self._spectral_shape.size != size:
            self._spectral_shape = spectral_shape(self.autocovariance(), size, self.device)
        return self._spectral_shape

    def autocovariance(self) -> list[list[float]]:
        """The bundle's recorded autocovariance of its training images; ValueError when there is none."""
        curves = self.bundle.config.autocovariance
        if curves is None:
            raise ValueError(f"variant 'spectral': {self.model_ref} records no autocovariance of its training images "
                             "(trained before it was recorded); record it with micro-doe tune MODEL --training-data DATA, "
                             "or use 'anchored'")
        return curves

    def _rounded(self, channel_fractions: tuple[float, ...]) -> dict[str, float]:
        names = self.bundle.config.phase_names
        return {k: round(v, 6) for k, v in zip(names[1:] if len(channel_fractions) == 1 else names, channel_fractions)}

    def _with_fraction(self, fractions: dict[str, float], value: float) -> dict[str, float]:
        """``fractions`` with the phase of interest at ``value``; the other phases share the rest in proportion."""
        key = self.bundle.reference.phase_name
        others = 1.0 - fractions[key]
        return {n: value if n == key else f * (1.0 - value) / others for n, f in fractions.items()}

    def channel_fractions(self, fractions: dict[str, float]) -> tuple[float, ...]:
        """Phase fractions in channel order: phase 1's alone for two phases (one channel), else every phase's."""
        names = self.bundle.config.phase_names
        return (fractions[names[1]],) if len(names) == 2 else tuple(fractions[n] for n in names)

    def check(self, settings: SamplingSettings, allow_extrapolation: bool = False) -> tuple[SamplingConfig, dict[str, float]]:
        """The resolved settings and every phase's target fraction; ValueError for a bad request."""
        s = self._precision_here(settings.resolved(self.bundle.config.sampling), explicit=settings.precision is not None)
        if settings.targets and not VARIANTS[s.variant].anchors and s.decode == "sign":
            raise ValueError(
                f"targets: the {s.variant!r} variant with sign decoding steers no volume fraction; "
                "use the anchored variant or decode: fractions / hysteresis"
            )
        if s.decode == "hysteresis" and len(self.bundle.config.phase_names) > 2:
            raise ValueError(f"decode: 'hysteresis' grows one phase of two; {self.model_ref} has "
                             f"{len(self.bundle.config.phase_names)} phases (use 'sign' or 'fractions')")
        if VARIANTS[s.variant].spectral:
            self.autocovariance()
        self.sampler(s)
        return s, self.target_fractions(settings.targets, allow_extrapolation)

    def _precision_here(self, s: SamplingConfig, explicit: bool) -> SamplingConfig:
        """``s`` with the precision it samples at on this device: the bundle's default precision
        where native, else fp32 (:func:`~micro_doe.platform.diffusion.precision.default_precision`);
        one asked for is kept. Either way, once per process, a line says when it is not native."""
        why = why_not_native(s.precision, self.device)
        if why is None or (explicit and s.precision == "fp16"):  # fp16 asked for on the CPU: the sampler refuses it
            return s
        if explicit:
            warn_once(f"{self.model_ref}: precision {why}: it runs emulated, several times slower than fp32")
            return s
        keep = f"; set precision {s.precision} to keep it" if s.precision == "bf16" else ""
        warn_once(f"{self.model_ref}: its default precision {why}, so it samples in fp32 ({s.precision} is a "
                  f"speed choice of a machine that has it{keep})")
        return s.model_copy(update={"precision": default_precision(s.precision, native_precisions(self.device))})

    def sample(
        self,
        n: int = 1,
        settings: SamplingSettings | None = None,
        *,
        seed: int = 0,
        batch_size: int | None = None,
        volumes_per_batch: int | None = None,
        allow_extrapolation: bool = False,
        on_pass: Callable[[DenoisingPass], None] | None = None,
        size: int | None = None,
    ) -> list[xr.DataArray]:
        """``n`` volumes; volume i uses seed ``seed + i`` (so each is reproducible alone).

        Volumes are sampled ``volumes_per_batch`` at a time in one loop (the network sees their
        slices together, ``batch_size`` slices per forward pass); each volume's seconds are its
        batch's wall time divided by the volumes in it. Default: 8 on CUDA, 4 on the CPU (there the
        gain of batching volumes is small and varies with the machine's load:
        ``benchmarks/micro3diff_speed.py``). ``size``: the cube edge N (default: the training
        size; see :meth:`volume_size`); ``batch_size``: slices per pass (default:
        :meth:`slices_per_pass`). A request whose :meth:`memory_estimate` exceeds 80 % of the
        memory available is refused before sampling, with the estimate in the message.
        """
        if n < 1:
            raise ValueError(f"n: expected at least 1 volume, got {n}")
        volumes_per_batch = self.volumes_per_batch(volumes_per_batch)
        edge, batch_size = self.check_size(size, n, batch_size, volumes_per_batch)
        s, fractions = self.check(settings or SamplingSettings(), allow_extrapolation)
        sampler = self.sampler(s)
        channels = self.bundle.config.unet.in_channels
        kwargs = VARIANTS[s.variant].sampler_kwargs()
        volumes = []
        for lo in range(0, n, volumes_per_batch):
            seeds = list(range(seed + lo, seed + min(n, lo + volumes_per_batch)))
            targets = self.volume_targets(s, fractions, seeds, edge)
            anchors = self.anchors(s, targets, edge)
            start = time.perf_counter()
            x0 = sample_multiplane_batch(
                self.bundle.model,
                edge,
                sampler,
                [make_generator(sd) for sd in seeds],
                n_h=s.n_h,
                batch_size=batch_size,
                device=self.device,
                channels=channels,
                anchors=anchors,
                precision=s.precision,
                callback=on_pass,
                **kwargs,
            )
            seconds = (time.perf_counter() - start) / len(seeds)
            for i, sd in enumerate(seeds):
                if not bool(x0[i].isfinite().all()):
                    raise GenerationError(f"{self.model_ref}: sampling produced non-finite values (seed {sd})")
                params: dict[str, Any] = s.model_dump() | {"model": self.model_ref, "model_sha256": self.model_sha256,
                                                            "seconds": seconds}
                wanted = self.channel_fractions(targets[i])
                if anchors is not None or s.decode != "sign":
                    params["target_fractions"] = self._rounded(wanted)
                if anchors is not None and anchors[i].fractions != wanted:
                    params["anchor_fractions"] = self._rounded(anchors[i].fractions)
                if s.decode == "fractions":
                    labels = to_labels_at_fractions(x0[i], wanted)
                elif s.decode == "hysteresis":
                    labels = to_labels_by_hysteresis(x0[i], wanted[0])
                else:
                    labels = to_labels(x0[i], channel_dim=0)
                volumes.append(
                    make_volume(
                        labels,
                        phase_names=self.bundle.config.phase_names,
                        source=f"micro3diff:{self.bundle.name}",
                        seed=sd,
                        params=params,
                    )
                )
        return volumes
