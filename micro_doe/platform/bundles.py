"""What both generators' bundles share: where shipped bundles live, how a reference resolves
to a directory, which kind of bundle it holds, its reference descriptors and its default
sampling settings; and the errors of loading and sampling.

A bundle is a directory with ``config.json`` (its ``kind``: "micro3diff" or "ldm"), the
weights, ``reference.nc`` (the training data's descriptors), ``card.md`` and, for Micro3Diff,
``examples.nc`` (a few training images, for montages) and ``held_out.nc`` (the descriptors of
images set aside from training, that ``micro-doe tune`` judges against). Shipped bundles
live in ``micro_doe/platform/models/NAME`` and are named ``pretrained:NAME``; each generator
package (:mod:`~micro_doe.platform.micro3diff.bundle`, :mod:`~micro_doe.platform.ldm.bundle`)
loads and writes its own kind.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import xarray as xr
from pydantic import BaseModel

from micro_doe.errors import ExecutionError, InputError
from micro_doe.platform.descriptors import Descriptors
from micro_doe.platform.volumes import atomic_path

SHIPPED_DIR = Path(__file__).parent / "models"
PRETRAINED_PREFIX = "pretrained:"
REGISTRY_PREFIX = "models:/"  # models:/NAME@ALIAS or models:/NAME/VERSION: resolved by micro_doe.tracking


BUNDLE_KINDS = ("micro3diff", "ldm")


def model_digest(bundle: str | os.PathLike[str]) -> str:
    """The first 16 hex digits of the SHA-256 of a bundle's ``model.pt``: which weights made a
    volume (recorded with every sampled volume and trial run)."""
    return hashlib.sha256((Path(bundle) / "model.pt").read_bytes()).hexdigest()[:16]


class BundleError(InputError):
    """A bundle that is missing, incomplete or inconsistent; the message names the path."""


class GenerationError(ExecutionError):
    """A generator produced no usable volume (e.g. non-finite values from a diverged model)."""


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


def shipped_summaries() -> list[dict[str, str]]:
    """One row per shipped bundle: ``ref`` (pretrained:NAME), ``kind``, ``size`` (e.g. 32³),
    ``phases`` and ``description`` (the card's first line after its title); read from
    config.json and card.md only, no weights loaded."""
    rows = []
    for name in shipped_models():
        path = SHIPPED_DIR / name
        config = json.loads((path / "config.json").read_text())
        side = config.get("volume_size") or config.get("image_size")
        card = (path / "card.md").read_text() if (path / "card.md").exists() else ""
        lines = [ln.strip() for ln in card.splitlines() if ln.strip() and not ln.startswith("#")]
        rows.append({
            "ref": f"{PRETRAINED_PREFIX}{name}",
            "kind": str(config.get("kind", "micro3diff")),
            "size": f"{side}³" if side else "?",
            "phases": ", ".join(config.get("phase_names", [])),
            "description": lines[0] if lines else "",
        })
    return rows


EXAMPLES_FILE = "examples.nc"
N_EXAMPLES = 8


def load_examples(ref: str | os.PathLike[str]) -> xr.DataArray | None:
    """A few of the training images (``examples.nc``: a (sample, y, x) stack), shown beside
    generated slices; ``None`` for a bundle written without them."""
    path = resolve_bundle_path(ref) / EXAMPLES_FILE
    if not path.exists():
        return None
    from micro_doe.platform.volumes import read_volume

    return read_volume(path)


def load_reference(ref: str | os.PathLike[str]) -> Descriptors:
    """Only a bundle's reference descriptors (reference.nc), without building the network."""
    path = resolve_bundle_path(ref)
    try:
        with xr.open_dataset(path / "reference.nc", engine="netcdf4") as ds:
            return Descriptors.from_dataset(ds.load())
    except FileNotFoundError:
        raise BundleError(f"{path}: reference.nc is missing") from None


HELD_OUT_FILE = "held_out.nc"


def has_held_out(ref: str | os.PathLike[str]) -> bool:
    return (resolve_bundle_path(ref) / HELD_OUT_FILE).is_file()


def load_held_out(ref: str | os.PathLike[str]) -> Descriptors:
    """The descriptors of a bundle's held-out images (held_out.nc): data it was not trained on."""
    path = resolve_bundle_path(ref)
    try:
        with xr.open_dataset(path / HELD_OUT_FILE, engine="netcdf4") as ds:
            return Descriptors.from_dataset(ds.load())
    except FileNotFoundError:
        raise BundleError(f"{path}: {HELD_OUT_FILE} is missing (train with --held-out, or tune with --held-out-data)") from None


def update_sampling_defaults(ref: str | os.PathLike[str], sampling: BaseModel) -> None:
    """Rewrite a bundle's default sampling settings (e.g. after measuring quality): a
    :class:`SamplingConfig`, or an LDM bundle's ``LDMSamplingConfig``."""
    path = resolve_bundle_path(ref) / "config.json"
    data = json.loads(path.read_text())
    data["sampling"] = sampling.model_dump()
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")
