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
