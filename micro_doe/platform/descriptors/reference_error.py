"""How close generated volumes are to a model's training data (Micro3Diff eq. 24).

Curves compared are S2 and the lineal path along axes, averaged over the axes:
z, y, x for a 3D reference (Micro3Diff case I, training slices cut from a volume) and
y, x for a reference of 2D images (case II). For generated 3D volumes the mean over
z, y, x equals the mean over the three planes of the 2D along-axis curves within each
plane, so one definition serves both cases. Curves of several volumes are pooled
(averaged) before the error rate is taken, as the paper does for its 25 samples.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr

from micro_doe.platform.descriptors import Descriptors, error_rate, lineal_path_along_axes, s2_along_axes


def reference_curves(reference: Descriptors) -> dict[str, np.ndarray]:
    """The reference's S2 and lineal path, averaged over its axes."""
    return {"S2": reference.s2_mean(), "lineal path": reference.lineal_path_mean()}


def pooled_curves(volumes: Sequence[xr.DataArray], r_max: int, phase: int = 1) -> dict[str, np.ndarray]:
    """S2 and lineal path of ``volumes``, averaged over axes and then over volumes."""
    if not volumes:
        raise ValueError("pooled_curves: no volumes given")
    s2 = [np.mean(list(s2_along_axes(v, phase, r_max=r_max).values()), axis=0) for v in volumes]
    lp = [np.mean(list(lineal_path_along_axes(v, phase, r_max=r_max).values()), axis=0) for v in volumes]
    return {"S2": np.mean(s2, axis=0), "lineal path": np.mean(lp, axis=0)}


def error_rates(reference: Descriptors, volumes: Sequence[xr.DataArray]) -> dict[str, float]:
    """``s2_error`` and ``lineal_path_error`` in % (eq. 24), and ``vf_error`` (absolute)."""
    ref = reference_curves(reference)
    gen = pooled_curves(volumes, r_max=len(ref["S2"]) - 1, phase=reference.phase)
    vf = float(np.mean([(v.values == reference.phase).mean() for v in volumes]))
    return {
        "s2_error": error_rate(ref["S2"], gen["S2"]),
        "lineal_path_error": error_rate(ref["lineal path"], gen["lineal path"]),
        "vf_error": abs(vf - reference.volume_fraction),
        "vf": vf,
    }
