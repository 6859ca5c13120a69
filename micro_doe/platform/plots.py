"""Pictures a person would rather see than read: slice montages and S2/L curves.

Headless (matplotlib's Agg backend); every figure is written atomically as PNG.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402

from micro_doe.platform.volumes import atomic_path  # noqa: E402


def slice_montage(
    volumes: xr.DataArray | Sequence[xr.DataArray],
    path: str | os.PathLike[str],
    *,
    title: str = "",
    labels: Sequence[str] | None = None,
) -> Path:
    """One row per volume: its middle xy, xz and yz slices (z, y, x volumes), phase labels in grey."""
    vols = [volumes] if isinstance(volumes, xr.DataArray) else list(volumes)
    if not vols:
        raise ValueError("slice_montage: no volumes given")
    fig, axes = plt.subplots(len(vols), 3, figsize=(6.6, 2.3 * len(vols)), squeeze=False)
    for row, vol in enumerate(vols):
        if vol.dims != ("z", "y", "x"):
            raise ValueError(f"slice_montage: expected (z, y, x) volumes, got dims {vol.dims}")
        k = max(int(vol.max()), 1)
        mids = {d: vol.sizes[d] // 2 for d in vol.dims}
        views = {
            f"xy (z={mids['z']})": vol.isel(z=mids["z"]),
            f"xz (y={mids['y']})": vol.isel(y=mids["y"]),
            f"yz (x={mids['x']})": vol.isel(x=mids["x"]),
        }
        for col, (name, image) in enumerate(views.items()):
            ax = axes[row, col]
            ax.imshow(image.values, cmap="gray", vmin=0, vmax=k, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(name, fontsize=9)
        if labels is not None:
            axes[row, 0].set_ylabel(labels[row], fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def curves_plot(
    reference: Mapping[str, np.ndarray],
    generated: Mapping[str, np.ndarray],
    path: str | os.PathLike[str],
    *,
    title: str = "",
    errors: Mapping[str, float] | None = None,
) -> Path:
    """Reference vs generated curves (e.g. {"S2": ..., "lineal path": ...}), one panel each, r in voxels."""
    names = list(reference)
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        ref = np.asarray(reference[name])
        gen = np.asarray(generated[name])
        r = np.arange(len(ref))
        ax.plot(r, ref, "k-", label="reference")
        ax.plot(r, gen, "C1o-", ms=3, label="generated")
        ax.fill_between(r, ref, gen, color="C1", alpha=0.2)
        label = name if errors is None or name not in errors else f"{name}  (error {errors[name]:.1f} %)"
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("r [voxels]")
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig: plt.Figure, path: str | os.PathLike[str]) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return Path(path)
