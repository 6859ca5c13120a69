"""micro-doe: design-of-experiments over diffusion-model generators of 3D microstructures."""

from __future__ import annotations

__version__ = "0.1.0"
