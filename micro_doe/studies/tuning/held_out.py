"""Stage 1: the held-out reference the judges compare with, and the bundle's config.json rewritten atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from micro_doe.platform.bundles import HELD_OUT_FILE, has_held_out
from micro_doe.platform.descriptors import Descriptors
from micro_doe.platform.micro3diff.bundle import (
    HeldOutRecord,
    Micro3DiffConfig,
)
from micro_doe.platform.micro3diff.training_data import (
    MIN_HELD_OUT,
    image_autocovariance,
    load_training_data,
    training_images,
    training_reference,
)
from micro_doe.platform.volumes import atomic_path, why_missing
from micro_doe.studies.tuning.options import TuningError


def check_held_out(bundle: Path, held_out_data: Path | None, option: str = "--held-out-data") -> None:
    """Tuning needs images the model never saw: the bundle's own, or ``held_out_data``."""
    if held_out_data is None and not has_held_out(bundle):
        raise TuningError(f"{bundle}: no held-out images ({HELD_OUT_FILE}); give images the model was not trained on "
                          f"with {option}, or retrain with --held-out")
    if held_out_data is not None and (reason := why_missing(held_out_data)):
        raise TuningError(f"{option} {held_out_data}: {reason}")


def held_out_reference(path: Path, config: Micro3DiffConfig, option: str = "--held-out-data") -> Descriptors:
    """Descriptors of images from ``path`` (any training-data format), checked against the model."""
    stack = training_images(load_training_data(path), f"{option} {path}")
    if stack.sizes["y"] != config.image_size:
        raise TuningError(f"{option} {path}: images of {stack.sizes['y']}² but the model makes {config.image_size}²")
    if stack.sizes["sample"] < MIN_HELD_OUT:
        raise TuningError(f"{option} {path}: {stack.sizes['sample']} images; at least {MIN_HELD_OUT} are needed to judge")
    return training_reference(stack, stack)


def write_held_out(bundle: Path, reference: Descriptors, source: str, n_images: int) -> None:
    """Put held-out descriptors into a bundle (held_out.nc, and ``held_out`` in config.json)."""
    with atomic_path(bundle / HELD_OUT_FILE) as tmp:
        reference.to_dataset().to_netcdf(tmp, engine="netcdf4")
    update_config(bundle, held_out=HeldOutRecord(source=source, n_images=n_images))


def update_config(bundle: Path, **fields: Any) -> Micro3DiffConfig:
    """Rewrite fields of a bundle's config.json atomically; returns the new config."""
    path = bundle / "config.json"
    config = Micro3DiffConfig.model_validate_json(path.read_text()).model_copy(update=fields)
    config = Micro3DiffConfig.model_validate(config.model_dump())  # re-check the updated fields
    with atomic_path(path) as tmp:
        tmp.write_text(config.model_dump_json(indent=2) + "\n")
    return config


def training_autocovariance(path: Path, config: Micro3DiffConfig, option: str = "--training-data") -> list[list[float]]:
    """The radial autocovariance of the images a bundle trained on, read from ``path`` (the data
    given to ``train``): its images of the model's size and phases, without the held-out block
    when ``path`` holds exactly the training images and the held-out ones after them."""
    if reason := why_missing(path):
        raise TuningError(f"{option} {path}: {reason}")
    try:
        stack = training_images(load_training_data(path), f"{option} {path}")
    except ValueError as err:
        raise TuningError(str(err) if str(err).startswith(option) else f"{option} {path}: {err}") from None
    side, n = int(stack.sizes["y"]), int(stack.sizes["sample"])
    if side != config.image_size:
        raise TuningError(f"{option} {path}: images of {side}², but the model was trained on {config.image_size}²")
    if int(stack.max()) >= config.n_phases:
        raise TuningError(f"{option} {path}: labels up to {int(stack.max())}, but the model has {config.n_phases} phases")
    held = config.held_out
    if held is not None and held.first is not None and n == held.first + held.n_images:
        stack = stack.isel(sample=slice(0, held.first))
    return image_autocovariance(stack, config.n_phases)
