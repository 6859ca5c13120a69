"""The multigrid setup of the diffusion system builds pyamg's Ruge–Stüben hierarchy."""

from __future__ import annotations

import numpy as np
import pyamg

from micro_doe.platform.descriptors._amg import ruge_stuben_hierarchy
from micro_doe.platform.descriptors.transport import _spanning, _system

SMOOTHERS = {"presmoother": ("gauss_seidel", {"sweep": "forward"}), "postsmoother": ("gauss_seidel", {"sweep": "backward"})}


def test_every_level_is_pyamgs_own(blobs64):
    """The same C/F splittings on every level (exactly: RS breaks ties in index order) and the same
    operators up to float32 rounding; a volume of 2D and of 3D, and one too small to coarsen."""
    tiny = np.ones((3, 3), dtype=bool)
    for volume in (blobs64 == 1, blobs64[0] == 0, tiny):
        matrix = _system(_spanning(volume, 0))[0].astype(np.float32)
        reference = pyamg.ruge_stuben_solver(matrix, interpolation="direct", **SMOOTHERS)
        ours = ruge_stuben_hierarchy(matrix, **SMOOTHERS)
        assert len(ours.levels) == len(reference.levels) and (len(ours.levels) > 3 or volume is tiny)
        for mine, theirs in zip(ours.levels, reference.levels):
            scale = abs(theirs.A).max()
            assert mine.A.shape == theirs.A.shape and abs(mine.A - theirs.A).max() <= 1e-6 * scale
            if hasattr(theirs, "P"):
                assert np.array_equal(mine.splitting, theirs.splitting)
                assert abs(mine.P - theirs.P).max() <= 1e-5
        b = np.random.default_rng(0).standard_normal(matrix.shape[0]).astype(np.float32)
        x = ours.solve(b, tol=1e-5, accel="cg")
        assert np.linalg.norm(b - matrix @ x) <= 1e-4 * np.linalg.norm(b)


def test_a_coarse_level_with_weak_and_unsorted_entries_is_split_as_pyamg_splits_it():
    """Coarse operators have entries of many sizes, some weak (below θ times the row's largest),
    and unsorted indices: the case where the strength mask and the sorting matter."""
    rng = np.random.default_rng(1)
    volume = rng.random((20, 20, 20)) < 0.6
    matrix = _system(_spanning(volume, 0))[0].astype(np.float32)
    coarse = pyamg.ruge_stuben_solver(matrix, interpolation="direct", **SMOOTHERS).levels[1].A
    assert not coarse.has_sorted_indices
    rows = np.repeat(np.arange(coarse.shape[0]), np.diff(coarse.indptr))
    off_diagonal = abs(coarse.data) * (coarse.indices != rows)
    row_max = np.zeros(coarse.shape[0], np.float32)
    np.maximum.at(row_max, rows, off_diagonal)
    assert ((off_diagonal > 0) & (off_diagonal < 0.25 * row_max[rows])).any()  # some entries are weak
    reference = pyamg.ruge_stuben_solver(coarse, interpolation="direct", **SMOOTHERS)
    ours = ruge_stuben_hierarchy(coarse, **SMOOTHERS)
    for mine, theirs in zip(ours.levels[:-1], reference.levels[:-1]):
        assert np.array_equal(mine.splitting, theirs.splitting)
