"""Recipe check: simulate the manufacturing recipe the feature predictor gave, compare morphologies.

For a generated sample the feature predictor predicts an initial donor fraction φ, a
Flory–Huggins χ and an annealing time t. :func:`check_recipe` anneals a fresh blend at that
recipe with the Cahn–Hilliard solver (:func:`~micro_doe.platform.synthetic.cahn_hilliard.cahn_hilliard`,
the solver and parameters that made the training data, read from the sample's
``data_config``), measures the simulated morphology with the same evaluators as the data set
(:func:`~micro_doe.platform.ldm.dataset.snapshot_labels`), and compares.

**Simulation.** Box: the sample's shape unless ``shape`` is given. Time: the solver records
every ``snapshot_every`` steps of the data set (dt = 1), so t is rounded to the nearest
snapshot time ``k · snapshot_every`` (k ≥ 1), capped at the data set's ``n_steps``.
φ is clipped to [0.01, 0.99] (a valid blend); χ is used as predicted. Three-phase data use
:meth:`~micro_doe.platform.synthetic.cahn_hilliard.CahnHilliardParams.three_phase` with the
predicted ``phi_mixed`` (clipped to [0.01, 0.9]) when the model predicts it (data made with a
``phi_mixed_range``), else the data set's fixed ``phi_mixed``. ``repeats`` realisations run from seeds ``seed, seed + 1, …``.

**Compared descriptors** (dimensionless or per voxel): ``vf_<phase>`` for every phase,
``inv_tau_donor`` and ``inv_tau_acceptor`` (1/τ along the data set's tortuosity axis; 0 for a
phase that does not percolate, so every difference is finite) and ``interfacial_area``
(donor–acceptor faces per voxel). For each: absolute difference |g − s| and relative
difference |g − s| / |s| (NaN when s = 0), with g the generated sample's value and s the
simulated one (the mean over repeats; ``scatter`` is their standard deviation, NaN for one
repeat).

**Summary error**: the mean over the compared descriptors of the symmetric relative
difference |g − s| / ((|g| + |s|) / 2) (0 where both are 0); it lies in [0, 2], and 0.1 means
the descriptors agree to about 10 %.

**What agreement means.** The simulation starts from its own random noise, so it is another
realisation of the recipe, never the same voxels: the check is statistical. Agreement says
the generated morphology is typical of what the predicted recipe makes, i.e. that the
recipe is a plausible way to manufacture it; disagreement larger than the realisation
scatter (estimate it with ``repeats`` ≥ 3; at 32³ it is not negligible) says the predicted
recipe does not reproduce the morphology. It does not test voxel-wise reconstruction.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import xarray as xr

from micro_doe.platform.ldm.dataset import snapshot_labels
from micro_doe.platform.ldm.generator import LDMSample
from micro_doe.platform.synthetic.cahn_hilliard import CahnHilliardParams, cahn_hilliard

PHI_CLIP = (0.01, 0.99)
PHI_MIXED_CLIP = (0.01, 0.9)  # the study search space's domain of phi_mixed
TRANSPORT = ("donor", "acceptor")


@dataclass(frozen=True)
class DescriptorDifference:
    """One compared descriptor: generated g, simulated s (mean over repeats), their differences."""

    name: str
    generated: float
    simulated: float
    scatter: float
    absolute: float
    relative: float
    symmetric: float


@dataclass
class RecipeCheck:
    """Result of :func:`check_recipe` (definitions in the module docstring)."""

    predicted: dict[str, float]
    simulated_recipe: dict[str, Any]
    differences: dict[str, DescriptorDifference]
    summary_error: float
    generated_labels: dict[str, float]
    simulated_labels: list[dict[str, float]]
    simulated_volume: xr.DataArray
    seconds: float
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (without the simulated volume)."""
        return {
            "predicted": self.predicted,
            "simulated_recipe": self.simulated_recipe,
            "differences": {k: asdict(v) for k, v in self.differences.items()},
            "summary_error": self.summary_error,
            "generated_labels": self.generated_labels,
            "simulated_labels": self.simulated_labels,
            "seconds": self.seconds,
            "notes": self.notes,
        }


def compared_descriptors(labels: dict[str, float], phase_names: list[str]) -> dict[str, float]:
    """The compared descriptors of one :func:`snapshot_labels` dict (1/τ for τ)."""
    out = {f"vf_{name}": float(labels[f"vf_{name}"]) for name in phase_names}
    for name in TRANSPORT:
        out[f"inv_tau_{name}"] = 1.0 / float(labels[f"tau_{name}"])  # inf → 0
    out["interfacial_area"] = float(labels["interfacial_area"])
    return out


def recipe_params(sample: LDMSample) -> tuple[CahnHilliardParams, int, list[str]]:
    """Solver parameters and step count of a sample's predicted recipe, with notes on any clipping."""
    p = sample.predicted
    missing = [k for k in ("phi", "chi", "time") if k not in p]
    if missing:
        raise ValueError(f"sample.predicted: lacks {missing}; the model must predict phi, chi and log_time")
    data = sample.data_config
    notes: list[str] = []
    phi = min(max(float(p["phi"]), PHI_CLIP[0]), PHI_CLIP[1])
    if phi != p["phi"]:
        notes.append(f"phi {p['phi']:.4g} clipped to {phi}")
    chi = float(p["chi"])
    if not math.isfinite(chi):
        raise ValueError(f"sample.predicted: chi must be finite, got {chi}")
    n_phases = len(sample.volume.attrs["phase_names"])
    if n_phases == 3:
        mixed = float(p.get("phi_mixed", data.get("phi_mixed", 0.3)))
        clipped = min(max(mixed, PHI_MIXED_CLIP[0]), PHI_MIXED_CLIP[1])
        if clipped != mixed:
            notes.append(f"phi_mixed {mixed:.4g} clipped to {clipped}")
        params = CahnHilliardParams.three_phase(phi=phi, chi=chi, phi_mixed=clipped)
    else:
        params = CahnHilliardParams(phi=phi, chi=chi)
    every = int(data.get("snapshot_every", 1))
    t = float(p["time"])
    steps = every * max(1, round(t / params.dt / every)) if math.isfinite(t) else every
    cap = data.get("n_steps")
    if cap is not None and steps > int(cap):
        notes.append(f"time {t:.4g} capped at the data set's n_steps = {cap}")
        steps = every * max(1, int(cap) // every)
    return params, steps, notes


def check_recipe(
    sample: LDMSample, shape: tuple[int, ...] | None = None, seed: int = 0, repeats: int = 1
) -> RecipeCheck:
    """Simulate ``sample``'s predicted recipe ``repeats`` times and compare descriptors (module docstring)."""
    if repeats < 1:
        raise ValueError(f"repeats: expected at least 1, got {repeats}")
    start = time.perf_counter()
    params, steps, notes = recipe_params(sample)
    shape = tuple(int(s) for s in (shape or sample.volume.shape))
    if len(shape) != 3:
        raise ValueError(f"shape: expected a 3D box (z, y, x), got {shape}")
    axis = str(sample.data_config.get("tortuosity_axis", "z"))
    names = [str(n) for n in sample.volume.attrs["phase_names"]]
    generated_labels = snapshot_labels(sample.volume, axis)
    g = compared_descriptors(generated_labels, names)
    simulated_labels, rows, volume = [], [], None
    for r in range(repeats):
        run = cahn_hilliard(shape, params, n_steps=steps, snapshot_every=steps, seed=seed + r)
        volume = run.isel(sample=-1, drop=True)
        labels = snapshot_labels(volume, axis)
        simulated_labels.append(labels)
        rows.append(compared_descriptors(labels, names))
    differences = {}
    for name, gv in g.items():
        values = np.array([row[name] for row in rows])
        sv = float(values.mean())
        scatter = float(values.std(ddof=1)) if repeats > 1 else math.nan
        diff = abs(gv - sv)
        relative = diff / abs(sv) if sv != 0 else math.nan
        mean_abs = 0.5 * (abs(gv) + abs(sv))
        symmetric = diff / mean_abs if mean_abs > 0 else 0.0
        differences[name] = DescriptorDifference(name, gv, sv, scatter, diff, relative, symmetric)
    summary = float(np.mean([d.symmetric for d in differences.values()]))
    recipe = {"phi": params.phi, "chi": params.chi, "steps": steps, "time": steps * params.dt, "shape": list(shape),
              "seeds": list(range(seed, seed + repeats)), "n_phases": params.n_phases}
    if params.n_phases == 3:
        recipe["phi_mixed"] = params.phi_mixed
    assert volume is not None
    return RecipeCheck(
        predicted=dict(sample.predicted), simulated_recipe=recipe, differences=differences, summary_error=summary,
        generated_labels=generated_labels, simulated_labels=simulated_labels, simulated_volume=volume,
        seconds=time.perf_counter() - start, notes=notes,
    )  # fmt: skip
