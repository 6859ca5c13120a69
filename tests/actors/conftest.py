"""Fixtures for actor tests: one local Ray instance per test module, a tiny real model bundle."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def ray_info() -> Iterator:
    """A local 2-CPU Ray instance for the module (RAY_ADDRESS ignored), shut down at the end.

    Token auth stays on (Ray turns it on for a new local instance). Unless a token is
    configured already, the instance gets a random ``RAY_AUTH_TOKEN`` so nothing is written
    to ``~/.ray``; it is left set for the rest of the process, because Ray caches the token
    in-process and a later instance must see the same one. ``RAY_AUTH_MODE`` is not set
    here: ``import ray`` has already read it, and only Ray's own default-enabling refreshes
    that cached config.
    """
    from micro_doe.actors import connect, shutdown

    home_token = Path.home() / ".ray" / "auth_token"
    if not (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH") or home_token.exists()):
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("RAY_ADDRESS", raising=False)
        info = connect(num_cpus=2)
        try:
            yield info
        finally:
            shutdown()


@pytest.fixture(scope="module")
def actor_bundle(tmp_path_factory) -> Path:
    """A Micro3Diff bundle (16×16 images) trained for 4 steps: real weights, no quality."""
    from micro_doe.platform.micro3diff.training import TrainConfig, train_micro3diff
    from micro_doe.platform.micro3diff.unet import UNetConfig
    from micro_doe.platform.synthetic import spherical_inclusions

    data = spherical_inclusions((20, 16, 16), mean_diameter=5, sd_diameter=1, volume_fraction=0.15, seed=1)
    config = TrainConfig(
        steps=4, batch_size=4, unet=UNetConfig(base_channels=8, channel_mults=(1, 2), groups=4), quality_images=0
    )
    out = tmp_path_factory.mktemp("actor-bundles") / "tiny"
    return train_micro3diff(data, out, config, device="cpu", progress=False)
