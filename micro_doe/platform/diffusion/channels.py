"""Phase labels <-> the network's float channels (shared by both generators).

Two phases are one channel in [-1, 1] (2·label − 1); K > 2 phases are K centred one-hot
channels (2·onehot − 1), each of which is ±1. :func:`labels_to_channels` encodes,
:func:`to_labels` decodes (sign for one channel, argmax over K).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def labels_to_channels(labels: torch.Tensor, n_phases: int) -> torch.Tensor:
    """Phase labels (B, H, W) → network input (B, C, H, W) in [-1, 1].

    Two phases: one channel, 2·label − 1. K > 2 phases: K centred one-hot channels,
    2·onehot − 1. :func:`to_labels` inverts it.
    """
    if n_phases == 2:
        return (2.0 * labels.float() - 1.0)[:, None]
    onehot = F.one_hot(labels.long(), n_phases).permute(0, 3, 1, 2).float()
    return 2.0 * onehot - 1.0


def to_labels(x0: torch.Tensor | np.ndarray, channel_dim: int = 0) -> np.ndarray:
    """Phase labels (int8 numpy) from sampled x_0, dropping the channel dim ``channel_dim``.

    One channel (data scaled to [-1, 1]): label 1 where x > 0, else 0. K > 1 channels
    (centred one-hot, phase k = channel k): the label is the argmax over channels.
    Wrap the result with :func:`micro_doe.platform.volumes.make_volume` for a volume.
    """
    x = torch.as_tensor(x0).detach().cpu()
    if not -x.ndim <= channel_dim < x.ndim:
        raise ValueError(f"channel_dim: {channel_dim} out of range for an array with {x.ndim} dims")
    if x.shape[channel_dim] == 1:
        labels = (x.squeeze(channel_dim) > 0).to(torch.int8)
    else:
        labels = x.argmax(dim=channel_dim).to(torch.int8)
    return labels.numpy()


def to_labels_at_fractions(
    x0: torch.Tensor | np.ndarray, fractions: tuple[float, ...] | list[float], channel_dim: int = 0, iterations: int = 60
) -> np.ndarray:
    """Phase labels from sampled x_0 whose phase fractions are ``fractions`` (one per channel).

    One channel: label 1 on the ``fractions[0]`` share of voxels with the largest x (a threshold
    at the 1 − f quantile instead of 0). K channels: the argmax of x_c + b_c, the offsets b_c
    found by ``iterations`` steps of b_c += (f_c − current fraction of c) · (spread of x), so the
    fractions approach the targets (to about 1/N for N voxels) while each voxel still takes the
    phase it leans to most, relative to the others.
    """
    x = torch.as_tensor(x0).detach().cpu().double().movedim(channel_dim, 0)
    f = torch.as_tensor(list(fractions), dtype=torch.float64)
    if x.shape[0] == 1:
        if len(f) != 1:
            raise ValueError(f"fractions: expected 1 value for one channel, got {len(f)}")
        flat = x[0].flatten()
        k = int(round(float(f[0]) * flat.numel()))
        labels = torch.zeros(flat.numel(), dtype=torch.int8)
        labels[flat.argsort(descending=True)[:k]] = 1
        return labels.reshape(x.shape[1:]).numpy()
    if len(f) != x.shape[0]:
        raise ValueError(f"fractions: expected {x.shape[0]} values (one per channel), got {len(f)}")
    flat = x.reshape(x.shape[0], -1)
    step = float(flat.std())
    offsets = torch.zeros(x.shape[0], 1, dtype=torch.float64)
    for _ in range(iterations):
        labels = (flat + offsets).argmax(0)
        current = torch.bincount(labels, minlength=x.shape[0]).double() / labels.numel()
        offsets += (f - current)[:, None] * step
    return (flat + offsets).argmax(0).to(torch.int8).reshape(x.shape[1:]).numpy()


def to_labels_by_hysteresis(x0: torch.Tensor | np.ndarray, fraction: float, channel_dim: int = 0) -> np.ndarray:
    """Two-phase labels (int8 numpy) from one channel of sampled x_0: the sign's phase grown to ``fraction``.

    Hysteresis thresholding: the seeds are the voxels with x > 0 (:func:`to_labels`' phase 1);
    phase 1 is every voxel with x ≥ τ that is face-connected, through voxels with x ≥ τ, to a
    seed, for the lowest τ ≤ 0 at which it holds at most round(f · N) of the N voxels (a
    bisection over the sorted values of x, so exact up to ties). The phase only grows from where
    the network put it: thin features thicken and broken ones rejoin, and no component appears
    that the sign did not start, where a threshold at the fraction (:func:`to_labels_at_fractions`)
    keeps every voxel above it, specks included. When the sign's phase already holds more than
    f, phase 0 is grown the same way to 1 − f. Without a seed (x_0 nowhere positive) phase 1
    stays empty, as the sign leaves it.
    """
    x = torch.as_tensor(x0).detach().cpu().double()
    if x.shape[channel_dim] != 1:
        raise ValueError(f"decode 'hysteresis': two phases only (one channel), got {x.shape[channel_dim]} channels")
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction: expected a value in (0, 1), got {fraction}")
    v = x.squeeze(channel_dim).numpy()
    if int((v > 0).sum()) > round(fraction * v.size):
        return (1 - _grown(-v, 1.0 - fraction)).astype(np.int8)
    return _grown(v, fraction).astype(np.int8)


def _grown(v: np.ndarray, fraction: float) -> np.ndarray:
    """Phase 1 of :func:`to_labels_by_hysteresis`, for a field whose positive part holds at most ``fraction``."""
    from scipy import ndimage

    seeds, k = v > 0, round(fraction * v.size)
    if not seeds.any():
        return seeds
    levels = np.sort(v[~seeds])[::-1]  # the thresholds below the seeds, highest first

    def grown(i: int) -> np.ndarray:  # admit the i highest values below the seeds (and their ties)
        if i == 0:
            return seeds
        components, _ = ndimage.label(v >= levels[i - 1])
        keep = np.zeros(components.max() + 1, dtype=bool)
        keep[components[seeds]] = True
        keep[0] = False
        return keep[components]

    lo, hi = 0, len(levels)  # grown(lo) fits (the seeds do); find the largest i whose grown(i) fits
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if int(grown(mid).sum()) <= k:
            lo = mid
        else:
            hi = mid - 1
    return grown(lo)
