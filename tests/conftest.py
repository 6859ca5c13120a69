"""Shared fixtures: small seeded volumes, so the suite stays fast on 2 cores."""

from __future__ import annotations

import numpy as np
import pytest
from ldm_fixtures import TINY_OPV_DATA, one_torch_thread, tiny_ldm_recipe

pytest_plugins = ["ray_clusters"]  # the `cluster` fixture: a real multi-node Ray cluster (node-loss tests)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)


@pytest.fixture(scope="session")
def blobs64() -> np.ndarray:
    """A 64³ two-phase porespy blob structure (vf 0.5), int8 labels; phase 1 percolates."""
    import porespy as ps

    return ps.generators.blobs([64, 64, 64], porosity=0.5, blobiness=1.5, seed=0).astype(np.int8)


TINY_UNET = {"base_channels": 8, "channel_mults": (1, 2), "attention": True, "groups": 4}


@pytest.fixture(scope="session")
def tiny_unet():
    """A U-Net small enough to train in a blink (tests only check plumbing with it)."""
    from micro_doe.platform.micro3diff.unet import UNetConfig

    return UNetConfig(**TINY_UNET)


@pytest.fixture(scope="session")
def sphere_slices():
    """A small spheres volume whose 40 z-slices (16×16) are training images."""
    from micro_doe.platform.synthetic import spherical_inclusions

    return spherical_inclusions((40, 16, 16), mean_diameter=5.0, sd_diameter=1.0, volume_fraction=0.15, seed=1)


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory, sphere_slices, tiny_unet):
    """A Micro3Diff bundle trained for a few steps (fast; the weights are barely trained)."""
    from micro_doe.platform.micro3diff.training import TrainConfig, train_micro3diff

    config = TrainConfig(steps=12, batch_size=8, checkpoint_every=6, unet=tiny_unet, quality_images=2, quality_steps=4)
    out = tmp_path_factory.mktemp("bundles") / "tiny"
    return train_micro3diff(sphere_slices, out, config, device="cpu", data_label="spheres fixture", progress=False)


@pytest.fixture(scope="session")
def tiny_opv_dataset():
    """The labelled Cahn–Hilliard data set of TINY_OPV_DATA."""
    from micro_doe.platform.ldm.dataset import OPVDatasetConfig, make_opv_dataset

    return make_opv_dataset(OPVDatasetConfig(**TINY_OPV_DATA))


@pytest.fixture(scope="session")
def tiny_ldm_bundle(tiny_opv_dataset, tmp_path_factory):
    """A conditional-LDM bundle (16³, two phases) trained a few steps per stage."""
    from micro_doe.platform.ldm.training import train_ldm

    with one_torch_thread():
        out = tmp_path_factory.mktemp("ldm") / "tiny"
        return train_ldm(tiny_opv_dataset, out, tiny_ldm_recipe(), device="cpu", progress=False)
