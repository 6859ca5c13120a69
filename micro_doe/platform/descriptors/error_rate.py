"""The error rate between two correlation curves (Micro3Diff, eq. 24)."""

from __future__ import annotations

import numpy as np


def error_rate(reference: np.ndarray, generated: np.ndarray) -> float:
    """Error rate in % between a reference curve and a generated one (Micro3Diff eq. 24).

        error rate = A_dis / A_ori × 100,

    A_ori the area under the reference curve and A_dis the area between the two curves,
    both by the trapezoidal rule over the common lags r = 0, 1, …, len − 1 (voxels).
    Curves must be sampled on the same lags (same length). A reference with zero area
    (an absent phase) gives ``inf`` unless the generated curve is zero too (then 0).
    """
    ref = np.asarray(reference, dtype=np.float64)
    gen = np.asarray(generated, dtype=np.float64)
    if ref.shape != gen.shape or ref.ndim != 1:
        raise ValueError(f"curves must be 1D and of equal length, got shapes {ref.shape} and {gen.shape}")
    if not (np.isfinite(ref).all() and np.isfinite(gen).all()):
        raise ValueError("curves must be finite")
    area_between = float(np.trapezoid(np.abs(ref - gen)))
    area_reference = float(np.trapezoid(ref))
    if area_reference == 0.0:
        return 0.0 if area_between == 0.0 else float("inf")
    return 100.0 * area_between / area_reference
