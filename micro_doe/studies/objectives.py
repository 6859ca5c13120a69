"""Objectives: what a study optimises, computed from a trial's generated samples.

An objective maps one :class:`Sample` (a generated volume, its descriptors, the trial's
parameters) to a float. A trial's value of an objective is the **mean over the trial's
samples** of the per-sample values (:func:`evaluate_objectives`).

Objectives are found by name (:func:`resolve_objective`):

- a built-in (:data:`BUILTIN_OBJECTIVES`, listed below);
- one registered with the :func:`objective` decorator (under the function's name, or
  ``name=``);
- ``"module:function"``: the module is imported and the function used; a function not
  decorated gets direction ``"minimize"`` unless the study gives one.

Built-ins (per sample; the default direction in brackets):

- ``s2_error`` [minimize]: error rate in % (Micro3Diff eq. 24) between the sample's
  two-point correlation S2(r) and the reference's, both averaged over the axes and
  compared over their common lags r = 0 … min(len) − 1 voxels;
- ``lineal_path_error`` [minimize]: the same for the lineal path L(r);
- ``vf_error`` [minimize]: |vf − target|, absolute (a fraction, not %), with target
  ``params["target.vf_<phase name>"]`` (an LDM's conditioning target for the phase of
  interest, e.g. ``target.vf_donor``) or ``params["target.vf"]`` when the trial has one,
  else the reference's volume fraction;
- ``volume_fraction`` [maximize]: volume fraction of the phase of interest;
- ``tortuosity`` [minimize]: tortuosity factor τ ≥ 1 along the evaluation axis (taufactor's
  definition); ``inf`` for a sample whose phase does not span the axis, so the trial's mean
  is ``inf`` too (the worst value; Optuna accepts it);
- ``transport_tortuosity`` [minimize]: the largest τ over *all* phases along the evaluation
  axis: the slower transport path when every phase carries something (in an OPV film holes
  travel through the donor and electrons through the acceptor); ``inf`` when a phase does
  not span the axis. Costs one extra diffusion solve per other phase;
- ``percolating_fraction`` [maximize]: fraction of the phase connected to both faces
  normal to the tortuosity axis;
- ``interfacial_area`` [maximize]: specific interfacial area (1/voxel) between the phase
  and all other phases, summed;
- ``seconds_per_volume`` [minimize]: generator wall time spent on the sample, in seconds;
- ``size_error`` [minimize]: local-thickness distribution error over 2D sections, in % of the
  reference's mean width; ``diameter_error`` [minimize]: |mean component diameter − the
  reference's| in % of it; ``connectivity_error`` [minimize]: |share of the phase in its
  section's largest component − the reference's| in % of it (all three over 2D sections,
  :mod:`micro_doe.platform.descriptors.sizes`);
- ``structure_error`` [minimize]: ``lineal_path_error + size_error + diameter_error +
  connectivity_error``, in % points: one number for the descriptors that no sampling setting
  steers (vf and S2(0) are left out, since anchored sampling sets them), used by
  ``micro-doe tune``.

The error objectives need the model's training-data reference (``Sample.reference``).
Note the per-sample rule: ``s2_error`` here is the mean of per-sample error rates, which
is at least the error rate of the pooled curve that
:func:`micro_doe.platform.descriptors.reference_error.error_rates` reports.
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, overload

import numpy as np
import xarray as xr

from micro_doe.errors import InputError
from micro_doe.platform.descriptors import Descriptors, error_rate
from micro_doe.platform.descriptors import size_error as size_error_of
from micro_doe.platform.descriptors import tortuosity as tortuosity_of

Direction = Literal["minimize", "maximize"]
DIRECTIONS: tuple[str, ...] = ("minimize", "maximize")
ATTRIBUTE = "__micro_doe_objective__"


@dataclass(frozen=True)
class Sample:
    """One generated volume of a trial, with everything an objective may look at.

    ``volume``: int8 phase labels, dims (z, y, x). ``descriptors``: of the phase of interest
    (:func:`micro_doe.platform.descriptors.describe`). ``params``: the trial's generator
    parameters (searched and fixed). ``predicted``: what the model predicts for this sample
    (e.g. manufacturing parameters; ``{}`` for Micro3Diff). ``seconds``: generator wall time
    spent on this volume. ``reference``: descriptors of the model's training data
    (the bundle's ``reference.nc``), if any.
    """

    volume: xr.DataArray
    descriptors: Descriptors
    params: dict[str, Any]
    predicted: dict[str, float]
    seconds: float
    reference: Descriptors | None


@dataclass(frozen=True)
class Objective:
    """A named per-sample objective with its default optimisation direction."""

    name: str
    fn: Callable[[Sample], float]
    direction: Direction
    description: str


class UnknownObjectiveError(InputError):
    """An objective name that is neither built in, registered, nor an importable ``module:function``."""


# ----------------------------------------------------------------------------- built-ins


def _first_line(doc: str | None) -> str:
    return (doc or "").strip().split("\n", 1)[0].strip()



def _reference(sample: Sample, objective: str) -> Descriptors:
    ref = sample.reference
    if ref is None:
        raise ValueError(f"{objective}: needs the model's training-data reference (reference.nc); this sample has none")
    if ref.phase != sample.descriptors.phase:
        raise ValueError(
            f"{objective}: the sample's descriptors are of phase {sample.descriptors.phase} "
            f"({sample.descriptors.phase_name}) but the reference's are of phase {ref.phase} ({ref.phase_name})"
        )
    return ref


def _curve_error(reference: np.ndarray, generated: np.ndarray) -> float:
    n = min(len(reference), len(generated))
    return error_rate(reference[:n], generated[:n])


def s2_error(sample: Sample) -> float:
    """Error rate in % (eq. 24) of S2(r), averaged over axes, against the reference."""
    ref = _reference(sample, "s2_error")
    return _curve_error(ref.s2_mean(), sample.descriptors.s2_mean())


def lineal_path_error(sample: Sample) -> float:
    """Error rate in % (eq. 24) of the lineal path L(r), averaged over axes, against the reference."""
    ref = _reference(sample, "lineal_path_error")
    return _curve_error(ref.lineal_path_mean(), sample.descriptors.lineal_path_mean())


def _vf_target_key(sample: Sample) -> str | None:
    """The trial parameter holding the requested vf of the phase of interest, if any."""
    keys = (f"target.vf_{sample.descriptors.phase_name}", "target.vf")
    return next((k for k in keys if k in sample.params), None)


def vf_error(sample: Sample) -> float:
    """|vf − target| (absolute); target = params["target.vf_<phase>"] or ["target.vf"], else the reference's vf."""
    key = _vf_target_key(sample)
    if key is not None:
        target = float(sample.params[key])
    else:
        target = _reference(sample, "vf_error").volume_fraction
    return abs(sample.descriptors.volume_fraction - target)


def volume_fraction(sample: Sample) -> float:
    """Volume fraction of the phase of interest."""
    return sample.descriptors.volume_fraction


def _tortuosity_result(sample: Sample, objective: str):
    if sample.descriptors.tortuosity is None:
        raise ValueError(f"{objective}: the descriptors have no tortuosity (evaluation.tortuosity_axis is null)")
    return sample.descriptors.tortuosity


def tortuosity(sample: Sample) -> float:
    """Tortuosity factor τ ≥ 1 along the evaluation axis; inf if the phase does not span it."""
    return _tortuosity_result(sample, "tortuosity").tau


def transport_tortuosity(sample: Sample) -> float:
    """Largest tortuosity factor over all phases along the evaluation axis; inf if one does not span it."""
    own = _tortuosity_result(sample, "transport_tortuosity")
    taus = [own.tau]
    for other in range(len(sample.descriptors.volume_fractions)):
        if other != sample.descriptors.phase:
            taus.append(tortuosity_of(sample.volume, other, own.axis).tau)
    return max(taus)


def percolating_fraction(sample: Sample) -> float:
    """Fraction of the phase connected to both faces normal to the tortuosity axis."""
    return _tortuosity_result(sample, "percolating_fraction").percolating_fraction


def interfacial_area(sample: Sample) -> float:
    """Specific interfacial area (1/voxel) between the phase and all other phases, summed."""
    return float(sum(sample.descriptors.interfacial_area.values()))


def seconds_per_volume(sample: Sample) -> float:
    """Generator wall time spent on the sample, in seconds."""
    return float(sample.seconds)


def _sizes(sample: Sample, objective: str):
    ref = _reference(sample, objective)
    if ref.sizes is None:
        raise ValueError(f"{objective}: the model's reference.nc has no size distributions (re-train or refresh it)")
    if sample.descriptors.sizes is None:
        raise ValueError(f"{objective}: the sample was described without size distributions")
    return ref.sizes, sample.descriptors.sizes


def size_error(sample: Sample) -> float:
    """Local-thickness distribution error in % of the reference's mean width (Wasserstein-1), over 2D sections."""
    ref, gen = _sizes(sample, "size_error")
    return size_error_of(ref, gen)


def diameter_error(sample: Sample) -> float:
    """|mean equivalent diameter of the phase's components − the reference's| in %, over 2D sections."""
    ref, gen = _sizes(sample, "diameter_error")
    if not math.isfinite(gen.diameter_mean):
        return 100.0
    return 100.0 * abs(gen.diameter_mean - ref.diameter_mean) / ref.diameter_mean


def connectivity_error(sample: Sample) -> float:
    """|share of the phase in its section's largest component − the reference's| in %, over 2D sections."""
    ref, gen = _sizes(sample, "connectivity_error")
    if not math.isfinite(ref.largest_share):
        raise ValueError("connectivity_error: the reference has no connectivity (made before it existed; re-tune the model)")
    if not math.isfinite(gen.largest_share):
        return 100.0
    return 100.0 * abs(gen.largest_share - ref.largest_share) / ref.largest_share


STRUCTURE_JUDGES = ("lineal_path_error", "size_error", "diameter_error", "connectivity_error")


def structure_error(sample: Sample) -> float:
    """L error + size error + diameter error + connectivity error, in % points (what no sampling setting steers)."""
    return sum(BUILTIN_OBJECTIVES[name].fn(sample) for name in STRUCTURE_JUDGES)


def _builtin(fn: Callable[[Sample], float], direction: Direction) -> Objective:
    return Objective(fn.__name__, fn, direction, _first_line(fn.__doc__))


BUILTIN_OBJECTIVES: dict[str, Objective] = {
    o.name: o
    for o in (
        _builtin(s2_error, "minimize"),
        _builtin(lineal_path_error, "minimize"),
        _builtin(vf_error, "minimize"),
        _builtin(size_error, "minimize"),
        _builtin(diameter_error, "minimize"),
        _builtin(connectivity_error, "minimize"),
        _builtin(structure_error, "minimize"),
        _builtin(volume_fraction, "maximize"),
        _builtin(tortuosity, "minimize"),
        _builtin(transport_tortuosity, "minimize"),
        _builtin(percolating_fraction, "maximize"),
        _builtin(interfacial_area, "maximize"),
        _builtin(seconds_per_volume, "minimize"),
    )
}
# Built-ins allowed to return +inf (a sample that does not percolate); user functions are not.
_INF_ALLOWED = {tortuosity, transport_tortuosity}

# Metric names a constraint may bound (besides the study's own objectives and registered ones):
# every built-in objective, the descriptor scalars of Descriptors.scalars(), and vf_<phase name>.
METRICS: dict[str, str] = {name: o.description for name, o in BUILTIN_OBJECTIVES.items()} | {
    "effective_diffusivity": "relative effective diffusivity D_eff/D_0 along the tortuosity axis",
    "components_per_kpx": "components of the phase per 1000 pixels of 2D sections",
    "component_diameter": "mean equivalent-disk diameter of the phase's components in 2D sections [voxels]",
    "component_diameter_std": "standard deviation of those diameters [voxels]",
    "thickness_mean": "mean local thickness (volume-weighted) of the phase in 2D sections [voxels]",
    "largest_component_share": "share of the phase in its section's largest component, over 2D sections",
}


def passes_per_volume(params: Mapping[str, Any]) -> float:
    """Denoising passes per volume of a Micro3Diff setting, (n_h + 1) · S: its cost, known from
    the parameters alone (a constraint on it is checked before the trial runs)."""
    missing = [k for k in ("n_h", "steps") if k not in params]
    if missing:
        raise ValueError(f"passes_per_volume needs n_h and steps among the study's search or fixed values; {missing[0]} is neither")
    return float((int(params["n_h"]) + 1) * int(params["steps"]))


# Metrics known from a trial's parameters before it runs: a point that breaks a constraint on
# one of them is skipped unsampled (the loop's ask), so a cost cap costs no generator time.
PARAM_METRICS: dict[str, Callable[[Mapping[str, Any]], float]] = {"passes_per_volume": passes_per_volume}
METRICS["passes_per_volume"] = "denoising passes per volume of a Micro3Diff setting, (n_h + 1) · S"
# The unit of each built-in metric, shown beside its value where a person reads it (dashboard).
UNITS: dict[str, str] = {
    "s2_error": "%", "lineal_path_error": "%", "size_error": "%", "diameter_error": "%", "connectivity_error": "%",
    "structure_error": "% points", "vf_error": "fraction", "volume_fraction": "fraction", "tortuosity": "τ",
    "transport_tortuosity": "τ", "percolating_fraction": "fraction", "interfacial_area": "1/voxel",
    "seconds_per_volume": "s", "effective_diffusivity": "D/D0", "component_diameter": "voxels",
    "component_diameter_std": "voxels", "thickness_mean": "voxels", "largest_component_share": "fraction",
    "passes_per_volume": "passes",
}  # fmt: skip


def labelled(name: str) -> str:
    """``name [unit]`` for a metric with a known unit, else ``name``."""
    return f"{name} [{UNITS[name]}]" if name in UNITS else name


METRIC_PATTERNS: dict[str, str] = {r"vf_.+": "vf_<phase name>: volume fraction of that phase"}
METRIC_PATTERN_NAMES: dict[str, str] = {"vf_<phase name>": "volume fraction of that phase (e.g. vf_grain)"}
TORTUOSITY_METRICS = ("tortuosity", "transport_tortuosity", "effective_diffusivity", "percolating_fraction")

# ----------------------------------------------------------------------------- registry

_REGISTRY: dict[str, Objective] = {}


def _check_direction(direction: str, where: str) -> Direction:
    if direction not in DIRECTIONS:
        raise ValueError(f"{where}: direction must be 'minimize' or 'maximize', got {direction!r}")
    return direction  # type: ignore[return-value]


@overload
def objective(
    fn: Callable[[Sample], float], *, direction: Direction = ..., name: str | None = ...
) -> Callable[[Sample], float]: ...
@overload
def objective(
    fn: None = None, *, direction: Direction = ..., name: str | None = ...
) -> Callable[[Callable[[Sample], float]], Callable[[Sample], float]]: ...
def objective(fn=None, *, direction="minimize", name=None):
    """Register a per-sample objective: ``@objective`` or ``@objective(direction="maximize")``.

    Registers under ``name`` or the function's ``__name__``; the function is returned
    unchanged, with its :class:`Objective` attached as ``fn.__micro_doe_objective__``.
    A name of a built-in cannot be reused, nor a name another function registered; the same
    function registered again (a module imported twice, a notebook cell run again) replaces its
    earlier self.
    """

    def register(f: Callable[[Sample], float]) -> Callable[[Sample], float]:
        if not callable(f):
            raise TypeError(f"objective: expected a function, got {type(f).__name__}")
        key = name or getattr(f, "__name__", None)
        if not key or not isinstance(key, str):
            raise ValueError("objective: a name is required for a callable without __name__")
        if key in BUILTIN_OBJECTIVES:
            raise ValueError(f"objective {key!r}: that is a built-in objective; pick another name")
        if ":" in key:
            raise ValueError(f"objective {key!r}: names cannot contain ':' (reserved for module:function)")
        earlier = _REGISTRY.get(key)
        if earlier is not None and _origin(earlier.fn) != _origin(f):
            raise ValueError(f"objective {key!r}: already registered by {_origin(earlier.fn)}; pick another name "
                             "(objective(name=...))")
        obj = Objective(key, f, _check_direction(direction, f"objective {key!r}"), _first_line(f.__doc__))
        _REGISTRY[key] = obj
        setattr(f, ATTRIBUTE, obj)
        return f

    return register(fn) if fn is not None else register


def _origin(fn: Callable[..., Any]) -> str:
    """Where a function is defined, ``module.qualname``: the same for a redefinition of it."""
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def objective_name(objective: Callable[..., float] | str) -> str:
    """The name a study lists an objective by: a name as it is, or the registered name of a
    function decorated with :func:`objective`."""
    if isinstance(objective, str):
        return objective
    attached = getattr(objective, ATTRIBUTE, None)
    if attached is None:
        raise ValueError(f"objectives: {getattr(objective, '__name__', objective)!r} is not a registered objective; "
                         "decorate it with @micro_doe.objective (or give its name)")
    return attached.name


def known_objectives() -> list[str]:
    """Built-in names, then registered ones (sorted)."""
    return list(BUILTIN_OBJECTIVES) + sorted(set(_REGISTRY) - set(BUILTIN_OBJECTIVES))


def resolve_objective(name: str) -> Objective:
    """The objective called ``name``: built-in, registered, or ``"module:function"`` (imported).

    For ``module:function`` the returned objective is named ``name`` (so results are keyed
    by what the study wrote) and keeps the decorator's direction, or ``"minimize"`` for a
    plain function. Raises :class:`UnknownObjectiveError` (a ``ValueError``) listing the
    known names otherwise.
    """
    if name in BUILTIN_OBJECTIVES:
        return BUILTIN_OBJECTIVES[name]
    if name in _REGISTRY:
        return _REGISTRY[name]
    if ":" not in name:
        raise UnknownObjectiveError(
            f"unknown objective {name!r}; known objectives: {', '.join(known_objectives())} "
            "(or 'module:function' for a function of your own)"
        )
    module_name, _, attr = name.partition(":")
    if not module_name or not attr:
        raise UnknownObjectiveError(f"objective {name!r}: expected 'module:function'")
    try:
        module = importlib.import_module(module_name)
    except SystemExit as err:  # a module that exits on import would end the whole study silently
        msg = f"objective {name!r}: importing module {module_name!r} called sys.exit({err.code!r})"
        raise UnknownObjectiveError(msg) from None
    except Exception as err:  # an import that fails for any reason is a bad reference
        reason = f"{type(err).__name__}: {err}"
        raise UnknownObjectiveError(f"objective {name!r}: cannot import module {module_name!r} ({reason})") from None
    target: Any = module
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            msg = f"objective {name!r}: module {module_name!r} has no attribute {attr!r}"
            raise UnknownObjectiveError(msg) from None
    if not callable(target):
        raise UnknownObjectiveError(f"objective {name!r}: {attr!r} is not a function")
    attached = getattr(target, ATTRIBUTE, None)
    if isinstance(attached, Objective):
        return replace(attached, name=name)
    return Objective(name, target, "minimize", _first_line(getattr(target, "__doc__", None)))


# ----------------------------------------------------------------------------- evaluation


def _value(obj: Objective, sample: Sample, index: int) -> float:
    raw = obj.fn(sample)
    try:
        value = float(raw)
    except (TypeError, ValueError):
        msg = f"objective {obj.name!r}: expected a number for sample {index}, got {type(raw).__name__}"
        raise ValueError(msg) from None
    if math.isnan(value) or (math.isinf(value) and not (obj.fn in _INF_ALLOWED and value > 0)):
        msg = f"objective {obj.name!r}: got {value} for sample {index}; objectives must return finite numbers"
        raise ValueError(msg)
    return value


def evaluate_objectives(
    objectives: Sequence[tuple[Objective, Direction] | Objective], samples: Sequence[Sample]
) -> dict[str, float]:
    """Each objective computed per sample, then averaged over the trial's samples.

    ``objectives`` are ``(Objective, direction)`` pairs (the direction is what the study
    optimises; values are returned as computed, not negated) or bare objectives. Returns
    ``{objective name: mean}`` in the given order. A NaN, or an infinity from anything but
    the built-in ``tortuosity``, raises ``ValueError`` naming the objective and sample.
    """
    return means_over_samples(per_sample_objectives(objectives, samples))


def means_over_samples(per_sample: dict[str, list[float]]) -> dict[str, float]:
    """A trial's value of each objective: the mean of its per-sample values."""
    return {name: float(np.mean(values)) for name, values in per_sample.items()}


def per_sample_objectives(
    objectives: Sequence[tuple[Objective, Direction] | Objective], samples: Sequence[Sample]
) -> dict[str, list[float]]:
    """Each objective's value on each sample, ``{objective name: [value per sample]}`` in the
    given order (what :func:`evaluate_objectives` averages; the same checks)."""
    if not samples:
        raise ValueError("objectives: no samples given")
    out: dict[str, list[float]] = {}
    for item in objectives:
        obj = item[0] if isinstance(item, tuple) else item
        out[obj.name] = [_value(obj, s, i) for i, s in enumerate(samples)]
    return out


def trial_metrics(samples: Sequence[Sample]) -> dict[str, float]:
    """All scalar metrics of a trial, each the mean over its samples.

    Keys: the descriptor scalars (``volume_fraction``, ``vf_<phase>``, ``interfacial_area``
    and, when tortuosity was computed, ``tortuosity`` (inf if any sample does not
    percolate), ``effective_diffusivity``, ``percolating_fraction``; with size distributions
    ``components_per_kpx``, ``component_diameter``, ``component_diameter_std``,
    ``thickness_mean``), ``seconds_per_volume``, and ``s2_error``, ``lineal_path_error``,
    ``vf_error`` when the samples have a reference (``vf_error`` also when the trial has a
    ``target.vf_<phase>`` or ``target.vf``), plus ``size_error`` and ``diameter_error`` when both
    sides have size distributions (and ``connectivity_error``, ``structure_error`` when the
    reference has connectivity). Only keys every sample has.
    """
    if not samples:
        raise ValueError("trial_metrics: no samples given")
    per_sample: list[dict[str, float]] = []
    for s in samples:
        m = s.descriptors.scalars()
        m["seconds_per_volume"] = float(s.seconds)
        m.update(param_metrics(s.params))
        if s.reference is not None:
            m["s2_error"] = s2_error(s)
            m["lineal_path_error"] = lineal_path_error(s)
            if s.reference.sizes is not None and s.descriptors.sizes is not None:
                m["size_error"] = size_error(s)
                m["diameter_error"] = diameter_error(s)
                if math.isfinite(s.reference.sizes.largest_share):  # references made before it have none
                    m["connectivity_error"] = connectivity_error(s)
                    m["structure_error"] = sum(m[name] for name in STRUCTURE_JUDGES)  # the judges just measured
        if s.reference is not None or _vf_target_key(s) is not None:
            m["vf_error"] = vf_error(s)
        per_sample.append(m)
    keys = [k for k in per_sample[0] if all(k in m for m in per_sample)]
    return {k: float(np.mean([m[k] for m in per_sample])) for k in keys}


def param_metrics(params: Mapping[str, Any]) -> dict[str, float]:
    """The :data:`PARAM_METRICS` that ``params`` hold the inputs of (a study of another kind has none)."""
    out = {}
    for name, fn in PARAM_METRICS.items():
        try:
            out[name] = fn(params)
        except (ValueError, TypeError):
            continue
    return out


def is_known_metric(name: str) -> bool:
    """Whether ``name`` is a metric of :func:`trial_metrics` (see :data:`METRICS`, :data:`METRIC_PATTERNS`)."""
    return name in METRICS or any(re.fullmatch(p, name) for p in METRIC_PATTERNS)


def known_metrics() -> list[str]:
    """Metric names a constraint can bound without being an objective of the study."""
    return list(METRICS) + [p.split(":")[0] for p in METRIC_PATTERNS.values()]
