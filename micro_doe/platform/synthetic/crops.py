"""Random square crops of one large 2D micrograph (Micro3Diff case IV).

When a single representative 2D image is all there is, the training set is a stack of
crops taken at uniformly random positions (the paper: 250 crops of 64 × 64 px). Crops may
overlap each other; they never leave the image.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from micro_doe.platform.volumes import make_volume, phase_names, validate_volume


def random_crops(image: xr.DataArray, n: int = 250, size: int = 64, seed: int = 0) -> xr.DataArray:
    """``n`` random ``size × size`` crops of a ``(y, x)`` image, as a ``(sample, y, x)`` stack.

    Each crop's top-left corner ``(y0, x0)`` is uniform over all positions that keep the
    crop inside the image (``0 ≤ y0 ≤ H − size``, ``0 ≤ x0 ≤ W − size``); the corners are
    kept as coordinates ``y0`` and ``x0`` along ``sample``, so crop ``i`` equals
    ``image[y0[i] : y0[i] + size, x0[i] : x0[i] + size]``. Phase names and voxel size are
    carried over from ``image``.
    """
    image = validate_volume(image, "image")
    if image.dims != ("y", "x"):
        raise ValueError(f"image must be a 2D (y, x) image, got dims {image.dims}")
    if int(n) != n or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n}")
    height, width = image.shape
    if int(size) != size or not 1 <= size <= min(height, width):
        raise ValueError(
            f"size must be an integer in [1, {min(height, width)}] (the image is {height} × {width}), got {size}"
        )
    rng = np.random.default_rng(seed)
    y0 = rng.integers(0, height - size + 1, n)
    x0 = rng.integers(0, width - size + 1, n)
    # all windows at once: index (n, size, 1) rows against (n, 1, size) columns
    rows = y0[:, None, None] + np.arange(size)[None, :, None]
    cols = x0[:, None, None] + np.arange(size)[None, None, :]
    crops = image.values[rows, cols]
    params = {"n": n, "size": size, "image_shape": [height, width], "image_source": image.attrs.get("source")}
    stack = make_volume(
        crops,
        dims=("sample", "y", "x"),
        phase_names=phase_names(image),
        voxel_size=float(image.attrs.get("voxel_size", 1.0)),
        voxel_unit=str(image.attrs.get("voxel_unit", "voxel")),
        source="random_crops",
        seed=seed,
        params=params,
    )
    return stack.assign_coords(y0=("sample", y0), x0=("sample", x0))
