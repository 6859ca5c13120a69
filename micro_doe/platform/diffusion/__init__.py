"""The diffusion core both generators share.

    schedule.py  NoiseSchedule (β_t, ᾱ_t, forward noising, renoise), the ε-loss, seeded noise
    samplers.py  DDPMSampler and DDIMSampler behind one ``step()`` interface
    blocks.py    time-embedded residual and attention blocks, one definition for 2D and 3D
    channels.py  phase labels ⇄ the network's ±1 channels
    precision.py which network precisions a device runs natively
    training.py  default device, EMA update, the training progress bar
"""

from __future__ import annotations

from micro_doe.platform.diffusion.channels import labels_to_channels, to_labels
from micro_doe.platform.diffusion.samplers import DDIMSampler, DDPMSampler, Sampler
from micro_doe.platform.diffusion.schedule import (
    SCHEDULE_KINDS,
    NoiseSchedule,
    diffusion_loss,
    make_generator,
    randn_like,
)

__all__ = [
    "SCHEDULE_KINDS",
    "DDIMSampler",
    "DDPMSampler",
    "NoiseSchedule",
    "Sampler",
    "diffusion_loss",
    "labels_to_channels",
    "make_generator",
    "randn_like",
    "to_labels",
]
