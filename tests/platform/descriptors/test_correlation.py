from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from micro_doe.platform.descriptors import plane_mean, s2_along_axes, s2_radial
from micro_doe.platform.volumes import make_volume


def brute_s2_axis(ind: np.ndarray, axis: int, r_max: int, periodic: bool) -> np.ndarray:
    """Count pairs (p, p + r e_axis) one position at a time."""
    n = ind.shape[axis]
    out = []
    for r in range(r_max + 1):
        hits = pairs = 0
        for p in itertools.product(*[range(s) for s in ind.shape]):
            q = list(p)
            q[axis] += r
            if q[axis] >= n:
                if not periodic:
                    continue
                q[axis] -= n
            pairs += 1
            hits += int(ind[p] and ind[tuple(q)])
        out.append(hits / pairs)
    return np.array(out)


def brute_s2_radial(ind: np.ndarray, r_max: int, periodic: bool) -> np.ndarray:
    """Average S2 over every lag vector whose length rounds to r."""
    shape = ind.shape
    sums = np.zeros(r_max + 1)
    n_lags = np.zeros(r_max + 1)
    lag_range = [range(-(s // 2) + (1 if s % 2 == 0 else 0), s // 2 + 1) if periodic else range(-s + 1, s) for s in shape]
    for lag in itertools.product(*lag_range):
        k = int(np.rint(np.sqrt(sum(c * c for c in lag))))
        if k > r_max:
            continue
        hits = pairs = 0
        for p in itertools.product(*[range(s) for s in shape]):
            q = [a + b for a, b in zip(p, lag)]
            if periodic:
                q = [c % s for c, s in zip(q, shape)]
            elif any(c < 0 or c >= s for c, s in zip(q, shape)):
                continue
            pairs += 1
            hits += int(ind[p] and ind[tuple(q)])
        sums[k] += hits / pairs
        n_lags[k] += 1
    return sums / n_lags


@pytest.mark.parametrize("periodic", [False, True])
def test_s2_along_axes_equals_brute_force_pair_count(rng, periodic):
    labels = (rng.random((5, 6, 7)) < 0.4).astype(np.int8)
    curves = s2_along_axes(labels, 1, periodic=periodic, r_max=4)
    for axis, dim in enumerate("zyx"):
        np.testing.assert_array_equal(curves[dim], brute_s2_axis(labels == 1, axis, 4, periodic))


@pytest.mark.parametrize("periodic", [False, True])
@pytest.mark.parametrize(("shape", "r_max"), [((4, 5, 6), 3), ((9, 10, 11), 2), ((9, 10, 11), 8)])
def test_s2_radial_equals_brute_force_pair_count(rng, periodic, shape, r_max):
    # r_max from 2 (the FFT padded to n + 2: wrap-around would show at lags beyond it) to n - 1.
    labels = rng.integers(0, 3, size=shape).astype(np.int8)  # three phases, phase 2 of interest
    expected = brute_s2_radial(labels == 2, r_max, periodic)
    np.testing.assert_allclose(s2_radial(labels, 2, periodic=periodic, r_max=r_max), expected, rtol=1e-12)


def test_s2_of_zero_is_the_volume_fraction_and_independent_voxels_decorrelate(rng):
    phi = 0.3
    labels = (rng.random((48, 48, 48)) < phi).astype(np.int8)
    measured = float((labels == 1).mean())
    for periodic in (False, True):
        for curve in s2_along_axes(labels, periodic=periodic).values():
            assert curve[0] == pytest.approx(measured, abs=1e-12)
            np.testing.assert_allclose(curve[1:], phi**2, atol=0.004)
        radial = s2_radial(labels, periodic=periodic)
        assert radial[0] == pytest.approx(measured, abs=1e-12)
        np.testing.assert_allclose(radial[1:], phi**2, atol=0.004)


def test_s2_radial_agrees_with_porespy(blobs64):
    import porespy as ps

    r_max = 20
    ours = s2_radial(blobs64, 1, periodic=False, r_max=r_max)
    theirs = ps.metrics.two_point_correlation(blobs64 == 1, bins=np.arange(r_max + 2) - 0.5)
    np.testing.assert_allclose(ours, theirs.probability_scaled, atol=1e-9)


def test_planes_pool_their_slices(rng):
    labels = (rng.random((6, 10, 12)) < 0.5).astype(np.int8)
    per_slice = np.mean([s2_radial(labels[z], 1, r_max=4) for z in range(6)], axis=0)
    np.testing.assert_allclose(s2_radial(labels, 1, r_max=4, plane="xy"), per_slice, rtol=1e-12)
    curves = s2_along_axes(labels, 1, r_max=4)
    slices_x = np.mean([s2_along_axes(labels[:, y, :], 1, r_max=4)["x"] for y in range(10)], axis=0)
    slices_z = np.mean([s2_along_axes(labels[:, y, :], 1, r_max=4)["y"] for y in range(10)], axis=0)  # (z, x) slice
    np.testing.assert_allclose(plane_mean(curves, "xz"), (slices_x + slices_z) / 2, rtol=1e-12)


def test_stack_pools_samples_and_phase_by_name(rng):
    stack = (rng.random((3, 9, 9)) < 0.5).astype(np.int8)
    vol = make_volume(stack, dims=("sample", "y", "x"), phase_names=["grain", "boundary"])
    pooled = s2_along_axes(vol, "boundary", r_max=3)
    assert set(pooled) == {"y", "x"}
    np.testing.assert_allclose(pooled["x"], np.mean([s2_along_axes(s, r_max=3)["x"] for s in stack], axis=0))


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="r_max"):
        s2_along_axes(np.zeros((4, 4, 4), np.int8), r_max=9)
    with pytest.raises(ValueError, match="plane"):
        s2_radial(np.zeros((4, 4), np.int8), plane="xy")
    with pytest.raises(ValueError, match="phase 'pore' not found"):
        s2_radial(make_volume(np.zeros((4, 4)), phase_names=["a", "b"]), "pore")


def test_window_fraction_std_matches_independent_voxels_and_a_measured_medium() -> None:
    from micro_doe.platform.descriptors import s2_radial
    from micro_doe.platform.descriptors.correlation import window_fraction_std

    # independent voxels: S2(r > 0) = φ², so Var = φ(1 − φ) / N
    phi = 0.3
    assert window_fraction_std([phi] + [phi**2] * 5, 8) == pytest.approx(math.sqrt(phi * (1 - phi) / 8**3))
    # a random blob medium: the prediction from its S2 agrees with the spread of its windows' fractions
    rng = np.random.default_rng(0)
    from scipy.ndimage import gaussian_filter

    field = gaussian_filter(rng.standard_normal((96, 96, 96)), 2.0, mode="wrap")
    medium = (field > np.quantile(field, 0.7)).astype(np.int8)
    corners = range(0, 96, 16)
    windows = [medium[i : i + 16, j : j + 16, k : k + 16].mean() for i in corners for j in corners for k in corners]
    predicted = window_fraction_std(s2_radial(medium, 1, periodic=True, r_max=16), 16)
    assert predicted == pytest.approx(np.std(windows), rel=0.25)
