from __future__ import annotations

import numpy as np
import pytest

from micro_doe.platform.descriptors import describe
from micro_doe.platform.descriptors.reference_error import error_rates, pooled_curves
from micro_doe.platform.synthetic import spherical_inclusions
from micro_doe.platform.volumes import make_volume


def test_volumes_like_the_reference_score_low_and_others_high():
    spheres = spherical_inclusions((96, 24, 24), mean_diameter=6, sd_diameter=1, volume_fraction=0.2, seed=0)
    reference = describe(spheres, tortuosity_axis=None)
    alike = [spherical_inclusions((24, 24, 24), mean_diameter=6, sd_diameter=1, volume_fraction=0.2, seed=s) for s in (1, 2, 3)]
    noise = [make_volume((np.random.default_rng(s).random((24, 24, 24)) < 0.2).astype(np.int8)) for s in (1, 2)]
    good, bad = error_rates(reference, alike), error_rates(reference, noise)
    assert good["vf_error"] < 0.02 and good["s2_error"] < 10 and good["lineal_path_error"] < 15
    assert bad["s2_error"] > 3 * good["s2_error"] and bad["lineal_path_error"] > 3 * good["lineal_path_error"]


def test_pooled_curves_average_axes_then_volumes(rng):
    vols = [make_volume((rng.random((8, 8, 8)) < p).astype(np.int8)) for p in (0.2, 0.6)]
    pooled = pooled_curves(vols, r_max=3)
    assert pooled["S2"][0] == pytest.approx(np.mean([(v.values == 1).mean() for v in vols]))
    with pytest.raises(ValueError, match="no volumes"):
        pooled_curves([], r_max=3)
