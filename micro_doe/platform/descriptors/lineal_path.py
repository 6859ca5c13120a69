"""Lineal path function L(r), from chord lengths.

Definition (Lu & Torquato 1992): L(r) is the probability that a whole straight segment
of length r lies in the phase. On the voxel grid, a segment of length r along an axis
joins the centres of voxels p and p + r·e and covers the r + 1 voxels p, …, p + r, so

    L(r) = P[ I(p) = I(p + e) = … = I(p + r·e) = 1 ],   L(0) = φ,

non-increasing in r, and L(r) = 1 for all r when the phase fills the volume.

It is computed from chords: maximal runs of phase voxels along each line of the axis.
A chord of ℓ voxels contains max(ℓ − r, 0) segments of length r, hence

    L(r) = Σ_chords max(ℓ − r, 0) / (number of segment positions).

- ``periodic=False`` (default): a segment must fit inside the volume; positions per line
  are n − r.
- ``periodic=True``: lines are rings; a chord may wrap around the end, and a line that
  is all phase holds n segments of every length r < n. Positions per line are n.

Lines of a stack of samples or of a whole volume are pooled. r is in voxels.
"""

from __future__ import annotations

import numpy as np

from micro_doe.platform.descriptors._phase import VolumeLike, along_axes


def lineal_path_along_axes(
    volume: VolumeLike,
    phase: int | str = 1,
    *,
    periodic: bool = False,
    r_max: int | None = None,
) -> dict[str, np.ndarray]:
    """L along each spatial axis: ``{dim: L[r] for r = 0..r_max}`` (see module doc).

    ``r_max`` defaults to half the shortest spatial length.
    """
    ind, axes, r_max = along_axes(volume, phase, r_max)
    return {dim: _lineal_path_one_axis(ind, a, periodic, r_max) for dim, a in axes.items()}


def chord_lengths(lines: np.ndarray) -> np.ndarray:
    """Lengths of all maximal runs of True in each row of a 2D boolean array (non-periodic)."""
    n_lines, n = lines.shape
    # A False column on both sides keeps runs from joining across rows in the flat view.
    padded = np.zeros((n_lines, n + 2), dtype=np.int8)
    padded[:, 1:-1] = lines
    edges = np.diff(padded.ravel())
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    return ends - starts


def _lineal_path_one_axis(ind: np.ndarray, axis: int, periodic: bool, r_max: int) -> np.ndarray:
    n = ind.shape[axis]
    lines = np.moveaxis(ind, axis, -1).reshape(-1, n)
    n_lines = lines.shape[0]
    r = np.arange(r_max + 1)
    segments = np.zeros(r_max + 1, dtype=np.int64)
    if periodic:
        full = lines.all(axis=1)
        segments += n * int(full.sum())
        lines = lines[~full]
        # Rotate each ring to start at one of its gaps, so no chord wraps past the end.
        first_gap = np.argmin(lines, axis=1)
        lines = np.take_along_axis(lines, (np.arange(n)[None, :] + first_gap[:, None]) % n, axis=1)
    histogram = np.bincount(chord_lengths(lines), minlength=n + 1)
    # Σ_{ℓ>r} (ℓ − r) h[ℓ] = Σ_{ℓ>r} ℓ h[ℓ] − r Σ_{ℓ>r} h[ℓ], via suffix sums.
    length = np.arange(n + 1)
    tail_count = np.cumsum(histogram[::-1])[::-1]
    tail_length = np.cumsum((length * histogram)[::-1])[::-1]
    segments += tail_length[r + 1] - r * tail_count[r + 1]  # r + 1 <= n: r_max < n
    positions = n_lines * (np.full_like(r, n) if periodic else n - r)
    return segments / positions
