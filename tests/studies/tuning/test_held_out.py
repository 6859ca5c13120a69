"""The held-out reference and the training images' autocovariance, checked before anything is written."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from micro_doe.platform.micro3diff.bundle import Micro3DiffConfig
from micro_doe.studies.tuning.tuner import tune

pytestmark = pytest.mark.filterwarnings("ignore")


def test_held_out_images_that_do_not_fit_the_model_are_refused_before_anything(options, tmp_path, held_out_bundle, rng):
    from micro_doe.platform.volumes import make_volume, write_netcdf
    from micro_doe.studies.tuning.options import TuningError

    bundle = tmp_path / "b"
    shutil.copytree(held_out_bundle, bundle)
    before = {p.name: p.read_bytes() for p in bundle.iterdir()}
    for shape, message in (((8, 32, 32), "images of 32² but the model makes 16²"), ((8, 16, 12), "must be square"),
                           ((2, 16, 16), "at least 4 are needed")):
        data = write_netcdf(make_volume(rng.integers(0, 2, shape).astype("int8"), dims=("sample", "y", "x")),
                            tmp_path / f"held-{shape[0]}-{shape[2]}.nc")
        with pytest.raises((TuningError, ValueError), match=message):
            tune(bundle, options(tmp_path), held_out_data=data, log=lambda line: None)
    assert {p.name: p.read_bytes() for p in bundle.iterdir()} == before
    assert not (tmp_path / "optuna.db").exists()


def test_training_data_records_the_autocovariance_of_a_bundle_trained_before_it(options, tmp_path, held_out_bundle, sphere_slices,
                                                                                 rng):
    from micro_doe.platform.micro3diff.training_data import image_autocovariance
    from micro_doe.platform.volumes import make_volume, write_netcdf
    from micro_doe.studies.tuning.held_out import training_autocovariance, update_config
    from micro_doe.studies.tuning.options import TuningError, variants

    bundle = tmp_path / "b"
    shutil.copytree(held_out_bundle, bundle)
    recorded = Micro3DiffConfig.model_validate_json((bundle / "config.json").read_text()).autocovariance
    older = update_config(bundle, autocovariance=None)
    assert variants(older) == ["paper", "anchored"]  # no target, no spectral variant
    data = write_netcdf(sphere_slices, tmp_path / "spheres.nc")
    # The data given to train: its held-out block (the last 6 of 40 images) is left out again.
    np.testing.assert_allclose(training_autocovariance(data, older), recorded)
    assert training_autocovariance(data, older) != image_autocovariance(sphere_slices.rename(z="sample"), 2)
    for shape, message in (((8, 32, 32), "images of 32², but the model was trained on 16²"),
                           ((8, 16, 12), "must be square")):
        other = write_netcdf(make_volume(rng.integers(0, 2, shape).astype("int8"), dims=("sample", "y", "x")),
                             tmp_path / f"other-{shape[1]}-{shape[2]}.nc")
        with pytest.raises((TuningError, ValueError), match=message):
            tune(bundle, options(tmp_path), training_data=other, log=lambda line: None)
    with pytest.raises(TuningError, match="--training-data .*nothing.nc"):
        tune(bundle, options(tmp_path), training_data=tmp_path / "nothing.nc", log=lambda line: None)
    assert Micro3DiffConfig.model_validate_json((bundle / "config.json").read_text()).autocovariance is None
    assert not (tmp_path / "optuna.db").exists()
