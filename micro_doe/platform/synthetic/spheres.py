"""Spherical inclusions in a matrix (Micro3Diff case I).

A ``(z, y, x)`` volume of non-overlapping balls (label 1, "inclusion") in a matrix
(label 0). Its ``z``-slices are the 2D training images: the paper's case I is a
64 × 64 × 300 voxel volume, i.e. 300 images of 64 × 64, with sphere diameters
~ Normal(mean 15, sd 4) voxels.

Modelling choices (all lengths in voxels):

- **No overlap.** Spheres are placed by random sequential addition: each new sphere gets
  a uniformly random centre, redrawn until its surface keeps at least ``min_gap`` voxels
  from every placed sphere. With the default ``min_gap=1`` two inclusions never share a
  face-adjacent voxel, so each inclusion is one connected component.
- **Diameters** are drawn from Normal(``mean_diameter``, ``sd_diameter``) truncated to
  ``[min_diameter, min(shape) / 2]`` by redrawing (default minimum 3 voxels: a smaller ball is
  a single voxel or a tiny cross, not a sphere). For the defaults the truncation removes
  0.13 % of the draws.
- **Periodic box** (default): distances use the minimum image and balls wrap around the
  faces, so every z-slice is a periodic 2D image and there are no wall effects. With
  ``periodic=False`` centres are uniform in the box and balls are cut by its faces.
- **Discretisation**: voxel ``(k, j, i)`` has its centre at ``(k + ½, j + ½, i + ½)``;
  it belongs to a ball of centre ``c`` and diameter ``d`` when its centre lies within
  ``d / 2`` of ``c``.
- **Stopping rule**: spheres are added until the inclusion voxel fraction reaches
  ``volume_fraction``; the last sphere drawn is kept only if that brings the fraction
  closer to the target. Hence ``|achieved − target| ≤ ½ · (voxels of the last sphere
  drawn) / (voxels of the box)``: below 0.003 for the 300 × 64 × 64 default unless that
  sphere is more than 2 sd above the mean diameter.

Random sequential addition of non-overlapping spheres jams near 0.38 (monodisperse,
gapless); the gap lowers that, so ``volume_fraction`` is limited to ≤ 0.35 and a target
that still cannot be reached raises ``ValueError``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xarray as xr

from micro_doe.platform.volumes import make_volume

MAX_VOLUME_FRACTION = 0.35
CANDIDATES_PER_BATCH = 128  # centres tested at once against all placed spheres
MAX_CANDIDATES = 200_000  # per sphere, before giving up (the packing is jammed)


@dataclass(frozen=True)
class SpherePacking:
    """The placed spheres and their voxelisation.

    ``labels``: int8 array of ``shape`` (1 inside a sphere); ``centres``: ``(n, 3)`` float
    array of ``(z, y, x)`` centres in voxel units; ``diameters``: ``(n,)`` float array in
    voxels; ``voxel_counts``: voxels of each ball as drawn (cut or wrapped at the faces).
    """

    labels: np.ndarray
    centres: np.ndarray
    diameters: np.ndarray
    voxel_counts: np.ndarray

    @property
    def volume_fraction(self) -> float:
        return float(self.labels.mean())


def sphere_packing(
    shape: tuple[int, int, int] = (300, 64, 64),
    mean_diameter: float = 15.0,
    sd_diameter: float = 4.0,
    volume_fraction: float = 0.25,
    seed: int = 0,
    *,
    min_diameter: float = 3.0,
    min_gap: float = 1.0,
    periodic: bool = True,
) -> SpherePacking:
    """Place non-overlapping spheres until the inclusion fraction reaches ``volume_fraction``.

    See the module docstring for the rules. Same arguments, same packing.
    """
    shape = _check_shape(shape)
    _check_args(shape, mean_diameter, sd_diameter, volume_fraction, min_diameter, min_gap)
    rng = np.random.default_rng(seed)
    box = np.asarray(shape, dtype=np.float64)
    labels = np.zeros(shape, dtype=np.int8)
    total = labels.size
    target = volume_fraction * total
    max_diameter = 0.5 * min(shape)

    centres: list[np.ndarray] = []
    diameters: list[float] = []
    counts: list[int] = []
    filled = 0
    while filled < target:
        d = _draw_diameter(rng, mean_diameter, sd_diameter, min_diameter, max_diameter)
        centre = _find_free_centre(rng, box, d, np.asarray(centres), np.asarray(diameters), min_gap, periodic)
        if centre is None:
            raise ValueError(
                f"volume_fraction={volume_fraction} could not be reached: random placement jammed at "
                f"{filled / total:.3f} with {len(centres)} spheres; lower volume_fraction or min_gap"
            )
        index, inside = _ball(centre, d, shape, periodic)
        added = int(inside.sum())  # all new: balls never share a voxel (placement keeps them apart)
        # keep the last sphere only if it moves the fraction closer to the target
        if filled + added > target and (filled + added - target) > (target - filled):
            break
        labels[index] |= inside.astype(np.int8)
        centres.append(centre)
        diameters.append(d)
        counts.append(added)
        filled += added
    return SpherePacking(
        labels=labels,
        centres=np.asarray(centres, dtype=np.float64).reshape(-1, 3),
        diameters=np.asarray(diameters, dtype=np.float64),
        voxel_counts=np.asarray(counts, dtype=np.int64),
    )


def spherical_inclusions(
    shape: tuple[int, int, int] = (300, 64, 64),
    mean_diameter: float = 15.0,
    sd_diameter: float = 4.0,
    volume_fraction: float = 0.25,
    seed: int = 0,
    *,
    min_diameter: float = 3.0,
    min_gap: float = 1.0,
    periodic: bool = True,
) -> xr.DataArray:
    """A ``(z, y, x)`` volume of spherical inclusions (1) in a matrix (0).

    Diameters in voxels ~ Normal(``mean_diameter``, ``sd_diameter``) truncated to
    ``[min_diameter, min(shape) / 2]``; spheres do not overlap and keep ``min_gap`` voxels
    apart; the inclusion fraction matches ``volume_fraction`` to within half a sphere's
    volume (module docstring). The number of spheres is recorded in ``generator_params``.
    """
    packing = sphere_packing(
        shape,
        mean_diameter,
        sd_diameter,
        volume_fraction,
        seed,
        min_diameter=min_diameter,
        min_gap=min_gap,
        periodic=periodic,
    )
    params = {
        "shape": list(shape),
        "mean_diameter": mean_diameter,
        "sd_diameter": sd_diameter,
        "volume_fraction": volume_fraction,
        "min_diameter": min_diameter,
        "min_gap": min_gap,
        "periodic": periodic,
        "n_spheres": int(packing.diameters.size),
    }
    return make_volume(
        packing.labels,
        dims=("z", "y", "x"),
        phase_names=["matrix", "inclusion"],
        source="spherical_inclusions",
        seed=seed,
        params=params,
    )


def _draw_diameter(rng: np.random.Generator, mean: float, sd: float, low: float, high: float) -> float:
    """One draw of Normal(mean, sd) truncated to [low, high], by redrawing."""
    while True:
        d = float(rng.normal(mean, sd)) if sd > 0 else float(mean)
        if low <= d <= high:
            return d


def _find_free_centre(
    rng: np.random.Generator,
    box: np.ndarray,
    diameter: float,
    centres: np.ndarray,
    diameters: np.ndarray,
    min_gap: float,
    periodic: bool,
) -> np.ndarray | None:
    """A uniformly random centre whose sphere keeps ``min_gap`` from all others, or None."""
    if centres.size == 0:
        return rng.uniform(0.0, 1.0, 3) * box
    clearance = 0.5 * (diameter + diameters) + min_gap  # centre distance needed, per placed sphere
    for _ in range(MAX_CANDIDATES // CANDIDATES_PER_BATCH):
        candidates = rng.uniform(0.0, 1.0, (CANDIDATES_PER_BATCH, 3)) * box
        delta = candidates[:, None, :] - centres[None, :, :]
        if periodic:
            delta -= box * np.round(delta / box)  # minimum image
        free = np.all(np.einsum("cnk,cnk->cn", delta, delta) > clearance**2, axis=1)
        hits = np.flatnonzero(free)
        if hits.size:
            return candidates[hits[0]]
    return None


def _ball(
    centre: np.ndarray, diameter: float, shape: tuple[int, int, int], periodic: bool
) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    """Open-mesh index of the ball's bounding box, and the mask of its voxels in that box."""
    radius = 0.5 * diameter
    indices, offsets = [], []
    for c, n in zip(centre, shape):
        idx = np.arange(int(np.floor(c - radius)), int(np.ceil(c + radius)) + 1)
        if not periodic:
            idx = idx[(idx >= 0) & (idx < n)]  # cut by the faces
        offsets.append(idx + 0.5 - c)  # voxel centre minus ball centre, before wrapping
        indices.append(idx % n)  # diameter <= n / 2, so wrapped indices never repeat
    dz, dy, dx = np.meshgrid(*offsets, indexing="ij", sparse=True)
    inside = dz**2 + dy**2 + dx**2 <= radius**2
    return np.ix_(*indices), inside


def _check_shape(shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(shape) != 3 or any(int(n) != n or n < 1 for n in shape):
        raise ValueError(f"shape must be three positive integers (z, y, x), got {shape}")
    return (int(shape[0]), int(shape[1]), int(shape[2]))


def _check_args(
    shape: tuple[int, int, int],
    mean_diameter: float,
    sd_diameter: float,
    volume_fraction: float,
    min_diameter: float,
    min_gap: float,
) -> None:
    half = 0.5 * min(shape)
    if not 1.0 <= min_diameter <= half:
        raise ValueError(f"min_diameter must be in [1, min(shape)/2={half}] voxels, got {min_diameter}")
    if not min_diameter <= mean_diameter <= half:
        raise ValueError(
            f"mean_diameter must be in [min_diameter={min_diameter}, min(shape)/2={half}] voxels, got {mean_diameter}"
        )
    if not 0.0 <= sd_diameter <= mean_diameter:
        raise ValueError(f"sd_diameter must be in [0, mean_diameter={mean_diameter}] voxels, got {sd_diameter}")
    if not 0.0 < volume_fraction <= MAX_VOLUME_FRACTION:
        raise ValueError(f"volume_fraction must be in (0, {MAX_VOLUME_FRACTION}], got {volume_fraction}")
    if not min_gap >= 0.0:
        raise ValueError(f"min_gap must be >= 0 voxels, got {min_gap}")
