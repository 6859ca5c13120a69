"""Stage 2: the vf calibration, measured at a setting and kept while its key holds."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from micro_doe.platform.bundles import model_digest
from micro_doe.platform.micro3diff.generator import VARIANTS, Micro3DiffGenerator, SamplingSettings
from micro_doe.studies.tuning.held_out import update_config
from micro_doe.studies.tuning.options import TuneOptions, defaults_of, label

PROBE = {"variant": "anchored", "n_h": 6, "steps": 25, "precision": "bf16", "decode": "sign", "calibrate": False}
CALIBRATION_FACTORS = (0.75, 1.0, 1.25)


def measure_calibration(generator: Micro3DiffGenerator, setting: dict[str, Any], volumes: int, seed: int) -> list[tuple[float, float]]:
    """(anchored fraction, measured vf) of the phase of interest at ``setting`` (uncalibrated,
    decoded by sign), anchored at CALIBRATION_FACTORS × the training vf. The setting's own variant
    when it anchors (anchored, spectral: each falls short of its anchor by its own amount), else
    ``anchored``."""
    phase = generator.bundle.reference.phase_name
    label = generator.bundle.config.phase_names.index(phase)
    train = generator.training_fractions()[phase]
    variant = setting.get("variant", "anchored")
    variant = variant if VARIANTS[variant].anchors else "anchored"
    pairs = []
    for factor in CALIBRATION_FACTORS:
        target = round(train * factor, 4)
        settings = SamplingSettings(**(setting | {"calibrate": False, "decode": "sign", "variant": variant}),
                                    targets={f"vf_{phase}": target})
        vols = generator.sample(volumes, settings, seed=seed, allow_extrapolation=True)
        pairs.append((target, round(float(np.mean([(v.values == label).mean() for v in vols])), 4)))
    return pairs


def calibration_key(bundle: Path, setting: dict[str, Any], volumes: int, seed: int) -> str:
    """What a calibration depends on: the setting, volumes per fraction, the seed and the weights."""
    return f"{label(defaults_of(setting))}; {volumes} volumes per fraction; seed {seed}; weights {model_digest(bundle)}"


def calibrate_at(generator: Micro3DiffGenerator, setting: dict[str, Any], options: TuneOptions, resumed: bool,
                 log: Callable[[str], None]) -> None:  # fmt: skip
    """Measure the vf calibration at ``setting`` and write it into the bundle, unless the bundle
    holds one measured at the same key (:func:`calibration_key`): seeded, it would measure the
    same again (minutes per fraction at 64³). A study being ``resumed`` keeps a calibration
    written before keys were recorded, when the bundle is untuned: the only calibration an
    unfinished tuning writes is the probe's, which its trials used."""
    bundle = generator.bundle.path
    key = calibration_key(bundle, setting, options.calibration_volumes, options.seed)
    config = generator.bundle.config
    stored = config.vf_calibration_setting
    legacy = stored is None and config.tuning is None and resumed
    if config.vf_calibration and (stored == key or legacy):
        log(f"tune {bundle.name}: vf calibration kept, measured before at {key if stored else 'the probe setting'}")
        return
    log(f"tune {bundle.name}: calibrating vf at {label(defaults_of(setting))}")
    pairs = measure_calibration(generator, setting, options.calibration_volumes, options.seed)
    generator.bundle.config = update_config(bundle, vf_calibration=pairs, vf_calibration_setting=key)
