"""2D polycrystals by Laguerre (power) tessellation (Micro3Diff case II).

Each image is a periodic ``size × size`` pixel tessellation into grains of a few nominal
sizes; grain-boundary pixels are label 1 ("boundary"), grain interiors label 0 ("grain").
The paper's case II: 300 independent 64 × 64 images, grains of equivalent diameter 6, 9
and 12 px, each size class covering an equal share of every image.

The construction follows the idea of Fan et al. (2004): a random close packing of disks
whose sizes follow the wanted grain sizes, then the power diagram of the disk centres
weighted by the squared radii. All lengths are in pixels; pixel ``(j, i)`` has its centre
at ``(j + ½, i + ½)``.

1. **Grain numbers.** With ``K`` size classes of equivalent diameter ``d_k``, class ``k``
   gets ``n_k = round(size² / (K · π d_k² / 4))`` grains, so each class nominally covers
   ``1 / K`` of the image. The same numbers are used in every image.
2. **Packing.** Disks of diameter ``√η · d_k`` (``η = packing_fraction``, total disk area
   ``≈ η · size²``) start at uniform random positions in the periodic square; overlaps are
   then removed by repeated pairwise pushes (each pair moves apart along its centre line
   by its overlap, the smaller disk moving more) for at most ``relax_iterations`` rounds or
   until no pair overlaps by more than 0.05 px. The image is periodic, so there are no
   walls and no cut grains: every grain's full area lies in the image (wrapping around).
3. **Tessellation.** Pixel ``p`` belongs to grain ``argmin_i |p − c_i|² − w_i`` (periodic
   minimum-image distance) with weight ``w_i = (d_i / 2)² + δ_k``. The nominal radii
   ``d_i / 2`` make the cells' areas close to ``π d_i² / 4``; a disk centre stays inside its
   own cell while ``η > (ρ − 1) / (ρ + 1)`` for the largest diameter ratio ``ρ`` (1/3 for
   12 / 6), so no grain vanishes. The per-image class offsets
   ``δ_k`` are then tuned (``calibration_steps`` rounds) so that each class covers its
   ``1 / K`` share of that image to within about ±0.005.
4. **Boundaries.** A pixel is boundary when a pixel ``s`` steps to its right or below it,
   for some ``s`` in ``{−⌊w/2⌋, …, ⌈w/2⌉} ∖ {0}`` (``w = boundary_width``, periodic), lies in
   another grain. A straight interface so gets a line exactly ``w`` pixels thick, and for
   ``w = 1`` (only the right and lower neighbours) the grain interiors left over are
   separated from each other under 4-connectivity: the boundaries form closed cells.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import xarray as xr

from micro_doe.platform.volumes import make_volume

OVERLAP_TOLERANCE = 0.05  # px; packing relaxation stops below this largest overlap
PAIR_BUDGET = 4_000_000  # pair distances held at once while packing (memory bound)
POWER_BUDGET = 16_000_000  # pixel-seed power distances held at once while tessellating


@dataclass(frozen=True)
class LaguerreGrains:
    """A batch of periodic Laguerre tessellations.

    ``cells``: ``(n_images, size, size)`` int32 grain index per pixel; ``centres``:
    ``(n_images, n_grains, 2)`` seed ``(y, x)`` positions in pixels; ``weights``:
    ``(n_images, n_grains)`` power weights in px²; ``diameters``: ``(n_grains,)`` nominal
    equivalent diameter of each grain (the same in every image); ``size_class``:
    ``(n_grains,)`` index into ``grain_sizes``.
    """

    cells: np.ndarray
    centres: np.ndarray
    weights: np.ndarray
    diameters: np.ndarray
    size_class: np.ndarray


def laguerre_grains(
    n_images: int = 300,
    size: int = 64,
    grain_sizes: Sequence[float] = (6.0, 9.0, 12.0),
    seed: int = 0,
    *,
    packing_fraction: float = 0.8,
    relax_iterations: int = 100,
    calibration_steps: int = 3,
) -> LaguerreGrains:
    """Pack disks and tessellate: the grain map behind :func:`laguerre_polycrystal`."""
    sizes = _check_args(n_images, size, grain_sizes, 1, packing_fraction, relax_iterations, calibration_steps)
    rng = np.random.default_rng(seed)
    counts = [max(1, round(size * size / (len(sizes) * np.pi * d * d / 4))) for d in sizes]
    size_class = np.repeat(np.arange(len(sizes)), counts)
    diameters = np.asarray(sizes, dtype=np.float64)[size_class]

    centres = _pack_disks(rng, n_images, size, 0.5 * np.sqrt(packing_fraction) * diameters, relax_iterations)
    weights = np.broadcast_to((0.5 * diameters) ** 2, (n_images, diameters.size)).astype(np.float32)
    # per-image, per-class weight offsets tuned so that each class covers 1/K of the image
    offsets = np.zeros((n_images, len(sizes)), dtype=np.float32)
    onehot = (size_class[None, :] == np.arange(len(sizes))[:, None]).astype(np.float64)  # (K, N)
    cells = _power_cells(centres, weights, size)
    for _ in range(calibration_steps):
        fractions = _grain_areas(cells, diameters.size) @ onehot.T / size**2  # (n_images, K)
        # one grain's area grows by about (π/2)·δ when its weight grows by δ
        offsets += 0.8 * (1.0 / len(sizes) - fractions) * size**2 / (np.asarray(counts) * np.pi / 2)
        offsets -= offsets.mean(axis=1, keepdims=True)  # only differences matter
        cells = _power_cells(centres, weights + offsets[:, size_class], size)
    return LaguerreGrains(
        cells=cells,
        centres=centres.astype(np.float64),
        weights=(weights + offsets[:, size_class]).astype(np.float64),
        diameters=diameters,
        size_class=size_class,
    )


def grain_boundaries(cells: np.ndarray, width: int = 1) -> np.ndarray:
    """Boolean boundary mask of periodic grain maps ``(..., y, x)``; rule in the module docstring."""
    if int(width) != width or width < 1:
        raise ValueError(f"boundary_width must be an integer >= 1, got {width}")
    boundary = np.zeros(cells.shape, dtype=bool)
    for step in range(-(width // 2), -(-width // 2) + 1):
        if step == 0:
            continue
        for axis in (-2, -1):
            boundary |= cells != np.roll(cells, -step, axis=axis)  # pixel `step` further along axis
    return boundary


def laguerre_polycrystal(
    n_images: int = 300,
    size: int = 64,
    grain_sizes: Sequence[float] = (6.0, 9.0, 12.0),
    boundary_width: int = 1,
    seed: int = 0,
    *,
    packing_fraction: float = 0.8,
    relax_iterations: int = 100,
    calibration_steps: int = 3,
) -> xr.DataArray:
    """``(sample, y, x)`` images of 2D polycrystals: grain boundaries 1, grains 0.

    ``grain_sizes`` are equivalent grain diameters in pixels, each class covering an equal
    share of every image; ``boundary_width`` is the boundary thickness in pixels. The
    images are periodic and independent. See the module docstring for the construction.
    """
    _check_args(n_images, size, grain_sizes, boundary_width, packing_fraction, relax_iterations, calibration_steps)
    grains = laguerre_grains(
        n_images,
        size,
        grain_sizes,
        seed,
        packing_fraction=packing_fraction,
        relax_iterations=relax_iterations,
        calibration_steps=calibration_steps,
    )
    params = {
        "n_images": n_images,
        "size": size,
        "grain_sizes": [float(d) for d in grain_sizes],
        "boundary_width": boundary_width,
        "packing_fraction": packing_fraction,
        "relax_iterations": relax_iterations,
        "calibration_steps": calibration_steps,
        "grains_per_image": int(grains.diameters.size),
    }
    return make_volume(
        grain_boundaries(grains.cells, boundary_width),
        dims=("sample", "y", "x"),
        phase_names=["grain", "boundary"],
        source="laguerre_polycrystal",
        seed=seed,
        params=params,
    )


def _pack_disks(rng: np.random.Generator, n_images: int, size: int, radii: np.ndarray, iterations: int) -> np.ndarray:
    """Relax random disk positions to a periodic packing; ``(n_images, n, 2)`` float32 centres."""
    n = radii.size
    r = radii.astype(np.float32)
    contact = r[:, None] + r[None, :]
    np.fill_diagonal(contact, 0.0)  # a disk never pushes itself
    # disk i takes the share r_j² / (r_i² + r_j²) of a pair's overlap: small disks move more
    share = (r[None, :] ** 2 / (r[:, None] ** 2 + r[None, :] ** 2)).astype(np.float32)
    centres = rng.uniform(0.0, size, (n_images, n, 2)).astype(np.float32)
    chunk = max(1, PAIR_BUDGET // (n * n))
    for start in range(0, n_images, chunk):
        y = centres[start : start + chunk, :, 0]
        x = centres[start : start + chunk, :, 1]
        for _ in range(iterations):
            dy = _wrap(y[:, :, None] - y[:, None, :], size)
            dx = _wrap(x[:, :, None] - x[:, None, :], size)
            dist = np.sqrt(dy * dy + dx * dx) + 1e-6
            push = np.maximum(contact - dist, 0.0)
            if push.max() < OVERLAP_TOLERANCE:
                break
            push *= share / dist
            y += (push * dy).sum(axis=2)
            x += (push * dx).sum(axis=2)
            np.mod(y, size, out=y)
            np.mod(x, size, out=x)
        centres[start : start + chunk, :, 0] = y
        centres[start : start + chunk, :, 1] = x
    return centres


def _power_cells(centres: np.ndarray, weights: np.ndarray, size: int) -> np.ndarray:
    """Periodic power diagram on the pixel grid: ``(n_images, size, size)`` int32 cell index."""
    n_images, n = weights.shape
    pixel = np.arange(size, dtype=np.float32) + 0.5
    cells = np.empty((n_images, size, size), dtype=np.int32)
    chunk = max(1, POWER_BUDGET // (size * size * n))
    for start in range(0, n_images, chunk):
        c = centres[start : start + chunk]
        dy = _wrap(pixel[None, :, None] - c[:, None, :, 0], size)  # (b, y, n)
        dx = _wrap(pixel[None, :, None] - c[:, None, :, 1], size)  # (b, x, n)
        power = dy[:, :, None, :] ** 2 + dx[:, None, :, :] ** 2 - weights[start : start + chunk, None, None, :]
        cells[start : start + chunk] = power.argmin(axis=-1)
    return cells


def _grain_areas(cells: np.ndarray, n_grains: int) -> np.ndarray:
    """Pixels per grain, ``(n_images, n_grains)``."""
    n_images = cells.shape[0]
    flat = cells.reshape(n_images, -1) + (np.arange(n_images) * n_grains)[:, None]
    return np.bincount(flat.ravel(), minlength=n_images * n_grains).reshape(n_images, n_grains).astype(np.float64)


def _wrap(delta: np.ndarray, period: float) -> np.ndarray:
    """Minimum-image difference on a periodic axis."""
    return delta - period * np.round(delta / period)


def _check_args(
    n_images: int,
    size: int,
    grain_sizes: Sequence[float],
    boundary_width: int,
    packing_fraction: float,
    relax_iterations: int,
    calibration_steps: int,
) -> list[float]:
    if int(n_images) != n_images or n_images < 1:
        raise ValueError(f"n_images must be an integer >= 1, got {n_images}")
    if int(size) != size or size < 8:
        raise ValueError(f"size must be an integer >= 8 pixels, got {size}")
    sizes = [float(d) for d in grain_sizes]
    if not sizes or any(not 2.0 <= d <= size / 2 for d in sizes):
        raise ValueError(f"grain_sizes must be one or more diameters in [2, size/2={size / 2}] pixels, got {sizes}")
    if int(boundary_width) != boundary_width or not 1 <= boundary_width <= min(sizes) / 2:
        raise ValueError(
            f"boundary_width must be an integer in [1, min(grain_sizes)/2={min(sizes) / 2}] pixels, "
            f"got {boundary_width}"
        )
    if not 0.5 <= packing_fraction <= 0.9:
        raise ValueError(f"packing_fraction must be in [0.5, 0.9], got {packing_fraction}")
    if int(relax_iterations) != relax_iterations or relax_iterations < 0:
        raise ValueError(f"relax_iterations must be an integer >= 0, got {relax_iterations}")
    if int(calibration_steps) != calibration_steps or calibration_steps < 0:
        raise ValueError(f"calibration_steps must be an integer >= 0, got {calibration_steps}")
    return sizes
