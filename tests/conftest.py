"""Shared fixtures: small seeded volumes, so the suite stays fast on 2 cores."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)


@pytest.fixture(scope="session")
def blobs64() -> np.ndarray:
    """A 64³ two-phase porespy blob structure (vf 0.5), int8 labels; phase 1 percolates."""
    import porespy as ps

    return ps.generators.blobs([64, 64, 64], porosity=0.5, blobiness=1.5, seed=0).astype(np.int8)
