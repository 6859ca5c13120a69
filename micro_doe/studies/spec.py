"""StudySpec: a study.yaml as a validated model. A study names a generator (see
:mod:`~micro_doe.studies.generator_blocks`), the generator parameters Optuna searches
(``search``, see :mod:`~micro_doe.studies.search_space`) or holds (``fixed``), the objectives
and constraints computed from each trial's samples, the Optuna sampler and budget, the Ray
resources, how samples are evaluated, and where results go (Optuna storage, MLflow tracking,
artifacts; relative to where the study runs, see :meth:`StudySpec.resolved_paths`). This
module holds those blocks and :class:`StudySpec`, whose checks span blocks (parameter
domains, duplicate objectives, constraint metrics, tortuosity, phases).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from micro_doe.studies.generator_blocks import GeneratorSpec
from micro_doe.studies.objectives import (
    PARAM_METRICS,
    TORTUOSITY_METRICS,
    Direction,
    Objective,
    is_known_metric,
    known_metrics,
    resolve_objective,
)
from micro_doe.studies.search_space import ParamSpec, Scalar, find_domain
from micro_doe.tracking.registry import check_tracking_uri

if TYPE_CHECKING:
    import optuna

MAX_NAME_LENGTH = 100
MAX_TRIALS = 1_000_000
MAX_TIMEOUT_S = 365 * 24 * 3600.0  # a year: anything longer is a typo
MAX_SAMPLES_PER_TRIAL = 1_000


# ============================================================================ objectives, constraints


class ObjectiveSpec(BaseModel):
    """An objective by name (built-in, registered, or ``module:function``); direction
    ``None`` takes the objective's default."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1)
    direction: Direction | None = None

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        resolve_objective(v)
        return v

    def resolve(self) -> Objective:
        """The objective, with this spec's direction when one is given."""
        obj = resolve_objective(self.name)
        return replace(obj, direction=self.direction) if self.direction else obj


class ConstraintSpec(BaseModel):
    """A bound on a trial metric (its mean over the trial's samples): ``min ≤ metric ≤ max``.

    ``metric``: an objective of the study, a metric of
    :func:`micro_doe.studies.objectives.trial_metrics` (``s2_error``, ``lineal_path_error``,
    ``vf_error``, ``volume_fraction``, ``vf_<phase>``, ``tortuosity``,
    ``effective_diffusivity``, ``percolating_fraction``, ``interfacial_area``,
    ``seconds_per_volume``), or a registered objective.
    """

    model_config = ConfigDict(extra="forbid")
    metric: str = Field(min_length=1)
    max: float | None = Field(None, description="upper bound (inclusive)")
    min: float | None = Field(None, description="lower bound (inclusive)")

    @model_validator(mode="after")
    def _bounds(self) -> ConstraintSpec:
        if self.max is None and self.min is None:
            raise ValueError("give max, min or both")
        for key, bound in (("max", self.max), ("min", self.min)):
            if bound is not None and not math.isfinite(bound):
                raise ValueError(f"{key}: must be finite, got {bound}")
        if self.max is not None and self.min is not None and self.min > self.max:
            raise ValueError(f"min: must be ≤ max, got min {self.min:g} > max {self.max:g}")
        return self

    def describe(self) -> str:
        """``0.1 ≤ vf ≤ 0.3``, ``vf_error ≤ 0.05`` or ``tortuosity ≥ 1.2``."""
        if self.min is not None and self.max is not None:
            return f"{self.min:g} ≤ {self.metric} ≤ {self.max:g}"
        return f"{self.metric} ≤ {self.max:g}" if self.max is not None else f"{self.metric} ≥ {self.min:g}"

    def violation(self, value: float) -> float:
        """Optuna's convention: ≤ 0 when ``value`` is within the bounds, else how far outside."""
        gaps = [value - self.max] if self.max is not None else []
        gaps += [self.min - value] if self.min is not None else []
        return float(max(gaps))


# ============================================================================ sampler, budget, resources


class InitialDesign(BaseModel):
    """A space-filling start: ``n`` scrambled Sobol points enqueued before the sampler takes over."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["sobol"] = "sobol"
    n: int = Field(ge=1, description="number of initial trials")


class _SamplerBase(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seed: int | None = Field(None, description="sampler seed (also seeds the initial design)")
    initial_design: InitialDesign | None = None


class _ModelSamplerBase(_SamplerBase):
    n_startup_trials: int | None = Field(
        None, ge=0, description="trials sampled at random before the model takes over; default: the initial "
        "design's n when there is one (the Sobol points are the start), else Optuna's 10",
    )

    learn_from_pruned: bool = Field(
        False, description="the model sees a pruned trial as complete, with the objective values of the volumes it "
        "generated before it was stopped (stored state stays PRUNED); otherwise Optuna's treatment: a multi-objective "
        "study ranks all pruned trials alike, after the complete ones (benchmarks/pruning.py measures both)",
    )

    def startup_trials(self) -> int:
        """``n_startup_trials``, or its default (above)."""
        if self.n_startup_trials is not None:
            return self.n_startup_trials
        return self.initial_design.n if self.initial_design is not None else 10


class TPESamplerSpec(_ModelSamplerBase):
    """Optuna's TPESampler (single- or multi-objective)."""

    kind: Literal["tpe"] = "tpe"
    constant_liar: bool = Field(
        True, description="treat trials in flight as bad results, so that several generators (or drivers) are not "
        "handed near-duplicate points (benchmarks/parallel_proposals.py measures it)",
    )


class GPSamplerSpec(_ModelSamplerBase):
    """Optuna's GPSampler (Gaussian-process Bayesian optimisation)."""

    kind: Literal["gp"] = "gp"


class NSGA2SamplerSpec(_SamplerBase):
    """Optuna's NSGAIISampler (multi-objective genetic algorithm)."""

    kind: Literal["nsga2"] = "nsga2"
    population_size: int = Field(50, ge=2, description="trials per generation")


class RandomSamplerSpec(_SamplerBase):
    """Optuna's RandomSampler."""

    kind: Literal["random"] = "random"


SamplerSpec = Annotated[
    TPESamplerSpec | GPSamplerSpec | NSGA2SamplerSpec | RandomSamplerSpec, Field(discriminator="kind")
]


class _PrunerBase(BaseModel):
    """Early stopping: a trial generates ``every`` volumes at a time and, after each batch, reports
    the running mean of its first objective; the pruner may stop it there."""

    model_config = ConfigDict(extra="forbid")
    every: int = Field(1, ge=1, description="volumes generated between two pruning decisions")
    in_order: bool = Field(
        False, description="a trial keeps its generator until each decision, and a pruned trial is told only once "
        "the next trial has been asked: the sampler is then asked for every trial with the same trials finished as "
        "without a pruner (exactly so with one generator), so pruning leaves the search path as it was unless a pruned "
        "trial would have been among the sampler's best; costs each decision's evaluation time in wall time",
    )


class MedianPrunerSpec(_PrunerBase):
    """Optuna's MedianPruner: stop when the running mean is worse than the median of earlier
    trials at the same number of volumes."""

    kind: Literal["median"] = "median"
    n_startup_trials: int = Field(4, ge=0, description="complete trials before any pruning")
    n_warmup_steps: int = Field(0, ge=0, description="volumes a trial always generates")


class SuccessiveHalvingPrunerSpec(_PrunerBase):
    """Optuna's SuccessiveHalvingPruner (asynchronous successive halving), rungs in volumes."""

    kind: Literal["successive_halving"] = "successive_halving"
    min_resource: int = Field(1, ge=1, description="volumes before the first rung")
    reduction_factor: int = Field(2, ge=2, description="1/reduction_factor of the trials reach the next rung")


class HyperbandPrunerSpec(_PrunerBase):
    """Optuna's HyperbandPruner, resources in volumes up to ``samples_per_trial``."""

    kind: Literal["hyperband"] = "hyperband"
    min_resource: int = Field(1, ge=1, description="volumes before the first rung")
    reduction_factor: int = Field(2, ge=2)


class ParetoHalvingPrunerSpec(_PrunerBase):
    """Successive halving on the Pareto rank of every objective's running mean (or only of those
    in ``objectives``), rungs in volumes (:mod:`micro_doe.studies.pareto_pruner`; micro-doe's
    variant, not Optuna's)."""

    kind: Literal["pareto_halving"] = "pareto_halving"
    min_resource: int = Field(1, ge=1, description="volumes before the first rung")
    reduction_factor: int = Field(2, ge=2, description="1/reduction_factor of the trials reach the next rung")
    objectives: list[str] | None = Field(
        None, description="the objectives to rank by (names from objectives:); all of them if not given"
    )
    margin: float = Field(
        0.0, ge=0, allow_inf_nan=False,
        description="benefit of the doubt, in standard errors: a trial is ranked with its running means "
                    "moved that many standard errors towards better (needs min_resource >= 2)",
    )  # fmt: skip
    margin_errors: Literal["own", "pooled"] = Field(
        "own",
        description="the standard errors margin counts in: 'own' (of the judged trial's volumes) or 'pooled' "
                    "(root mean square of every competitor's at that rung, so a trial whose first volumes "
                    "happen to agree is not judged as if it were certain)",
    )  # fmt: skip

    @field_validator("objectives")
    @classmethod
    def _some(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and not v:
            raise ValueError("is empty: name at least one objective, or leave the key out to rank by all of them")
        return v

    @model_validator(mode="after")
    def _margin_needs_two_volumes(self) -> ParetoHalvingPrunerSpec:
        if self.margin > 0 and self.min_resource < 2:
            raise ValueError(f"margin: {self.margin} needs min_resource >= 2 (a standard error needs two volumes), "
                             f"got min_resource: {self.min_resource}")  # fmt: skip
        if self.margin_errors == "pooled" and self.margin == 0:
            raise ValueError("margin_errors: pooled needs a margin > 0 (it says which standard errors the margin counts in)")
        return self


PrunerSpec = Annotated[
    MedianPrunerSpec | SuccessiveHalvingPrunerSpec | HyperbandPrunerSpec | ParetoHalvingPrunerSpec,
    Field(discriminator="kind"),
]


class BudgetSpec(BaseModel):
    """When the study stops: after ``n_trials`` trials or ``timeout_s`` seconds, whichever first
    (trials still in flight at the timeout are failed and re-queued: the next run starts with them)."""

    model_config = ConfigDict(extra="forbid")
    n_trials: int = Field(strict=True, ge=1, le=MAX_TRIALS)  # strict: `true` is not 1
    timeout_s: float | None = Field(
        None, gt=0, le=MAX_TIMEOUT_S, allow_inf_nan=False, description="wall-clock limit in seconds (at most a year)"
    )


class ResourcesSpec(BaseModel):
    """Ray actors: generators (one trial in flight each) and an evaluator pool."""

    model_config = ConfigDict(extra="forbid")
    generators: int = Field(1, strict=True, ge=1, le=1024)
    evaluators: int = Field(1, strict=True, ge=1, le=4096)
    gpus_per_generator: float = Field(
        1.0, gt=0, le=64, allow_inf_nan=False, description="GPUs per generator actor, used only when the cluster has GPUs"
    )
    placement_timeout_s: float = Field(
        120.0, gt=0, le=MAX_TIMEOUT_S, allow_inf_nan=False,
        description="seconds an actor may wait for a node after its process or node died; then its trial is "
        "failed and re-queued and the study goes on without it (or stops when no generator or evaluator is left)",
    )


class EvaluationSpec(BaseModel):
    """How each sample is described: the phase of interest (label or name), the tortuosity
    axis (``None`` skips the diffusion solve) and periodic boundaries for S2, L, interface area."""

    model_config = ConfigDict(extra="forbid")
    phase: int | str = 1
    tortuosity_axis: Literal["z", "y", "x"] | None = "z"
    periodic: bool = False

    @field_validator("phase")
    @classmethod
    def _phase(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 0:
            raise ValueError(f"a phase label is ≥ 0, got {v}")
        return v


# ============================================================================ the study


def _slug(v: str) -> str:
    if len(v) > MAX_NAME_LENGTH:  # MLflow keeps names (and the run names made from them) short
        raise ValueError(f"at most {MAX_NAME_LENGTH} characters, got {len(v)}")
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", v):
        raise ValueError(f"expected lowercase letters, digits, '-' and '_', starting with a letter or digit; got {v!r}")
    return v


MEMORY_STORAGE = "memory"  # storage: this process's in-memory Optuna storage


def _absolute_url(url: str, base: Path) -> str:
    """``sqlite:///relative`` → ``sqlite:////abs``; a plain path → absolute; other URLs unchanged."""
    m = re.match(r"^(sqlite(\+\w+)?:///)(.*)$", url)
    if m:
        rest = m.group(3)
        if not rest or rest.startswith(("/", ":memory:", "file:")):
            return url
        path, sep, query = rest.partition("?")
        return m.group(1) + os.path.abspath(base / path) + sep + query
    if re.match(r"^[A-Za-z][A-Za-z0-9+.\-]*:", url):
        return url
    return os.path.abspath(base / Path(url).expanduser())


class StudySpec(BaseModel):
    """A study: what to generate, what to vary, what to optimise, where results go."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="slug [a-z0-9][a-z0-9_-]*: the Optuna study name and MLflow experiment")
    generator: GeneratorSpec
    search: dict[str, ParamSpec] = Field(description="generator parameters Optuna varies")
    fixed: dict[str, Scalar] = Field(default_factory=dict, description="generator parameters held constant")
    samples_per_trial: int = Field(2, strict=True, ge=1, le=MAX_SAMPLES_PER_TRIAL, description="volumes generated and evaluated per trial")
    volume_seeds: Literal["per_trial", "common"] = Field(
        "per_trial",
        description="'per_trial': each trial's volumes from seeds of its own; 'common': volume i of every trial "
                    "from the same seed (common random numbers: trials compared on the same noise, so a "
                    "pruner's early comparisons are fairer)",
    )  # fmt: skip
    purpose: str = Field("", max_length=2000, description="what the study is for, in a sentence or two: shown in "
                         "optuna-dashboard (the study's purpose attribute) and in the MLflow experiment's description")
    objectives: list[ObjectiveSpec] = Field(min_length=1)
    constraints: list[ConstraintSpec] = Field(default_factory=list)
    sampler: SamplerSpec = Field(default_factory=TPESamplerSpec)
    pruner: PrunerSpec | None = Field(
        None, description="stop hopeless trials early (median, successive_halving, hyperband, pareto_halving)"
    )
    budget: BudgetSpec
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    storage: str = Field("sqlite:///micro-doe-runs/optuna.db",
                         description=f"Optuna RDB URL, or '{MEMORY_STORAGE}': this process's memory, gone when it ends")
    tracking: str | None = Field("sqlite:///micro-doe-runs/mlflow.db", description="MLflow tracking URI; null: no MLflow")
    artifacts: str = Field("micro-doe-runs/artifacts", description="artifact folder (or URI)")
    pictures: bool = Field(True, description="draw each trial's slice montage and S2/L curves (optuna-dashboard, MLflow); "
                           "false for a generator that takes milliseconds, where drawing is most of a trial's cost")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _slug(v)

    @field_validator("search")
    @classmethod
    def _search(cls, v: dict[str, Any]) -> dict[str, Any]:
        if not v:
            raise ValueError("the search space is empty: give at least one parameter to vary")
        return v

    @field_validator("fixed", mode="before")
    @classmethod
    def _fixed(cls, v: Any) -> Any:
        if isinstance(v, Mapping):
            for key, value in v.items():
                if not isinstance(value, Scalar):
                    raise ValueError(f"{key}: expected a number, string or boolean, got {type(value).__name__}")
        return v

    @field_validator("storage")
    @classmethod
    def _storage(cls, v: str) -> str:
        if v == MEMORY_STORAGE:
            return v
        if "://" not in v:
            example = "sqlite:///runs/optuna.db or postgresql+psycopg://…"
            raise ValueError(f"expected a database URL such as {example}, got {v!r}")
        return v

    @field_validator("tracking", "artifacts")
    @classmethod
    def _nonempty(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("must not be empty")
        return v

    @field_validator("tracking")
    @classmethod
    def _tracking(cls, v: str | None) -> str | None:
        return None if v is None else check_tracking_uri(v)

    @model_validator(mode="after")
    def _check(self) -> StudySpec:
        problems = self._problems()
        if problems:
            raise ValueError("\n".join(f"{path}: {msg}" for path, msg in problems))
        return self

    def _problems(self) -> list[tuple[str, str]]:
        problems: list[tuple[str, str]] = []
        domains = self.generator.domains()
        kind = self.generator.kind
        allowed = ", ".join(domains)
        for section, values in (("search", self.search), ("fixed", self.fixed)):
            for name, value in values.items():
                domain = find_domain(domains, name)
                if domain is None:
                    msg = f"not a parameter of the {kind} generator; allowed: {allowed}"
                    problems.append((f"{section}.{name}", msg))
                elif section == "search":
                    problems += [(f"search.{name}{sub}", msg) for sub, msg in domain.check_search(value)]  # type: ignore[arg-type]
                elif (msg := domain.check_value(value)) is not None:  # type: ignore[assignment]
                    problems.append((f"fixed.{name}", msg))
        for name in self.search.keys() & self.fixed.keys():
            problems.append((f"fixed.{name}", "also in search: a parameter is either searched or fixed"))
        for name in self.generator.required_parameters():
            if name not in self.search and name not in self.fixed:
                problems.append(("search", f"{name}: required by this {kind} model; search it or fix it"))
        ranked = getattr(self.pruner, "objectives", None) or []
        known = [o.name for o in self.objectives]
        for i, name in enumerate(ranked):
            if name not in known:
                problems.append((f"pruner.objectives[{i}]", f"{name!r} is not one of the study's objectives ({', '.join(known)})"))
            elif name in ranked[:i]:
                problems.append((f"pruner.objectives[{i}]", f"{name!r} is listed twice"))
        min_resource = getattr(self.pruner, "min_resource", None)
        if min_resource is not None and min_resource >= self.samples_per_trial:
            problems.append(("pruner.min_resource", f"must be less than samples_per_trial ({self.samples_per_trial}): "
                                                    "the first rung comes after min_resource volumes"))
        if self.pruner is not None and self.pruner.every >= self.samples_per_trial:
            problems.append(("pruner.every", f"must be less than samples_per_trial ({self.samples_per_trial}), "
                                             "or no trial could be stopped early"))

        names = [o.name for o in self.objectives]
        for i, name in enumerate(names):
            if name in names[:i]:
                problems.append((f"objectives[{i}].name", f"{name!r} is listed twice"))
        metrics = [c.metric for c in self.constraints]
        for i, metric in enumerate(metrics):
            if metric in metrics[:i]:
                msg = f"{metric!r} has two constraints; give min and max in one"
                problems.append((f"constraints[{i}].metric", msg))
            elif not (metric in names or is_known_metric(metric) or _resolvable(metric)):
                problems.append(
                    (
                        f"constraints[{i}].metric",
                        f"unknown metric {metric!r}; known metrics: {', '.join(known_metrics())}; "
                        f"or one of the study's objectives ({', '.join(names)}) or a registered objective",
                    )
                )
        declared: dict[str, Any] = {**{k: 0 for k in self.search}, **self.fixed}
        for i, metric in enumerate(metrics):
            if metric in PARAM_METRICS:
                try:
                    PARAM_METRICS[metric](declared)
                except (ValueError, TypeError) as err:
                    problems.append((f"constraints[{i}].metric", str(err)))
        if self.evaluation.tortuosity_axis is None:
            used = [(f"objectives[{i}].name", n) for i, n in enumerate(names)]
            used += [(f"constraints[{i}].metric", m) for i, m in enumerate(metrics)]
            for where, name in used:
                if name in TORTUOSITY_METRICS:
                    problems.append((where, f"{name} needs evaluation.tortuosity_axis (it is null)"))

        phases = self.generator.phase_names()
        phase = self.evaluation.phase
        if phases is not None:
            bad_label = isinstance(phase, int) and phase >= len(phases)
            bad_name = isinstance(phase, str) and phase not in phases and not phase.isdigit()
            if bad_label or bad_name:
                problems.append(("evaluation.phase", f"{phase!r} is not a phase of the model ({_phase_list(phases)})"))
        return problems

    # ------------------------------------------------------------------ helpers

    def directions(self) -> list[Direction]:
        """Optuna directions, one per objective, in order (the objective's default if not given)."""
        return [o.resolve().direction for o in self.objectives]

    def resolved_objectives(self) -> list[tuple[Objective, Direction]]:
        """``(objective, direction)`` pairs for :func:`~micro_doe.studies.objectives.evaluate_objectives`."""
        return [(obj, obj.direction) for obj in (o.resolve() for o in self.objectives)]

    def objective_names(self) -> list[str]:
        return [o.name for o in self.objectives]

    def param_names(self) -> list[str]:
        """The searched parameter names (Optuna's), in spec order."""
        return list(self.search)

    def distributions(self) -> dict[str, optuna.distributions.BaseDistribution]:
        """The search space as Optuna distributions (for ``study.ask(fixed_distributions=...)``)."""
        return {name: p.distribution() for name, p in self.search.items()}

    def constraint_objectives(self) -> list[Objective]:
        """Objectives a constraint bounds that are neither study objectives nor trial metrics
        (registered or ``module:function`` ones): the runner must evaluate these too."""
        names = set(self.objective_names())
        extra = [c.metric for c in self.constraints if c.metric not in names and not is_known_metric(c.metric)]
        return [resolve_objective(m) for m in extra]

    def resolved_paths(self, base: Path) -> StudySpec:
        """A copy with ``sqlite:///relative`` storage/tracking URLs and a relative artifacts
        folder (or plain tracking path) made absolute against ``base``; other URLs unchanged."""
        base = Path(os.path.abspath(base))
        return self.model_copy(
            update={
                "storage": self.storage if self.storage == MEMORY_STORAGE else _absolute_url(self.storage, base),
                "tracking": None if self.tracking is None else _absolute_url(self.tracking, base),
                "artifacts": _absolute_url(self.artifacts, base),
            }
        )


def _phase_list(phases: list[str]) -> str:
    return ", ".join(f"{i}={name}" for i, name in enumerate(phases))


def _resolvable(name: str) -> bool:
    try:
        resolve_objective(name)
    except ValueError:
        return False
    return True

