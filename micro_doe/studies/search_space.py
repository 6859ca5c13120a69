"""The search space of a study: the parameter ranges Optuna samples (``search`` entries:
:class:`IntParam`, :class:`FloatParam`, :class:`CategoricalParam`, together :data:`ParamSpec`)
and what each generator kind accepts for its parameters (:class:`ParamDomain`, the
:data:`GENERATOR_PARAMETERS` table, :func:`find_domain`), against which a study's ``search``
ranges and ``fixed`` values are checked.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

from micro_doe.platform.micro3diff.generator import VARIANTS

if TYPE_CHECKING:
    import optuna

Scalar = int | float | str | bool


# ============================================================================ search space


class IntParam(BaseModel):
    """Integers in [low, high], both inclusive: ``{int: [lo, hi], log: false, step: 1}``."""

    model_config = ConfigDict(extra="forbid", serialize_by_alias=True)
    kind: ClassVar[str] = "int"
    bounds: list[int] = Field(alias="int", min_length=2, max_length=2, description="[low, high], inclusive")
    log: bool = Field(False, description="sample uniformly in log space (needs low ≥ 1, step 1)")
    step: int = Field(1, ge=1, description="spacing of the values from low")

    @model_validator(mode="after")
    def _check(self) -> IntParam:
        low, high = self.bounds
        if low >= high:
            raise ValueError(f"int: lower bound must be < upper bound, got [{low}, {high}]")
        if self.log and low <= 0:
            raise ValueError(f"int: log scale needs a lower bound > 0, got {low}")
        if self.log and self.step != 1:
            raise ValueError(f"step: must be 1 on a log scale, got {self.step}")
        if (high - low) % self.step:
            raise ValueError(f"step: upper − lower bound ({high - low}) must be a multiple of step {self.step}")
        return self

    @property
    def low(self) -> int:
        return self.bounds[0]

    @property
    def high(self) -> int:
        return self.bounds[1]

    def suggest(self, trial: optuna.trial.BaseTrial, name: str) -> int:
        return trial.suggest_int(name, self.low, self.high, step=self.step, log=self.log)

    def distribution(self) -> optuna.distributions.IntDistribution:
        from optuna.distributions import IntDistribution

        return IntDistribution(self.low, self.high, log=self.log, step=self.step)


class FloatParam(BaseModel):
    """Reals in [low, high]: ``{float: [lo, hi], log: false}``."""

    model_config = ConfigDict(extra="forbid", serialize_by_alias=True)
    kind: ClassVar[str] = "float"
    bounds: list[float] = Field(alias="float", min_length=2, max_length=2, description="[low, high]")
    log: bool = Field(False, description="sample uniformly in log space (needs low > 0)")

    @model_validator(mode="after")
    def _check(self) -> FloatParam:
        low, high = self.bounds
        if not (math.isfinite(low) and math.isfinite(high)):
            raise ValueError(f"float: bounds must be finite, got [{low}, {high}]")
        if low >= high:
            raise ValueError(f"float: lower bound must be < upper bound, got [{low}, {high}]")
        if self.log and low <= 0:
            raise ValueError(f"float: log scale needs a lower bound > 0, got {low}")
        return self

    @property
    def low(self) -> float:
        return self.bounds[0]

    @property
    def high(self) -> float:
        return self.bounds[1]

    def suggest(self, trial: optuna.trial.BaseTrial, name: str) -> float:
        return trial.suggest_float(name, self.low, self.high, log=self.log)

    def distribution(self) -> optuna.distributions.FloatDistribution:
        from optuna.distributions import FloatDistribution

        return FloatDistribution(self.low, self.high, log=self.log)


class CategoricalParam(BaseModel):
    """One of a list of values: ``{categorical: [a, b, ...]}`` (non-empty, unique)."""

    model_config = ConfigDict(extra="forbid", serialize_by_alias=True)
    kind: ClassVar[str] = "categorical"
    choices: list[Scalar] = Field(alias="categorical", min_length=1, description="the values to choose from")

    @field_validator("choices")
    @classmethod
    def _unique(cls, v: list[Scalar]) -> list[Scalar]:
        seen = [(type(c), c) for c in v]
        if len(set(seen)) != len(seen):
            raise ValueError(f"choices must be unique, got {v}")
        return v

    def suggest(self, trial: optuna.trial.BaseTrial, name: str) -> Scalar:
        return trial.suggest_categorical(name, self.choices)  # type: ignore[return-value]

    def distribution(self) -> optuna.distributions.CategoricalDistribution:
        from optuna.distributions import CategoricalDistribution

        return CategoricalDistribution(self.choices)


PARAM_KINDS: dict[str, type[BaseModel]] = {"int": IntParam, "float": FloatParam, "categorical": CategoricalParam}


def _param_tag(value: Any) -> str | None:
    if isinstance(value, Mapping):
        keys = [k for k in PARAM_KINDS if k in value]
        return keys[0] if len(keys) == 1 else None
    return getattr(value, "kind", None) if isinstance(value, tuple(PARAM_KINDS.values())) else None


ParamSpec = Annotated[
    Annotated[IntParam, Tag("int")] | Annotated[FloatParam, Tag("float")] | Annotated[CategoricalParam, Tag("categorical")],
    Discriminator(
        _param_tag,
        custom_error_type="param_kind",
        custom_error_message="expected a mapping with exactly one of int: [lo, hi], float: [lo, hi] or "
        "categorical: [choices] (a single value belongs in `fixed`)",
    ),
]


# ============================================================================ generator parameters


@dataclass(frozen=True)
class ParamDomain:
    """What one generator parameter accepts: ints or floats in [low, high] (inclusive,
    ``None`` = unbounded), or one of ``choices``."""

    type: Literal["int", "float", "choice"]
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    description: str = ""

    def _bounds_text(self) -> str:
        lo = "-inf" if self.low is None else f"{self.low:g}"
        hi = "inf" if self.high is None else f"{self.high:g}"
        return f"[{lo}, {hi}]"

    def check_value(self, value: Any) -> str | None:
        """A message if ``value`` is outside the domain, else None."""
        if self.type == "choice":
            return None if value in self.choices else f"{value!r} is not one of {', '.join(self.choices)}"
        number = int if self.type == "int" else int | float
        if isinstance(value, bool) or not isinstance(value, number):
            kind = "an integer" if self.type == "int" else "a number"
            return f"expected {kind}, got {value!r}"
        below = self.low is not None and value < self.low
        above = self.high is not None and value > self.high
        if not math.isfinite(value) or below or above:
            return f"{value!r} is outside {self._bounds_text()} ({self.description})"
        return None

    def check_search(self, param: IntParam | FloatParam | CategoricalParam) -> list[tuple[str, str]]:
        """Problems of a search range as ``(sub-path, message)``."""
        if isinstance(param, CategoricalParam):
            return [(".categorical", m) for m in map(self.check_value, param.choices) if m]
        if self.type == "choice":
            return [(f".{param.kind}", f"takes one of {', '.join(self.choices)}; use {{categorical: [...]}}")]
        if self.type == "int" and isinstance(param, FloatParam):
            return [(".float", "takes integers; use {int: [lo, hi]}")]
        out, where = [], f".{param.kind}"
        if self.low is not None and param.low < self.low:
            out.append((where, f"lower bound must be ≥ {self.low:g} ({self.description}), got {param.low:g}"))
        if self.high is not None and param.high > self.high:
            out.append((where, f"upper bound must be ≤ {self.high:g} ({self.description}), got {param.high:g}"))
        return out


# The one table of what each generator kind lets a study search or fix. A key ending in ".*"
# stands for every name with that prefix (the LDM's "target.*" conditioning values).
GENERATOR_PARAMETERS: dict[str, dict[str, ParamDomain]] = {
    "micro3diff": {
        "n_h": ParamDomain("int", low=0, description="harmonizing cycles per denoising step"),
        "steps": ParamDomain("int", low=1, description="sampling steps S, at most the model's T"),
        "sampler": ParamDomain("choice", choices=("ddpm", "ddim"), description="denoising sampler"),
        "eta": ParamDomain("float", low=0.0, description="DDIM η (ignored by DDPM)"),
        "variance": ParamDomain("choice", choices=("beta", "posterior"), description="DDPM step variance"),
        "variant": ParamDomain("choice", choices=tuple(VARIANTS), description="multi-plane variant"),
        "target.*": ParamDomain("float", low=0.0, high=1.0, description="anchored: target vf of a phase (target.vf_<phase>)"),
        "anchor_strength": ParamDomain("float", low=1e-6, high=1.0, description="anchored: λ, pull per pass"),
        "anchor_until": ParamDomain("float", low=0.0, high=0.999, description="anchored: anchor passes ending at t ≥ until·T"),
        "anchor_per_slice": ParamDomain("float", low=0.0, high=1.0, description="anchored: pull of slice means"),
        "vf_spread": ParamDomain("choice", choices=(False, True), description="anchored: per-volume vf spread"),  # type: ignore[arg-type]
        "precision": ParamDomain("choice", choices=("fp32", "bf16", "fp16"), description="network precision"),
        "decode": ParamDomain("choice", choices=("sign", "fractions", "hysteresis"), description="x_0 to labels"),
        "calibrate": ParamDomain("choice", choices=(False, True), description="anchored: calibrated vf"),  # type: ignore[arg-type]
    },
    "ldm": {
        "target.*": ParamDomain("float", description="target value of a conditioning label (target.vf_donor, ...)"),
        "guidance": ParamDomain("float", low=0.0, description="classifier-free guidance weight w (1: none)"),
        "guidance_rescale": ParamDomain("float", low=0.0, high=1.0, description="guidance rescale φ (0: none)"),
        "feature_guidance": ParamDomain("float", low=0.0, description="feature-predictor gradient guidance (0: none)"),
        "steps": ParamDomain("int", low=1, description="sampling steps S, at most the model's T"),
        "sampler": ParamDomain("choice", choices=("ddpm", "ddim"), description="denoising sampler"),
        "tolerance": ParamDomain("float", low=1e-6, high=1.0, description="verify: max |measured − target| (vf, 1/τ)"),
        "max_candidates": ParamDomain("int", low=1, high=1024, description="verify: candidates per returned volume"),
    },
    "cahn-hilliard": {
        "phi": ParamDomain("float", low=0.01, high=0.99, description="initial donor share of donor + acceptor"),
        "chi": ParamDomain("float", low=0.0, high=10.0, description="donor–acceptor Flory–Huggins χ"),
        "time": ParamDomain("int", low=1, high=100_000, description="annealing time, solver steps (dt = 1)"),
        "phi_mixed": ParamDomain("float", low=0.01, high=0.9, description="three phases: initial mixed fraction"),
    },
}


def find_domain(domains: Mapping[str, ParamDomain], name: str) -> ParamDomain | None:
    """The domain of parameter ``name`` (exact name first, then ``prefix.*`` entries)."""
    if name in domains:
        return domains[name]
    for key, domain in domains.items():
        if key.endswith(".*") and name.startswith(key[:-1]) and len(name) > len(key) - 1:
            return domain
    return None

