"""Stage 2: the vf calibration, measured at a setting and kept while its key holds."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

import numpy as np

from micro_doe.platform.bundles import model_digest
from micro_doe.platform.micro3diff.generator import VARIANTS, Micro3DiffGenerator, SamplingSettings
from micro_doe.studies.tuning.held_out import update_config
from micro_doe.studies.tuning.options import TuneOptions, defaults_of, label

PROBE = {"variant": "anchored", "n_h": 6, "steps": 25, "precision": "bf16", "decode": "sign", "calibrate": False}
CALIBRATION_FACTORS = (0.75, 1.0, 1.25)


def measured_setting(setting: dict[str, Any]) -> dict[str, Any]:
    """The setting a calibration is measured at: ``setting`` uncalibrated and decoded by sign, in
    its own variant when that anchors (anchored, spectral: each falls short of its anchor by its
    own amount), else in ``anchored``."""
    variant = setting.get("variant", "anchored")
    return setting | {"calibrate": False, "decode": "sign", "variant": variant if VARIANTS[variant].anchors else "anchored"}


def measure_calibration(generator: Micro3DiffGenerator, setting: dict[str, Any], volumes: int, seed: int) -> list[tuple[float, float]]:
    """(anchored fraction, measured vf) of the phase of interest at :func:`measured_setting` of
    ``setting``, anchored at CALIBRATION_FACTORS × the training vf, ``volumes`` each from ``seed``."""
    phase = generator.bundle.reference.phase_name
    phase_label = generator.bundle.config.phase_names.index(phase)
    train = generator.training_fractions()[phase]
    pairs = []
    for factor in CALIBRATION_FACTORS:
        target = round(train * factor, 4)
        settings = SamplingSettings(**measured_setting(setting), targets={f"vf_{phase}": target})
        vols = generator.sample(volumes, settings, seed=seed, allow_extrapolation=True)
        pairs.append((target, round(float(np.mean([(v.values == phase_label).mean() for v in vols])), 4)))
    return pairs


def calibration_key(generator: Micro3DiffGenerator, setting: dict[str, Any], volumes: int, seed: int) -> tuple[str, str]:
    """(key, description) of what a calibration depends on: the setting as measured (resolved
    against the bundle's defaults), volumes per fraction, the seed, the weights, and for the
    spectral variant the autocovariance it steers toward. The description is what config.json
    records (``vf_calibration_setting``); the key, a digest of all of it, is where the study keeps
    the pairs."""
    config = generator.bundle.config
    resolved = SamplingSettings(**measured_setting(setting)).resolved(config.sampling)
    steered = json.dumps(config.autocovariance) if resolved.variant == "spectral" else ""
    digest = hashlib.sha256(f"{resolved.model_dump_json()}|{volumes}|{seed}|{steered}".encode()).hexdigest()[:12]
    description = (f"{label(resolved)}; {volumes} volumes per fraction; seed {seed}; "
                   f"weights {model_digest(generator.bundle.path)}; setting {digest}")  # fmt: skip
    return f"vf calibration {hashlib.sha256(description.encode()).hexdigest()[:16]}", description


def calibrate_at(generator: Micro3DiffGenerator, setting: dict[str, Any], options: TuneOptions, study: Any,
                 log: Callable[[str], None]) -> None:  # fmt: skip
    """Give the bundle the vf calibration at ``setting`` (:func:`calibration_key`): the one it
    holds when that was measured at the same key; else one ``study`` (Optuna) kept under the key
    (a resumed tuning measures nothing twice: seeded, it would measure the same again, minutes
    per fraction at 64³); else a new measurement, kept in both. A calibration written before keys
    were recorded is kept at the probe setting for a study that has trials and an untuned bundle:
    the probe's, which its trials used (or, if an earlier run stopped in the minutes between
    calibrating its chosen setting and writing the tuning, that setting's)."""
    bundle = generator.bundle.path
    key, description = calibration_key(generator, setting, options.calibration_volumes, options.seed)
    config = generator.bundle.config
    # PROBE as it was (bf16): on a machine without bf16 kernels the tuning probes in fp32, never legacy.
    legacy = (setting == PROBE and config.vf_calibration_setting is None and config.tuning is None
              and bool(study.get_trials(deepcopy=False)))  # fmt: skip
    if config.vf_calibration and (config.vf_calibration_setting == description or legacy):
        log(f"tune {bundle.name}: vf calibration kept, measured before at {description if not legacy else 'the probe setting'}")
        pairs = config.vf_calibration
    elif (kept := study.user_attrs.get(key)) is not None:
        log(f"tune {bundle.name}: vf calibration at {description}, as this study measured it")
        pairs = [tuple(pair) for pair in kept]
    else:
        log(f"tune {bundle.name}: calibrating vf at {label(defaults_of(measured_setting(setting)))}")
        pairs = measure_calibration(generator, setting, options.calibration_volumes, options.seed)
    study.set_user_attr(key, [list(pair) for pair in pairs])
    if (list(pairs), description) != (config.vf_calibration, config.vf_calibration_setting):
        generator.bundle.config = update_config(bundle, vf_calibration=pairs, vf_calibration_setting=description)
