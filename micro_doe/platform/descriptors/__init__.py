"""Descriptors: the evaluators' math, each named by what it computes.

Every function takes a volume (an int8 phase-label ``xarray.DataArray`` with dims
``(z, y, x)``, ``(y, x)``, or a stack with a leading ``sample`` dim; or a plain integer
array) and a phase, given by label or name. Lags and lengths are in voxels.
"""

from __future__ import annotations

from micro_doe.platform.descriptors._phase import PLANES, indicator
from micro_doe.platform.descriptors.correlation import plane_mean, s2_along_axes, s2_radial
from micro_doe.platform.descriptors.describe import Descriptors, describe
from micro_doe.platform.descriptors.error_rate import error_rate
from micro_doe.platform.descriptors.interface import interfacial_area
from micro_doe.platform.descriptors.lineal_path import chord_lengths, lineal_path_along_axes
from micro_doe.platform.descriptors.sizes import (
    SizeDistribution,
    equivalent_diameters,
    local_thickness,
    section_sizes,
    size_error,
)
from micro_doe.platform.descriptors.transport import Tortuosity, percolating_fraction, tortuosity


def volume_fraction(volume, phase: int | str = 1) -> float:
    """Fraction of voxels (pixels) that hold ``phase``, pooled over a stack."""
    ind, _ = indicator(volume, phase)
    return float(ind.mean()) if ind.size else 0.0


__all__ = [
    "PLANES",
    "Descriptors",
    "SizeDistribution",
    "Tortuosity",
    "chord_lengths",
    "describe",
    "equivalent_diameters",
    "error_rate",
    "interfacial_area",
    "lineal_path_along_axes",
    "local_thickness",
    "percolating_fraction",
    "plane_mean",
    "s2_along_axes",
    "s2_radial",
    "section_sizes",
    "size_error",
    "tortuosity",
    "volume_fraction",
]
