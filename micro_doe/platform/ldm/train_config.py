"""Recipe of :func:`micro_doe.platform.ldm.training.train_ldm`: per-stage configs and the staging directory.

    StageConfig     AdamW settings every stage shares
    VAEStage, FPStage, LDMStage
                    recipe and architecture of each stage
    LDMTrainConfig  one config per stage plus what conditions and what is predicted
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from micro_doe.platform.diffusion.training import TrainingPrecision
from micro_doe.platform.ldm.latent_unet import LatentUNetConfig
from micro_doe.platform.ldm.vae import VAE3DConfig

STAGES = ("vae", "fp", "ldm")
SYMMETRIES = range(16)  # indices of the maps of :func:`symmetry`
DEFAULT_CONDITIONING = ("vf_donor", "tau_donor", "tau_acceptor")
FP_EXTRAS = ("interfacial_area", "phi", "chi", "log_time")  # predicted besides the conditioning labels
OnLog = Callable[[str, int, float], None]
_SHARED = {  # the LDMTrainConfig fields besides its own config that each stage's weights depend on
    "vae": {"seed"},
    "fp": {"seed", "fp_outputs", "normaliser"},
    "ldm": {"seed", "conditioning", "condition_on", "normaliser"},
}


class StageConfig(BaseModel):
    """Optimiser settings shared by the stages (AdamW, constant learning rate, gradient clipping)."""

    model_config = ConfigDict(extra="forbid")
    steps: int = Field(ge=1, description="optimiser steps")
    batch_size: int = Field(ge=1, description="items per step, drawn with replacement")
    lr: float = Field(gt=0, description="AdamW learning rate")
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float = Field(1.0, gt=0, description="max global gradient norm")
    checkpoint_every: int = Field(250, ge=1)
    precision: TrainingPrecision = Field(
        "fp32", description="the forward pass: fp32, or bf16 autocast (mixed precision: weights, optimiser and loss "
        "stay fp32; about half a CPU step with bf16 units). Not part of a checkpoint's identity"
    )


class VAEStage(StageConfig):
    """Stage "vae": recipe and architecture of the VAE (``VAE3DConfig`` without in_channels)."""

    steps: int = Field(5000, ge=1)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(1e-3, gt=0)
    checkpoint_every: int = Field(500, ge=1)
    augment: bool = Field(True, description="one of the 16 symmetries per batch (z stays the film normal)")
    base_channels: int = Field(16, ge=1)
    channel_mults: tuple[int, ...] = Field((1, 2, 4), min_length=1)
    latent_channels: int = Field(8, ge=1)
    kl_weight: float = Field(1e-2, ge=0.0, description="weight of the KL term per voxel (vae.py)")

    def architecture(self, in_channels: int) -> VAE3DConfig:
        return VAE3DConfig(
            in_channels=in_channels, base_channels=self.base_channels, channel_mults=self.channel_mults,
            latent_channels=self.latent_channels, kl_weight=self.kl_weight,
        )  # fmt: skip


class FPStage(StageConfig):
    """Stage "fp": recipe and hidden layers of the feature predictor (MSE on normalised labels)."""

    steps: int = Field(4000, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    augment: bool = Field(True, description="train on the latents of all 16 symmetric copies of each volume")
    readout: Literal["positionwise", "flatten"] = Field(
        "positionwise", description="shared per-voxel MLP + pooling, or the paper's flattened MLP (feature_predictor.py)"
    )
    local_width: int = Field(64, ge=1, description="channels of the positionwise MLP")
    hidden: tuple[int, ...] = Field((64,), description="the head's hidden widths (the paper's flatten MLP: (256, 64))")
    dropout: float = Field(0.1, ge=0.0, lt=1.0)


class LDMStage(StageConfig):
    """Stage "ldm": recipe and architecture of the latent denoiser (linear β schedule, paper's T = 1000)."""

    steps: int = Field(30000, ge=1)
    batch_size: int = Field(32, ge=1)
    checkpoint_every: int = Field(1000, ge=1)
    lr: float = Field(2e-4, gt=0)
    ema_decay: float = Field(0.995, ge=0, lt=1)
    augment: bool = Field(True, description="train on the latents of all 16 symmetric copies of each volume")
    cfg_dropout: float = Field(0.1, ge=0.0, lt=1.0, description="probability of training an item unconditionally")
    label_dropout: float = Field(
        0.25, ge=0.0, lt=1.0, description="probability of freeing each label of an item: any subset is a condition"
    )
    T: int = Field(1000, ge=2, description="diffusion steps of the linear β schedule (1e-4 … 1e-2)")
    base_channels: int = Field(32, ge=1)
    channel_mults: tuple[int, ...] = Field((1, 2), min_length=1)
    num_res_blocks: int = Field(1, ge=1)
    attention: bool = True
    groups: int = Field(8, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)

    def architecture(self, latent_channels: int, context_dim: int) -> LatentUNetConfig:
        return LatentUNetConfig(
            latent_channels=latent_channels, context_dim=context_dim, base_channels=self.base_channels,
            channel_mults=self.channel_mults, num_res_blocks=self.num_res_blocks, attention=self.attention,
            groups=self.groups, dropout=self.dropout, cfg_dropout=self.cfg_dropout,
            label_dropout=self.label_dropout,
        )  # fmt: skip


class LDMTrainConfig(BaseModel):
    """Recipe for :func:`train_ldm`: one config per stage plus what conditions and what is predicted.

    ``conditioning``: the labels the LDM is conditioned on (the user's targets);
    ``fp_outputs``: what the feature predictor predicts, empty = ``conditioning`` +
    interfacial_area, phi, chi, log_time (must include every conditioning label).
    Every ``tau_*`` name is normalised as 1/τ. Defaults: the recipe of the shipped 32³
    two-phase ``opv-32`` (about 50 minutes on 2 CPU cores: VAE 20, FP 1, LDM 25, plus encoding).
    """

    model_config = ConfigDict(extra="forbid")
    vae: VAEStage = VAEStage()
    fp: FPStage = FPStage()
    ldm: LDMStage = LDMStage()
    conditioning: tuple[str, ...] = Field(DEFAULT_CONDITIONING, min_length=1)
    fp_outputs: tuple[str, ...] = ()
    condition_on: Literal["labels", "predictions"] = "labels"
    normaliser: Literal["standard", "minmax"] = "standard"
    seed: int = 0
    log_every: int = Field(50, ge=1, description="steps between the loss values kept in the summaries")

    @model_validator(mode="after")
    def _outputs_cover_conditioning(self) -> LDMTrainConfig:
        if len(set(self.conditioning)) != len(self.conditioning):
            raise ValueError(f"conditioning: names must be distinct, got {self.conditioning}")
        if not self.fp_outputs:
            self.fp_outputs = self.conditioning + tuple(n for n in FP_EXTRAS if n not in self.conditioning)
        missing = [n for n in self.conditioning if n not in self.fp_outputs]
        if missing:
            raise ValueError(f"fp_outputs: must include every conditioning label; missing {missing}")
        if len(set(self.fp_outputs)) != len(self.fp_outputs):
            raise ValueError(f"fp_outputs: names must be distinct, got {self.fp_outputs}")
        return self


def inverse_names(names: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The labels normalised as 1/v: every tortuosity ``tau_*`` (inf for a non-percolating phase)."""
    return tuple(n for n in names if n.startswith("tau_"))


def staging_dir(out: str | Path) -> Path:
    """``OUT.staging``: checkpoints and finished stage weights beside the bundle ``OUT``."""
    out = Path(out)
    return out.with_name(out.name + ".staging")
