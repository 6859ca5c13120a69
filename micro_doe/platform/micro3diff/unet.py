"""A compact 2D U-Net that predicts the noise ε in x_t (the Micro3Diff denoiser).

Input: a batch of noisy images ``x`` of shape (B, C, H, W) and integer timesteps ``t``
(B,); output: ε̂ of the same shape as ``x``. Binary microstructures are one channel in
[-1, 1]; K-phase ones are K centred one-hot channels (see :func:`labels_to_channels`).

Architecture: a stem conv, then per resolution level ``num_res_blocks`` residual blocks
(GroupNorm → SiLU → conv, with the time embedding added in between) and a stride-2
downsampling conv; a middle of two residual blocks with optional self-attention (at the
lowest resolution only, where it is cheap); the mirror-image decoder with skip
connections and nearest-neighbour upsampling; a zero-initialised output conv so training
starts from ε̂ = 0. Time enters as a sinusoidal embedding passed through a small MLP.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from micro_doe.platform.diffusion.blocks import Attention, ResBlock, rename_state_keys, timestep_embedding


class UNetConfig(BaseModel):
    """Architecture of :class:`UNet2D` (stored in a model bundle's config.json)."""

    model_config = ConfigDict(extra="forbid")
    in_channels: int = Field(1, ge=1, description="1 for two phases, K for K phases")
    base_channels: int = Field(32, ge=8, description="width of the first level")
    channel_mults: tuple[int, ...] = Field((1, 2, 2), min_length=1, description="width multiplier per level")
    num_res_blocks: int = Field(1, ge=1, description="residual blocks per level")
    attention: bool = Field(True, description="self-attention in the middle (lowest resolution)")
    groups: int = Field(8, ge=1, description="GroupNorm groups")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _groups_divide_widths(self) -> UNetConfig:
        for mult in self.channel_mults:
            if (self.base_channels * mult) % self.groups:
                raise ValueError(f"groups={self.groups} must divide every level width base_channels*mult")
        return self

    @property
    def downsampling(self) -> int:
        """Image sides must be divisible by this."""
        return 2 ** (len(self.channel_mults) - 1)


class UNet2D(nn.Module):
    """ε-prediction U-Net; ``forward(x, t) -> ε̂`` (see module doc)."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        c0, groups, drop = config.base_channels, config.groups, config.dropout
        t_dim = 4 * c0
        self.t_dim = c0
        self.time_mlp = nn.Sequential(nn.Linear(c0, t_dim), nn.SiLU(), nn.Linear(t_dim, t_dim))
        self.stem = nn.Conv2d(config.in_channels, c0, 3, padding=1)

        widths = [c0 * m for m in config.channel_mults]
        self.down = nn.ModuleList()
        skips = [c0]
        c = c0
        for level, width in enumerate(widths):
            for _ in range(config.num_res_blocks):
                self.down.append(ResBlock(2, c, width, t_dim, groups, drop))
                c = width
                skips.append(c)
            if level < len(widths) - 1:
                self.down.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
                skips.append(c)

        self.mid1 = ResBlock(2, c, c, t_dim, groups, drop)
        self.mid_attn = Attention(c, groups) if config.attention else nn.Identity()
        self.mid2 = ResBlock(2, c, c, t_dim, groups, drop)

        self.up = nn.ModuleList()
        for level, width in reversed(list(enumerate(widths))):
            for _ in range(config.num_res_blocks + 1):
                self.up.append(ResBlock(2, c + skips.pop(), width, t_dim, groups, drop))
                c = width
            if level > 0:
                self.up.append(nn.Upsample(scale_factor=2, mode="nearest"))
                self.up.append(nn.Conv2d(c, c, 3, padding=1))

        self.head = nn.Sequential(nn.GroupNorm(groups, c), nn.SiLU(), nn.Conv2d(c, config.in_channels, 3, padding=1))
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)
        # Bundles written before the blocks were shared call the residual block's embedding "time".
        self._register_load_state_dict_pre_hook(lambda state, prefix, *_: rename_state_keys(state, {".time.": ".emb."}))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        side = self.config.downsampling
        if x.shape[-1] % side or x.shape[-2] % side:
            raise ValueError(f"image sides must be divisible by {side}, got {tuple(x.shape[-2:])}")
        t_emb = self.time_mlp(timestep_embedding(t, self.t_dim))
        h = self.stem(x)
        hs = [h]
        for layer in self.down:
            h = layer(h, t_emb) if isinstance(layer, ResBlock) else layer(h)
            hs.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, t_emb)), t_emb)
        for layer in self.up:
            if isinstance(layer, ResBlock):
                h = layer(torch.cat([h, hs.pop()], dim=1), t_emb)
            else:
                h = layer(h)
        return self.head(h)



def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
