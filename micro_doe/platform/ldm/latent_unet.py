"""The conditional latent denoiser: a 3D U-Net ε-model with time and context embeddings (sec. 4.2.3).

``LatentUNet3D.forward(z_t, t, context, drop_mask=None) -> ε̂``:

- ``z_t``: noisy latents (B, C, d, d, d), C = the VAE's ``latent_channels``; ε̂ has the same shape.
- ``t``: integer training steps (B,) in 0..T-1 (the conventions of ``diffusion.py``).
- ``context``: the conditioning vector (B, F) in normalised units (the feature predictor's
  outputs / :class:`~micro_doe.platform.ldm.feature_predictor.Normaliser` of user targets);
  None means every row is unconditional. NaN marks a label that is not given (free): only a
  model trained with ``label_dropout`` > 0 accepts it (others raise ``ValueError``).
- ``drop_mask``: bool (B,); True rows ignore their context and use a learned null embedding.

Embedding: emb = MLP(sinusoidal(t)) + MLP(context), or MLP(sinusoidal(t)) + null for dropped
rows (``null_embedding``, a learned vector initialised to zero), so a dropped row's output does
not depend on its context at all. With ``label_dropout`` > 0 the context MLP reads
(values with free labels set to 0, given-mask) — 2F numbers — so "free" is never confused
with a label whose normalised value is 0. emb is added inside every residual block, encoder and decoder
(the paper embeds the condition "within both the embedding and decoder layers").

Architecture: the Micro3Diff 2D U-Net in 3D, from the same blocks
(:mod:`~micro_doe.platform.diffusion.blocks`: GroupNorm → SiLU → conv residual blocks,
stride-2 downsampling, nearest-neighbour upsampling, skip connections, optional single-head
self-attention in the middle, zero-initialised output conv so training starts at ε̂ = 0).

Classifier-free guidance (Ho & Salimans 2022): training drops the condition of each item with
probability ``cfg_dropout`` (:func:`conditional_diffusion_loss`), so one network learns both
ε(z_t, t, c) and ε(z_t, t, ∅); :mod:`~micro_doe.platform.ldm.sampling` mixes them.
``cfg_dropout = 0`` trains the paper's plain conditional model (no unconditional branch).

Any subset of labels (an extension of the paper): ``label_dropout`` p additionally frees each
label of each kept item independently with probability p, so every subset of labels is a
condition the network was trained on, and the free labels are marginalised over the data.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from micro_doe.platform.diffusion import NoiseSchedule, diffusion_loss
from micro_doe.platform.diffusion.blocks import UNetTrunk, rename_state_keys, timestep_embedding


class LatentUNetConfig(BaseModel):
    """Architecture of :class:`LatentUNet3D` and its condition-dropout rate (stored in config.json)."""

    model_config = ConfigDict(extra="forbid")
    latent_channels: int = Field(8, ge=1, description="channels of the VAE latent")
    context_dim: int = Field(..., ge=1, description="length F of the conditioning vector")
    base_channels: int = Field(24, ge=1, description="width of the first level")
    channel_mults: tuple[int, ...] = Field((1, 2), min_length=1, description="width multiplier per level")
    num_res_blocks: int = Field(1, ge=1, description="residual blocks per level")
    attention: bool = Field(True, description="self-attention in the middle (lowest resolution)")
    groups: int = Field(8, ge=1, description="GroupNorm groups")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    cfg_dropout: float = Field(
        0.1, ge=0.0, lt=1.0, description="training probability of replacing an item's context by the null context"
    )
    label_dropout: float = Field(
        0.0, ge=0.0, lt=1.0, description="training probability of freeing each label of an item (any-subset conditioning)"
    )

    @model_validator(mode="after")
    def _groups_divide_widths(self) -> LatentUNetConfig:
        for mult in self.channel_mults:
            if mult < 1 or (self.base_channels * mult) % self.groups:
                raise ValueError(f"groups={self.groups} must divide every level width base_channels*mult (mults >= 1)")
        if self.base_channels % self.groups:
            raise ValueError(f"groups={self.groups} must divide base_channels={self.base_channels}")
        return self

    @property
    def downsampling(self) -> int:
        """Latent sides must be divisible by this."""
        return 2 ** (len(self.channel_mults) - 1)


class LatentUNet3D(UNetTrunk):
    """Conditional ε-prediction U-Net on latents; ``forward(z_t, t, context, drop_mask=None) -> ε̂``."""

    def __init__(self, config: LatentUNetConfig) -> None:
        super().__init__()
        self.config = config
        c0, groups, drop = config.base_channels, config.groups, config.dropout
        emb_dim = 4 * c0
        self.t_dim = c0
        self.time_mlp = nn.Sequential(nn.Linear(c0, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        context_inputs = 2 * config.context_dim if config.label_dropout > 0 else config.context_dim
        self.context_mlp = nn.Sequential(nn.Linear(context_inputs, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.null_embedding = nn.Parameter(torch.zeros(emb_dim))
        self.build_trunk(3, config.latent_channels, c0, config.channel_mults, config.num_res_blocks, config.attention,
                         groups, drop, emb_dim)  # fmt: skip
        # Bundles written before the blocks were shared wrapped the 3D attention in ".attn".
        self._register_load_state_dict_pre_hook(lambda state, prefix, *_: rename_state_keys(state, {"mid_attn.attn.": "mid_attn."}))

    def embedding(
        self, t: torch.Tensor, context: torch.Tensor | None, drop_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """emb (B, 4·base_channels) = time MLP + (context MLP, or the null embedding where dropped)."""
        b = t.shape[0]
        emb = self.time_mlp(timestep_embedding(t, self.t_dim))
        null = self.null_embedding.expand(b, -1)
        if context is None:
            return emb + null
        if context.shape != (b, self.config.context_dim):
            raise ValueError(f"context: expected shape ({b}, {self.config.context_dim}), got {tuple(context.shape)}")
        ctx = self.context_mlp(self.context_inputs(context.to(emb.dtype)))
        if drop_mask is None:
            return emb + ctx
        if drop_mask.shape != (b,) or drop_mask.dtype != torch.bool:
            raise ValueError(f"drop_mask: expected a bool tensor of shape ({b},), got {drop_mask.dtype} "
                             f"{tuple(drop_mask.shape)}")
        return emb + torch.where(drop_mask.to(emb.device)[:, None], null, ctx)

    def context_inputs(self, context: torch.Tensor) -> torch.Tensor:
        """What the context MLP reads: the context, or (context with NaN → 0, given-mask) for
        a model trained with ``label_dropout``."""
        free = torch.isnan(context)
        if self.config.label_dropout == 0:
            if bool(free.any()):
                raise ValueError("context: this model was trained without label_dropout, so every label must be "
                                 "given (no NaN)")
            return context
        return torch.cat([context.masked_fill(free, 0.0), (~free).to(context.dtype)], dim=1)

    def forward(
        self,
        z_t: torch.Tensor,
        t: torch.Tensor,
        context: torch.Tensor | None,
        drop_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if z_t.ndim != 5 or z_t.shape[1] != self.config.latent_channels:
            raise ValueError(f"z_t: expected (B, {self.config.latent_channels}, d, d, d), got {tuple(z_t.shape)}")
        side = self.config.downsampling
        if any(s % side for s in z_t.shape[2:]):
            raise ValueError(f"z_t: latent sides must be divisible by {side}, got {tuple(z_t.shape[2:])}")
        if t.shape != z_t.shape[:1]:
            raise ValueError(f"t: expected one step per item, shape ({z_t.shape[0]},), got {tuple(t.shape)}")
        return self.run_trunk(z_t, self.embedding(t, context, drop_mask))


def conditional_diffusion_loss(
    model: LatentUNet3D,
    z0: torch.Tensor,
    context: torch.Tensor,
    schedule: NoiseSchedule,
    cfg_dropout: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """ε-MSE of ``diffusion.diffusion_loss`` with condition dropout (paper eq. 6 + classifier-free guidance).

    ``z0`` (B, C, d, d, d) clean latents, ``context`` (B, F). Each item's context is dropped
    (replaced by the null embedding) independently with probability ``cfg_dropout``
    (default: ``model.config.cfg_dropout``); with ``model.config.label_dropout`` p > 0 each
    label of each item is then freed (set to NaN) with probability p; then t ~ U{0..T-1},
    ε ~ N(0, I) and z_t = sqrt(abar_t) z0 + sqrt(1 − abar_t) ε as in ``diffusion_loss``.
    Random numbers, in this order: the drop mask, the label mask (only when p > 0), t, ε, all
    from ``generator``.
    """
    p = model.config.cfg_dropout if cfg_dropout is None else float(cfg_dropout)
    if not 0.0 <= p < 1.0:
        raise ValueError(f"cfg_dropout: expected a probability in [0, 1), got {cfg_dropout}")
    if context.shape[0] != z0.shape[0]:
        raise ValueError(f"context: {context.shape[0]} rows for {z0.shape[0]} latents")
    device = generator.device if generator is not None else z0.device
    drop_mask = (torch.rand(z0.shape[0], generator=generator, device=device) < p).to(z0.device)
    if model.config.label_dropout > 0:
        free = (torch.rand(context.shape, generator=generator, device=device) < model.config.label_dropout)
        context = context.masked_fill(free.to(context.device), float("nan"))
    return diffusion_loss(lambda z_t, t: model(z_t, t, context, drop_mask), z0, schedule, generator)
