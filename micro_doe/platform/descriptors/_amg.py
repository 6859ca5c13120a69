"""The Ruge–Stüben multigrid hierarchy of the diffusion system, set up with fewer passes over it.

The same hierarchy as ``pyamg.ruge_stuben_solver(A, interpolation="direct")`` (classical
strength θ = 0.25 by magnitude, RS splitting without the second pass, direct interpolation,
Galerkin coarse operators), built by pyamg's own kernels (``amg_core``). What differs is the
glue between them: pyamg computes the strength matrix, scales it, removes its diagonal through a
COO round trip, and multiplies it with A again entry by entry; here the strong off-diagonal
entries are one mask over A's entries, and that one matrix serves both the splitting and the
interpolation. The τ solve at 128³ spends less time in setup (``benchmarks/descriptors.py``).
``tests/platform/descriptors/test_amg.py`` checks every level against pyamg's.

Order of operations per level: strong mask → C/F splitting → interpolation P → R = Pᵀ →
A_coarse = R A P; until ``MAX_COARSE`` unknowns, ``MAX_LEVELS`` levels, or a splitting that
leaves no coarse (or no fine) points.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

THETA = 0.25  # classical strength: |a_ij| ≥ θ · max_{k≠i} |a_ik|
MAX_LEVELS, MAX_COARSE = 30, 10  # ruge_stuben_solver's defaults


def ruge_stuben_hierarchy(matrix: sp.csr_matrix | sp.csr_array, presmoother: Any, postsmoother: Any) -> Any:
    """A ``pyamg.MultilevelSolver`` for ``matrix`` (symmetric, CSR), with pyamg's smoother options."""
    from pyamg.multilevel import MultilevelSolver
    from pyamg.relaxation.smoothing import change_smoothers

    levels = [MultilevelSolver.Level()]
    levels[-1].A = sp.csr_array(matrix)
    while len(levels) < MAX_LEVELS and levels[-1].A.shape[0] > MAX_COARSE:
        level = levels[-1]
        strong = _strong_graph(level.A)
        splitting = _rs_splitting(strong)
        if splitting.all() or not splitting.any():
            break
        level.P = _direct_interpolation(level.A, strong, splitting)
        level.R = level.P.T.tocsr()
        level.splitting = splitting.astype(bool)
        levels.append(MultilevelSolver.Level())
        levels[-1].A = level.R @ level.A @ level.P
    solver = MultilevelSolver(levels)
    change_smoothers(solver, presmoother, postsmoother)
    return solver


def _strong_graph(a: sp.csr_array) -> sp.csr_array:
    """A's off-diagonal entries that are strong, |a_ij| ≥ θ max_{k≠i} |a_ik| (and non-zero), with
    A's values and sorted indices (RS breaks ties in index order; pyamg's graph is sorted, while
    coarse A's are not)."""
    n = a.shape[0]
    rows = np.repeat(np.arange(n, dtype=a.indices.dtype), np.diff(a.indptr))
    magnitude = np.abs(a.data)
    magnitude[a.indices == rows] = 0
    if n > 0 and np.diff(a.indptr).min() > 0:
        row_max = np.maximum.reduceat(magnitude, a.indptr[:-1])
    else:  # reduceat would read an empty row's maximum from the next row
        row_max = np.zeros(n, dtype=a.data.dtype)
        np.maximum.at(row_max, rows, magnitude)
    keep = magnitude >= THETA * row_max[rows]
    keep &= magnitude != 0
    indptr = np.zeros(n + 1, dtype=a.indptr.dtype)
    np.cumsum(np.bincount(rows[keep], minlength=n), out=indptr[1:])
    graph = sp.csr_array((a.data[keep], a.indices[keep], indptr), shape=a.shape)
    graph.sort_indices()
    return graph


def _rs_splitting(graph: sp.csr_array) -> np.ndarray:
    """pyamg's RS C/F splitting (1: coarse) of the strong graph."""
    from pyamg import amg_core

    n = graph.shape[0]
    transposed = graph.T.tocsr()
    splitting = np.empty(n, dtype=graph.indptr.dtype)
    influence = np.zeros(n, dtype=graph.indptr.dtype)
    amg_core.rs_cf_splitting(n, graph.indptr, graph.indices, transposed.indptr, transposed.indices, influence, splitting)
    return splitting


def _direct_interpolation(a: sp.csr_array, strong: sp.csr_array, splitting: np.ndarray) -> sp.csr_array:
    """pyamg's direct interpolation from the coarse points of ``splitting`` (``strong`` holds A's values)."""
    from pyamg import amg_core

    n = a.shape[0]
    indptr = np.empty_like(a.indptr)
    amg_core.rs_direct_interpolation_pass1(n, strong.indptr, strong.indices, splitting, indptr)
    indices = np.empty(indptr[-1], dtype=indptr.dtype)
    data = np.empty(indptr[-1], dtype=a.dtype)
    amg_core.rs_direct_interpolation_pass2(n, a.indptr, a.indices, a.data, strong.indptr, strong.indices, strong.data,
                                           splitting, indptr, indices, data)  # fmt: skip
    return sp.csr_array((data, indices, indptr), shape=(n, int(splitting.sum())))
