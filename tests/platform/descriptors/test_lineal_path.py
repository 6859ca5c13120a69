from __future__ import annotations

import itertools

import numpy as np
import pytest

from micro_doe.platform.descriptors import chord_lengths, lineal_path_along_axes


def brute_lineal_path(ind: np.ndarray, axis: int, r_max: int, periodic: bool) -> np.ndarray:
    """Place a segment of r + 1 voxels at every position and check each voxel."""
    n = ind.shape[axis]
    out = []
    for r in range(r_max + 1):
        inside = positions = 0
        for p in itertools.product(*[range(s) for s in ind.shape]):
            if not periodic and p[axis] + r >= n:
                continue
            positions += 1
            voxels = []
            for k in range(r + 1):
                q = list(p)
                q[axis] = (q[axis] + k) % n
                voxels.append(ind[tuple(q)])
            inside += int(all(voxels))
        out.append(inside / positions)
    return np.array(out)


@pytest.mark.parametrize("periodic", [False, True])
def test_lineal_path_equals_brute_force_segment_count(rng, periodic):
    labels = (rng.random((6, 7, 8)) < 0.7).astype(np.int8)
    labels[2, 3, :] = 1  # a full line: its chord wraps in periodic mode
    curves = lineal_path_along_axes(labels, 1, periodic=periodic, r_max=5)
    for axis, dim in enumerate("zyx"):
        np.testing.assert_array_equal(curves[dim], brute_lineal_path(labels == 1, axis, 5, periodic))


def test_full_phase_has_lineal_path_one_and_absent_phase_zero():
    full = np.ones((5, 6, 7), np.int8)
    for periodic in (False, True):
        for curve in lineal_path_along_axes(full, 1, periodic=periodic, r_max=4).values():
            np.testing.assert_array_equal(curve, 1.0)
        for curve in lineal_path_along_axes(full, 0, periodic=periodic, r_max=4).values():
            np.testing.assert_array_equal(curve, 0.0)


def test_independent_voxels_follow_the_product_rule(rng):
    phi = 0.6
    labels = (rng.random((40, 40, 40)) < phi).astype(np.int8)
    for curve in lineal_path_along_axes(labels, r_max=6).values():
        assert curve[0] == pytest.approx(float(labels.mean()), abs=1e-12)
        assert np.all(np.diff(curve) <= 0)
        np.testing.assert_allclose(curve, phi ** (np.arange(7) + 1), atol=0.006)


def test_chord_lengths_do_not_join_across_lines():
    lines = np.array([[0, 1, 1], [1, 1, 0], [1, 1, 1]], dtype=bool)
    assert sorted(chord_lengths(lines).tolist()) == [2, 2, 3]
