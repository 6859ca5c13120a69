"""A 3D variational autoencoder of phase-label volumes (conditional-LDM paper, sec. 4.2.1).

Shapes, with L = ``len(channel_mults)`` stride-2 levels and n the volume side (n divisible by 2^L):

    labels  int (B, z, y, x) in 0..K-1
      │  labels_to_input                     C = 1 for two phases (2·label − 1),
      ▼                                      C = K for K ≥ 3 phases (2·onehot − 1)
    x       float (B, C, n, n, n) in [-1, 1]
      │  encode
      ▼
    mu, logvar  (B, latent_channels, n/2^L, n/2^L, n/2^L)
      │  reparameterize: z = mu + exp(logvar / 2) ⊙ ε,  ε ~ N(0, I)      (paper eq. 1)
      ▼
    z       (B, latent_channels, d, d, d),  d = n / 2^L
      │  decode
      ▼
    logits  (B, C, n, n, n)    probabilities(): sigmoid (C = 1, P(phase 1)) or softmax over C

``labels_to_input`` is the 2D U-Net's ``labels_to_channels`` convention for any number of
spatial dims. Architecture (the paper's, scaled down): encoder = a stem conv at full
resolution, then per level a stride-2 3x3x3 conv → InstanceNorm → SiLU → residual block, then a
SiLU and a 3x3x3 conv giving mu and logvar; decoder = its mirror, with 4x4x4 stride-2
transposed convs. The residual block is x + conv(SiLU(IN(conv(SiLU(IN(x)))))), InstanceNorm
with affine weights. Nothing normalises the latent itself (encoder output, decoder input): an
InstanceNorm over the few latent voxels would subtract each channel's mean, which carries
global properties such as the volume fraction (with it the feature predictor's validation R²
for vf was ≈ 0); the residual blocks' skip paths keep that mean at the lowest level.
The paper ends the decoder with a sigmoid; here the decoder returns logits and the sigmoid /
softmax sits in :meth:`VAE3D.probabilities` and (numerically stable) in the loss.

Loss (:func:`vae_loss`, the negative ELBO per voxel, paper eq. 4, with a weight on the KL term):

    reconstruction = mean over batch and voxels of  BCE(logit, label)        (C = 1)
                                                or  CE(logits, label)         (C = K)
    kl             = mean over batch of  −½ Σ_latent (1 + logvar − mu² − exp(logvar))   (nats)
    total          = reconstruction + kl_weight · kl / (voxels per volume)

so kl_weight = 1 is the exact negative ELBO per voxel; smaller values trade a less regular
latent space for sharper reconstructions (latent diffusion models typically use ≪ 1).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from micro_doe.platform.diffusion import randn_like

LOGVAR_RANGE = (-30.0, 20.0)  # logvar is clamped to this range: exp() stays finite in float32


class VAE3DConfig(BaseModel):
    """Architecture and KL weight of :class:`VAE3D` (stored in a model bundle's config.json).

    The defaults map 32³ volumes to a 4³ x 8 latent (512 numbers, 64x compression) with ~0.9 M
    parameters.
    """

    model_config = ConfigDict(extra="forbid")
    in_channels: int = Field(1, ge=1, description="1 for two phases, K >= 3 for K phases (2 is not allowed)")
    base_channels: int = Field(16, ge=1, description="width of the full-resolution stem")
    channel_mults: tuple[int, ...] = Field(
        (1, 2, 4), min_length=1, description="width multiplier per stride-2 level; the side shrinks 2^len"
    )
    latent_channels: int = Field(8, ge=1, description="channels of mu, logvar and z")
    kl_weight: float = Field(1e-2, ge=0.0, description="weight of the KL term per voxel (1 = the ELBO)")

    @model_validator(mode="after")
    def _channels_name_the_phases(self) -> VAE3DConfig:
        if self.in_channels == 2:
            raise ValueError("in_channels: use 1 for two phases (one channel, 2·label − 1), K >= 3 for K phases")
        if any(m < 1 for m in self.channel_mults):
            raise ValueError(f"channel_mults: every multiplier must be >= 1, got {self.channel_mults}")
        return self

    @property
    def n_phases(self) -> int:
        return 2 if self.in_channels == 1 else self.in_channels

    @property
    def downsampling(self) -> int:
        """Volume sides must be divisible by this; the latent side is side / downsampling."""
        return 2 ** len(self.channel_mults)

    def latent_shape(self, side: int) -> tuple[int, int, int, int]:
        """(latent_channels, d, d, d) for cubes of ``side`` voxels."""
        _check_side(side, self.downsampling)
        d = side // self.downsampling
        return (self.latent_channels, d, d, d)


def labels_to_input(labels: torch.Tensor, n_phases: int) -> torch.Tensor:
    """Phase labels (B, *spatial) → network input (B, C, *spatial) in [-1, 1], float32.

    Two phases: one channel, 2·label − 1. K > 2 phases: K centred one-hot channels,
    2·onehot − 1 (the convention of :func:`micro_doe.platform.diffusion.channels.labels_to_channels`,
    for volumes). :func:`micro_doe.platform.diffusion.channels.to_labels` with ``channel_dim=1``
    inverts it, and maps decoder logits to labels the same way.
    """
    labels = torch.as_tensor(labels)
    if n_phases < 2:
        raise ValueError(f"n_phases: expected >= 2, got {n_phases}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= n_phases):
        raise ValueError(f"labels: expected values in 0..{n_phases - 1}, got {int(labels.min())}..{int(labels.max())}")
    if n_phases == 2:
        return (2.0 * labels.float() - 1.0)[:, None]
    onehot = F.one_hot(labels.long(), n_phases).movedim(-1, 1).float()
    return 2.0 * onehot - 1.0


class ResBlock3D(nn.Module):
    """x + conv(SiLU(IN(conv(SiLU(IN(x)))))) at constant width; shape (B, c, *spatial) unchanged."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.InstanceNorm3d(channels, affine=True),
            nn.SiLU(),
            nn.Conv3d(channels, channels, 3, padding=1),
            nn.InstanceNorm3d(channels, affine=True),
            nn.SiLU(),
            nn.Conv3d(channels, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


def _norm_act(channels: int) -> list[nn.Module]:
    return [nn.InstanceNorm3d(channels, affine=True), nn.SiLU()]


class VAE3D(nn.Module):
    """encode(x) -> (mu, logvar); reparameterize; decode(z) -> logits; forward(x) -> (logits, mu, logvar)."""

    def __init__(self, config: VAE3DConfig) -> None:
        super().__init__()
        self.config = config
        widths = [config.base_channels] + [config.base_channels * m for m in config.channel_mults]
        c_in, c_lat = config.in_channels, config.latent_channels

        enc: list[nn.Module] = [nn.Conv3d(c_in, widths[0], 3, padding=1)]
        for k in range(1, len(widths)):
            enc += [nn.Conv3d(widths[k - 1], widths[k], 3, stride=2, padding=1), *_norm_act(widths[k])]
            enc.append(ResBlock3D(widths[k]))
        # No normalisation next to the latent (here and at the decoder input): at d³ voxels an
        # InstanceNorm removes each channel's mean over the latent, which is where a global
        # property such as the volume fraction lives.
        enc += [nn.SiLU(), nn.Conv3d(widths[-1], 2 * c_lat, 3, padding=1)]
        self.encoder = nn.Sequential(*enc)

        dec: list[nn.Module] = [nn.Conv3d(c_lat, widths[-1], 3, padding=1), nn.SiLU()]
        dec.append(ResBlock3D(widths[-1]))
        for k in range(len(widths) - 1, 0, -1):
            dec += [nn.ConvTranspose3d(widths[k], widths[k - 1], 4, stride=2, padding=1), *_norm_act(widths[k - 1])]
            if k > 1:  # no residual block at full resolution (the costliest place), as in the encoder
                dec.append(ResBlock3D(widths[k - 1]))
        dec.append(nn.Conv3d(widths[0], c_in, 3, padding=1))
        self.decoder = nn.Sequential(*dec)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, C, n, n, n) float → mu, logvar (B, latent_channels, d, d, d), logvar clamped to LOGVAR_RANGE."""
        if x.ndim != 5 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"x: expected (B, {self.config.in_channels}, z, y, x), got {tuple(x.shape)}")
        for side in x.shape[2:]:
            _check_side(side, self.config.downsampling)
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar.clamp(*LOGVAR_RANGE)

    @staticmethod
    def reparameterize(
        mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """z = mu + exp(logvar / 2) ⊙ ε, ε ~ N(0, I) drawn with ``generator`` (paper eq. 1)."""
        return mu + torch.exp(0.5 * logvar) * randn_like(mu, generator)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, latent_channels, d, d, d) → logits (B, in_channels, d·2^L, d·2^L, d·2^L)."""
        if z.ndim != 5 or z.shape[1] != self.config.latent_channels:
            raise ValueError(f"z: expected (B, {self.config.latent_channels}, d, d, d), got {tuple(z.shape)}")
        return self.decoder(z)

    def forward(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits, mu, logvar); z is sampled in training mode and is mu in eval mode."""
        mu, logvar = self.encode(x)
        z = self.reparameterize(mu, logvar, generator) if self.training else mu
        return self.decode(z), mu, logvar

    @staticmethod
    def probabilities(logits: torch.Tensor) -> torch.Tensor:
        """Phase probabilities from logits (B, C, ...): sigmoid = P(phase 1) for C = 1, softmax over C otherwise."""
        return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)


class VAELoss(NamedTuple):
    """The terms of :func:`vae_loss` (scalars): ``total = reconstruction + kl_weight · kl / voxels``."""

    total: torch.Tensor
    reconstruction: torch.Tensor
    kl: torch.Tensor


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) ‖ N(0, I)) per batch item in nats, shape (B,).

    KL = −½ Σ_latent (1 + logvar − mu² − exp(logvar)): 0 exactly at mu = 0, logvar = 0, positive elsewhere.
    """
    if mu.shape != logvar.shape:
        raise ValueError(f"logvar: shape {tuple(logvar.shape)} differs from mu's {tuple(mu.shape)}")
    return -0.5 * (1 + logvar - mu**2 - logvar.exp()).flatten(1).sum(1)


def vae_loss(
    logits: torch.Tensor, labels: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, kl_weight: float
) -> VAELoss:
    """Negative ELBO per voxel with a KL weight (module docstring); ``labels`` int (B, z, y, x).

    Reconstruction is binary cross-entropy on the logit of phase 1 when ``logits`` has one
    channel, cross-entropy over the K channels otherwise (both averaged over batch and voxels).
    """
    if logits.shape[0] != labels.shape[0] or logits.shape[2:] != labels.shape[1:]:
        raise ValueError(f"labels: shape {tuple(labels.shape)} does not match logits {tuple(logits.shape)}")
    if kl_weight < 0:
        raise ValueError(f"kl_weight: must be >= 0, got {kl_weight}")
    if logits.shape[1] == 1:
        recon = F.binary_cross_entropy_with_logits(logits[:, 0], labels.to(logits.dtype))
    else:
        recon = F.cross_entropy(logits, labels.long())
    kl = kl_divergence(mu, logvar).mean()
    voxels = labels[0].numel()
    return VAELoss(recon + kl_weight * kl / voxels, recon, kl)


def _check_side(side: int, downsampling: int) -> None:
    if side % downsampling or side // downsampling < 2:
        raise ValueError(
            f"channel_mults: volume sides must be multiples of {downsampling} (2^len(channel_mults)) "
            f"giving a latent side >= 2 (InstanceNorm needs more than one voxel), got side {side}"
        )
