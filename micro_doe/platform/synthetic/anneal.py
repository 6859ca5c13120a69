"""The forward route: a blend recipe in, the annealed film out (a physics generator).

:class:`AnnealedFilmGenerator` runs the project's Cahn–Hilliard solver
(:func:`~micro_doe.platform.synthetic.cahn_hilliard.cahn_hilliard`) for one manufacturing
recipe and returns the film's phase labels at the end of annealing, as the diffusion
generators return sampled volumes. A study searches the recipe directly (``kind:
cahn-hilliard``), where the conditional LDM answers the same design question in reverse
(targets → morphology → predicted recipe).

**Recipe** (the generator parameters): ``phi`` initial donor share of donor + acceptor in
(0, 1); ``chi`` donor–acceptor Flory–Huggins χ (phase separation needs χ above the spinodal
value, ≈ 2 at φ = 0.5; below it the film stays mixed and is labelled by its noise);
``time`` annealing time in solver units (dt = 1, so ``time`` steps); for three phases
``phi_mixed``, the initial fraction of the third component (χ with donor and acceptor 2.5,
:meth:`CahnHilliardParams.three_phase`). The OPV data set's defaults hold the rest (κ = 1,
M = 1, noise 0.02).

**Seeds.** Volume i of a call anneals from the initial noise of seed ``seed + i``, so each
film is reproducible alone; the same recipe and seed give the identical film (float32 on one
device and torch build).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from micro_doe.platform.generators import GeneratedBatch
from micro_doe.platform.synthetic.cahn_hilliard import PHASE_NAMES, CahnHilliardParams, cahn_hilliard

RECIPE_KEYS = {2: ("phi", "chi", "time"), 3: ("phi", "chi", "time", "phi_mixed")}
MAX_TIME = 100_000  # solver steps per film; 32³ runs ≈ 2000 steps/s on one CPU core


class AnnealedFilmGenerator:
    """Annealed films of ``size``³ voxels with ``n_phases`` phases from blend recipes (module docstring)."""

    def __init__(self, size: int = 32, n_phases: int = 2, device: str = "cpu") -> None:
        if not 8 <= int(size) <= 256:
            raise ValueError(f"size: expected a box side between 8 and 256 voxels, got {size}")
        if n_phases not in RECIPE_KEYS:
            raise ValueError(f"phases: expected 2 or 3, got {n_phases}")
        self.size, self.n_phases, self.device = int(size), int(n_phases), device
        self.model_ref = f"cahn-hilliard:{self.n_phases}-phase"  # what generates, in words (no model file)

    @property
    def phase_names(self) -> list[str]:
        return list(PHASE_NAMES[self.n_phases])

    def params(self, recipe: Mapping[str, Any]) -> tuple[CahnHilliardParams, int]:
        """Solver parameters and step count of a recipe; unknown, missing or bad values → ValueError."""
        keys = RECIPE_KEYS[self.n_phases]
        unknown = sorted(set(recipe) - set(keys))
        if unknown:
            raise ValueError(f"cahn-hilliard: unknown generator parameters {unknown}; expected {list(keys)}")
        missing = [k for k in keys if k not in recipe and k != "phi_mixed"]
        if missing:
            raise ValueError(f"cahn-hilliard: the recipe lacks {missing}; give {list(keys)}")
        steps = recipe["time"]
        if isinstance(steps, bool) or not isinstance(steps, (int, float)) or steps != int(steps):
            raise ValueError(f"cahn-hilliard: time must be a whole number of solver steps, got {steps!r}")
        if not 1 <= int(steps) <= MAX_TIME:
            raise ValueError(f"cahn-hilliard: time must be between 1 and {MAX_TIME} steps, got {steps}")
        values = {"phi": float(recipe["phi"]), "chi": float(recipe["chi"])}
        if self.n_phases == 3:
            values["phi_mixed"] = float(recipe.get("phi_mixed", 0.3))
            return CahnHilliardParams.three_phase(**values), int(steps)
        return CahnHilliardParams(**values), int(steps)  # type: ignore[arg-type]

    def sample_batch(self, params: Mapping[str, Any], n: int, seed: int) -> GeneratedBatch:
        """``n`` films of one recipe (film i from seed ``seed + i``); nothing is predicted
        (:class:`~micro_doe.platform.generators.Generator`)."""
        if n < 1:
            raise ValueError(f"n: expected at least 1 volume, got {n}")
        try:
            solver, steps = self.params(params)
        except ValueError as err:  # CahnHilliardParams' own checks, named by the recipe
            raise ValueError(str(err) if str(err).startswith("cahn-hilliard") else f"cahn-hilliard: {err}") from None
        volumes, seconds = [], []
        for i in range(n):
            start = time.perf_counter()
            film = cahn_hilliard((self.size,) * 3, solver, n_steps=steps, snapshot_every=steps, seed=seed + i,
                                 device=self.device).isel(sample=-1, drop=True)  # fmt: skip
            elapsed = time.perf_counter() - start
            record = json.loads(film.attrs["generator_params"]) | {"recipe": dict(params), "seconds": elapsed}
            film.attrs.update(generator_params=json.dumps(record), seed=seed + i,
                              source=f"cahn-hilliard:{self.n_phases}-phase")  # fmt: skip
            volumes.append(film)
            seconds.append(elapsed)
        return GeneratedBatch(volumes, seconds)
