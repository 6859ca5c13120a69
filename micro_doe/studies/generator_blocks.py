"""The ``generator`` block of a study: which model generates the volumes and how it is
referenced (:func:`check_model_ref`: ``pretrained:NAME``, ``models:/NAME@ALIAS`` or a bundle
directory relative to the study.yaml's folder, made absolute on load), one spec class per
generator kind (:class:`Micro3DiffGeneratorSpec`, :class:`LDMGeneratorSpec`, and the
model-free :class:`CahnHilliardGeneratorSpec`) and their union :data:`GeneratorSpec`.

Every kind has the same methods: ``bundle_config()`` (None for a registry model, which is
only fetched when the study starts), ``domains()`` (what ``search``/``fixed`` may name),
``required_parameters()`` (what they must name) and ``phase_names()``.
"""

from __future__ import annotations

import inspect
import math
import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationInfo, field_serializer, field_validator, model_validator

from micro_doe.platform.bundles import (
    PRETRAINED_PREFIX,
    REGISTRY_PREFIX,
    bundle_kind,
    has_held_out,
    load_reference,
    resolve_bundle_path,
    shipped_models,
)
from micro_doe.platform.generators import BUILTIN_KINDS, GeneratorKind, find_generator_kind, takes_option
from micro_doe.platform.ldm.bundle import LDMConfig
from micro_doe.platform.ldm.generator import DEFAULT_BATCH_SIZE, physical_range
from micro_doe.platform.ldm.verify import VerifySettings
from micro_doe.platform.micro3diff.bundle import Micro3DiffConfig
from micro_doe.platform.synthetic.cahn_hilliard import PHASE_NAMES
from micro_doe.studies.search_space import GENERATOR_PARAMETERS, ParamDomain


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


def check_device_name(v: str | None, mps: bool) -> str | None:
    """A torch device name of a generator block: cpu, cuda, cuda:N (and mps when allowed), or None."""
    pattern, names = r"cpu|cuda(:[0-9]+)?", "cpu, cuda or cuda:N"
    if mps:
        pattern, names = pattern + "|mps", "cpu, cuda, cuda:N or mps"
    if v is not None and not re.fullmatch(pattern, v):
        raise ValueError(f"expected {names}, got {v!r}")
    return v


class _BundleGeneratorSpec(BaseModel):
    """What every generator kind has: a model reference and a torch device."""

    model_config = ConfigDict(extra="forbid")
    kind: str  # each subclass narrows it to its Literal (the union's discriminator)
    model: str = Field(
        description="pretrained:NAME, models:/NAME@ALIAS, or a bundle directory (relative to the study file)"
    )
    device: str | None = Field(
        None, description="torch device (cpu, cuda, cuda:N, mps); default: the actor's GPU if any"
    )

    @field_validator("model")
    @classmethod
    def _model(cls, v: str, info: ValidationInfo) -> str:
        ref = check_model_ref(v, _base(info))
        if not ref.startswith(REGISTRY_PREFIX):
            _read_config(ref, cls._config_class())
        return ref

    @field_validator("device")
    @classmethod
    def _device(cls, v: str | None) -> str | None:
        return check_device_name(v, mps=True)

    @classmethod
    def _config_class(cls) -> type[Micro3DiffConfig] | type[LDMConfig]:
        raise NotImplementedError

    def bundle_config(self):  # the subclass's config class
        """The bundle's config.json, or None for a registry model (not fetched at load time)."""
        if self.model.startswith(REGISTRY_PREFIX):
            return None
        return _read_config(self.model, self._config_class())

    def required_parameters(self) -> list[str]:
        """Parameters ``search`` or ``fixed`` must give (none by default)."""
        return []

    def phase_names(self) -> list[str] | None:
        config = self.bundle_config()
        return None if config is None else list(config.phase_names)


class Micro3DiffGeneratorSpec(_BundleGeneratorSpec):
    """A Micro3Diff model sampled by multi-plane denoising (searchable: n_h, steps, sampler,
    eta, variance, variant, precision, the anchored variant's settings, and
    ``target.vf_<phase>`` for each phase: the anchored variant's volume fraction, within the
    bundle's ``vf_range`` times the training vf unless ``allow_extrapolation`` is true)."""

    kind: Literal["micro3diff"]
    batch_size: int | None = Field(None, ge=1, description="slices per network pass (default: 64 at the training size, "
                                   "fewer for a larger size)")
    size: int | None = Field(None, ge=8, le=1024, description="cube edge N of the volumes: at least the training size "
                             "and a multiple of the U-Net's downsampling (default: the training size)")
    reference: Literal["training", "held_out"] = Field(
        "training", description="what error objectives compare with: the training images (reference.nc) or the "
        "images set aside from training (held_out.nc; micro-doe tune judges against these)"
    )
    allow_extrapolation: bool = Field(False, description="allow vf targets outside the model's documented range")

    @classmethod
    def _config_class(cls) -> type[Micro3DiffConfig]:
        return Micro3DiffConfig

    @field_validator("size")
    @classmethod
    def _size(cls, v: int | None, info: ValidationInfo) -> int | None:
        model = info.data.get("model")
        if v is None or not model or model.startswith(REGISTRY_PREFIX):
            return v
        config = _read_config(model, Micro3DiffConfig)
        factor = 2 ** (len(config.unet.channel_mults) - 1)
        if v < config.image_size or v % factor:
            raise ValueError(f"expected a multiple of {factor} of at least the training size {config.image_size}, got {v}")
        return v

    @field_validator("reference")
    @classmethod
    def _reference(cls, v: str, info: ValidationInfo) -> str:
        model = info.data.get("model")
        if v == "held_out" and model and not model.startswith(REGISTRY_PREFIX) and not has_held_out(model):
            raise ValueError(f"{model} has no held-out images (held_out.nc): train with --held-out, or use micro-doe tune "
                             "--held-out-data")
        return v

    def domains(self) -> dict[str, ParamDomain]:
        """The kind's parameter table, with ``steps`` capped at the model's T when known."""
        table = dict(GENERATOR_PARAMETERS[self.kind])
        config = self.bundle_config()
        if config is not None:
            T = config.noise_schedule().T
            steps = f"sampling steps S, at most this model's T = {T}"
            table["steps"] = replace(table["steps"], high=T, description=steps)
            if len(config.phase_names) > 2:  # hysteresis grows one phase of two
                decode = table["decode"]
                table["decode"] = replace(decode, choices=tuple(c for c in decode.choices if c != "hysteresis"))
            del table["target.*"]
            fractions = load_reference(self.model).volume_fractions
            for name in config.phase_names:
                lo, hi = (0.0, 1.0) if self.allow_extrapolation else (m * fractions[name] for m in config.vf_range)
                what = "extrapolation allowed" if self.allow_extrapolation else f"training vf {fractions[name]:.3f}"
                table[f"target.vf_{name}"] = ParamDomain("float", low=lo, high=min(hi, 1.0), description=f"target vf of {name} ({what})")
        return table


class LDMGeneratorSpec(_BundleGeneratorSpec):
    """A conditional latent diffusion model (searchable: ``target.<label>`` for each of the
    model's conditioning labels, ``guidance``, ``guidance_rescale``, ``feature_guidance``,
    ``steps``, ``sampler``, and the verification's ``tolerance`` and ``max_candidates``).

    A model trained with label dropout takes any subset of its labels (the rest are free);
    otherwise every conditioning label needs a target (searched or fixed). Targets must lie
    in the training range of their label (the bundle's ``label_ranges``) unless
    ``allow_extrapolation`` is true. ``verify`` (on by default; ``false``: raw samples): return
    only volumes whose measured labels are within tolerance of the targets (or the closest
    candidate, marked), see
    :mod:`micro_doe.platform.ldm.verify`; a searched or fixed ``tolerance`` /
    ``max_candidates`` overrides the block's.
    """

    kind: Literal["ldm"]
    allow_extrapolation: bool = Field(False, description="allow targets outside the training data's range")
    batch_size: int = Field(DEFAULT_BATCH_SIZE, ge=1, le=1024, description="candidates denoised together")
    verify: VerifySettings | None = Field(
        default_factory=VerifySettings,
        description="verified generation (on by default): {tolerance, max_candidates, correct, round_size}; false for raw samples",
    )

    @field_validator("verify", mode="before")
    @classmethod
    def _switch(cls, value: Any) -> Any:
        """``false`` (or null): raw samples; ``true``: the default verification."""
        if value is False:
            return None
        return {} if value is True else value

    @field_serializer("verify")
    def _dump_switch(self, value: VerifySettings | None) -> Any:
        return False if value is None else value  # for the actor, whose absent verify means the default

    @classmethod
    def _config_class(cls) -> type[LDMConfig]:
        return LDMConfig

    def domains(self) -> dict[str, ParamDomain]:
        """The kind's table; with the bundle at hand, one ``target.<label>`` entry per
        conditioning label (bounded by its training range) and ``steps`` capped at T."""
        table = dict(GENERATOR_PARAMETERS[self.kind])
        config = self.bundle_config()
        if config is None:
            return table
        del table["target.*"]
        for name in config.conditioning:
            lo, hi = config.label_ranges.get(name, (None, None))
            if self.allow_extrapolation:  # beyond the training range, within what a volume can have
                lo, hi = (1.0, None) if name.startswith("tau_") else physical_range(name)
                hi = None if hi == math.inf else hi
                description = f"target {name} (extrapolation allowed)"
            else:
                description = f"target {name}, within the training range"
            table[f"target.{name}"] = ParamDomain("float", low=lo, high=hi, description=description)
        T = config.noise_schedule().T
        table["steps"] = replace(table["steps"], high=T, description=f"sampling steps S, at most this model's T = {T}")
        return table

    def required_parameters(self) -> list[str]:
        config = self.bundle_config()
        if config is None or config.unet.label_dropout > 0:  # any subset of targets is a condition
            return []
        return [f"target.{name}" for name in config.conditioning]


class CahnHilliardGeneratorSpec(BaseModel):
    """The forward route: the project's Cahn–Hilliard solver anneals one film per volume from
    the searched recipe (searchable: ``phi``, ``chi``, ``time``, and ``phi_mixed`` for three
    phases; ``phi``, ``chi`` and ``time`` must be searched or fixed). No model: see
    :mod:`micro_doe.platform.synthetic.anneal`."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["cahn-hilliard"]
    size: int = Field(32, ge=8, le=256, description="box side of the films [voxels]")
    phases: Literal[2, 3] = Field(2, description="2: donor/acceptor; 3: with a mixed phase")
    device: str | None = Field(None, description="torch device of the solver (cpu, cuda, cuda:N)")

    @field_validator("device")
    @classmethod
    def _device(cls, v: str | None) -> str | None:
        return check_device_name(v, mps=False)  # the solver runs on CPU or CUDA

    @property
    def model(self) -> str:
        """What generates, in words (there is no model to load)."""
        return f"cahn-hilliard solver, {self.phases} phases, {self.size}³"

    def bundle_config(self) -> None:
        return None

    def domains(self) -> dict[str, ParamDomain]:
        table = dict(GENERATOR_PARAMETERS[self.kind])
        if self.phases == 2:
            del table["phi_mixed"]
        return table

    def required_parameters(self) -> list[str]:
        return ["phi", "chi", "time"]

    def phase_names(self) -> list[str]:
        return list(PHASE_NAMES[self.phases])


def _read_config(ref: str, config_class: type[Micro3DiffConfig] | type[LDMConfig]) -> Any:
    path = resolve_bundle_path(ref) / "config.json"
    kind = bundle_kind(ref)
    wanted = config_class.model_fields["kind"].default
    if kind != wanted:
        raise ValueError(f"{ref}: a model of kind {kind}; use generator kind: {kind}")
    try:
        return config_class.model_validate_json(path.read_text())
    except ValueError as err:
        raise ValueError(f"{path}: not a valid {wanted} bundle config ({err.__class__.__name__})") from None


class CustomGeneratorSpec(BaseModel):
    """A generator kind of your own, registered with ``@micro_doe.generator_kind`` (see
    :mod:`micro_doe.platform.generators`): ``kind`` is its registered name, or ``module:Class``
    (imported first; a module beside the study file is found). ``options`` are its class's
    keyword arguments; ``search`` and ``fixed`` may name the parameters it registered."""

    model_config = ConfigDict(extra="forbid")
    kind: str = Field(min_length=1, description="a registered generator kind, or module:Class")
    options: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the generator's class")

    @field_validator("kind")
    @classmethod
    def _kind(cls, v: str) -> str:
        find_generator_kind(v)
        return v

    @model_validator(mode="after")
    def _options(self) -> CustomGeneratorSpec:
        factory = self.registered().factory
        unknown = sorted(k for k in self.options if not takes_option(factory, k))
        if unknown:
            raise ValueError(f"options: {unknown} are not keyword arguments of {self.kind}; it takes "
                             f"{sorted(inspect.signature(factory).parameters)}")
        return self

    @property
    def model(self) -> str:
        """What generates, in words (a kind of your own has no model reference)."""
        return f"{self.kind} (a generator of your own)"

    def registered(self) -> GeneratorKind:
        return find_generator_kind(self.kind)

    def bundle_config(self) -> None:
        return None

    def domains(self) -> dict[str, ParamDomain]:
        return {name: _domain(value) for name, value in self.registered().parameters.items()}

    def required_parameters(self) -> list[str]:
        return []

    def phase_names(self) -> list[str]:
        return list(self.registered().phase_names)


def _domain(value: Any) -> ParamDomain:
    """A registered parameter as a domain: (low, high) numbers (ints when both bounds are ints
    or absent), or a tuple of choices."""
    if isinstance(value, tuple) and len(value) == 2 and all(v is None or isinstance(v, int | float) for v in value):
        integral = all(v is None or (isinstance(v, int) and not isinstance(v, bool)) for v in value) and value != (None, None)
        return ParamDomain("int" if integral else "float", low=value[0], high=value[1], description="a registered parameter")
    return ParamDomain("choice", choices=tuple(value), description="a registered parameter")


def _generator_tag(value: Any) -> str:
    kind = value.get("kind") if isinstance(value, dict) else getattr(value, "kind", None)
    return kind if kind in BUILTIN_KINDS else "custom"


# Add a shipped kind: a _BundleGeneratorSpec subclass with kind: Literal["NAME"], its parameters
# in GENERATOR_PARAMETERS["NAME"] (search_space.py), a member of this union, and its factory in
# micro_doe.platform.generators.BUILTIN_FACTORIES. A user's kind needs none of this
# (CustomGeneratorSpec).
GeneratorSpec = Annotated[
    Annotated[Micro3DiffGeneratorSpec, Tag("micro3diff")]
    | Annotated[LDMGeneratorSpec, Tag("ldm")]
    | Annotated[CahnHilliardGeneratorSpec, Tag("cahn-hilliard")]
    | Annotated[CustomGeneratorSpec, Tag("custom")],
    Discriminator(_generator_tag),
]
