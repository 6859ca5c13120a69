from __future__ import annotations

import math

import numpy as np
import pytest

from micro_doe.platform.descriptors import percolating_fraction, tortuosity
from micro_doe.platform.descriptors.transport import _multigrid_d_rel, _spanning, _system


@pytest.mark.parametrize("solver", ["multigrid", "taufactor"])
def test_straight_channels_have_tau_one_along_their_axis_and_do_not_percolate_across(solver):
    vol = np.zeros((24, 16, 16), np.int8)
    vol[:, 2:6, 2:6] = 1
    vol[:, 9:14, 8:11] = 1
    along = tortuosity(vol, 1, "z", solver=solver)
    assert along.tau == pytest.approx(1.0, abs=1e-3)
    assert along.percolating_fraction == 1.0
    assert along.effective_diffusivity == pytest.approx(vol.mean(), rel=1e-3)
    across = tortuosity(vol, 1, "x", solver=solver)
    assert math.isinf(across.tau) and across.effective_diffusivity == 0.0 and across.percolating_fraction == 0.0


def test_absent_isolated_and_full_phases_have_defined_values():
    absent = tortuosity(np.zeros((8, 8, 8), np.int8), 1, "z")
    assert math.isinf(absent.tau) and absent.volume_fraction == 0.0 and absent.percolating_fraction == 0.0
    ball = np.zeros((12, 12, 12), np.int8)
    ball[4:8, 4:8, 4:8] = 1
    isolated = tortuosity(ball, 1, "y")
    assert math.isinf(isolated.tau) and isolated.percolating_fraction == 0.0
    full = tortuosity(np.ones((8, 8, 8), np.int8), 1, "x")
    assert full.tau == pytest.approx(1.0, abs=1e-3) and full.percolating_fraction == 1.0


def test_dead_ends_count_as_non_percolating_voxels():
    vol = np.zeros((10, 10, 10), np.int8)
    vol[:, 0:2, 0:2] = 1  # 40 voxels spanning z
    vol[4:6, 6:8, 6:8] = 1  # 8 isolated voxels
    assert percolating_fraction(vol, 1, "z") == pytest.approx(40 / 48)


def test_tortuosity_is_invariant_under_relabelling_the_axis(blobs64):
    sub = blobs64[:32, :32, :32]
    along_z = tortuosity(sub, 1, "z")
    along_x = tortuosity(np.ascontiguousarray(np.swapaxes(sub, 0, 2)), 1, "x")
    assert 1.0 < along_z.tau < 10.0
    assert along_x.tau == pytest.approx(along_z.tau, rel=1e-6)


def test_a_winding_path_is_more_tortuous_than_a_straight_one():
    # A staircase: 2x2 channel that steps sideways every 4 slices, path longer than the box.
    vol = np.zeros((16, 12, 12), np.int8)
    for z in range(16):
        shift = (z // 4) * 2
        vol[z, 2:4, shift : shift + 4] = 1
    assert tortuosity(vol, 1, "z").tau > 1.2


def test_two_dimensional_images_and_bad_axes():
    img = np.zeros((20, 20), np.int8)
    img[:, 5:9] = 1
    assert tortuosity(img, 1, "y").tau == pytest.approx(1.0, abs=1e-3)
    with pytest.raises(ValueError, match="axis must be one of"):
        tortuosity(img, 1, "z")


def test_the_multigrid_solve_agrees_with_taufactor_the_reference(blobs64):
    # One linear system, two solvers: multigrid to a residual of 1e-4, taufactor to its own
    # criterion (flux uniform within 1 %), so they agree to taufactor's convergence.
    winding = np.zeros((16, 12, 12), np.int8)
    for z in range(16):
        winding[z, 2:4, (z // 4) * 2 : (z // 4) * 2 + 4] = 1
    porespy_2d = blobs64[0]
    for volume, axis in [(blobs64, "z"), (blobs64[:40, :24, :56], "x"), (winding, "z"), (porespy_2d, "y")]:
        multigrid = tortuosity(volume, 1, axis, solver="multigrid")
        reference = tortuosity(volume, 1, axis, solver="taufactor")
        assert multigrid.converged and reference.converged
        assert 1.0 < multigrid.tau < 20.0
        assert multigrid.tau == pytest.approx(reference.tau, rel=2e-3)
        assert multigrid.percolating_fraction == reference.percolating_fraction
    with pytest.raises(ValueError, match="solver must be one of"):
        tortuosity(winding, 1, "z", solver="sor")  # type: ignore[arg-type]


def test_auto_takes_taufactor_up_to_32_cubed_voxels_and_multigrid_above(blobs64):
    small = blobs64[:32, :32, :32]
    assert tortuosity(small, 1, "z") == tortuosity(small, 1, "z", solver="taufactor")
    large = np.zeros((33, 32, 32), np.int8)  # one plane over 32³: a winding channel
    for z in range(33):
        large[z, 4:8, (z // 8) * 4 : (z // 8) * 4 + 8] = 1
    auto = tortuosity(large, 1, "z")
    assert auto == tortuosity(large, 1, "z", solver="multigrid") and auto.tau > 1.2


@pytest.mark.parametrize("shape", [(7, 6, 5), (9, 8)])
def test_the_multigrid_system_is_the_finite_volume_one_voxel_by_voxel(shape):
    """_system writes the CSR arrays directly; here each row is built from the definition."""
    phase = np.random.default_rng(3).random(shape) < 0.7
    matrix, rhs, first, last = _system(phase)
    number = {tuple(v): k for k, v in enumerate(np.argwhere(phase))}
    expected = np.zeros((len(number), len(number)))
    b = np.zeros(len(number))
    for v, k in number.items():
        for axis in range(len(shape)):
            for step in (-1, 1):
                w = list(v)
                w[axis] += step
                if tuple(w) in number:  # a shared face: conductance 1
                    expected[k, k] += 1.0
                    expected[k, number[tuple(w)]] -= 1.0
                elif axis == 0 and not 0 <= w[0] < shape[0]:  # a fixed face half a voxel out: conductance 2
                    expected[k, k] += 2.0
                    b[k] += 2.0 * (0.5 if step == 1 else -0.5)
    assert np.array_equal(matrix.toarray(), expected) and np.array_equal(rhs, b)
    assert matrix.has_sorted_indices
    assert sorted(first) == [number[tuple(v)] for v in np.argwhere(phase) if v[0] == 0]
    assert sorted(last) == [number[tuple(v)] for v in np.argwhere(phase) if v[0] == shape[0] - 1]


def test_a_tolerance_beyond_float32_goes_on_in_float64(blobs64):
    """The float32 solve stalls short of a residual of 1e-10; the float64 refinement reaches it,
    at the D_rel of the default tolerance."""
    spanning = _spanning(blobs64[:24, :24, :24] == 1, 0)
    default, converged = _multigrid_d_rel(spanning)
    tight, tight_converged = _multigrid_d_rel(spanning, tolerance=1e-10)
    assert converged and tight_converged and tight == pytest.approx(default, rel=1e-4)
