"""Time-embedded building blocks of the ε-model U-Nets, one definition for 2D and 3D.

- :func:`timestep_embedding`: sinusoidal features of integer timesteps.
- :class:`ResBlock`: GroupNorm → SiLU → conv, + Linear(embedding) broadcast over space,
  GroupNorm → SiLU → dropout → conv, plus a 1×1 (×1) skip when the width changes.
- :class:`Attention`: single-head self-attention over all voxels, with a residual connection.

``dims`` is 2 for images (B, C, H, W) and 3 for volumes (B, C, D, H, W). The Micro3Diff
2D U-Net and the LDM's latent 3D U-Net are both built from these.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class Conv3d(nn.Conv3d):
    """``nn.Conv3d`` that computes in fp32 under autocast when its input has at most 8 voxels
    (2³): there, CPU bf16 weight gradients came out non-finite now and then (torch 2.13: 1–4 calls
    in 20 at 32–64 channels, none at 1³ or 3³ and above, none in 2D). The cost is nil at that size."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[2:].numel() <= 8 and torch.is_autocast_enabled(x.device.type):
            with torch.autocast(x.device.type, enabled=False):
                return super().forward(x.float())
        return super().forward(x)


CONV = {2: nn.Conv2d, 3: Conv3d}


def conv(dims: int, c_in: int, c_out: int, kernel: int, **kwargs: Any) -> nn.Module:
    """``nn.Conv2d`` or :class:`Conv3d`."""
    if dims not in CONV:
        raise ValueError(f"dims: expected 2 or 3, got {dims}")
    return CONV[dims](c_in, c_out, kernel, **kwargs)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps: [cos(t·ω_k), sin(t·ω_k)], ω_k = P^(−k/(dim/2))."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.float()[:, None] * freqs[None, :]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


class ResBlock(nn.Module):
    """Residual block with the embedding ``emb`` (B, emb_dim) added between its two convs."""

    def __init__(self, dims: int, c_in: int, c_out: int, emb_dim: int, groups: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in)
        self.conv1 = conv(dims, c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2 = nn.GroupNorm(groups, c_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = conv(dims, c_out, c_out, 3, padding=1)
        self.skip = conv(dims, c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(emb).reshape(*emb.shape[:1], -1, *(1,) * (x.ndim - 2))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return h + self.skip(x)


class Attention(nn.Module):
    """Single-head self-attention over all spatial positions of a (B, c, ...) tensor, residual.

    The positions are flattened to one axis and the projections are 1×1 convs on that
    (B, c, N, 1) view, so the weights are the same for any number of spatial dims.
    """

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        flat = x.reshape(b, c, -1, 1)
        q, k, v = self.qkv(self.norm(flat)).reshape(b, 3, c, -1).transpose(-1, -2).unbind(1)
        y = F.scaled_dot_product_attention(q, k, v)  # (b, N, c)
        return x + self.out(y.transpose(-1, -2).reshape(b, c, -1, 1)).reshape(x.shape)


def rename_state_keys(state: dict[str, Any], renames: Mapping[str, str]) -> None:
    """Rename, in place, keys of a state dict that contain an old name (``renames``: old → new).

    Used by load-state-dict pre-hooks so that weights saved before the blocks were shared
    (the 2D block's ``time`` linear, the 3D ``mid_attn.attn`` wrapper) still load.
    """
    for key in list(state):
        new = key
        for old, repl in renames.items():
            new = new.replace(old, repl)
        if new != key:
            state[new] = state.pop(key)


class UNetTrunk(nn.Module):
    """The part both ε-model U-Nets share, in ``dims`` dims: a stem conv; per level
    ``num_res_blocks`` residual blocks and a stride-2 downsampling conv (not after the last
    level); a middle of two residual blocks around optional self-attention; the mirror-image
    decoder (one more block per level, each fed the matching skip, nearest-neighbour upsampling
    and a conv between levels); a GroupNorm → SiLU → conv head, zero-initialised so training
    starts at ε̂ = 0. Subclasses build their embedding first, then call :meth:`build_trunk`, and
    run :meth:`run_trunk` with the embedding of their inputs."""

    def build_trunk(
        self, dims: int, channels: int, c0: int, mults: tuple[int, ...], blocks: int, attention: bool,
        groups: int, dropout: float, emb_dim: int,
    ) -> None:
        self.stem = conv(dims, channels, c0, 3, padding=1)
        widths = [c0 * m for m in mults]
        self.down = nn.ModuleList()
        skips = [c0]
        c = c0
        for level, width in enumerate(widths):
            for _ in range(blocks):
                self.down.append(ResBlock(dims, c, width, emb_dim, groups, dropout))
                c = width
                skips.append(c)
            if level < len(widths) - 1:
                self.down.append(conv(dims, c, c, 3, stride=2, padding=1))
                skips.append(c)
        self.mid1 = ResBlock(dims, c, c, emb_dim, groups, dropout)
        self.mid_attn = Attention(c, groups) if attention else nn.Identity()
        self.mid2 = ResBlock(dims, c, c, emb_dim, groups, dropout)
        self.up = nn.ModuleList()
        for level, width in reversed(list(enumerate(widths))):
            for _ in range(blocks + 1):
                self.up.append(ResBlock(dims, c + skips.pop(), width, emb_dim, groups, dropout))
                c = width
            if level > 0:
                self.up.append(nn.Upsample(scale_factor=2, mode="nearest"))
                self.up.append(conv(dims, c, c, 3, padding=1))
        self.head = nn.Sequential(nn.GroupNorm(groups, c), nn.SiLU(), conv(dims, c, channels, 3, padding=1))
        nn.init.zeros_(self.head[-1].weight)  # type: ignore[arg-type]
        nn.init.zeros_(self.head[-1].bias)  # type: ignore[arg-type]

    def run_trunk(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        hs = [h]
        for layer in self.down:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
            hs.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        for layer in self.up:
            h = layer(torch.cat([h, hs.pop()], dim=1), emb) if isinstance(layer, ResBlock) else layer(h)
        return self.head(h)
