"""Model bundles: a directory that holds everything needed to sample and judge a model.

    BUNDLE/
      config.json    architecture, image size, phases, noise schedule, training recipe
                     (with the data's seed), default sampling settings
      model.pt       the EMA weights (a plain state dict, loaded with weights_only=True)
      reference.nc   descriptors of the training data (S2/L curves, vf, τ): a trial's
                     error rates need no data set
      card.md        what it was trained on, for how long, final loss, measured quality
      examples.nc    a few training images, shown beside generated slices
      held_out.nc    descriptors of images the network never saw (``config.held_out`` says
                     which): what ``micro-doe tune`` judges sampling settings against

Bundles are written to a temporary sibling directory and renamed into place, so a
crash never leaves a half-written bundle. Shipped bundles live in
``micro_doe/platform/models/NAME`` and are named ``pretrained:NAME``.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Literal

import torch
import xarray as xr
from pydantic import BaseModel, ConfigDict, Field

from micro_doe.platform.bundles import (
    EXAMPLES_FILE,
    HELD_OUT_FILE,
    BundleError,
    bundle_kind,
    load_reference,
    resolve_bundle_path,
)
from micro_doe.platform.descriptors import Descriptors
from micro_doe.platform.diffusion import NoiseSchedule
from micro_doe.platform.diffusion.training import TrainingPrecision
from micro_doe.platform.micro3diff.unet import UNet2D, UNetConfig
from micro_doe.platform.volumes import atomic_directory, write_netcdf


class SamplingConfig(BaseModel):
    """A complete sampling setting, every field set: a bundle's defaults (how ``generate``
    samples when given no settings), or a request resolved against them
    (:meth:`SamplingSettings.resolved`)."""

    model_config = ConfigDict(extra="forbid")
    n_h: int = Field(1, ge=0, description="harmonizing cycles per step")
    steps: int = Field(50, ge=1, description="sampling steps S (respaced)")
    sampler: Literal["ddpm", "ddim"] = "ddpm"
    eta: float = Field(1.0, ge=0.0, description="DDIM η (ignored by DDPM)")
    variance: Literal["beta", "posterior"] = Field(
        "beta", description="DDPM step variance: the paper's Σ = β_t I, or the posterior β̃_t"
    )
    variant: str = Field("paper", description="multi-plane variant")
    anchor_strength: float = Field(1.0, gt=0.0, le=1.0, description="anchored: λ, how far each pass pulls the moments")
    anchor_until: float = Field(0.0, ge=0.0, lt=1.0, description="anchored: anchor passes ending at t >= until·T")
    anchor_per_slice: float = Field(0.0, ge=0.0, le=1.0, description="anchored: pull of slice means to the volume's")
    vf_spread: bool = Field(False, description="anchored: draw each volume's target vf around the target (window spread)")
    precision: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="network precision (fp16: CUDA only)")
    calibrate: bool = Field(False, description="anchored: anchor at the fraction the bundle's vf_calibration maps the target to")
    decode: Literal["sign", "fractions", "hysteresis"] = Field(
        "sign",
        description="x_0 to labels: sign / argmax, at the target phase fractions, or by hysteresis: the sign's phase "
        "grown to the target fraction, or the other phase grown when it holds more (two phases; any variant)",
    )


class TrainingRecipe(BaseModel):
    """How the weights were made (recorded, not used at sampling time)."""

    model_config = ConfigDict(extra="forbid")
    steps: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    lr: float = Field(gt=0)
    weight_decay: float = Field(ge=0)
    ema_decay: float = Field(ge=0, lt=1)
    grad_clip: float = Field(gt=0)
    augment: bool
    seed: int
    precision: TrainingPrecision = Field("fp32", description="the forward pass in training (the last piece's)")
    data: str = Field(description="where the training images came from")
    data_seed: int | None = Field(None, description="seed of the synthetic data, if synthetic")
    data_params: dict = Field(default_factory=dict, description="the data generator's parameters, if synthetic")
    n_images: int = Field(ge=1)


class HeldOutRecord(BaseModel):
    """Which images the bundle's held_out.nc describes (never trained on)."""

    model_config = ConfigDict(extra="forbid")
    source: str = Field(description="where they came from, in words")
    first: int | None = Field(None, description="index of the first held-out image in the training data, if from it")
    n_images: int = Field(ge=1)


class TuningRecord(BaseModel):
    """How the default sampling settings were chosen (``micro-doe tune``): the study, the rule,
    and the measured table (rows of setting label → judges on fresh seeds)."""

    model_config = ConfigDict(extra="forbid")
    study: str = Field(description="Optuna study name")
    storage: str = Field(description="Optuna storage URL (password masked)")
    tracking: str = Field(description="MLflow tracking URI of the study's experiment")
    trials: int = Field(ge=0, description="complete trials")
    seed: int
    rule: str = Field(description="how the default was picked among the trials")
    table: list[dict] = Field(default_factory=list, description="the confirmation rows (setting, judges, seconds)")
    finalists: list[dict] = Field(default_factory=list, description="the study's best settings measured again, among "
                                  "which the default was chosen (setting, trial, judges, seconds)")


class Micro3DiffConfig(BaseModel):
    """config.json of a Micro3Diff bundle."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["micro3diff"] = "micro3diff"
    image_size: int = Field(ge=4)
    phase_names: list[str] = Field(min_length=2)
    unet: UNetConfig
    schedule: dict
    recipe: TrainingRecipe
    # Measured by `micro-doe tune` (micro_doe.studies.tuning.calibration) at the default setting.
    vf_calibration: list[tuple[float, float]] = Field(
        default_factory=list,
        description="(anchored fraction, measured vf) of the phase of interest at the default setting (measured by "
        "micro-doe tune); empty: none",
    )
    vf_calibration_setting: str | None = Field(
        None, description="where vf_calibration was measured: the setting, volumes per fraction, seed and the weights' "
        "digest (written by micro-doe tune, which reuses a calibration measured at the same key); None: not recorded"
    )
    vf_range: tuple[float, float] = Field(
        (0.75, 1.4), description="targets of a phase's vf allowed without extrapolation, as multiples of its training vf"
    )
    sampling: SamplingConfig = SamplingConfig()
    held_out: HeldOutRecord | None = Field(None, description="images set aside from training (held_out.nc)")
    tuning: TuningRecord | None = Field(None, description="how `sampling` was chosen, when tuned")
    autocovariance: list[list[float]] | None = Field(
        None, description="radial autocovariance rho_c(r), r = 0..n//2, of each channel of the training images, "
        "normalised to 1 at r = 0 (the spectral variant's target; micro3diff.spectrum); None: not recorded"
    )

    @property
    def n_phases(self) -> int:
        return len(self.phase_names)

    def noise_schedule(self) -> NoiseSchedule:
        return NoiseSchedule.from_dict(self.schedule)


class Micro3DiffBundle:
    """A loaded bundle: config, the denoiser (EMA weights, eval mode) and the reference."""

    def __init__(self, path: Path, config: Micro3DiffConfig, model: UNet2D, reference: Descriptors) -> None:
        self.path = path
        self.config = config
        self.model = model
        self.reference = reference

    @property
    def name(self) -> str:
        return self.path.name


def load_bundle(ref: str | os.PathLike[str], device: str | torch.device = "cpu") -> Micro3DiffBundle:
    """Load a bundle by reference (see :func:`resolve_bundle_path`); weights with weights_only=True."""
    path = resolve_bundle_path(ref)
    if (kind := bundle_kind(path)) != "micro3diff":
        raise BundleError(f"{ref}: a {kind} bundle, not a Micro3Diff one (load it with its own generator)")
    try:
        config = Micro3DiffConfig.model_validate_json((path / "config.json").read_text())
    except ValueError as err:
        raise BundleError(f"{path / 'config.json'}: invalid bundle config: {err}") from None
    model = UNet2D(config.unet)
    try:
        state = torch.load(path / "model.pt", map_location=device, weights_only=True)
        model.load_state_dict(state)
    except FileNotFoundError:
        raise BundleError(f"{path}: model.pt is missing") from None
    except pickle.UnpicklingError as err:  # weights_only=True refuses anything but tensors and containers
        raise BundleError(f"{path / 'model.pt'}: not a plain weights file ({err})") from None
    except RuntimeError as err:
        raise BundleError(f"{path / 'model.pt'}: weights do not fit the architecture in config.json ({err})") from None
    model.to(device).eval()
    return Micro3DiffBundle(path, config, model, load_reference(path))


def write_bundle(
    out: str | os.PathLike[str],
    config: Micro3DiffConfig,
    state_dict: dict[str, torch.Tensor],
    reference: Descriptors,
    card: str,
    *,
    examples: xr.DataArray | None = None,
    held_out: Descriptors | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a bundle directory atomically. An existing bundle at ``out`` is replaced only
    with ``overwrite``; a folder that is not a bundle never is."""
    target = Path(out)
    with atomic_directory(target, overwrite=overwrite) as staging:
        (staging / "config.json").write_text(config.model_dump_json(indent=2) + "\n")
        torch.save({k: v.detach().cpu() for k, v in state_dict.items()}, staging / "model.pt")
        reference.to_dataset().to_netcdf(staging / "reference.nc", engine="netcdf4")
        (staging / "card.md").write_text(card)
        if examples is not None:  # a few training images, shown beside generated slices
            write_netcdf(examples, staging / EXAMPLES_FILE)
        if held_out is not None:  # images never trained on, for tuning
            held_out.to_dataset().to_netcdf(staging / HELD_OUT_FILE, engine="netcdf4")
    return target


