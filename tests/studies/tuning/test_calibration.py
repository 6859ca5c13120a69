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


def test_a_calibration_is_measured_once_per_key_and_kept_in_the_bundle_and_the_study(options, tmp_path, held_out_bundle):
    """Seeded, the same setting, volumes and weights would measure the same calibration again
    (minutes per fraction at 64³): the bundle keeps the last one with its key, the study every
    one it measured; a change of key measures anew."""
    from micro_doe.studies.spec import StudySpec
    from micro_doe.studies.study_storage import open_study
    from micro_doe.studies.tuning.calibration import PROBE, calibrate_at, calibration_key
    from micro_doe.studies.tuning.held_out import update_config
    from micro_doe.studies.tuning.options import PAPER
    from micro_doe.studies.tuning.search import tuning_spec

    bundle = tmp_path / "b"
    shutil.copytree(held_out_bundle, bundle)
    generator = Micro3DiffGenerator(bundle)
    opts = options(tmp_path, seed=3)
    study = open_study(StudySpec.model_validate(tuning_spec(bundle, generator.bundle.reference, opts, "calibrations")))
    lines: list[str] = []
    calibrate_at(generator, PROBE, opts, study, log=lines.append)
    measured = generator.bundle.config.vf_calibration
    key, description = calibration_key(generator, PROBE, 1, 3)
    assert generator.bundle.config.vf_calibration_setting == description and len(measured) == 3
    assert [tuple(p) for p in study.user_attrs[key]] == measured and "calibrating" in lines[-1]

    planted = [(0.1, 0.05), (0.2, 0.1), (0.3, 0.15)]  # not what sampling measures: a re-measure would replace it
    generator.bundle.config = update_config(bundle, vf_calibration=planted)
    calibrate_at(generator, PROBE, opts, study, log=lines.append)
    assert generator.bundle.config.vf_calibration == planted and "kept" in lines[-1]

    calibrate_at(generator, PROBE, options(tmp_path, seed=4), study, log=lines.append)  # another seed: measured
    assert generator.bundle.config.vf_calibration not in (planted, measured) and "calibrating" in lines[-1]
    assert generator.bundle.config.vf_calibration_setting == calibration_key(generator, PROBE, 1, 4)[1]

    # Back to seed 3: the study kept it, nothing is measured.
    study.set_user_attr(key, [[0.1, 0.06], [0.2, 0.12], [0.3, 0.18]])  # planted in the study this time
    calibrate_at(generator, PROBE, opts, study, log=lines.append)
    assert generator.bundle.config.vf_calibration == [(0.1, 0.06), (0.2, 0.12), (0.3, 0.18)] and "as this study" in lines[-1]

    # The key is of the setting as measured: a calibrated anchored setting at the probe's knobs
    # measures what the probe measures.
    assert calibration_key(generator, PROBE | {"calibrate": True}, 1, 3) == (key, description)
    assert calibration_key(generator, PAPER, 1, 3)[0] != key


def test_a_calibration_written_before_keys_is_kept_only_at_the_probe_of_a_resumed_untuned_study(options, tmp_path,
                                                                                             held_out_bundle):
    from micro_doe.studies.spec import StudySpec
    from micro_doe.studies.study_storage import open_study
    from micro_doe.studies.tuning.calibration import PROBE, calibrate_at
    from micro_doe.studies.tuning.held_out import update_config
    from micro_doe.studies.tuning.search import tuning_spec

    bundle = tmp_path / "b"
    shutil.copytree(held_out_bundle, bundle)
    generator = Micro3DiffGenerator(bundle)
    opts = options(tmp_path, seed=3)
    study = open_study(StudySpec.model_validate(tuning_spec(bundle, generator.bundle.reference, opts, "legacy")))
    planted = [(0.1, 0.05), (0.2, 0.1), (0.3, 0.15)]
    generator.bundle.config = update_config(bundle, vf_calibration=planted, vf_calibration_setting=None)
    calibrate_at(generator, PROBE, opts, study, log=lambda line: None)  # a new study: measured
    assert generator.bundle.config.vf_calibration != planted

    generator.bundle.config = update_config(bundle, vf_calibration=planted, vf_calibration_setting=None)
    study.enqueue_trial({"n_h": 1})  # the study has trials: resumed
    calibrate_at(generator, PROBE, opts, study, log=lambda line: None)
    assert generator.bundle.config.vf_calibration == planted  # the probe's, which its trials used

    spectral = {"variant": "spectral", "n_h": 1, "steps": 4, "precision": "fp32", "decode": "sign", "calibrate": True}
    generator.bundle.config = update_config(bundle, vf_calibration=planted, vf_calibration_setting=None)
    calibrate_at(generator, spectral, opts, study, log=lambda line: None)  # the chosen setting's: measured
    assert generator.bundle.config.vf_calibration != planted
