"""The ``generator`` block of a study: which model generates the volumes and how it is
referenced (:func:`check_model_ref`: ``pretrained:NAME``, ``models:/NAME@ALIAS`` or a bundle
directory relative to the study.yaml's folder, made absolute on load), one spec class per
generator kind (:class:`Micro3DiffGeneratorSpec`) and their union :data:`GeneratorSpec`.
"""

from __future__ import annotations

import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from micro_doe.platform.bundle import PRETRAINED_PREFIX, Micro3DiffConfig, resolve_bundle_path, shipped_models
from micro_doe.studies.search_space import GENERATOR_PARAMETERS, ParamDomain

MODEL_REGISTRY_PREFIX = "models:/"


def _base(info: ValidationInfo) -> Path:
    """Folder that relative model paths are relative to (the study.yaml's, else the CWD)."""
    ctx = info.context or {}
    return Path(ctx.get("base") or Path.cwd())


def check_model_ref(ref: str, base: Path) -> str:
    """Validate a model reference; a bundle path comes back absolute (relative to ``base``).

    ``pretrained:NAME`` must be a shipped model; ``models:/NAME@ALIAS`` (or
    ``models:/NAME/VERSION``) is checked later against the MLflow registry; anything else is
    a bundle directory holding ``config.json``.
    """
    if ref.startswith(PRETRAINED_PREFIX):
        name = ref[len(PRETRAINED_PREFIX) :]
        shipped = shipped_models()
        if name not in shipped:
            raise ValueError(f"no shipped model {name!r}; shipped models: {', '.join(shipped) or 'none'}")
        return ref
    if ref.startswith("models:"):
        if not re.fullmatch(r"models:/[^/@\s]+(@[A-Za-z0-9_\-]+|/[0-9]+)", ref):
            raise ValueError(f"{ref!r}: expected models:/NAME@ALIAS or models:/NAME/VERSION")
        return ref
    if re.match(r"^[A-Za-z][A-Za-z0-9+.\-]*:/", ref):
        raise ValueError(f"{ref!r}: expected pretrained:NAME, models:/NAME@ALIAS or a bundle directory")
    path = Path(ref).expanduser()
    path = Path(os.path.abspath(path if path.is_absolute() else base / path))
    if not path.is_dir():
        raise ValueError(f"{ref}: no such bundle directory ({path})")
    if not (path / "config.json").is_file():
        raise ValueError(f"{ref}: not a model bundle (no config.json in {path})")
    return str(path)


class Micro3DiffGeneratorSpec(BaseModel):
    """A Micro3Diff model sampled by multi-plane denoising (searchable: n_h, steps, sampler,
    eta, variance, variant)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["micro3diff"]
    model: str = Field(
        description="pretrained:NAME, models:/NAME@ALIAS, or a bundle directory (relative to the study file)"
    )
    device: str | None = Field(
        None, description="torch device (cpu, cuda, cuda:N, mps); default: the actor's GPU if any"
    )
    batch_size: int = Field(64, ge=1, description="slices per network pass")

    @field_validator("model")
    @classmethod
    def _model(cls, v: str, info: ValidationInfo) -> str:
        ref = check_model_ref(v, _base(info))
        if not ref.startswith(MODEL_REGISTRY_PREFIX):
            _read_config(ref)
        return ref

    @field_validator("device")
    @classmethod
    def _device(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"cpu|cuda(:[0-9]+)?|mps", v):
            raise ValueError(f"expected cpu, cuda, cuda:N or mps, got {v!r}")
        return v

    def bundle_config(self) -> Micro3DiffConfig | None:
        """The bundle's config.json, or None for a registry model (not fetched at load time)."""
        return None if self.model.startswith(MODEL_REGISTRY_PREFIX) else _read_config(self.model)

    def domains(self) -> dict[str, ParamDomain]:
        """The kind's parameter table, with ``steps`` capped at the model's T when known."""
        table = dict(GENERATOR_PARAMETERS[self.kind])
        config = self.bundle_config()
        if config is not None:
            T = config.noise_schedule().T
            steps = f"sampling steps S, at most this model's T = {T}"
            table["steps"] = replace(table["steps"], high=T, description=steps)
        return table

    def phase_names(self) -> list[str] | None:
        config = self.bundle_config()
        return None if config is None else config.phase_names


def _read_config(ref: str) -> Micro3DiffConfig:
    path = resolve_bundle_path(ref) / "config.json"
    try:
        return Micro3DiffConfig.model_validate_json(path.read_text())
    except ValueError as err:
        raise ValueError(f"{path}: not a valid Micro3Diff bundle config ({err.__class__.__name__})") from None


# Add a kind: define LDMGeneratorSpec(kind: Literal["ldm"], ...) with the same methods, add
# it to this union and its parameters to GENERATOR_PARAMETERS["ldm"] (search_space.py).
GeneratorSpec = Annotated[Union[Micro3DiffGeneratorSpec], Field(discriminator="kind")]
