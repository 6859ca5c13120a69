"""Verified generation: measure candidates with the evaluators that labelled the training data.

A conditional LDM misses its targets by a few hundredths (the spread of one target's samples
is about 0.03 in vf and 0.06 in 1/τ), and the evaluators that define the labels are cheap. So
a request is met by drawing candidates and keeping one whose *measured* labels are within
tolerance of every requested target.

**Scale.** Each label is compared on the scale the model is conditioned on: volume fractions
and interfacial area as they are, tortuosities as 1/τ (τ = inf → 0), so one tolerance means
the same on [0, 1] for vf and 1/τ. A candidate's *distance* is max over requested labels of
|measured − target| / tolerance(label) on that scale; it meets the request when distance ≤ 1.

**Order of operations** (:meth:`~micro_doe.platform.ldm.generator.LDMGenerator.generate`):
candidate j = 0, 1, … of sample i is drawn from seed :func:`candidate_seed` ``(seed + i, j)``
(candidate 0 is the plain, unverified sample), candidates are drawn in batches and measured,
and sample i returns its lowest-j candidate within tolerance; if none of ``max_candidates``
is, the candidate of least distance (lowest j on ties), marked as not meeting the tolerance.
The result does not depend on the batch size.

**Request correction** (``correct: true``, a named variant; off by default): the model's
response to a label is biased and compressed (e.g. a requested vf_mixed of 0.35 comes out
near 0.30), so drawing more candidates at the same request rarely gets within tolerance.
With correction, candidates come in rounds of ``round_size``; after a round in which none met
the tolerance, the request of that sample moves by the round's mean miss,

    request_{r+1} = clip(request_r + mean_j (target − measured_j))   (model scale, per label)

clipped to the training range, and the next round is conditioned on it. The *target* is
unchanged: candidates are still judged against it. Each sample corrects on its own
candidates only, so it stays reproducible alone and independent of the batch size.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import xarray as xr
from pydantic import BaseModel, ConfigDict, Field, field_validator

from micro_doe.platform.descriptors import interfacial_area, tortuosity, volume_fraction

DEFAULT_TOLERANCE = 0.03  # on the model scale: vf and 1/τ both live in [0, 1]
DEFAULT_MAX_CANDIDATES = 8
DEFAULT_ROUND_SIZE = 4  # candidates per round of request correction


class VerifySettings(BaseModel):
    """How candidates are verified: ``tolerance`` for every label (or per label) on the model
    scale, and at most ``max_candidates`` candidates per returned volume."""

    model_config = ConfigDict(extra="forbid")
    tolerance: float | dict[str, float] = Field(
        DEFAULT_TOLERANCE, description="max |measured − target| per label (vf, 1/τ scale); a number or {label: number}"
    )
    max_candidates: int = Field(DEFAULT_MAX_CANDIDATES, ge=1, le=1024, description="candidates per returned volume")
    correct: bool = Field(False, description="request correction: after each round without a match, shift the "
                          "request by the round's mean miss (module docstring)")
    round_size: int = Field(DEFAULT_ROUND_SIZE, ge=1, le=1024, description="candidates per round of request correction")

    @field_validator("tolerance")
    @classmethod
    def _positive(cls, value: float | dict[str, float]) -> float | dict[str, float]:
        values = value.values() if isinstance(value, Mapping) else [value]
        if not all(math.isfinite(v) and v > 0 for v in values):
            raise ValueError(f"expected positive finite numbers, got {value}")
        return value

    def tolerances(self, names: list[str]) -> dict[str, float]:
        """The tolerance of each requested label; unknown names or non-positive values → ValueError."""
        if isinstance(self.tolerance, Mapping):
            unknown = sorted(set(self.tolerance) - set(names))
            if unknown:
                raise ValueError(f"tolerance: labels {unknown} are not requested; requested: {names}")
            out = {n: float(self.tolerance.get(n, DEFAULT_TOLERANCE)) for n in names}
        else:
            out = {n: float(self.tolerance) for n in names}
        bad = {n: v for n, v in out.items() if not (v > 0 and math.isfinite(v))}
        if bad:
            raise ValueError(f"tolerance: expected positive finite numbers, got {bad}")
        return out


DEFAULT_VERIFY = VerifySettings()  # what generate() and sample() verify with unless told None (raw samples)


def measurable(name: str, phase_names: list[str]) -> bool:
    """Whether :func:`measure` can measure label ``name`` on volumes with these phases."""
    if name == "interfacial_area":
        return {"donor", "acceptor"} <= set(phase_names)
    for prefix in ("vf_", "tau_"):
        if name.startswith(prefix):
            return name[len(prefix) :] in phase_names
    return False


def measure(volume: xr.DataArray, names: list[str], axis: str = "z") -> dict[str, float]:
    """The labels ``names`` of one volume, by the evaluators of the OPV data set:
    ``vf_<phase>``, ``tau_<phase>`` along ``axis`` (inf: not percolating) and the
    donor–acceptor ``interfacial_area`` (non-periodic)."""
    out: dict[str, float] = {}
    for name in names:
        if name.startswith("vf_"):
            out[name] = volume_fraction(volume, name[3:])
        elif name.startswith("tau_"):
            out[name] = float(tortuosity(volume, name[4:], axis).tau)
        elif name == "interfacial_area":
            out[name] = interfacial_area(volume, "donor", "acceptor", periodic=False)
        else:
            raise ValueError(f"verify: cannot measure label {name!r}")
    return out


def model_scale(name: str, value: float) -> float:
    """1/τ for ``tau_*`` (inf → 0), the value itself otherwise."""
    return (0.0 if math.isinf(value) else 1.0 / value) if name.startswith("tau_") else float(value)


def distance(measured: Mapping[str, float], targets: Mapping[str, float], tolerances: Mapping[str, float]) -> float:
    """max over requested labels of |measured − target| / tolerance on the model scale (≤ 1: met)."""
    return max(abs(model_scale(n, measured[n]) - model_scale(n, targets[n])) / tolerances[n] for n in targets)


def from_model_scale(name: str, value: float) -> float:
    """The inverse of :func:`model_scale`: τ = 1/value (value ≤ 0 → inf) for ``tau_*``."""
    return (math.inf if value <= 0 else 1.0 / value) if name.startswith("tau_") else float(value)


def corrected_request(
    request: Mapping[str, float],
    targets: Mapping[str, float],
    measured: Sequence[Mapping[str, float]],
    ranges: Mapping[str, tuple[float, ...]] | None = None,
    infinite_ok: frozenset[str] = frozenset(),
) -> dict[str, float]:
    """The next round's request: ``request`` + mean over ``measured`` of (target − measured) on
    the model scale, per label, clipped to ``ranges`` (physical (min, max); a τ label in
    ``infinite_ok`` may reach 1/τ = 0, i.e. inf). ``ranges=None``: no clipping."""
    out: dict[str, float] = {}
    for name, target in targets.items():
        miss = float(np.mean([model_scale(name, target) - model_scale(name, m[name]) for m in measured]))
        value = model_scale(name, request[name]) + miss
        if ranges is not None and name in ranges:
            lo, hi = ranges[name]
            if name.startswith("tau_"):  # τ in [lo, hi] ↔ 1/τ in [1/hi, 1/lo]
                lo, hi = (0.0 if name in infinite_ok else 1.0 / hi), 1.0 / lo
            value = min(max(value, lo), hi)
        out[name] = from_model_scale(name, value)
    return out


def candidate_seed(sample_seed: int, j: int) -> int:
    """Seed of candidate j of the sample with seed ``sample_seed``: the sample seed itself for
    j = 0, else a 63-bit seed from ``SeedSequence([sample_seed, j])`` (independent streams)."""
    if j == 0:
        return int(sample_seed)
    return int(np.random.SeedSequence([int(sample_seed) & (2**63 - 1), j]).generate_state(1, np.uint64)[0] >> 1)


@dataclass
class Verification:
    """What verification did for one returned volume."""

    met: bool
    candidates: int
    measured: dict[str, float]
    distance: float
    tolerance: dict[str, float]
    request: dict[str, float] | None = None  # with correction: what the returned candidate was conditioned on
    rounds: int | None = None  # with correction: rounds of candidates drawn

    def as_attrs(self) -> dict[str, Any]:
        return asdict(self)
