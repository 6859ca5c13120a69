"""The images a Micro3Diff model trains on and the ones set aside to tune it.

Where the images come from (:func:`load_training_data`: a volume or stack file, a folder of
PNG/TIFF images, or crops of one large image), how they become a (sample, y, x) stack of square
images (:func:`training_images`), which of them are held out for ``micro-doe tune``
(:func:`split_held_out`: the last ones, a contiguous block, so neighbouring z-slices of one volume
do not end up on both sides; crops of one image from a strip no training crop touches,
:func:`crops_with_held_out_strip`), and what the bundle keeps of them: the descriptors of the data
(:func:`training_reference`) and the channels' autocovariance the ``spectral`` variant steers
toward (:func:`image_autocovariance`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from micro_doe.platform.descriptors import Descriptors, describe, section_sizes
from micro_doe.platform.diffusion.channels import labels_to_channels
from micro_doe.platform.micro3diff.spectrum import radial_autocovariance
from micro_doe.platform.synthetic.crops import random_crops
from micro_doe.platform.volumes import IMAGE_SUFFIXES, generator_params, make_volume, read_volume


def training_images(data: xr.DataArray, where: str = "data") -> xr.DataArray:
    """The 2D training images of a data set, as a (sample, y, x) stack.

    A (sample, y, x) stack is used as it is; a (z, y, x) volume gives its z-slices
    (Micro3Diff case I), and a (sample, z, y, x) stack of volumes the z-slices of every volume.
    Images must be square: multi-plane sampling fills an n×n×n cube.
    """
    if data.dims == ("sample", "z", "y", "x"):
        data = data.stack(image=("sample", "z")).transpose("image", "y", "x")
        data = data.drop_vars(["image", "sample", "z"], errors="ignore").rename(image="sample")
    if data.dims == ("z", "y", "x"):
        data = data.rename(z="sample")
    if data.dims != ("sample", "y", "x"):
        hint = " (one large image: cut it with `micro-doe data make crops` first)" if data.dims == ("y", "x") else ""
        raise ValueError(f"{where}: expected 2D images as (sample, y, x) or a (z, y, x) volume, got dims {data.dims}{hint}")
    if data.sizes["y"] != data.sizes["x"]:
        raise ValueError(f"{where}: images must be square for multi-plane sampling, got {data.sizes['y']}×{data.sizes['x']}")
    return data


MIN_HELD_OUT = 4  # images: fewer cannot judge sizes and connectivity
MIN_TRAINING = 16  # images left to train on


def split_held_out(stack: xr.DataArray, fraction: float, where: str = "data") -> tuple[xr.DataArray, xr.DataArray | None]:
    """(training images, held-out images) of a (sample, y, x) stack: the last
    max(MIN_HELD_OUT, round(fraction · n)) images are set aside; none when ``fraction`` is 0."""
    n = int(stack.sizes["sample"])
    if fraction == 0.0:
        return stack, None
    held = held_out_count(n, fraction)
    if n - held < MIN_TRAINING:
        raise ValueError(
            f"{where}: {n} images are too few to set {held} aside for tuning (--held-out {fraction:g}) and train on "
            f"{MIN_TRAINING} or more; give at least {MIN_HELD_OUT + MIN_TRAINING} images, or --held-out 0 with --no-tune"
        )
    return stack.isel(sample=slice(0, n - held)), stack.isel(sample=slice(n - held, n))


def check_training_phases(data: xr.DataArray, where: str = "data") -> None:
    """Training data must hold at least two phases (a one-phase set teaches the model nothing)."""
    labels = np.unique(data.values)
    if labels.size < 2:
        raise ValueError(f"{where}: every image is one phase (label {int(labels[0]) if labels.size else '-'}); "
                         "training needs at least two phases (check the threshold)")


def held_out_count(n: int, fraction: float) -> int:
    """How many of ``n`` images :func:`split_held_out` sets aside: max(MIN_HELD_OUT, round(fraction · n)); 0 for 0."""
    return 0 if fraction == 0.0 else max(MIN_HELD_OUT, round(fraction * n))


def crops_with_held_out_strip(image: xr.DataArray, n_crops: int, crop_size: int, fraction: float, seed: int,
                              where: str = "data") -> xr.DataArray:
    """``n_crops`` random ``crop_size`` crops of one (y, x) image, of which the last
    :func:`held_out_count` are cut from a strip of the image's bottom rows that no other crop
    touches, so the images :func:`split_held_out` sets aside share no pixel with those trained on.

    The strip is max(crop_size, ⌈fraction · H⌉) rows of the H; the training crops come from the
    rows above it (seed ``seed``), the held-out crops from the strip (seed ``seed + 1``); ``y0``
    and ``x0`` stay the crops' corners in the whole image. ``fraction`` 0: plain random crops."""
    held = held_out_count(n_crops, fraction)
    if held == 0:
        return random_crops(image, n=n_crops, size=crop_size, seed=seed)
    height = int(image.sizes["y"])
    strip = max(crop_size, math.ceil(fraction * height))
    if height - strip < crop_size:
        raise ValueError(f"{where}: the image's {height} rows are too few to set a strip of {strip} aside for tuning "
                         f"(--held-out {fraction:g}) and crop --crop-size {crop_size} above it; give an image of at "
                         f"least {strip + crop_size} rows, a smaller --crop-size, or --held-out 0 with --no-tune")
    if n_crops - held < MIN_TRAINING:
        raise ValueError(f"{where}: --n-crops {n_crops} leaves fewer than {MIN_TRAINING} crops to train on after {held} "
                         f"held out; give --n-crops {MIN_TRAINING + held} or more")
    above = random_crops(image.isel(y=slice(0, height - strip)), n=n_crops - held, size=crop_size, seed=seed)
    below = random_crops(image.isel(y=slice(height - strip, height)), n=held, size=crop_size, seed=seed + 1)
    below = below.assign_coords(y0=below["y0"] + (height - strip))
    stack = xr.concat([above, below], dim="sample", combine_attrs="override")
    stack.attrs["generator_params"] = json.dumps(generator_params(above) | {
        "n": n_crops, "image_shape": [height, int(image.sizes["x"])], "held_out_strip_rows": strip, "held_out_crops": held},
        sort_keys=True)
    return stack


def load_training_data(
    path: str | Path,
    *,
    threshold: float | None = None,
    crop_size: int | None = None,
    n_crops: int = 250,
    seed: int = 0,
    held_out: float = 0.0,
) -> xr.DataArray:
    """Training images from a volume/stack file, a folder of PNG/TIFF images, or one large
    image cut into ``n_crops`` random ``crop_size`` crops (Micro3Diff case IV). Crops with
    ``held_out`` > 0: the last ones come from a strip of the image no other crop touches
    (:func:`crops_with_held_out_strip`), as crops of one image would otherwise overlap."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"{path}: no .png/.tif/.tiff images in this folder")
        images = [read_volume(f, threshold=threshold) for f in files]
        shapes = {img.shape for img in images}
        if len(shapes) != 1 or images[0].ndim != 2:
            raise ValueError(f"{path}: expected 2D images of one shape, got shapes {sorted(shapes)}")
        return make_volume(np.stack([img.values for img in images]), dims=("sample", "y", "x"), source=str(path))
    data = read_volume(path, threshold=threshold)
    if crop_size is not None:
        if data.dims != ("y", "x"):
            raise ValueError(f"{path}: cropping takes one 2D image, got dims {data.dims}")
        return crops_with_held_out_strip(data, n_crops, crop_size, held_out, seed, f"--data {path}")
    return data


def image_autocovariance(stack: xr.DataArray, n_phases: int) -> list[list[float]]:
    """The ``spectral`` variant's target: :func:`radial_autocovariance` of the training images'
    channels (the ±1 channels the model learns, :func:`labels_to_channels`)."""
    channels = labels_to_channels(torch.as_tensor(stack.values.astype(np.int64)), n_phases)
    return radial_autocovariance(channels.numpy())


def training_reference(data: xr.DataArray, stack: xr.DataArray | None = None) -> Descriptors:
    """The bundle's reference: the data's descriptors (curves along every axis the data has),
    with size distributions over the 2D training images themselves (the sections a model sees,
    of the size of a generated volume's sections)."""
    stack = training_images(data) if stack is None else stack
    return describe(data, 1, tortuosity_axis=None, sizes=False).model_copy(update={"sizes": section_sizes(stack, 1)})


def labels_stack(labels: np.ndarray) -> xr.DataArray:
    """Sampled label images (n, y, x) as a (sample, y, x) stack, the layout of the training images."""
    return xr.DataArray(labels.astype(np.int8), dims=("sample", "y", "x"))


