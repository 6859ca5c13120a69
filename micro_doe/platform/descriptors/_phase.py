"""Shared plumbing: turn a volume and a phase into a boolean indicator with named dims."""

from __future__ import annotations

import numpy as np
import xarray as xr

from micro_doe.platform.volumes import VOLUME_DIMS, VolumeError, phase_index, validate_volume

SPATIAL_DIMS = ("z", "y", "x")
# The three orthogonal planes of a (z, y, x) volume, each named by its two in-plane axes.
PLANES: dict[str, tuple[str, str]] = {"xy": ("y", "x"), "xz": ("z", "x"), "yz": ("z", "y")}

VolumeLike = xr.DataArray | np.ndarray


def as_volume(volume: VolumeLike, where: str = "volume") -> xr.DataArray:
    """Accept a volume DataArray, or a plain 2D/3D integer array (dims (y, x) / (z, y, x))."""
    if isinstance(volume, xr.DataArray):
        return validate_volume(volume, where)
    array = np.asarray(volume)
    if array.ndim not in VOLUME_DIMS:
        raise VolumeError(f"{where}: expected a 2D image or 3D volume, got shape {array.shape}")
    if array.dtype == bool:
        array = array.astype(np.int8)
    if array.dtype.kind not in "iu":
        raise VolumeError(f"{where}: expected integer phase labels, got dtype {array.dtype}")
    return xr.DataArray(array.astype(np.int8), dims=VOLUME_DIMS[array.ndim])


def indicator(volume: VolumeLike, phase: int | str = 1) -> tuple[np.ndarray, tuple[str, ...]]:
    """Boolean array that is True where ``volume`` holds ``phase``, and the array's dims."""
    vol = as_volume(volume)
    label = phase_index(vol, phase) if isinstance(phase, str) or "phase_names" in vol.attrs else int(phase)
    if label < 0:
        raise VolumeError(f"phase must be >= 0, got {phase}")
    return vol.values == label, tuple(str(d) for d in vol.dims)


def spatial(dims: tuple[str, ...]) -> list[str]:
    """The spatial dims (everything but a leading ``sample`` dim)."""
    return [d for d in dims if d in SPATIAL_DIMS]


def along_axes(
    volume: VolumeLike, phase: int | str, r_max: int | None
) -> tuple[np.ndarray, dict[str, int], int]:
    """Indicator, ``{dim: array axis}`` of the spatial dims, and the resolved ``r_max``."""
    ind, dims = indicator(volume, phase)
    axes = {d: dims.index(d) for d in spatial(dims)}
    return ind, axes, resolve_r_max([ind.shape[a] for a in axes.values()], r_max)


def resolve_r_max(lengths: list[int], r_max: int | None) -> int:
    """Default ``r_max`` is half the shortest length; at most that length minus one."""
    shortest = min(lengths)
    if r_max is None:
        return shortest // 2
    if not 0 <= r_max <= shortest - 1:
        raise ValueError(f"r_max must lie in [0, {shortest - 1}] for lengths {lengths}, got {r_max}")
    return int(r_max)
