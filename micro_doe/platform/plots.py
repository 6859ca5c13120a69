"""Pictures a person would rather see than read: slice montages, S2/L curves, Pareto fronts.

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
    reference: xr.DataArray | None = None,
    reference_label: str = "training data",
) -> Path:
    """One row per volume: its middle xy, xz and yz slices (z, y, x volumes), phase labels in grey,
    with a legend naming each grey level's phase (from the volumes' ``phase_names``).

    ``reference``: a training image (y, x) or volume (z, y, x) shown as the first row, so the
    generated slices are read against the data they should resemble. The panels are one
    mosaic in one set of axes (a third of the time of a grid of axes: a study draws one per trial)."""
    vols = [volumes] if isinstance(volumes, xr.DataArray) else list(volumes)
    if not vols:
        raise ValueError("slice_montage: no volumes given")
    rows: list[tuple[xr.DataArray, str]] = []
    if reference is not None:
        rows.append((reference, reference_label))
    rows += [(v, labels[i] if labels is not None else "") for i, v in enumerate(vols)]
    # A legend only when every row shares one set of phase names (a montage may mix models).
    named = [tuple(v.attrs.get("phase_names") or ()) for v, _ in rows]
    names = list(named[-1]) if len(set(named)) == 1 else []
    k = max([max(int(v.max()), 1) for v, _ in rows] + [len(names) - 1])
    panels = [_views(vol) for vol, _ in rows]
    h = max(image.shape[0] for row in panels for _, image in row)
    w = max(image.shape[1] for row in panels for _, image in row)
    gap, head = max(1, w // 10), max(2, h // 4)  # between columns; above each row, room for its titles
    height, width = len(rows) * (h + head), 3 * w + 2 * gap
    mosaic = np.full((height, width), np.nan)  # NaN: the white between panels
    corners = []
    for r, row in enumerate(panels):
        for c, (_, image) in enumerate(row):
            y0, x0 = r * (h + head) + head, c * (w + gap)
            mosaic[y0 : y0 + image.shape[0], x0 : x0 + image.shape[1]] = image
            corners.append((x0, y0, image.shape))
    legend_in, title_in = (0.35 if names else 0.0), (0.1 if title else 0.0)
    image_in = 6.6 * 0.9 * height / width
    fig = plt.figure(figsize=(6.6, image_in + legend_in + title_in))
    ax = fig.add_axes((0.05, legend_in / fig.get_figheight(), 0.93, image_in / fig.get_figheight()))
    ax.imshow(mosaic, cmap=plt.get_cmap("gray").with_extremes(bad="white"), vmin=0, vmax=k, interpolation="nearest")
    ax.set_axis_off()
    ax.set_xlim(-1, width)
    ax.set_ylim(height, 0)
    from matplotlib.patches import Patch, Rectangle

    for x0, y0, shape in corners:
        ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), shape[1], shape[0], fill=False, edgecolor="black", linewidth=0.8))
    for r, row in enumerate(panels):
        y0 = r * (h + head) + head
        if r == 0 or (reference is not None and r == 1):
            for c, (name, _) in enumerate(row):
                ax.text(c * (w + gap) + w / 2, y0 - 0.8, name, ha="center", va="bottom", fontsize=9)
        if rows[r][1]:
            ax.text(-0.04 * w, y0 + h / 2, rows[r][1], ha="right", va="center", rotation=90, fontsize=8)
    if names:
        grey = plt.get_cmap("gray")
        handles = [Patch(facecolor=grey(i / k), edgecolor="k", label=f"{i}: {n}") for i, n in enumerate(names)]
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10, y=1 - 0.05 / fig.get_figheight())
    return _save(fig, path)


def _views(vol: xr.DataArray) -> list[tuple[str, np.ndarray]]:
    """The panels of one montage row: a 2D image itself, or a volume's middle xy, xz and yz slices."""
    if vol.dims == ("y", "x"):
        return [("training image (2D)", vol.values)]
    if vol.dims != ("z", "y", "x"):
        raise ValueError(f"slice_montage: expected (z, y, x) volumes or a (y, x) image, got dims {vol.dims}")
    mids = {d: vol.sizes[d] // 2 for d in vol.dims}
    return [
        (f"xy (z={mids['z']})", vol.isel(z=mids["z"]).values),
        (f"xz (y={mids['y']})", vol.isel(y=mids["y"]).values),
        (f"yz (x={mids['x']})", vol.isel(x=mids["x"]).values),
    ]


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


def pareto_plot(
    values: np.ndarray,
    feasible: Sequence[bool],
    pareto: Sequence[bool],
    names: Sequence[str],
    directions: Sequence[str],
    path: str | os.PathLike[str],
    *,
    title: str = "",
) -> Path:
    """:func:`pareto_figure`, saved as a PNG at ``path``."""
    return _save(pareto_figure(values, feasible, pareto, names, directions, title=title), path)


def pareto_figure(
    values: np.ndarray,
    feasible: Sequence[bool],
    pareto: Sequence[bool],
    names: Sequence[str],
    directions: Sequence[str],
    *,
    title: str = "",
) -> plt.Figure:
    """Every pair of objectives (rows of ``values`` are trials): Pareto trials filled (joined only
    with two objectives: a projection of a higher-dimensional front is no curve), other feasible
    trials open circles, infeasible ones grey crosses; the legend lists only what is there. One
    objective: its value against trial order, with the best feasible value so far."""
    values = np.asarray(values, dtype=float).reshape(len(feasible), -1)
    feasible_mask, pareto_mask = np.asarray(feasible, bool), np.asarray(pareto, bool)
    k = values.shape[1]
    pairs = [(i, j) for i in range(k) for j in range(i + 1, k)] or [(0, None)]  # type: ignore[list-item]
    fig, axes = plt.subplots(1, len(pairs), figsize=(4.3 * len(pairs), 3.6), squeeze=False)
    for ax, (i, j) in zip(axes[0], pairs):
        xs = values[:, i] if j is not None else np.arange(len(values), dtype=float)
        ys = values[:, j] if j is not None else values[:, i]
        other = feasible_mask & ~pareto_mask
        if (~feasible_mask).any():
            ax.scatter(xs[~feasible_mask], ys[~feasible_mask], marker="x", color="0.6", label="infeasible")
        if other.any():
            ax.scatter(xs[other], ys[other], facecolors="none", edgecolors="C0", label="feasible")
        order = np.argsort(xs[pareto_mask])
        style = "o-" if k <= 2 else "o"
        ax.plot(xs[pareto_mask][order], ys[pareto_mask][order], style, color="C3", label="Pareto front" if j is not None else "best")
        if j is None:
            ax.set_xlabel("trial (in order of completion)")
            ax.set_ylabel(f"{names[i]} ({directions[i]})")
        else:
            ax.set_xlabel(f"{names[i]} ({directions[i]})")
            ax.set_ylabel(f"{names[j]} ({directions[j]})")
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
