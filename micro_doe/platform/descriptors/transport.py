"""Transport through a phase: percolating fraction and tortuosity factor.

Axes are named by the volume's dims: ``"z"`` (the film normal in the OPV data), ``"y"``
or ``"x"``. Connectivity is by shared faces (6-neighbours in 3D, 4 in 2D), the same
connectivity as the finite-difference diffusion solver.
"""

from __future__ import annotations

import contextlib
import io
import math

import numpy as np
import scipy.ndimage as ndi
from pydantic import BaseModel, ConfigDict

from micro_doe.platform.descriptors._phase import VolumeLike, indicator, spatial


class Tortuosity(BaseModel):
    """Tortuosity factor of one phase along one axis.

    - ``tau``: taufactor's tortuosity factor τ = ε / D_rel ≥ 1, with ε the phase's volume
      fraction and D_rel = D_eff / D_0 the effective diffusivity relative to the bulk
      diffusivity of the phase, from steady-state diffusion between the two faces normal to
      ``axis`` (fixed concentrations there, no flux through the other faces). A straight
      channel has τ = 1. **Defined values**: τ = ``inf`` (and D_rel = 0) when the phase is
      absent or does not connect the two faces.
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
    return _percolating_fraction(ind, _axis_index(dims, axis))


def tortuosity(
    volume: VolumeLike,
    phase: int | str = 1,
    axis: str = "z",
    *,
    iter_limit: int = 10_000,
    conv_crit: float = 1e-2,
    device: str = "cpu",
) -> Tortuosity:
    """Tortuosity factor of ``phase`` along ``axis`` with taufactor (see :class:`Tortuosity`).

    The solver is only started when the phase percolates, so absent and disconnected
    phases return at once; ``iter_limit`` bounds the work on pathological geometries.
    """
    ind, dims = indicator(volume, phase)
    if "sample" in dims:
        raise ValueError("tortuosity takes one image or volume, not a stack; index the sample first")
    a = _axis_index(dims, axis)
    fraction = float(ind.mean()) if ind.size else 0.0
    perc = _percolating_fraction(ind, a)
    if perc == 0.0:
        return Tortuosity(
            axis=axis, tau=math.inf, effective_diffusivity=0.0, volume_fraction=fraction, percolating_fraction=0.0
        )

    import taufactor

    # taufactor drives the flux along the first array axis.
    image = np.ascontiguousarray(np.moveaxis(ind, a, 0)).astype(np.uint8)
    with contextlib.redirect_stdout(io.StringIO()):  # it prints progress and warnings
        solver = taufactor.Solver(image, device=device)
        tau = float(np.asarray(solver.solve(iter_limit=iter_limit, verbose=False, conv_crit=conv_crit)).ravel()[0])
    d_rel = float(np.asarray(solver.D_rel).ravel()[0])
    if not math.isfinite(tau) or tau <= 0.0 or d_rel <= 0.0:
        tau, d_rel = math.inf, 0.0
    return Tortuosity(
        axis=axis,
        tau=tau,
        effective_diffusivity=d_rel,
        volume_fraction=fraction,
        percolating_fraction=perc,
        converged=bool(solver.converged),
    )


def _axis_index(dims: tuple[str, ...], axis: str) -> int:
    if axis not in spatial(dims):
        raise ValueError(f"axis must be one of {spatial(dims)} for dims {dims}, got {axis!r}")
    return dims.index(axis)


def _percolating_fraction(ind: np.ndarray, axis: int) -> float:
    total = int(ind.sum())
    if total == 0:
        return 0.0
    structure = ndi.generate_binary_structure(ind.ndim, 1)
    labels, _ = ndi.label(ind, structure=structure)
    first = np.unique(np.take(labels, 0, axis=axis))
    last = np.unique(np.take(labels, -1, axis=axis))
    spanning = np.intersect1d(first, last)
    spanning = spanning[spanning > 0]
    if spanning.size == 0:
        return 0.0
    return float(np.isin(labels, spanning).sum()) / total
