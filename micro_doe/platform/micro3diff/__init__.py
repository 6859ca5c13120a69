"""Micro3Diff (Lee & Yun 2024): a 2D DDPM trained on 2D slices, sampled into 3D by
multi-plane denoising with harmonized sampling.

    unet.py             UNet2D: the 2D ε-model on n×n images
    sampler.py          sample_multiplane (the paper's algorithm and its named variants),
                        sample_2d
    training.py         train_micro3diff: training data, EMA training, checkpoints, the card
    bundle.py           Micro3DiffConfig, load_bundle / write_bundle
    generator.py        Micro3DiffGenerator: a bundle turned into labelled volumes; VARIANTS
    ideal_denoisers.py  exact denoisers (Gaussian, memorising) for training-free tests

Shared with the LDM: :mod:`micro_doe.platform.diffusion` (schedules, samplers, blocks) and
:mod:`micro_doe.platform.bundles`.
"""

from __future__ import annotations

from micro_doe.platform.micro3diff.bundle import Micro3DiffBundle, Micro3DiffConfig, SamplingConfig, load_bundle
from micro_doe.platform.micro3diff.generator import VARIANTS, Micro3DiffGenerator, SamplingSettings
from micro_doe.platform.micro3diff.sampler import DenoisingPass, sample_2d, sample_multiplane
from micro_doe.platform.micro3diff.training import TrainConfig, train_micro3diff
from micro_doe.platform.micro3diff.unet import UNet2D, UNetConfig

__all__ = [
    "VARIANTS",
    "DenoisingPass",
    "Micro3DiffBundle",
    "Micro3DiffConfig",
    "Micro3DiffGenerator",
    "SamplingConfig",
    "SamplingSettings",
    "TrainConfig",
    "UNet2D",
    "UNetConfig",
    "load_bundle",
    "sample_2d",
    "sample_multiplane",
    "train_micro3diff",
]
