"""The labelled OPV data set for the conditional latent diffusion model (Cahn–Hilliard).

Following section 4.1 of the conditional-LDM paper: one Cahn–Hilliard trajectory
(:mod:`micro_doe.platform.synthetic.cahn_hilliard`) for every point of a grid of initial
donor fractions φ and Flory–Huggins χ, snapshots over annealing time, every snapshot
labelled with its microstructural features (what the LDM is conditioned on) and its
manufacturing parameters (what the feature predictor predicts).

**One ``xarray.Dataset``**, dims ``(sample, z, y, x)``:

- ``phase``: int8 phase labels ``(sample, z, y, x)``, 0 acceptor, 1 donor[, 2 mixed], a
  volume in the sense of :mod:`micro_doe.platform.volumes` (``phase_names`` etc. in its attrs);
- per ``sample``, the labels of :data:`LABEL_DEFINITIONS` (volume fractions, tortuosity
  factors and percolating fractions along the film normal, donor–acceptor interfacial area,
  φ, χ, log10 of the annealing time, …);
- ``trajectory`` (int id of the (φ, χ) grid point, ``i_phi · len(chis) + i_chi``) and
  ``split`` (``"train"``/``"val"``);
- attrs: ``config`` (the :class:`OPVDatasetConfig` as JSON), ``phase_names``, ``labels``
  (JSON of the label definitions with units), ``tortuosity_axis``, ``skipped`` (JSON list of
  grid points that gave no samples, with the reason).

**Time.** ``time = step · dt`` in the solver's nondimensional units (dt = 1), and
``log_time = log10(time)``.

**Snapshot rule (which snapshots are kept).** The solver records the compositions every
``snapshot_every`` steps up to ``n_steps``. A snapshot counts as phase-separated once the
*segregation*

    S = sqrt( Σ_k var(u_k) / Σ_k ū_k (1 − ū_k) )

reaches ``min_segregation`` (default 0.3), with ``u_k`` the composition fields (acceptor,
donor[, mixed]) and ``ū_k`` their box means: S is the composition variance as a fraction of
that of a fully segregated 0/1 field with the same means (0 for the mixed blend, ≈ 0.01 for
the initial noise, 1 for sharp pure domains; for two phases it is std(c) / sqrt(φ (1 − φ))).
Label-based rules fail here: at φ = 0.35 the initial noise labels every voxel "acceptor",
whose interfacial area (zero) is below any well-mixed value. From the first separated
snapshot to ``n_steps``, ``n_snapshots`` snapshots are kept, spaced evenly in log time
(coarsening is slow: domain size grows as a power of time), always including the first
separated one and the last one. Grid points inside the binodal but outside the spinodal
(:func:`~micro_doe.platform.synthetic.homogeneous_curvature` ≥ 0) do not separate from
small noise and are skipped without simulating; trajectories that do not reach
``min_segregation`` within ``n_steps`` give no samples; both are listed in ``skipped``.

**Non-percolating snapshots.** They are kept, with ``tau_<phase> = inf`` (the
defined value, :func:`~micro_doe.platform.descriptors.tortuosity`) and
``percolating_<phase> = 0``; ``inf`` round-trips through NetCDF. Training decides: filter on
``np.isfinite(tau)``, or condition on the finite ``1 / τ = D_rel / ε ∈ [0, 1]``.
:func:`label_ranges` reports finite values only.

**Split.** By trajectory, never inside one: a seeded permutation of the ids of the
trajectories that gave samples puts ``round(val_fraction · n)`` of them (at least one when
``val_fraction > 0`` and n ≥ 2; never all) in ``"val"``.

**Three phases.** The third (mixed) component starts at the fraction ``phi_mixed`` in every
trajectory, or, with ``phi_mixed_range = (low, high)``, at a fraction drawn uniformly from
[low, high) for each trajectory (seeded by ``SeedSequence([seed, 2, i])``), so that vf_mixed
varies across the data set and can be a condition; the per-sample label ``phi_mixed`` holds it.

**Seeds.** Trajectory ``i`` starts from noise seeded by
``SeedSequence([seed, 0, i])``; the split uses ``SeedSequence([seed, 1])``. The same config
gives the identical data set (the solver runs in float32; on one device and one torch build
its result is deterministic).

**Cost**: one trajectory plus the labelling of its snapshots (almost all of it in the two
diffusion solves per snapshot); the default grid is the shipped ``opv-32`` model's data, and
its wall time is in docs/explanation/ldm.md.
Memory: the solver holds every recorded snapshot, ``n_steps / snapshot_every · n_phases ·
voxels · 4`` bytes (26 MB for 32³, 1000 steps, every 10).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np
import xarray as xr
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from micro_doe.errors import InputError
from micro_doe.platform.descriptors import interfacial_area, tortuosity, volume_fraction
from micro_doe.platform.synthetic.cahn_hilliard import (
    PHASE_NAMES,
    CahnHilliardParams,
    cahn_hilliard_fields,
    critical_chi,
    homogeneous_curvature,
)
from micro_doe.platform.volumes import make_volume, why_missing, write_netcdf

SPLITS = ("train", "val")
TRANSPORT_PHASES = ("donor", "acceptor")  # phases whose tortuosity is a label
OPTIONAL_LABELS = ("phi_mixed",)  # data sets written before it was a label lack it (the config holds it)
_SEED_TRAJECTORY, _SEED_SPLIT, _SEED_PHI_MIXED = 0, 1, 2  # SeedSequence streams


class OPVDatasetError(InputError):
    """A data set file or object that lacks what an OPV data set must hold."""


class OPVDatasetConfig(BaseModel):
    """What :func:`make_opv_dataset` simulates and how it labels it (definitions in the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    shape: tuple[int, int, int] = Field((32, 32, 32), description="box size (z, y, x) [voxels]; z is the film normal")
    phis: list[float] = Field(
        [round(0.3 + 0.025 * i, 10) for i in range(17)],
        description="initial donor fractions φ (of donor + acceptor) in (0, 1); default 0.3, 0.325, …, 0.7",
    )
    chis: list[float] = Field(
        [round(2.6 + 0.2 * i, 10) for i in range(9)],
        description="donor–acceptor Flory–Huggins χ, all > χ_c = 2; default 2.6, 2.8, …, 4.2",
    )
    n_phases: Literal[2, 3] = Field(2, description="2: donor/acceptor; 3: with a mixed interphase")
    phi_mixed: float = Field(0.3, gt=0.0, lt=1.0, description="initial fraction of the third component (3 phases)")
    phi_mixed_range: tuple[float, float] | None = Field(
        None, description="3 phases: draw each trajectory's φ_mixed uniformly from [low, high) instead (module docstring)"
    )
    n_steps: int = Field(1000, ge=1, description="time steps per trajectory (dt = 1)")
    snapshot_every: int = Field(10, ge=1, description="the solver records the compositions every this many steps")
    n_snapshots: int | None = Field(10, ge=1, description="snapshots kept per trajectory (log-spaced); None: all")
    min_segregation: float = Field(0.3, gt=0.0, lt=1.0, description="segregation S a snapshot needs to be kept")
    seed: int = Field(0, ge=0, description="seeds every trajectory and the split")
    val_fraction: float = Field(0.2, ge=0.0, lt=1.0, description="share of the trajectories in the validation split")
    tortuosity_axis: Literal["z", "y", "x"] = Field("z", description="axis of τ and percolation (film normal z)")
    device: str = Field("cpu", description="torch device of the Cahn–Hilliard solver (labels are computed on CPU)")

    @field_validator("shape")
    @classmethod
    def _shape_is_a_box(cls, shape: tuple[int, int, int]) -> tuple[int, int, int]:
        if any(n < 4 for n in shape):
            raise ValueError(f"shape: every side must be >= 4 voxels, got {shape}")
        return shape

    @field_validator("phis")
    @classmethod
    def _phis_in_unit_interval(cls, phis: list[float]) -> list[float]:
        _check_grid("phis", phis)
        bad = [p for p in phis if not 0.0 < p < 1.0]
        if bad:
            raise ValueError(f"phis: every φ must lie in (0, 1), got {bad}")
        return phis

    @field_validator("chis")
    @classmethod
    def _chis_above_critical(cls, chis: list[float]) -> list[float]:
        _check_grid("chis", chis)
        chi_c = critical_chi()
        bad = [c for c in chis if not (math.isfinite(c) and c > chi_c)]
        if bad:
            raise ValueError(
                f"chis: every χ must be a number above the critical χ_c = {chi_c:g} (no blend separates below it), "
                f"got {bad}"
            )
        return chis

    @model_validator(mode="after")
    def _grid_can_separate(self) -> OPVDatasetConfig:
        if self.snapshot_every > self.n_steps:
            raise ValueError(f"snapshot_every: must be <= n_steps = {self.n_steps}, got {self.snapshot_every}")
        if self.phi_mixed_range is not None:
            low, high = self.phi_mixed_range
            if self.n_phases != 3:
                raise ValueError("phi_mixed_range: only for n_phases=3 (two phases have no mixed component)")
            if not 0.0 < low < high < 1.0:
                raise ValueError(f"phi_mixed_range: expected 0 < low < high < 1, got ({low}, {high})")
        unstable = 0
        for trajectory, (phi, chi) in enumerate((p, c) for p in self.phis for c in self.chis):
            try:
                params = trajectory_params(self, phi, chi, trajectory)
            except ValueError as err:
                raise ValueError(f"phis/chis: grid point φ={phi}, χ={chi} is not a valid blend ({err})") from None
            unstable += homogeneous_curvature(params) < 0
        if not unstable:
            raise ValueError(
                "phis/chis: no grid point lies inside the spinodal (every (φ, χ) blend is stable against "
                "small fluctuations and would not phase-separate); raise chis or move phis towards 0.5"
            )
        return self


def _check_grid(name: str, values: list[float]) -> None:
    if not values:
        raise ValueError(f"{name}: the grid is empty; give at least one value")
    if len(set(values)) != len(values):
        raise ValueError(f"{name}: the grid has repeated values {sorted(values)}")


def trajectory_params(config: OPVDatasetConfig, phi: float, chi: float, trajectory: int) -> CahnHilliardParams:
    """Solver parameters of trajectory ``trajectory`` at grid point (φ, χ) (the solver's defaults otherwise)."""
    if config.n_phases == 3:
        return CahnHilliardParams.three_phase(phi=phi, chi=chi, phi_mixed=trajectory_phi_mixed(config, trajectory))
    return CahnHilliardParams(phi=phi, chi=chi)


def trajectory_phi_mixed(config: OPVDatasetConfig, trajectory: int) -> float:
    """Initial mixed fraction of trajectory ``trajectory``: ``phi_mixed``, or its seeded draw from the range."""
    if config.phi_mixed_range is None:
        return config.phi_mixed
    low, high = config.phi_mixed_range
    u = np.random.default_rng(np.random.SeedSequence([config.seed, _SEED_PHI_MIXED, trajectory])).random()
    return round(float(low + (high - low) * u), 6)


def trajectory_seed(seed: int, trajectory: int) -> int:
    """The solver seed of trajectory ``trajectory``: ``SeedSequence([seed, 0, trajectory])``."""
    return int(np.random.SeedSequence([seed, _SEED_TRAJECTORY, trajectory]).generate_state(1)[0])


# ---------------------------------------------------------------- labels


def label_definitions(n_phases: int, axis: str = "z") -> dict[str, dict[str, str]]:
    """Every per-sample variable: its definition and units (stored as the ``labels`` attr)."""
    faces = f"the two faces normal to {axis}"
    defs: dict[str, dict[str, str]] = {
        f"vf_{name}": {"definition": f"fraction of voxels labelled {name}", "units": "1"}
        for name in PHASE_NAMES[n_phases]
    }
    for name in TRANSPORT_PHASES:
        defs[f"tau_{name}"] = {
            "definition": f"tortuosity factor τ = ε / D_rel ≥ 1 of {name} along {axis} (steady diffusion "
            f"between {faces}, no flux through the sides, not periodic); inf when {name} does not connect them",
            "units": "1",
        }
        defs[f"percolating_{name}"] = {
            "definition": f"fraction of the {name} voxels in face-connected clusters touching both of {faces}",
            "units": "1",
        }
    defs.update(
        interfacial_area={
            "definition": "donor–acceptor specific interfacial area: voxel faces shared by a donor and an acceptor "
            "voxel per voxel (face count, not periodic)",
            "units": "1/voxel",
        },
        segregation={
            "definition": "S = sqrt(Σ_k var(u_k) / Σ_k ū_k (1 − ū_k)) of the composition fields u_k",
            "units": "1",
        },
        phi={"definition": "initial donor fraction φ of the donor + acceptor material", "units": "1"},
        chi={"definition": "donor–acceptor Flory–Huggins interaction parameter χ", "units": "1"},
        step={"definition": "solver time step of the snapshot", "units": "1"},
        time={"definition": "annealing time step · dt (dt = 1)", "units": "nondimensional (M·t in voxel²/kT)"},
        log_time={"definition": "log10 of the annealing time", "units": "log10 of time"},
        trajectory={"definition": "id of the (φ, χ) grid point: i_phi · len(chis) + i_chi", "units": "1"},
        split={"definition": "'train' or 'val', assigned by trajectory", "units": ""},
    )
    if n_phases == 3:
        defs["phi_mixed"] = {"definition": "initial fraction φ_mixed of the third (mixed) component", "units": "1"}
    return defs


def snapshot_labels(volume: xr.DataArray, axis: str = "z") -> dict[str, float]:
    """The evaluators' labels of one ``(z, y, x)`` snapshot with CH phase names.

    Volume fractions of every phase, τ and the percolating fraction of donor and acceptor
    along ``axis``, and the donor–acceptor interfacial area (see :func:`label_definitions`).
    """
    names = list(volume.attrs["phase_names"])
    labels = {f"vf_{name}": volume_fraction(volume, name) for name in names}
    for name in TRANSPORT_PHASES:
        result = tortuosity(volume, name, axis)
        labels[f"tau_{name}"] = result.tau
        labels[f"percolating_{name}"] = result.percolating_fraction
    labels["interfacial_area"] = interfacial_area(volume, "donor", "acceptor", periodic=False)
    return labels


def segregation(compositions: np.ndarray) -> np.ndarray:
    """Segregation S of each snapshot of ``(n_snapshots, n_phases, *shape)`` compositions."""
    comp = np.asarray(compositions, dtype=np.float64)
    flat = comp.reshape(comp.shape[0], comp.shape[1], -1)
    mean = flat.mean(axis=2)
    segregated = (mean * (1.0 - mean)).sum(axis=1)
    return np.sqrt(flat.var(axis=2).sum(axis=1) / segregated)


def select_snapshots(steps: np.ndarray, separated: np.ndarray, n: int | None) -> np.ndarray:
    """Indices of the kept snapshots: from the first separated one, ``n`` log-spaced in step.

    Exactly ``min(n, available)`` distinct indices, increasing, the first separated and the
    last snapshot always among them; empty when none is separated.
    """
    hits = np.flatnonzero(separated)
    if hits.size == 0:
        return hits
    candidates = np.arange(hits[0], len(steps))
    if n is None or n >= candidates.size:
        return candidates
    log_steps = np.log(steps[candidates].astype(np.float64))
    targets = np.linspace(log_steps[0], log_steps[-1], n)
    chosen: list[int] = []
    for j, target in enumerate(targets):
        nearest = int(np.argmin(np.abs(log_steps - target)))
        low = chosen[-1] + 1 if chosen else 0
        high = candidates.size - (n - j)  # leave room for the remaining targets
        chosen.append(min(max(nearest, low), high))
    return candidates[np.asarray(chosen)]


# ---------------------------------------------------------------- the data set


def make_opv_dataset(config: OPVDatasetConfig, progress: bool = False) -> xr.Dataset:
    """Simulate every (φ, χ) trajectory of ``config``, keep and label its snapshots (module docstring)."""
    names = PHASE_NAMES[config.n_phases]
    n_chi = len(config.chis)
    grid = [(i * n_chi + j, phi, chi) for i, phi in enumerate(config.phis) for j, chi in enumerate(config.chis)]
    skipped: list[dict[str, Any]] = []
    runnable = []
    for trajectory, phi, chi in grid:
        if homogeneous_curvature(trajectory_params(config, phi, chi, trajectory)) >= 0:
            skipped.append({"trajectory": trajectory, "phi": phi, "chi": chi, "reason": "outside the spinodal"})
        else:
            runnable.append((trajectory, phi, chi))

    volumes: list[np.ndarray] = []
    rows: list[dict[str, Any]] = []
    with _progress_bar(progress, len(runnable), "OPV data set: trajectories") as advance:
        for trajectory, phi, chi in runnable:
            params = trajectory_params(config, phi, chi, trajectory)
            run = cahn_hilliard_fields(
                config.shape,
                params,
                n_steps=config.n_steps,
                snapshot_every=config.snapshot_every,
                seed=trajectory_seed(config.seed, trajectory),
                device=config.device,
            )
            s = segregation(run.compositions)
            kept = select_snapshots(run.steps, s >= config.min_segregation, config.n_snapshots)
            if kept.size == 0:
                reason = f"segregation {s.max():.3f} < min_segregation within n_steps"
                skipped.append({"trajectory": trajectory, "phi": phi, "chi": chi, "reason": reason})
            labels = run.labels
            for k in kept:
                volume = make_volume(labels[k], phase_names=names)
                row = snapshot_labels(volume, config.tortuosity_axis)
                time = float(run.times[k])
                row.update(
                    segregation=float(s[k]), phi=phi, chi=chi, step=int(run.steps[k]), time=time,
                    log_time=math.log10(time), trajectory=trajectory,
                )  # fmt: skip
                if config.n_phases == 3:
                    row["phi_mixed"] = params.phi_mixed
                volumes.append(labels[k])
                rows.append(row)
            advance()
    if not rows:
        raise ValueError(
            "no trajectory phase-separated within n_steps (see min_segregation); raise n_steps or chis. "
            f"Skipped: {skipped}"
        )
    return _assemble(config, np.stack(volumes), rows, skipped)


def _assemble(
    config: OPVDatasetConfig, volumes: np.ndarray, rows: list[dict[str, Any]], skipped: list[dict[str, Any]]
) -> xr.Dataset:
    names = PHASE_NAMES[config.n_phases]
    phase = make_volume(
        volumes,
        dims=("sample", "z", "y", "x"),
        phase_names=names,
        source="opv_dataset",
        seed=config.seed,
        params=config.model_dump(),
    )
    definitions = label_definitions(config.n_phases, config.tortuosity_axis)
    data: dict[str, Any] = {"phase": phase}
    for name in definitions:
        if name == "split":
            continue
        values = np.array([row[name] for row in rows])
        data[name] = ("sample", values.astype(np.int64 if name in ("step", "trajectory") else np.float64))
    trajectories = np.array([row["trajectory"] for row in rows])
    val = _val_trajectories(np.unique(trajectories), config.seed, config.val_fraction)
    data["split"] = ("sample", np.where(np.isin(trajectories, val), "val", "train"))
    ds = xr.Dataset(data)
    ds.attrs.update(
        config=config.model_dump_json(),
        phase_names=list(names),
        labels=json.dumps(definitions, ensure_ascii=False),
        tortuosity_axis=config.tortuosity_axis,
        skipped=json.dumps(skipped),
        source="opv_dataset",
    )
    return ds


def _val_trajectories(ids: np.ndarray, seed: int, val_fraction: float) -> np.ndarray:
    """The validation trajectory ids: a seeded share ``val_fraction`` of ``ids`` (module docstring)."""
    n = ids.size
    n_val = int(round(val_fraction * n))
    if val_fraction > 0 and n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    rng = np.random.default_rng(np.random.SeedSequence([seed, _SEED_SPLIT]))
    return np.sort(rng.permutation(ids)[:n_val])


# ---------------------------------------------------------------- files and views


def required_variables(phase_names: list[str]) -> list[str]:
    """The variables an OPV data set must hold, given its phase names."""
    labels = [n for n in label_definitions(len(phase_names)) if n not in OPTIONAL_LABELS]
    return ["phase", *(f"vf_{name}" for name in phase_names), *(v for v in labels if not v.startswith("vf_"))]


def validate_opv_dataset(ds: xr.Dataset, where: str = "data set") -> xr.Dataset:
    """Check that ``ds`` holds every required variable over ``sample``; return it unchanged."""
    if "phase" not in ds:
        raise OPVDatasetError(f"{where}: missing variable 'phase'; variables are {sorted(map(str, ds.data_vars))}")
    names = [str(n) for n in np.atleast_1d(ds["phase"].attrs.get("phase_names", ds.attrs.get("phase_names", [])))]
    if len(names) not in PHASE_NAMES or names != PHASE_NAMES[len(names)]:
        raise OPVDatasetError(f"{where}: phase names must be {PHASE_NAMES[2]} or {PHASE_NAMES[3]}, got {names}")
    missing = [v for v in required_variables(names) if v not in ds]
    if missing:
        raise OPVDatasetError(f"{where}: missing variables {missing}")
    if ds["phase"].dims != ("sample", "z", "y", "x") or ds["phase"].dtype != np.int8:
        raise OPVDatasetError(
            f"{where}: 'phase' must be int8 over (sample, z, y, x), got {ds['phase'].dtype} over {ds['phase'].dims}"
        )
    wrong = [v for v in required_variables(names)[1:] if ds[v].dims != ("sample",)]
    if wrong:
        raise OPVDatasetError(f"{where}: variables {wrong} must have the single dim 'sample'")
    return ds


def write_opv_dataset(ds: xr.Dataset, path: str | os.PathLike[str]) -> Path:
    """Validate and write ``ds`` to compressed NetCDF, atomically."""
    validate_opv_dataset(ds, str(path))
    return write_netcdf(ds, path)


def read_opv_dataset(path: str | os.PathLike[str]) -> xr.Dataset:
    """Read a data set written by :func:`write_opv_dataset`; errors name what is missing."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: {why_missing(p) or 'not a file'}")
    try:
        with xr.open_dataset(p, engine="netcdf4") as opened:
            ds = opened.load()
    except Exception as err:  # netCDF4/HDF5 raise OSError, ValueError, RuntimeError...
        raise OPVDatasetError(f"{p}: not a readable NetCDF file ({err})") from None
    if "split" in ds:
        ds["split"] = ds["split"].astype(str)
    return validate_opv_dataset(ds, str(p))


def split(ds: xr.Dataset, which: Literal["train", "val"]) -> xr.Dataset:
    """The samples of one split."""
    if which not in SPLITS:
        raise ValueError(f"which must be one of {SPLITS}, got {which!r}")
    return ds.isel(sample=np.flatnonzero(ds["split"].values == which))


def label_ranges(ds: xr.Dataset) -> dict[str, tuple[float, float]]:
    """``{label: (min, max)}`` over the training split, finite values only.

    Every float label of :func:`label_definitions` present in ``ds``; a label with no finite
    training value (e.g. τ of a phase that never percolates) is left out.
    """
    train = split(ds, "train")
    ranges: dict[str, tuple[float, float]] = {}
    for name in label_definitions(3):  # the 3-phase set includes every 2-phase label
        if name not in train or train[name].dtype.kind != "f":
            continue
        values = train[name].values
        finite = values[np.isfinite(values)]
        if finite.size:
            ranges[name] = (float(finite.min()), float(finite.max()))
    return ranges


@contextmanager
def _progress_bar(enabled: bool, total: int, description: str) -> Iterator[Callable[[], None]]:
    """Yield an ``advance()`` callable; a rich progress bar (done / total) only when ``enabled``."""
    if not enabled:
        yield lambda: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda: bar.advance(task)
