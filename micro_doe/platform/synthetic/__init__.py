"""Synthetic microstructures for training diffusion models: seeded, reproducible.

Each generator returns a phase-label volume (:func:`micro_doe.platform.volumes.make_volume`)
whose attributes record the seed and every generating parameter; the same arguments
always give the same data.

- :mod:`.spheres`: non-overlapping spherical inclusions in a 3D matrix (Micro3Diff case I);
- :mod:`.polycrystal`: 2D Laguerre-tessellation polycrystals (Micro3Diff case II);
- :mod:`.cahn_hilliard`: Cahn–Hilliard phase separation of 2- and 3-phase polymer blends
  (the OPV data of the conditional latent diffusion paper);
- :mod:`.crops`: random crops of one large micrograph (Micro3Diff case IV);
- :mod:`.augment`: the 8-fold dihedral augmentation of square images.
"""

from __future__ import annotations

from micro_doe.platform.synthetic.augment import (
    dihedral,
    dihedral_augment,
    dihedral_augment_volume,
    dihedral_compose,
    dihedral_inverse,
    dihedral_transforms,
)
from micro_doe.platform.synthetic.cahn_hilliard import (
    CahnHilliardParams,
    CahnHilliardRun,
    cahn_hilliard,
    cahn_hilliard_fields,
    characteristic_length,
    composition_labels,
    critical_chi,
    free_energy,
    homogeneous_curvature,
    spinodal_chi,
)
from micro_doe.platform.synthetic.crops import random_crops
from micro_doe.platform.synthetic.polycrystal import (
    LaguerreGrains,
    grain_boundaries,
    laguerre_grains,
    laguerre_polycrystal,
)
from micro_doe.platform.synthetic.spheres import SpherePacking, sphere_packing, spherical_inclusions

__all__ = [
    "CahnHilliardParams",
    "CahnHilliardRun",
    "LaguerreGrains",
    "SpherePacking",
    "cahn_hilliard",
    "cahn_hilliard_fields",
    "characteristic_length",
    "composition_labels",
    "critical_chi",
    "dihedral",
    "dihedral_augment",
    "dihedral_augment_volume",
    "dihedral_compose",
    "dihedral_inverse",
    "dihedral_transforms",
    "free_energy",
    "grain_boundaries",
    "homogeneous_curvature",
    "laguerre_grains",
    "laguerre_polycrystal",
    "random_crops",
    "sphere_packing",
    "spherical_inclusions",
    "spinodal_chi",
]
