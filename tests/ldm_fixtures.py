"""The tiny conditional-LDM recipe and data set shared by the tests (``pythonpath = ["tests"]``
in pyproject.toml makes this importable as ``ldm_fixtures``)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from micro_doe.platform.ldm.training import FPStage, LDMStage, LDMTrainConfig, VAEStage

TINY_OPV_DATA = {  # OPVDatasetConfig of a 16³ data set: 2 φ × 2 χ, 4 snapshots (12 train / 4 val volumes)
    "shape": (16, 16, 16), "phis": [0.4, 0.6], "chis": [3.0, 3.5], "n_steps": 200, "snapshot_every": 20,
    "n_snapshots": 4, "seed": 0,
}  # fmt: skip


def tiny_ldm_recipe(vae: int = 4, fp: int = 4, ldm: int = 4, **overrides: Any) -> LDMTrainConfig:
    """An LDMTrainConfig with tiny networks and a few steps per stage (plumbing, not quality)."""
    return LDMTrainConfig(
        vae=VAEStage(steps=vae, batch_size=2, base_channels=4, channel_mults=(1, 2), latent_channels=2,
                     checkpoint_every=2),
        fp=FPStage(steps=fp, batch_size=4, hidden=(16,), checkpoint_every=2),
        ldm=LDMStage(steps=ldm, batch_size=4, base_channels=8, groups=4, channel_mults=(1, 2), checkpoint_every=2),
        log_every=2,
        **overrides,
    )  # fmt: skip


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Tiny tensors: one thread is fastest and immune to a busy second core; restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
