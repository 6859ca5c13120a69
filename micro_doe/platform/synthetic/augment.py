"""The 8-fold dihedral augmentation of square images (Micro3Diff: "eight folds").

The symmetries of a square form the dihedral group D4: four rotations and four
reflections. Transform ``k`` (``k = 0..7``) rotates by ``(k mod 4) · 90°`` counter-clockwise
in the plane of the last two axes ``(y, x)`` and then, for ``k ≥ 4``, flips horizontally
(reverses ``x``)::

    D_k = F^(k // 4) ∘ R^(k % 4)

``k = 0`` is the identity; ``k = 4`` the horizontal flip, ``k = 6`` the vertical flip
(a flip after a 180° turn), ``k = 5`` and ``k = 7`` the two diagonal mirrors. Since
``R ∘ F = F ∘ R⁻¹``, composition and inverse have closed forms: :func:`dihedral_compose`,
:func:`dihedral_inverse`.

Everything works on numpy arrays and torch tensors alike, on the last two axes, so a batch
``(n, ..., y, x)`` is transformed image by image.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TypeVar

import numpy as np
import torch
import xarray as xr

Array = TypeVar("Array", np.ndarray, torch.Tensor)
N_DIHEDRAL = 8


def dihedral(x: Array, k: int) -> Array:
    """Apply dihedral transform ``k`` (0..7, module docstring) to the last two axes of ``x``."""
    k = _check_k(k)
    turns, flip = k % 4, k >= 4
    if isinstance(x, torch.Tensor):
        out = torch.rot90(x, turns, dims=(-2, -1))
        return torch.flip(out, dims=(-1,)) if flip else out
    if isinstance(x, np.ndarray):
        out_np = np.rot90(x, turns, axes=(-2, -1))
        return np.ascontiguousarray(np.flip(out_np, axis=-1) if flip else out_np)
    raise TypeError(f"x must be a numpy array or torch tensor, got {type(x).__name__}")


def dihedral_transforms() -> list[Callable[[Array], Array]]:
    """The 8 transforms as callables, in the order ``k = 0..7``."""
    return [partial(dihedral, k=k) for k in range(N_DIHEDRAL)]


def dihedral_compose(a: int, b: int) -> int:
    """The index of ``D_a ∘ D_b`` (apply ``b`` first, then ``a``)."""
    a, b = _check_k(a), _check_k(b)
    # F^fa R^ra F^fb R^rb = F^(fa+fb) R^((-1)^fb ra + rb), using R F = F R⁻¹
    flip_a, turn_a, flip_b, turn_b = a // 4, a % 4, b // 4, b % 4
    return 4 * ((flip_a + flip_b) % 2) + ((-turn_a if flip_b else turn_a) + turn_b) % 4


def dihedral_inverse(k: int) -> int:
    """The index of ``D_k⁻¹``: rotations invert to the opposite turn, reflections to themselves."""
    k = _check_k(k)
    return k if k >= 4 else (-k) % 4


def dihedral_augment(x: Array) -> Array:
    """All 8 variants of a batch ``(n, ..., y, x)`` of square images: ``(8n, ..., y, x)``.

    Variant-major order: ``out[k * n + i] = dihedral(x[i], k)``, so each variant of each
    image appears exactly once.
    """
    if x.ndim < 3:
        raise ValueError(f"x must be a batch (n, ..., y, x) with at least 3 dims, got shape {tuple(x.shape)}")
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"dihedral augmentation needs square images, got (y, x) = {tuple(x.shape[-2:])}")
    variants = [dihedral(x, k) for k in range(N_DIHEDRAL)]
    if isinstance(x, torch.Tensor):
        return torch.cat(variants, dim=0)
    return np.concatenate(variants, axis=0)


def dihedral_augment_volume(stack: xr.DataArray) -> xr.DataArray:
    """:func:`dihedral_augment` for a ``(sample, y, x)`` DataArray.

    Adds coordinates ``dihedral`` (the transform index ``k``) and ``source_sample`` (the
    index of the original image) along ``sample``; attributes are kept.
    """
    if stack.dims != ("sample", "y", "x"):
        raise ValueError(f"stack must have dims (sample, y, x), got {stack.dims}")
    n = stack.sizes["sample"]
    out = xr.DataArray(dihedral_augment(stack.values), dims=stack.dims, name=stack.name, attrs=dict(stack.attrs))
    return out.assign_coords(
        dihedral=("sample", np.repeat(np.arange(N_DIHEDRAL), n)),
        source_sample=("sample", np.tile(np.arange(n), N_DIHEDRAL)),
    )


def _check_k(k: int) -> int:
    if int(k) != k or not 0 <= k < N_DIHEDRAL:
        raise ValueError(f"k must be an integer in [0, 7], got {k}")
    return int(k)
