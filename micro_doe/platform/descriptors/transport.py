"""Transport through a phase: percolating fraction and tortuosity factor.

Axes are named by the volume's dims: ``"z"`` (the film normal in the OPV data), ``"y"``
or ``"x"``. Connectivity is by shared faces (6-neighbours in 3D, 4 in 2D), the same
connectivity as the finite-volume diffusion problem.

The diffusion problem is taufactor's: one unknown concentration per voxel of the phase, unit
conductance across every face two phase voxels share, concentrations −½ and +½ fixed half a
voxel outside the two faces normal to the axis (conductance 2 to them), no flux through the
other faces. Two solvers, both of that one linear system:

- ``"multigrid"``: the system restricted to the clusters that connect the two faces
  (the others carry no flux), solved by conjugate gradients preconditioned with classical
  algebraic multigrid (pyamg's Ruge–Stüben, direct interpolation), both in float32, to a
  relative residual of 10⁻⁴ checked in float64 (τ to about 10⁻⁵). Its work grows about as the
  number of voxels.
- ``"taufactor"`` (the reference): taufactor's over-relaxation on the whole grid, stopped by its
  own criterion (flux uniform within ``conv_crit`` and τ steady between checks 100 iterations
  apart). Its iterations grow with the length of the path, so its work grows faster than N³.

The two agree within taufactor's own convergence (tested); ``benchmarks/descriptors.py``
measures both. The default, ``"auto"``, keeps taufactor up to 32³ voxels (every 32³ result
stays the reference's) and takes multigrid above.
"""

from __future__ import annotations

import contextlib
import io
import math
from typing import Any, Literal, get_args

import numpy as np
import scipy.ndimage as ndi
from pydantic import BaseModel, ConfigDict

from micro_doe.platform.descriptors._phase import VolumeLike, indicator, spatial


class Tortuosity(BaseModel):
    """Tortuosity factor of one phase along one axis.

    - ``tau``: the tortuosity factor τ = ε / D_rel ≥ 1 (taufactor's definition), with ε the
      phase's volume fraction and D_rel = D_eff / D_0 the effective diffusivity relative to the
      bulk diffusivity of the phase, from steady-state diffusion between the two faces normal to
      ``axis`` (fixed concentrations there, no flux through the other faces; module doc). A
      straight channel has τ = 1. **Defined values**: τ = ``inf`` (and D_rel = 0) when the phase
      is absent or does not connect the two faces.
    - ``effective_diffusivity``: D_rel (dimensionless).
    - ``volume_fraction``: ε.
    - ``percolating_fraction``: the fraction of the phase's voxels that belong to clusters
      touching both faces normal to ``axis``; 0 for an absent phase.
    - ``converged``: whether the solver met its convergence criterion within its iteration
      limit (its last τ is reported either way).
    """

    # Frozen and JSON-safe: an infinite τ serialises as Infinity (json reads it back).
    model_config = ConfigDict(extra="forbid", frozen=True, ser_json_inf_nan="constants")
    axis: str
    tau: float
    effective_diffusivity: float
    volume_fraction: float
    percolating_fraction: float
    converged: bool = True


def percolating_fraction(volume: VolumeLike, phase: int | str = 1, axis: str = "z") -> float:
    """Fraction of the phase's voxels in clusters that touch both faces normal to ``axis``."""
    ind, dims = indicator(volume, phase)
    return _share(_spanning(ind, _axis_index(dims, axis)), ind)


TortuositySolver = Literal["auto", "multigrid", "taufactor"]
SOLVERS: tuple[str, ...] = get_args(TortuositySolver)
MULTIGRID_TOLERANCE = 1e-4  # relative residual of the conjugate gradients (τ to about 1e-5: measured)
# "auto": taufactor up to this many voxels, multigrid above (it costs less from 64³ on:
# benchmarks/descriptors.py).
MULTIGRID_ABOVE_VOXELS = 32**3


def tortuosity(
    volume: VolumeLike,
    phase: int | str = 1,
    axis: str = "z",
    *,
    solver: TortuositySolver = "auto",
    iter_limit: int = 10_000,
    conv_crit: float = 1e-2,
    device: str = "cpu",
) -> Tortuosity:
    """Tortuosity factor of ``phase`` along ``axis`` (see :class:`Tortuosity` and the module doc).

    ``solver``: ``"multigrid"``, ``"taufactor"`` (the reference; ``iter_limit``, ``conv_crit``
    and ``device`` are its own options) or ``"auto"``: taufactor up to ``MULTIGRID_ABOVE_VOXELS``
    (32³) voxels, multigrid above. Either is started only when the phase percolates, so absent
    and disconnected phases return at once.
    """
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {list(SOLVERS)}, got {solver!r}")
    ind, dims = indicator(volume, phase)
    if "sample" in dims:
        raise ValueError("tortuosity takes one image or volume, not a stack; index the sample first")
    a = _axis_index(dims, axis)
    fraction = float(ind.mean()) if ind.size else 0.0
    spanning = _spanning(ind, a)
    perc = _share(spanning, ind)
    if perc == 0.0:
        return Tortuosity(axis=axis, tau=math.inf, effective_diffusivity=0.0, volume_fraction=fraction, percolating_fraction=0.0)
    # Both solvers drive the flux along the first array axis.
    if solver == "auto":
        solver = "multigrid" if ind.size > MULTIGRID_ABOVE_VOXELS else "taufactor"
    if solver == "multigrid":
        d_rel, converged = _multigrid_d_rel(np.moveaxis(spanning, a, 0))
    else:
        d_rel, converged = _taufactor_d_rel(np.moveaxis(ind, a, 0), iter_limit, conv_crit, device)
    tau = fraction / d_rel if d_rel > 0.0 else math.inf
    if not math.isfinite(tau) or tau <= 0.0:
        tau, d_rel = math.inf, 0.0
    return Tortuosity(
        axis=axis,
        tau=tau,
        effective_diffusivity=d_rel,
        volume_fraction=fraction,
        percolating_fraction=perc,
        converged=converged,
    )


def _multigrid_d_rel(spanning: np.ndarray, tolerance: float = MULTIGRID_TOLERANCE) -> tuple[float, bool]:
    """D_rel of the voxels ``spanning`` (the clusters that touch both faces normal to axis 0).

    Order of operations: assemble the sparse system (:func:`_system`), build the multigrid
    hierarchy in float32 (:mod:`._amg`; direct interpolation: a cheaper setup than classical, for
    one or two more iterations), solve by preconditioned conjugate gradients in float32, check the
    residual in float64 (and go on in float64 from there if float32 stalled short of the
    tolerance), and average the flux through the two fixed faces (equal at convergence)."""
    import scipy.sparse.linalg as spla

    from micro_doe.platform.descriptors._amg import ruge_stuben_hierarchy

    matrix, rhs, first, last = _system(spanning)
    # Gauss–Seidel forward before and backward after the coarse grid: a symmetric cycle (as CG
    # needs) with half the sweeps of pyamg's default symmetric ones, for at most one more iteration.
    hierarchy = ruge_stuben_hierarchy(matrix.astype(np.float32), presmoother=("gauss_seidel", {"sweep": "forward"}),
                                      postsmoother=("gauss_seidel", {"sweep": "backward"}))  # fmt: skip
    c = hierarchy.solve(rhs.astype(np.float32), tol=tolerance, accel="cg", maxiter=200).astype(np.float64)
    target = tolerance * float(np.linalg.norm(rhs))
    residual = float(np.linalg.norm(rhs - matrix @ c))
    if residual > target:
        cycle = hierarchy.aspreconditioner()
        precondition = spla.LinearOperator(
            matrix.shape, matvec=lambda r: (cycle @ r.astype(np.float32)).astype(np.float64), dtype=np.float64
        )
        c, _ = spla.cg(matrix, rhs, x0=c, M=precondition, rtol=tolerance, maxiter=200)
        residual = float(np.linalg.norm(rhs - matrix @ c))
    converged = residual <= target
    flux = 0.5 * (np.sum(2.0 * (0.5 - c[last])) + np.sum(2.0 * (c[first] + 0.5)))
    across = float(np.prod(spanning.shape[1:]))
    # D_rel = flux · length / (cross-section · Δc), Δc = 1.
    return float(flux) * spanning.shape[0] / across, converged


def _system(spanning: np.ndarray) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray]:
    """(matrix, right-hand side, unknowns on the first face, on the last face) of the
    finite-volume system (module doc) over the voxels ``spanning``, axis 0 between the faces.

    Unknowns are the voxels in C order; each row lists its face neighbours and itself in
    increasing column order (−axis 0, …, −axis d−1, itself, +axis d−1, …, +axis 0), so the CSR
    arrays are written directly, without a sort."""
    import scipy.sparse as sp

    d, n = spanning.ndim, int(spanning.sum())
    padded = np.pad(spanning, 1)  # a border outside the phase: no neighbour there
    index = np.full(padded.size, -1, dtype=np.int32)
    at = np.flatnonzero(padded)  # the unknowns' flat positions, in C order
    index[at] = np.arange(n, dtype=np.int32)
    strides = [int(np.prod(padded.shape[k + 1 :])) for k in range(d)]  # flat step along each axis
    below = [index[at - stride] for stride in strides]
    above = [index[at + stride] for stride in reversed(strides)]
    columns = np.stack([*below, np.arange(n, dtype=np.int32), *above], axis=1)
    present = columns >= 0
    per_row = present.sum(axis=1, dtype=np.int32)  # the voxel and its face neighbours
    first = index[at[at < 2 * strides[0]]]
    last = index[at[at >= (padded.shape[0] - 2) * strides[0]]]
    diagonal = per_row.astype(np.float64) - 1.0
    diagonal[first] += 2.0  # the fixed concentrations lie half a voxel outside: conductance 2
    diagonal[last] += 2.0
    values = np.full(columns.shape, -1.0)
    values[:, d] = diagonal
    indptr = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(per_row, out=indptr[1:])
    matrix = sp.csr_matrix((values[present], columns[present], indptr), shape=(n, n))
    rhs = np.zeros(n)
    rhs[first] -= 2.0 * 0.5
    rhs[last] += 2.0 * 0.5
    return matrix, rhs, first, last


def _taufactor_d_rel(ind: np.ndarray, iter_limit: int, conv_crit: float, device: str) -> tuple[float, bool]:
    """D_rel by taufactor's over-relaxation on the whole grid (the reference)."""
    import taufactor

    image = np.ascontiguousarray(ind).astype(np.uint8)
    with contextlib.redirect_stdout(io.StringIO()):  # it prints progress and warnings
        solver = taufactor.Solver(image, device=device)
        solver.solve(iter_limit=iter_limit, verbose=False, conv_crit=conv_crit)
    return float(np.asarray(solver.D_rel).ravel()[0]), bool(solver.converged)


def _axis_index(dims: tuple[str, ...], axis: str) -> int:
    if axis not in spatial(dims):
        raise ValueError(f"axis must be one of {spatial(dims)} for dims {dims}, got {axis!r}")
    return dims.index(axis)


def _share(spanning: np.ndarray, ind: np.ndarray) -> float:
    """The percolating fraction: spanning voxels over the phase's voxels (0 for an absent phase)."""
    total = int(ind.sum())
    return float(spanning.sum()) / total if total else 0.0


def _spanning(ind: np.ndarray, axis: int) -> np.ndarray:
    """The voxels of ``ind`` in clusters that touch both faces normal to ``axis``."""
    structure = ndi.generate_binary_structure(ind.ndim, 1)
    labels, _ = ndi.label(ind, structure=structure)
    first = np.unique(np.take(labels, 0, axis=axis))
    last = np.unique(np.take(labels, -1, axis=axis))
    spanning = np.intersect1d(first, last)
    return np.isin(labels, spanning[spanning > 0])
