"""A compact 2D U-Net that predicts the noise ε in x_t (the Micro3Diff denoiser).

Input: a batch of noisy images ``x`` of shape (B, C, H, W) and integer timesteps ``t``
(B,); output: ε̂ of the same shape as ``x``. Binary microstructures are one channel in
[-1, 1]; K-phase ones are K centred one-hot channels (see :func:`labels_to_channels`).

Architecture: the shared :class:`~micro_doe.platform.diffusion.blocks.UNetTrunk` in 2D (stem
conv, residual blocks with the time embedding added in between, stride-2 downsampling,
self-attention in the middle only, where it is cheap, the mirror-image decoder with skip
connections, a zero-initialised output conv so training starts from ε̂ = 0). Time enters as a
sinusoidal embedding passed through a small MLP. Weights and activations are kept channels-last
(NHWC), the layout oneDNN's CPU convolutions (and tensor cores on CUDA) are fastest in; the
output is returned in the usual layout.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from micro_doe.platform.diffusion.blocks import UNetTrunk, rename_state_keys, timestep_embedding


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


class UNet2D(UNetTrunk):
    """ε-prediction U-Net; ``forward(x, t) -> ε̂`` (see module doc)."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        c0 = config.base_channels
        t_dim = 4 * c0
        self.t_dim = c0
        self.time_mlp = nn.Sequential(nn.Linear(c0, t_dim), nn.SiLU(), nn.Linear(t_dim, t_dim))
        self.build_trunk(2, config.in_channels, c0, config.channel_mults, config.num_res_blocks, config.attention,
                         config.groups, config.dropout, t_dim)  # fmt: skip
        # Bundles written before the blocks were shared call the residual block's embedding "time".
        self._register_load_state_dict_pre_hook(lambda state, prefix, *_: rename_state_keys(state, {".time.": ".emb."}))
        # Channels-last (NHWC) weights and activations: oneDNN's convolutions run 1.2-1.3x faster in
        # fp32 and 1.6-1.8x in bf16 on the CPU (benchmarks/micro3diff_speed.py); loading a state
        # dict copies into these tensors and keeps their layout.
        self.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # (missing from the stubs)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        side = self.config.downsampling
        if x.shape[-1] % side or x.shape[-2] % side:
            raise ValueError(f"image sides must be divisible by {side}, got {tuple(x.shape[-2:])}")
        eps = self.run_trunk(x.contiguous(memory_format=torch.channels_last), self.time_mlp(timestep_embedding(t, self.t_dim)))
        return eps.contiguous()  # callers get the usual (NCHW) layout back


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
