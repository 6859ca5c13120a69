"""Model bundles: a directory that holds everything needed to sample and judge a model.

    BUNDLE/
      config.json    architecture, image size, phases, noise schedule, training recipe
                     (with the data's seed), default sampling settings
      model.pt       the EMA weights (a plain state dict, loaded with weights_only=True)
      reference.nc   descriptors of the training data (S2/L curves, vf, τ): a trial's
                     error rates need no data set
      card.md        what it was trained on, for how long, final loss, measured quality

Bundles are written to a temporary sibling directory and renamed into place, so a
crash never leaves a half-written bundle. Shipped bundles live in
``micro_doe/platform/models/NAME`` and are named ``pretrained:NAME``.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Literal

import torch
import xarray as xr
from pydantic import BaseModel, ConfigDict, Field

from micro_doe.platform.descriptors import Descriptors
from micro_doe.platform.diffusion import NoiseSchedule
from micro_doe.platform.volumes import atomic_directory, atomic_path
from micro_doe.platform.unet import UNet2D, UNetConfig

SHIPPED_DIR = Path(__file__).parent / "models"
PRETRAINED_PREFIX = "pretrained:"


BUNDLE_KINDS = ("micro3diff", "ldm")


class BundleError(ValueError):
    """A bundle that is missing, incomplete or inconsistent; the message names the path."""


class SamplingDefaults(BaseModel):
    """How ``generate`` samples when given no settings: the cheapest setting found to
    reach the best measured quality."""

    model_config = ConfigDict(extra="forbid")
    n_h: int = Field(1, ge=0, description="harmonizing cycles per step")
    steps: int = Field(50, ge=1, description="sampling steps S (respaced)")
    sampler: Literal["ddpm", "ddim"] = "ddpm"
    eta: float = Field(1.0, ge=0.0, description="DDIM η (ignored by DDPM)")
    variance: Literal["beta", "posterior"] = Field(
        "beta", description="DDPM step variance: the paper's Σ = β_t I, or the posterior β̃_t"
    )
    variant: str = Field("paper", description="multi-plane variant")


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
    data: str = Field(description="where the training images came from")
    data_seed: int | None = Field(None, description="seed of the synthetic data, if synthetic")
    data_params: dict = Field(default_factory=dict, description="the data generator's parameters, if synthetic")
    n_images: int = Field(ge=1)


class Micro3DiffConfig(BaseModel):
    """config.json of a Micro3Diff bundle."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["micro3diff"] = "micro3diff"
    image_size: int = Field(ge=4)
    phase_names: list[str] = Field(min_length=2)
    unet: UNetConfig
    schedule: dict
    recipe: TrainingRecipe
    sampling: SamplingDefaults = SamplingDefaults()

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


def resolve_bundle_path(ref: str | os.PathLike[str]) -> Path:
    """``pretrained:NAME`` → the shipped bundle; anything else is a directory path."""
    text = str(ref)
    if text.startswith(PRETRAINED_PREFIX):
        name = text[len(PRETRAINED_PREFIX) :]
        path = SHIPPED_DIR / name
        if not (path / "config.json").exists():
            raise BundleError(f"{text}: no shipped model of that name; shipped models are {shipped_models()}")
        return path
    path = Path(text)
    if not (path / "config.json").exists():
        raise BundleError(f"{path}: not a model bundle (expected a directory with config.json, model.pt, reference.nc)")
    return path


def bundle_kind(ref: str | os.PathLike[str]) -> str:
    """The generator kind a bundle holds: its config.json's ``kind`` ("micro3diff" or "ldm")."""
    path = resolve_bundle_path(ref) / "config.json"
    try:
        kind = json.loads(path.read_text()).get("kind", "micro3diff")
    except (OSError, ValueError, AttributeError) as err:
        raise BundleError(f"{path}: invalid bundle config: not a readable JSON object ({err})") from None
    if kind not in BUNDLE_KINDS:
        raise BundleError(f"{path}: unknown bundle kind {kind!r}; expected one of {list(BUNDLE_KINDS)}")
    return str(kind)


def shipped_models() -> list[str]:
    """Names of the bundles shipped inside the package."""
    if not SHIPPED_DIR.exists():
        return []
    return sorted(p.name for p in SHIPPED_DIR.iterdir() if (p / "config.json").exists())


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


def load_reference(ref: str | os.PathLike[str]) -> Descriptors:
    """Only a bundle's reference descriptors (reference.nc), without building the network."""
    path = resolve_bundle_path(ref)
    try:
        with xr.open_dataset(path / "reference.nc", engine="netcdf4") as ds:
            return Descriptors.from_dataset(ds.load())
    except FileNotFoundError:
        raise BundleError(f"{path}: reference.nc is missing") from None


def write_bundle(
    out: str | os.PathLike[str],
    config: Micro3DiffConfig,
    state_dict: dict[str, torch.Tensor],
    reference: Descriptors,
    card: str,
) -> Path:
    """Write a bundle directory atomically (replacing an existing bundle at ``out``)."""
    target = Path(out)
    with atomic_directory(target) as staging:
        (staging / "config.json").write_text(config.model_dump_json(indent=2) + "\n")
        torch.save({k: v.detach().cpu() for k, v in state_dict.items()}, staging / "model.pt")
        reference.to_dataset().to_netcdf(staging / "reference.nc", engine="netcdf4")
        (staging / "card.md").write_text(card)
    return target


def update_sampling_defaults(ref: str | os.PathLike[str], sampling: BaseModel) -> None:
    """Rewrite a bundle's default sampling settings (e.g. after measuring quality): a
    :class:`SamplingDefaults`, or an LDM bundle's ``LDMSamplingDefaults``."""
    path = resolve_bundle_path(ref) / "config.json"
    data = json.loads(path.read_text())
    data["sampling"] = sampling.model_dump()
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")
