"""Size distributions of a phase: connected components and local thickness.

Definitions (lengths in voxels):

- **Component**: a connected set of the phase's voxels, face connectivity (4 in 2D, 6 in 3D),
  not wrapped around the faces. Its **equivalent diameter** is that of the disk (2D,
  (4A/π)^½) or ball (3D, (6V/π)^⅓) of the same pixel / voxel count.
- **Local thickness** of a phase voxel p: the width 2r − 1 of the largest discrete ball
  B(c, r) = {q : |q − c| < r} (integer r ≥ 1, centres c on voxels) that lies entirely in the
  phase and contains p. B(c, r) fits exactly when the Euclidean distance from c to the nearest
  voxel outside the phase is ≥ r, so the map is r_max distance transforms (the sphere-fitting
  definition of Hildebrand & Rüegsegger 1997, on the voxel grid). The distribution is
  volume-weighted: ``thickness[k]`` is the fraction of the phase's voxels of width 2k + 1.
- **Connectivity** (``largest_share``): the share of the phase's pixels that lie in the largest
  component of their own section, pooled over sections (Σ largest / Σ phase pixels): near 1 for a
  phase that is one network in every section, small for isolated particles or a fragmented phase.
- **Sections**: a 3D volume is judged through its 2D sections along every axis (its z-, y- and
  x-slices), the only size distribution that compares with a model trained on 2D images. A
  2D image is its own section; a ``sample`` dim pools the sections of every sample.

Order of operations of :func:`section_sizes`: cut the sections, label each section's
components and measure their areas, compute each section's local thickness, pool the counts
of every section.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import NamedTuple

import numpy as np
import scipy.ndimage as ndi
from pydantic import BaseModel, ConfigDict

from micro_doe.platform.descriptors._phase import VolumeLike, as_volume, spatial
from micro_doe.platform.volumes import phase_index


class SizeDistribution(BaseModel):
    """Sizes of one phase over the 2D sections of a volume (or of 2D images).

    ``components_per_kpx``: components per 1000 section pixels; ``diameter_mean`` /
    ``diameter_std``: number-weighted mean and standard deviation of the components'
    equivalent-disk diameters; ``thickness``: volume-weighted local-thickness distribution,
    entry k = fraction of phase pixels of width 2k + 1; ``thickness_mean``: its mean width;
    ``largest_share``: connectivity, the share of phase pixels in their section's largest
    component (module doc). Means are NaN when the phase is absent (and in descriptors stored
    before ``largest_share`` existed).
    """

    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="constants")
    sections: int
    components_per_kpx: float
    diameter_mean: float
    diameter_std: float
    thickness: list[float]
    thickness_mean: float
    largest_share: float = math.nan

    def scalars(self) -> dict[str, float]:
        return {
            "components_per_kpx": self.components_per_kpx,
            "component_diameter": self.diameter_mean,
            "component_diameter_std": self.diameter_std,
            "thickness_mean": self.thickness_mean,
            "largest_component_share": self.largest_share,
        }


def _section_labels(mask: np.ndarray, section_axis: int | None) -> tuple[np.ndarray, int]:
    """Face-connected components of ``mask``; with ``section_axis``, none across that axis."""
    structure = ndi.generate_binary_structure(mask.ndim, 1)
    if section_axis is not None:
        structure = structure.copy()
        index = [1] * mask.ndim
        for end in (0, 2):
            index[section_axis] = end
            structure[tuple(index)] = False
    return ndi.label(mask, structure=structure)


def largest_component_pixels(mask: np.ndarray, section_axis: int | None = None) -> int:
    """Pixels in the largest component of each section of ``mask``, summed over sections
    (a 2D mask, or a 3D one without ``section_axis``, is one section)."""
    labels, n = _section_labels(mask, section_axis)
    if n == 0:
        return 0
    if section_axis is None:
        return int(np.bincount(labels.ravel())[1:].max())
    sections = np.moveaxis(labels, section_axis, 0)
    return int(sum(np.bincount(s.ravel())[1:].max(initial=0) for s in sections))


def equivalent_diameters(mask: np.ndarray, section_axis: int | None = None) -> np.ndarray:
    """Equivalent diameters of the face-connected components of a boolean 2D or 3D ``mask``.

    ``section_axis``: treat a 3D mask as a stack of 2D sections normal to that axis (no
    connectivity across it; equivalent-disk diameters).
    """
    if mask.ndim not in (2, 3):
        raise ValueError(f"equivalent_diameters: expected a 2D or 3D mask, got {mask.ndim} dims")
    labels, n = _section_labels(mask, section_axis)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:].astype(np.float64)
    if mask.ndim == 2 or section_axis is not None:
        return np.sqrt(4.0 * sizes / math.pi)
    return np.cbrt(6.0 * sizes / math.pi)


def local_thickness(mask: np.ndarray, section_axis: int | None = None) -> np.ndarray:
    """Local thickness (width 2r − 1, see the module doc) of every True voxel of ``mask``; 0 outside.

    Works in any number of dims. ``section_axis``: the thickness within each 2D section normal
    to that axis (balls become disks in the section), computed section by section.

    Order of operations: the distance transform of the phase gives the centres where a ball of
    radius r fits (distance ≥ r); for r = 2, 3, … up to the largest, the voxels within distance
    < r of such a centre get width 2r − 1. Each r's distance transform is taken over the centres'
    bounding box widened by r, which holds every voxel that close to a centre; 2D sections take
    the small radii as dilations instead (:func:`_section_thickness`), the same map.
    """
    mask = np.asarray(mask, dtype=bool)
    if section_axis is None:
        return _section_thickness(mask[None])[0] if mask.ndim == 2 else _local_thickness(mask)
    sections = np.moveaxis(mask, section_axis, 0)
    if mask.ndim == 3:
        return np.moveaxis(_section_thickness(sections), 0, section_axis)
    return np.moveaxis(np.stack([_local_thickness(s) for s in sections]), 0, section_axis)


SMALL_RADIUS = 6  # radii up to this: dilations of the whole stack; above: a distance transform per section


def _disk_rectangles(r: int) -> list[tuple[int, int]]:
    """(half-height, half-width) of rectangles whose union is the lattice disk {d : |d| < r}:
    row offset dy has half-width ⌊√(r² − 1 − dy²)⌋, one rectangle per step of that staircase."""
    widths = [math.isqrt(r * r - 1 - dy * dy) for dy in range(r)]
    return [(dy, widths[dy]) for dy in range(r) if dy == r - 1 or widths[dy + 1] < widths[dy]]


def _section_thickness(sections: np.ndarray) -> np.ndarray:
    """:func:`local_thickness` of each 2D section of a boolean (S, H, W) stack.

    The same map as :func:`_local_thickness` section by section, computed in two parts: for
    r ≤ ``SMALL_RADIUS`` the centres of every section at once are dilated by the disk, as a union
    of rectangles (two 1D maximum filters each, along the in-section axes only); for larger r,
    where the centres are few, a distance transform per section over their bounding box."""
    thickness = np.zeros(sections.shape, dtype=np.int32)
    thickness[sections] = 1
    side = max(sections.shape[1:])
    full = np.asarray(sections.reshape(len(sections), -1).all(axis=1))
    dt = np.zeros(sections.shape, dtype=np.float32)  # distance to the section's nearest voxel outside the phase
    for i, section in enumerate(sections):
        if full[i]:
            dt[i] = np.inf
        elif section.any():
            dt[i] = ndi.distance_transform_edt(section)
    for r in range(2, min(SMALL_RADIUS, side) + 1):
        centres = (dt >= r).view(np.uint8)
        if not centres.any():
            break
        covered = np.zeros(sections.shape, dtype=bool)
        for half_height, half_width in _disk_rectangles(r):
            spread = ndi.maximum_filter1d(centres, 2 * half_width + 1, axis=2, mode="constant")
            if half_height:
                spread = ndi.maximum_filter1d(spread, 2 * half_height + 1, axis=1, mode="constant")
            covered |= spread.view(bool)
        thickness[covered & sections] = 2 * r - 1
    for i, section in enumerate(sections):
        if full[i]:  # nothing outside: balls as wide as the array (the largest radius considered)
            thickness[i] = 2 * side - 1
            continue
        _cover_by_distance(thickness[i], section, dt[i], SMALL_RADIUS + 1, side)
    return thickness


def _local_thickness(mask: np.ndarray) -> np.ndarray:
    """:func:`local_thickness` of a whole mask (no sections)."""
    thickness = np.zeros(mask.shape, dtype=np.int32)
    if not mask.any():
        return thickness
    side = max(mask.shape)
    if mask.all():  # nothing outside: balls as wide as the array (the largest radius considered)
        thickness[mask] = 2 * side - 1
        return thickness
    thickness[mask] = 1
    _cover_by_distance(thickness, mask, ndi.distance_transform_edt(mask), 2, side)
    return thickness


def _cover_by_distance(thickness: np.ndarray, mask: np.ndarray, dt: np.ndarray, first: int, side: int) -> None:
    """For r = ``first`` … min(max ``dt``, ``side``): the voxels of ``mask`` within distance < r of
    a centre (``dt`` ≥ r) get width 2r − 1 in ``thickness`` (in place); each r's distance
    transform over the centres' bounding box widened by r, which holds every voxel that close."""
    for r in range(first, min(int(dt.max()), side) + 1):
        centres = dt >= r
        where = np.nonzero(centres)
        box = tuple(slice(max(int(i.min()) - r, 0), int(i.max()) + r + 1) for i in where)
        covered = ndi.distance_transform_edt(~centres[box]) < r
        view = thickness[box]
        view[covered & mask[box]] = 2 * r - 1


def _legacy_local_thickness(mask: np.ndarray, section_axis: int | None = None) -> np.ndarray:
    """The first implementation (every r over the whole array, sections by a large spacing);
    kept as the reference the faster one is tested against."""
    mask = np.asarray(mask, dtype=bool)
    thickness = np.zeros(mask.shape, dtype=np.int32)
    if not mask.any():
        return thickness
    # A section axis gets a spacing no in-plane distance reaches, so each section is on its own.
    far = 4.0 * sum(mask.shape)
    sampling = [1.0] * mask.ndim
    if section_axis is not None:
        sampling[section_axis] = far
    in_plane = max(n for i, n in enumerate(mask.shape) if i != section_axis)
    # Distance from each phase voxel to the nearest voxel outside the phase (none: as far as can be).
    dt = ndi.distance_transform_edt(mask, sampling=sampling) if not mask.all() else np.full(mask.shape, far)
    thickness[mask] = 1
    for r in range(2, min(int(dt.max()), in_plane) + 1):
        centres = dt >= r
        if not centres.any():
            break
        covered = ndi.distance_transform_edt(~centres, sampling=sampling) < r if not centres.all() else mask
        thickness[covered & mask] = 2 * r - 1
    return thickness


class _SectionCounts(NamedTuple):
    """What :func:`section_sizes` pools from one set of sections."""

    diameters: np.ndarray
    largest: int
    phase_pixels: int
    widths: np.ndarray  # pixel counts by local-thickness width
    pixels: int
    sections: int


def _count_sections(mask: np.ndarray, axis: int | None) -> _SectionCounts:
    """The sections of ``mask`` normal to ``axis`` (``None``: a 2D image, its own section)."""
    return _SectionCounts(
        diameters=equivalent_diameters(mask, section_axis=axis),
        largest=largest_component_pixels(mask, section_axis=axis),
        phase_pixels=int(mask.sum()),
        widths=np.bincount(local_thickness(mask, section_axis=axis)[mask].ravel()),
        pixels=mask.size,
        sections=1 if axis is None else mask.shape[axis],
    )


def _shares(mask: np.ndarray, three_d: bool, shares: int, stride: int = 1) -> list[tuple[np.ndarray, int | None]]:
    """(sections, axis) units of one sample: a 2D image is its own section; a 3D volume is cut
    normal to each of its axes, every ``stride``-th section kept, each axis's sections split into
    ``shares`` contiguous parts (sections are independent of one another)."""
    if not three_d:
        return [(mask, None)]
    units: list[tuple[np.ndarray, int | None]] = []
    for axis in range(3):
        kept = mask[(slice(None),) * axis + (slice(None, None, stride),)]
        units += [(part, axis) for part in np.array_split(kept, shares, axis=axis) if part.size]
    return units


def default_section_stride(shape: tuple[int, ...], sections_per_axis: int = 64) -> int:
    """The stride :func:`~micro_doe.platform.descriptors.describe` measures a 3D volume's sections at:
    max(1, ⌊N / 64⌋) for its shortest edge N, so at least 64 sections per axis (every section up to
    127³; every 2nd at 128³, every 4th at 256³). Neighbouring sections of features several voxels
    wide are nearly alike, so the distributions barely move (``docs/explanation/evaluators.md``)."""
    return max(1, min(shape) // sections_per_axis)


def section_sizes(volume: VolumeLike, phase: int | str = 1, *, workers: int = 1, stride: int = 1) -> SizeDistribution:
    """Component and local-thickness size distributions of ``phase`` over 2D sections (module doc).

    ``workers``: threads that measure the sections, each a share of them (scipy releases the GIL
    in its labelling and distance transforms); the result does not depend on it. ``stride``: a 3D
    volume's sections along each axis are every ``stride``-th (from the first); 1, every one."""
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    if workers == 1:
        return measure_sections(volume, phase, stride=stride)()
    with ThreadPoolExecutor(workers) as pool:
        return measure_sections(volume, phase, shares=workers, pool=pool, stride=stride)()


def measure_sections(volume: VolumeLike, phase: int | str = 1, *, shares: int = 1,
                     pool: Executor | None = None, stride: int = 1) -> Callable[[], SizeDistribution]:  # fmt: skip
    """Start :func:`section_sizes` on ``pool`` (each axis's sections cut into ``shares`` parts;
    no pool: measured here and now); returns the call that waits for the parts and pools them.
    ``describe`` shares one pool between these parts and the τ solve, queued behind it."""
    if stride < 1:
        raise ValueError(f"stride must be at least 1, got {stride}")
    vol = as_volume(volume)
    label = phase_index(vol, phase)
    dims = tuple(str(d) for d in vol.dims)
    values = vol.values if "sample" in dims else vol.values[None]
    three_d = len(spatial(dims)) == 3
    units = [unit for sample in values for unit in _shares(sample == label, three_d, shares, stride)]
    if pool is None:
        counts = [_count_sections(*unit) for unit in units]
        return lambda: _pooled(counts)
    futures = [pool.submit(_count_sections, *unit) for unit in units]
    return lambda: _pooled([f.result() for f in futures])


def _pooled(counts: list[_SectionCounts]) -> SizeDistribution:
    """One distribution from the counts of every share of sections."""
    widths = np.zeros(max(len(c.widths) for c in counts), dtype=np.int64)
    for c in counts:
        widths[: len(c.widths)] += c.widths
    pixels = sum(c.pixels for c in counts)
    largest = sum(c.largest for c in counts)
    phase_pixels = sum(c.phase_pixels for c in counts)
    d = np.sort(np.concatenate([c.diameters for c in counts]))  # sorted: the same sums however the sections were shared out
    odd = widths[1::2].astype(np.float64)  # widths 1, 3, 5, …
    total = odd.sum()
    dist = (odd / total).tolist() if total else []
    return SizeDistribution(
        sections=sum(c.sections for c in counts),
        components_per_kpx=1000.0 * len(d) / pixels,
        diameter_mean=float(d.mean()) if len(d) else math.nan,
        diameter_std=float(d.std()) if len(d) else math.nan,
        thickness=dist,
        thickness_mean=float(np.dot(dist, 2 * np.arange(len(dist)) + 1)) if total else math.nan,
        largest_share=largest / phase_pixels if phase_pixels else math.nan,
    )


def size_error(reference: SizeDistribution, generated: SizeDistribution) -> float:
    """How far the local-thickness distributions are apart, in % of the reference's mean width:
    100 · W1 / mean width, W1 the Wasserstein-1 (earth mover's) distance between the two
    volume-weighted width distributions, Σ_k |F_ref(k) − F_gen(k)| · 2 voxels (F the
    cumulative distributions over widths 1, 3, 5, …). 0 when they coincide; a generated
    volume without the phase scores 100 · (mean width − 1) / mean width or more."""
    if not reference.thickness:
        raise ValueError("size_error: the reference has no voxels of the phase")
    n = max(len(reference.thickness), len(generated.thickness), 1)
    ref = np.cumsum(np.pad(reference.thickness, (0, n - len(reference.thickness))))
    gen = np.cumsum(np.pad(generated.thickness, (0, n - len(generated.thickness)))) if generated.thickness else np.ones(n)
    return float(100.0 * 2.0 * np.abs(ref - gen).sum() / reference.thickness_mean)
