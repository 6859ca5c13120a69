"""Two-point correlation S2(r), by FFT.

Definition: for the indicator I(p) of a phase (1 inside, 0 outside),

    S2(r) = P[ I(p) = 1 and I(p + r) = 1 ],

the probability that two points a lag vector r apart both lie in the phase, so that
S2(0) = φ (the volume fraction) and, for a structure without long-range order,
S2(r) → φ² as |r| grows. Lags are integer voxel offsets; r is in voxels.

Two boundary modes, both estimated from all pairs in the volume:

- ``periodic=True``: the volume tiles space; every voxel has a partner at every lag.
  S2(r) = (1/N) Σ_p I(p) I(p + r mod n). Each lag is taken once, as its representative
  with components in (−n_d/2, n_d/2].
- ``periodic=False`` (default): only pairs with both points inside the volume count, and
  each lag is normalised by its own number of pairs, Π_d (n_d − |r_d|) (the unbiased,
  "pair-count normalised" estimator). This is porespy's definition.

Two ways of reducing the lag vector to a distance:

- :func:`s2_along_axes`: r along one axis at a time (r = 0..r_max voxels), one curve per
  axis. In a stack of samples or a batch of lines the pairs of all of them are pooled.
- :func:`s2_radial`: every lag vector within the chosen axes, binned by its Euclidean
  length rounded to the nearest voxel (bin k holds k − ½ ≤ |r| < k + ½), each lag vector
  weighing the same in its bin. With ``plane="xy"`` (or ``"xz"``, ``"yz"``) the
  correlation is 2D, within the slices of that plane, pooled over all slices.

Correlation counts are integers, so they are rounded after the FFT: the results equal a
brute-force pair count exactly.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import scipy.fft as sfft

from micro_doe.platform.descriptors._phase import PLANES, VolumeLike, along_axes, indicator, resolve_r_max, spatial


def s2_along_axes(
    volume: VolumeLike,
    phase: int | str = 1,
    *,
    periodic: bool = False,
    r_max: int | None = None,
) -> dict[str, np.ndarray]:
    """S2 along each spatial axis: ``{dim: S2[r] for r = 0..r_max}`` (see module doc).

    ``r_max`` defaults to half the shortest spatial length.
    """
    ind, axes, r_max = along_axes(volume, phase, r_max)
    data = ind.astype(np.float64)
    return {dim: _s2_one_axis(data, a, periodic, r_max) for dim, a in axes.items()}


def s2_radial(
    volume: VolumeLike,
    phase: int | str = 1,
    *,
    periodic: bool = False,
    r_max: int | None = None,
    plane: str | None = None,
) -> np.ndarray:
    """Radially averaged S2[r], r = 0..r_max voxels (see module doc for the binning).

    ``plane=None`` correlates over all spatial axes (3D for a volume, 2D for an image);
    ``plane`` in ``{"xy", "xz", "yz"}`` correlates within the slices of that plane of a
    3D volume, pooling all slices.
    """
    ind, dims = indicator(volume, phase)
    if plane is None:
        corr_dims = spatial(dims)
    elif plane in PLANES and "z" in dims:
        corr_dims = list(PLANES[plane])
    else:
        raise ValueError(f"plane must be one of {sorted(PLANES)} for a 3D volume, got {plane!r} for dims {dims}")
    axes = [dims.index(d) for d in corr_dims]
    lengths = [ind.shape[a] for a in axes]
    r_max = resolve_r_max(lengths, r_max)
    # Zero padding to n + r_max keeps every lag |r_d| <= r_max free of wrap-around (the others
    # are not used), as _s2_one_axis does; 2n - 1 would be up to 2.4x the points in 3D.
    fft_shape = lengths if periodic else [sfft.next_fast_len(n + r_max, real=True) for n in lengths]

    spectrum = sfft.rfftn(ind.astype(np.float64), s=fft_shape, axes=axes, workers=-1)
    batch_axes = tuple(a for a in range(ind.ndim) if a not in axes)
    power = (spectrum.real**2 + spectrum.imag**2).sum(axis=batch_axes)
    counts = np.rint(sfft.irfftn(power, s=fft_shape, workers=-1))
    n_batch = ind.size // int(np.prod(lengths))

    # Keep only lags with |r_d| <= r_max on every axis (the others fall outside every bin);
    # periodic lags are taken once each, as their representative in (-n/2, n/2].
    lags = [
        np.arange(max(-r_max, -((n - 1) // 2) if periodic else -r_max), min(r_max, n // 2 if periodic else r_max) + 1)
        for n in lengths
    ]
    block = counts[np.ix_(*[lag % s for lag, s in zip(lags, fft_shape)])]
    # Pair counts and squared distances are separable in the lags: broadcast products and sums
    # of 1D arrays, not full grids. A lag's bin is read from a table over the integer squared
    # distances (rint of the distance), with every lag beyond r_max in one overflow bin.
    along = [lag.reshape([-1 if j == i else 1 for j in range(len(lags))]) for i, lag in enumerate(lags)]
    if periodic:
        pairs = np.float64(n_batch * np.prod(lengths))
    else:
        pairs = n_batch * functools.reduce(np.multiply, [n - np.abs(a) for n, a in zip(lengths, along)]).astype(np.float64)
    squared = functools.reduce(np.add, [a.astype(np.int64) ** 2 for a in along])
    table = np.rint(np.sqrt(np.arange(int(squared.max()) + 1, dtype=np.float64))).astype(np.intp)
    distance_bin = np.minimum(table, r_max + 1)[squared].ravel()
    sums = np.bincount(distance_bin, weights=(block / pairs).ravel(), minlength=r_max + 2)
    n_lags = np.bincount(distance_bin, minlength=r_max + 2)
    return sums[: r_max + 1] / n_lags[: r_max + 1]


def plane_mean(curves: dict[str, np.ndarray], plane: str) -> np.ndarray:
    """Mean of an along-axes curve over the two in-plane axes of ``plane`` (xy, xz, yz).

    For along-axis S2 and lineal path this is exactly the curve computed in 2D on every
    slice of that plane, pooled over slices.
    """
    if plane not in PLANES:
        raise ValueError(f"plane must be one of {sorted(PLANES)}, got {plane!r}")
    a, b = PLANES[plane]
    return (curves[a] + curves[b]) / 2.0


def _s2_one_axis(data: np.ndarray, axis: int, periodic: bool, r_max: int) -> np.ndarray:
    n = data.shape[axis]
    # Zero-padding to n + r_max keeps lags 0..r_max free of wrap-around (2n - 1 is not needed).
    n_fft = n if periodic else sfft.next_fast_len(n + r_max, real=True)
    spectrum = sfft.rfft(data, n=n_fft, axis=axis, workers=-1)
    # Sum the power spectra of all lines first: one inverse FFT gives the pooled counts.
    other = tuple(a for a in range(data.ndim) if a != axis)
    power = (spectrum.real**2 + spectrum.imag**2).sum(axis=other)
    counts = np.rint(sfft.irfft(power, n=n_fft)[: r_max + 1])
    n_lines = data.size // n
    r = np.arange(r_max + 1)
    pairs = n_lines * (np.full_like(r, n) if periodic else n - r)
    return counts / pairs


def window_fraction_std(s2: np.ndarray | list[float], size: int, dims: int = 3) -> float:
    """Standard deviation of the phase fraction of a size^dims window of a statistically
    homogeneous, isotropic medium whose radial two-point correlation is ``s2`` (S2(0) = φ).

    Var = (1/N²) Σ_d Π_i (size − |d_i|) · (S2(|d|) − φ²) over all displacements d in the window,
    N = size^dims, with S2 interpolated linearly in |d| and taken as φ² beyond the last lag given.
    """
    s2 = np.asarray(s2, dtype=np.float64)
    phi = s2[0]
    lags = np.arange(-size + 1, size)
    weights = (size - np.abs(lags)).astype(np.float64)
    grids = np.meshgrid(*([lags] * dims), indexing="ij", sparse=True)
    r = np.sqrt(sum(g.astype(np.float64) ** 2 for g in grids))
    cov = np.interp(r, np.arange(len(s2)), s2 - phi**2, right=0.0)
    w = weights
    for _ in range(dims - 1):
        w = np.multiply.outer(w, weights)
    var = float((w * cov).sum()) / float(size) ** (2 * dims)
    return math.sqrt(max(var, 0.0))
