"""The standard descriptor set of a volume, in one call, as a typed serialisable result."""

from __future__ import annotations

import json
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import xarray as xr
from pydantic import BaseModel, ConfigDict

from micro_doe.platform.descriptors._phase import VolumeLike, as_volume, resolve_r_max, spatial
from micro_doe.platform.descriptors.correlation import s2_along_axes, s2_radial
from micro_doe.platform.descriptors.interface import interfacial_area
from micro_doe.platform.descriptors.lineal_path import lineal_path_along_axes
from micro_doe.platform.descriptors.sizes import SizeDistribution, default_section_stride, measure_sections, section_sizes
from micro_doe.platform.descriptors.transport import Tortuosity, tortuosity
from micro_doe.platform.volumes import phase_index, phase_names

SHARES_PER_WORKER = 4  # section shares per thread and axis: fine enough to balance the threads' loads


class Descriptors(BaseModel):
    """Descriptors of one phase of a volume (or of a stack of samples, pooled).

    Curves are indexed by the lag r = 0, 1, …, r_max voxels:

    - ``s2[axis]``: two-point correlation along each axis; ``s2_radial``: radially averaged
      over all spatial axes (see :mod:`~micro_doe.platform.descriptors.correlation`);
    - ``lineal_path[axis]``: lineal path function along each axis
      (see :mod:`~micro_doe.platform.descriptors.lineal_path`);
    - ``volume_fractions``: every phase's volume fraction, by phase name;
    - ``tortuosity``: along ``tortuosity.axis``; for a stack, τ is the mean over the samples
      that percolate (``inf`` if none does) and the other fields are means over all samples;
      ``None`` when not requested;
    - ``interfacial_area``: specific interfacial area (1/voxel_unit) between the phase and
      each other phase, keyed ``"<phase>|<other>"``;
    - ``sizes``: component and local-thickness size distributions over 2D sections
      (:mod:`~micro_doe.platform.descriptors.sizes`); ``None`` when not requested or for
      descriptors stored before it existed.
    """

    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="constants")
    phase: int
    phase_name: str
    dims: list[str]
    shape: list[int]
    voxel_size: float
    periodic: bool
    volume_fractions: dict[str, float]
    s2: dict[str, list[float]]
    s2_radial: list[float]
    lineal_path: dict[str, list[float]]
    tortuosity: Tortuosity | None
    interfacial_area: dict[str, float]
    seconds: float
    sizes: SizeDistribution | None = None

    @property
    def volume_fraction(self) -> float:
        return self.volume_fractions[self.phase_name]

    def s2_mean(self) -> np.ndarray:
        """S2 along axes, averaged over the spatial axes."""
        return np.mean([self.s2[a] for a in self.s2], axis=0)

    def lineal_path_mean(self) -> np.ndarray:
        """L along axes, averaged over the spatial axes."""
        return np.mean([self.lineal_path[a] for a in self.lineal_path], axis=0)

    def scalars(self) -> dict[str, float]:
        """Flat scalar metrics (for tables, MLflow and objectives)."""
        out = {"volume_fraction": self.volume_fraction}
        out.update({f"vf_{name}": value for name, value in self.volume_fractions.items()})
        out["interfacial_area"] = float(sum(self.interfacial_area.values()))
        if self.tortuosity is not None:
            out["tortuosity"] = self.tortuosity.tau
            out["effective_diffusivity"] = self.tortuosity.effective_diffusivity
            out["percolating_fraction"] = self.tortuosity.percolating_fraction
        if self.sizes is not None:
            out.update(self.sizes.scalars())
        return out

    def to_dataset(self) -> xr.Dataset:
        """Curves as an ``xarray.Dataset`` over ``(axis, r)``; everything else in attrs (JSON)."""
        axes = list(self.s2)
        r = np.arange(len(self.s2_radial))
        data = xr.Dataset(
            {
                "s2": (("axis", "r"), np.array([self.s2[a] for a in axes])),
                "lineal_path": (("axis", "r"), np.array([self.lineal_path[a] for a in axes])),
                "s2_radial": (("r",), np.array(self.s2_radial)),
            },
            coords={"axis": axes, "r": r},
        )
        data.attrs["descriptors_json"] = self.model_dump_json(exclude={"s2", "lineal_path", "s2_radial"})
        return data

    @classmethod
    def from_dataset(cls, data: xr.Dataset) -> Descriptors:
        # json (not pydantic) parses the Infinity that an absent or isolated phase's τ writes.
        fields: dict[str, Any] = json.loads(data.attrs["descriptors_json"])
        axes = [str(a) for a in data["axis"].values]
        fields["s2"] = {a: data["s2"].sel(axis=a).values.tolist() for a in axes}
        fields["lineal_path"] = {a: data["lineal_path"].sel(axis=a).values.tolist() for a in axes}
        fields["s2_radial"] = data["s2_radial"].values.tolist()
        return cls.model_validate(fields)


def describe(
    volume: VolumeLike,
    phase: int | str = 1,
    *,
    periodic: bool = False,
    r_max: int | None = None,
    tortuosity_axis: str | None = "z",
    sizes: bool = True,
    section_stride: int | None = None,
    workers: int | None = None,
) -> Descriptors:
    """Compute the standard descriptor set of ``phase`` in one call.

    ``tortuosity_axis`` names the axis τ is measured along (default ``"z"``, the film
    normal; a 2D image has ``"y"`` and ``"x"``; ``"z"`` falls back to ``"y"`` there);
    ``None`` skips the diffusion solve. ``sizes=False`` skips the size distributions;
    ``section_stride``: they measure every k-th section of a 3D volume along each axis (default
    :func:`~micro_doe.platform.descriptors.sizes.default_section_stride`: every section up to 127³,
    every 2nd at 128³, at least 64 sections per axis).
    ``workers``: threads (default: the CPU cores this process may use; a Ray evaluator, pinned
    to one core, passes 1). With more than one, a pool of that many takes the τ solve first and
    the size distributions' sections behind it, in ``SHARES_PER_WORKER`` shares per thread and
    axis, while the calling thread computes the correlation functions (taufactor's solve is
    threaded by torch too: ``torch.set_num_threads``). Results do not depend on it.
    """
    start = time.perf_counter()
    vol = as_volume(volume)
    names = phase_names(vol)
    label = phase_index(vol, phase)
    dims = [str(d) for d in vol.dims]
    space = spatial(tuple(dims))
    r_max = resolve_r_max([vol.sizes[d] for d in space], r_max)
    labels = vol.values
    counts = np.bincount(labels.ravel().astype(np.int64), minlength=len(names))
    fractions = {name: float(counts[i]) / labels.size for i, name in enumerate(names)}

    workers = len(os.sched_getaffinity(0)) if workers is None else workers
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    stride = section_stride
    if stride is None:
        stride = default_section_stride(tuple(vol.sizes[d] for d in space)) if len(space) == 3 else 1
    axis = None
    if tortuosity_axis is not None:
        axis = "y" if tortuosity_axis == "z" and "z" not in space else tortuosity_axis
    with ThreadPoolExecutor(workers) as pool:
        # With workers to spare, the pool takes the τ solve first and the section shares behind it
        # (cut finer than one per worker, so no thread idles at the end) while this thread computes
        # the correlation functions: scipy, pyamg and torch free the GIL for much of their work.
        solving = pool.submit(_tortuosity, vol, label, axis) if axis is not None and workers > 1 else None
        tort = _tortuosity(vol, label, axis) if axis is not None and solving is None else None
        measuring = (measure_sections(vol, label, shares=SHARES_PER_WORKER * workers, pool=pool, stride=stride)
                     if sizes and workers > 1 else None)  # fmt: skip
        areas = {
            f"{names[label]}|{names[other]}": interfacial_area(vol, label, other, periodic=periodic)
            for other in range(len(names))
            if other != label
        }
        s2 = {a: c.tolist() for a, c in s2_along_axes(vol, label, periodic=periodic, r_max=r_max).items()}
        radial = s2_radial(vol, label, periodic=periodic, r_max=r_max).tolist()
        lineal = {a: c.tolist() for a, c in lineal_path_along_axes(vol, label, periodic=periodic, r_max=r_max).items()}
        size_distributions = measuring() if measuring is not None else section_sizes(vol, label, stride=stride) if sizes else None
        if solving is not None:
            tort = solving.result()
    return Descriptors(
        phase=label,
        phase_name=names[label],
        dims=dims,
        shape=list(labels.shape),
        voxel_size=float(vol.attrs.get("voxel_size", 1.0)),
        periodic=periodic,
        volume_fractions=fractions,
        s2=s2,
        s2_radial=radial,
        lineal_path=lineal,
        tortuosity=tort,
        interfacial_area=areas,
        sizes=size_distributions,
        seconds=time.perf_counter() - start,
    )


def _tortuosity(vol: xr.DataArray, label: int, axis: str) -> Tortuosity:
    if "sample" not in vol.dims:
        return tortuosity(vol, label, axis)
    results: list[Tortuosity] = [tortuosity(vol.isel(sample=i), label, axis) for i in range(vol.sizes["sample"])]
    finite = [t.tau for t in results if math.isfinite(t.tau)]
    return Tortuosity(
        axis=axis,
        tau=float(np.mean(finite)) if finite else math.inf,
        effective_diffusivity=float(np.mean([t.effective_diffusivity for t in results])),
        volume_fraction=float(np.mean([t.volume_fraction for t in results])),
        percolating_fraction=float(np.mean([t.percolating_fraction for t in results])),
        converged=all(t.converged for t in results),
    )
