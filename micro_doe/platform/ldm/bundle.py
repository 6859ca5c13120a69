"""Conditional-LDM model bundles: the three networks, their normalisers and the training record.

    BUNDLE/
      config.json    LDMConfig: kind "ldm", volume size, phase names, the VAE / feature
                     predictor / latent U-Net architectures, noise schedule, normalisers,
                     latent_scale, conditioning names, training label ranges, recipe (with
                     the data set's config), default sampling settings, validation R²,
                     per-stage training summaries
      model.pt       {"vae": state dict, "fp": state dict, "ldm": EMA state dict}: plain
                     tensors only, loaded with ``torch.load(weights_only=True)``
      reference.nc   the data set's labels without the volumes (every per-sample variable of
                     the OPV data set: vf, τ, percolation, interfacial area, φ, χ, log_time,
                     trajectory, split), so a study can judge samples without the data set
      card.md        data, per-stage recipe, losses and wall times, validation R²

Definitions stored in config.json:

- ``latent_scale`` s: the LDM is trained on z = s · μ with μ the VAE encoder's mean and
  s = 1 / std(μ) over every number of every training latent (population std), so the
  diffusion data have unit variance (as the noise schedule assumes). Samples are divided by
  s before the VAE decoder and the feature predictor see them.
- ``feature_normaliser`` (the feature predictor's outputs) and ``condition_normaliser``
  (the LDM's context): :class:`~micro_doe.platform.ldm.feature_predictor.Normaliser` dicts,
  fitted on the training split; names in ``inverse`` (every ``tau_*``) are normalised as 1/τ.
- ``label_ranges``: ``{label: (min, max)}`` over the finite training values
  (:func:`~micro_doe.platform.ldm.dataset.label_ranges`); ``infinite_labels``: labels that
  are +inf for some training sample (τ of a non-percolating phase), for which a target of
  inf is inside the training range too.
- ``condition_medians``: median of each conditioning label over the training split (in the
  normalised 1/τ sense for τ, mapped back), quoted in error messages as sensible targets.
- ``val_r2``: R² of the feature predictor on the validation split per output, computed on
  the normalised scale (so on 1/τ for τ); NaN when there is no validation split.

Written like :func:`micro_doe.platform.micro3diff.bundle.write_bundle`: a staging directory beside
``out``, then ``os.replace``.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import xarray as xr
from pydantic import BaseModel, ConfigDict, Field

from micro_doe.platform.bundles import BundleError, bundle_kind, resolve_bundle_path
from micro_doe.platform.diffusion import NoiseSchedule
from micro_doe.platform.ldm.feature_predictor import FeaturePredictor, FeaturePredictorConfig, Normaliser
from micro_doe.platform.ldm.latent_unet import LatentUNet3D, LatentUNetConfig
from micro_doe.platform.ldm.vae import VAE3D, VAE3DConfig
from micro_doe.platform.volumes import atomic_directory

NETWORKS = ("vae", "fp", "ldm")  # the keys of model.pt, in training order


class LDMSamplingConfig(BaseModel):
    """A complete LDM sampling setting: a bundle's defaults (how
    :class:`~micro_doe.platform.ldm.generator.LDMGenerator` samples when given no settings), or
    a request resolved against them."""

    model_config = ConfigDict(extra="forbid")
    steps: int = Field(1000, ge=1, description="sampling steps S (respaced); the paper samples all 1000")
    sampler: Literal["ddpm", "ddim"] = Field("ddpm", description="ddpm (posterior variance) or ddim (η = 0)")
    guidance: float = Field(1.0, ge=0.0, description="classifier-free guidance weight w (1: plain conditional)")
    guidance_rescale: float = Field(0.0, ge=0.0, le=1.0, description="guidance rescale φ (0: plain guidance)")
    feature_guidance: float = Field(
        0.0, ge=0.0, description="scale of the feature predictor's gradient guidance on the latent (0: none)"
    )


class StageSummary(BaseModel):
    """What one training stage did (stored per stage in config.json and in the staging dir)."""

    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="constants")
    stage: Literal["vae", "fp", "ldm"]
    config: dict[str, Any] = Field(description="the stage's training config")
    architecture: dict[str, Any] = Field(description="the network's config (VAE3DConfig, ...)")
    steps: int = Field(ge=0)
    seconds: float = Field(ge=0, description="wall time of the optimiser steps (resumed runs add up)")
    final_loss: float = Field(description="running mean of the training loss at the last step (NaN: no step)")
    losses: list[float] = Field(
        default_factory=list, description="running mean loss at steps log_every, 2·log_every, …"
    )
    skipped_steps: int = Field(0, ge=0, description="steps without an optimiser step: their gradient was not finite")
    upstream: str = Field("", description="hash of the VAE weights this stage was trained on ('' for the VAE)")
    weights: str = Field(description="hash of this stage's weights (model.pt[stage])")
    device: str
    threads: int
    extra: dict[str, Any] = Field(default_factory=dict, description="val_r2, val_loss, latent_scale, ...")


class LDMRecipe(BaseModel):
    """How the weights were made (recorded, not used at sampling time)."""

    model_config = ConfigDict(extra="forbid")
    train: dict[str, Any] = Field(description="the LDMTrainConfig, as a dict")
    data: str = Field(description="where the data set came from")
    data_config: dict[str, Any] = Field(
        default_factory=dict, description="the OPVDatasetConfig of the data set, if any"
    )
    data_fingerprint: str = Field(description="hash of the training volumes and labels")
    n_train: int = Field(ge=1)
    n_val: int = Field(ge=0)


class LDMConfig(BaseModel):
    """config.json of a conditional-LDM bundle (definitions in the module docstring)."""

    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="constants")
    kind: Literal["ldm"] = "ldm"
    volume_size: int = Field(ge=4, description="side n of the n³ volumes [voxels]")
    phase_names: list[str] = Field(min_length=2)
    tortuosity_axis: str = "z"
    vae: VAE3DConfig
    fp: FeaturePredictorConfig
    unet: LatentUNetConfig
    schedule: dict[str, Any]
    latent_scale: float = Field(gt=0)
    conditioning: list[str] = Field(min_length=1, description="the LDM's context, in column order")
    condition_on: Literal["labels", "predictions"] = Field(
        "labels", description="what the LDM was trained on: measured labels or the FP's predictions"
    )
    feature_normaliser: dict[str, Any]
    condition_normaliser: dict[str, Any]
    label_ranges: dict[str, tuple[float, float]]
    infinite_labels: list[str] = Field(default_factory=list)
    condition_medians: dict[str, float]
    val_r2: dict[str, float] = Field(default_factory=dict)
    recipe: LDMRecipe
    sampling: LDMSamplingConfig = LDMSamplingConfig()
    stages: dict[str, StageSummary] = Field(default_factory=dict)

    @property
    def image_size(self) -> int:
        """The volume side (the name Micro3Diff bundles use; the registry reads it)."""
        return self.volume_size

    @property
    def n_phases(self) -> int:
        return len(self.phase_names)

    def noise_schedule(self) -> NoiseSchedule:
        return NoiseSchedule.from_dict(self.schedule)

    def latent_shape(self) -> tuple[int, int, int, int]:
        return self.vae.latent_shape(self.volume_size)


@dataclass
class LDMBundle:
    """A loaded bundle: config, the three networks (eval mode), normalisers and the reference labels."""

    path: Path
    config: LDMConfig
    vae: VAE3D
    fp: FeaturePredictor
    unet: LatentUNet3D
    feature_normaliser: Normaliser
    condition_normaliser: Normaliser
    reference: xr.Dataset

    @property
    def name(self) -> str:
        return self.path.name


def build_networks(config: LDMConfig) -> tuple[VAE3D, FeaturePredictor, LatentUNet3D]:
    """Fresh (untrained) networks of the architectures in ``config``."""
    return VAE3D(config.vae), FeaturePredictor(config.fp), LatentUNet3D(config.unet)


def load_weights(path: Path) -> Any:
    """``torch.load(path, weights_only=True)`` with errors that name the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise BundleError(f"{path}: missing") from None
    except pickle.UnpicklingError as err:  # weights_only=True refuses anything but tensors and containers
        raise BundleError(f"{path}: not a plain weights file; refusing to unpickle objects ({err})") from None


def load_ldm_bundle(ref: str | os.PathLike[str], device: str | torch.device = "cpu") -> LDMBundle:
    """Load a bundle (``pretrained:NAME`` or a directory); weights with ``weights_only=True``."""
    path = resolve_bundle_path(ref)
    if (kind := bundle_kind(path)) != "ldm":
        raise BundleError(f"{ref}: a {kind} bundle, not an LDM one (load it with its own generator)")
    try:
        config = LDMConfig.model_validate_json((path / "config.json").read_text())
    except ValueError as err:
        raise BundleError(f"{path / 'config.json'}: not a valid LDM bundle config: {err}") from None
    state = load_weights(path / "model.pt")
    if not isinstance(state, dict) or sorted(state) != sorted(NETWORKS):
        found = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise BundleError(f"{path / 'model.pt'}: expected a dict with keys {list(NETWORKS)}, got {found}")
    networks = build_networks(config)
    for key, net in zip(NETWORKS, networks):
        try:
            net.load_state_dict(state[key])
        except (RuntimeError, TypeError, AttributeError) as err:
            raise BundleError(
                f"{path / 'model.pt'}: {key} weights do not fit the architecture in config.json ({err})"
            ) from None
        net.to(device).eval()
    try:
        with xr.open_dataset(path / "reference.nc", engine="netcdf4") as ds:
            reference = ds.load()
    except FileNotFoundError:
        raise BundleError(f"{path}: reference.nc is missing") from None
    vae, fp, unet = networks
    return LDMBundle(
        path, config, vae, fp, unet,
        Normaliser.from_dict(config.feature_normaliser), Normaliser.from_dict(config.condition_normaliser), reference,
    )  # fmt: skip


def write_ldm_bundle(
    out: str | os.PathLike[str],
    config: LDMConfig,
    state_dicts: dict[str, dict[str, torch.Tensor]],
    reference: xr.Dataset,
    card: str,
    *,
    overwrite: bool = False,
) -> Path:
    """Write a bundle directory atomically. An existing bundle at ``out`` is replaced only
    with ``overwrite``; a folder that is not a bundle never is."""
    missing = [k for k in NETWORKS if k not in state_dicts]
    if missing:
        raise BundleError(f"{out}: state_dicts lacks {missing}; expected {list(NETWORKS)}")
    target = Path(out)
    with atomic_directory(target, overwrite=overwrite) as staging:
        (staging / "config.json").write_text(config.model_dump_json(indent=2) + "\n")
        weights = {k: {n: t.detach().cpu() for n, t in state_dicts[k].items()} for k in NETWORKS}
        torch.save(weights, staging / "model.pt")
        reference.to_netcdf(staging / "reference.nc", engine="netcdf4")
        (staging / "card.md").write_text(card)
    return target


def reference_labels(ds: xr.Dataset) -> xr.Dataset:
    """The per-sample labels of an OPV data set without its volumes (what reference.nc holds)."""
    labels = ds.drop_vars([v for v in ds.data_vars if "sample" not in ds[v].dims or ds[v].ndim > 1])
    labels.attrs = {k: v for k, v in ds.attrs.items() if k in ("config", "phase_names", "labels", "tortuosity_axis")}
    return labels
