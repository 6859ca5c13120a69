"""The vf calibration: measured in the setting's own variant, kept while its key holds."""

from __future__ import annotations

import shutil

import pytest

from micro_doe.platform.micro3diff.generator import Micro3DiffGenerator

pytestmark = pytest.mark.filterwarnings("ignore")


def test_the_calibration_is_measured_with_the_settings_own_anchoring_variant(held_out_bundle):
    """A spectral default falls short of its anchor by its own amount, not the anchored variant's."""
    from micro_doe.platform.micro3diff.generator import SamplingSettings
    from micro_doe.studies.tuning.calibration import CALIBRATION_FACTORS, measure_calibration

    generator = Micro3DiffGenerator(held_out_bundle)
    setting = {"variant": "spectral", "n_h": 1, "steps": 4, "precision": "fp32", "decode": "sign", "calibrate": True}
    pairs = measure_calibration(generator, setting, 1, 3)
    phase = generator.bundle.reference.phase_name
    label = generator.bundle.config.phase_names.index(phase)
    for factor, (anchored, vf) in zip(CALIBRATION_FACTORS, pairs):
        assert anchored == round(generator.training_fractions()[phase] * factor, 4)
        settings = SamplingSettings(**(setting | {"calibrate": False}), targets={f"vf_{phase}": anchored})
        volume = generator.sample(1, settings, seed=3, allow_extrapolation=True)[0]
        assert vf == round(float((volume.values == label).mean()), 4)
    assert measure_calibration(generator, setting | {"variant": "anchored"}, 1, 3) != pairs  # the check above can tell


def test_a_calibration_measured_at_the_same_key_is_kept_and_any_other_is_measured(options, tmp_path, held_out_bundle):
    """Seeded, the same setting, volumes and weights would measure the same calibration again
    (minutes per fraction at 64³); a change of any of them measures anew."""
    from micro_doe.studies.tuning.calibration import PROBE, calibrate_at, calibration_key
    from micro_doe.studies.tuning.held_out import update_config

    bundle = tmp_path / "b"
    shutil.copytree(held_out_bundle, bundle)
    generator = Micro3DiffGenerator(bundle)
    lines: list[str] = []
    opts = options(tmp_path, seed=3)
    calibrate_at(generator, PROBE, opts, resumed=False, log=lines.append)
    measured = generator.bundle.config.vf_calibration
    assert generator.bundle.config.vf_calibration_setting == calibration_key(bundle, PROBE, 1, 3) and len(measured) == 3

    planted = [(0.1, 0.05), (0.2, 0.1), (0.3, 0.15)]  # not what sampling measures: a re-measure would replace it
    generator.bundle.config = update_config(bundle, vf_calibration=planted)
    calibrate_at(generator, PROBE, opts, resumed=False, log=lines.append)
    assert generator.bundle.config.vf_calibration == planted and "kept" in lines[-1]

    calibrate_at(generator, PROBE, options(tmp_path, seed=4), resumed=False, log=lines.append)  # another seed
    assert generator.bundle.config.vf_calibration != planted
    assert generator.bundle.config.vf_calibration_setting == calibration_key(bundle, PROBE, 1, 4)

    # Written before keys were recorded: kept only by a resumed study on an untuned bundle.
    generator.bundle.config = update_config(bundle, vf_calibration=planted, vf_calibration_setting=None)
    calibrate_at(generator, PROBE, opts, resumed=True, log=lines.append)
    assert generator.bundle.config.vf_calibration == planted
    calibrate_at(generator, PROBE, opts, resumed=False, log=lines.append)
    assert generator.bundle.config.vf_calibration == measured  # seeded: the first measurement again
