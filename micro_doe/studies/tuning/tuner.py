"""All four stages: :func:`tune`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from micro_doe.platform.bundles import load_held_out, resolve_bundle_path
from micro_doe.platform.descriptors import Descriptors
from micro_doe.platform.diffusion.precision import native_precisions, why_not_native
from micro_doe.platform.micro3diff.bundle import (
    Micro3DiffConfig,
    TuningRecord,
)
from micro_doe.platform.micro3diff.generator import VARIANTS, Micro3DiffGenerator
from micro_doe.studies.preflight import masked_url
from micro_doe.studies.tuning.calibration import PROBE, calibrate_at
from micro_doe.studies.tuning.card import write_tuning
from micro_doe.studies.tuning.choice import CONFIRM_SEED, FINALIST_SEED, choose, compared_error, finalists, floor_row, kept_row
from micro_doe.studies.tuning.held_out import check_held_out, held_out_reference, training_autocovariance, update_config, write_held_out
from micro_doe.studies.tuning.options import (
    PAPER,
    VF_TOLERANCE,
    TuneOptions,
    at_precisions,
    decodes,
    defaults_of,
    label,
    study_name,
    variants,
)
from micro_doe.studies.tuning.search import enqueue_starts, search_settings, tuning_spec, walk_trials


def study_to_resume(bundle: Path, searched: list[str], decoded: list[str], storage: str,
                    precisions: Sequence[str] | None = None) -> tuple[str, list[str]]:  # fmt: skip
    """The study's name and decodings: :func:`study_name`'s, unless ``storage`` holds trials of
    the same search begun before hysteresis decoding joined it (2026-12-07) and none of the new
    one's: that study resumes with the search it began with (Optuna fixes a study's choices, and
    hours of trials at 64² are not to be started over)."""
    name, earlier = study_name(bundle, searched, decoded, precisions), study_name(bundle, searched, None, precisions)
    if name != earlier and not has_trials(storage, name) and has_trials(storage, earlier):
        return earlier, [d for d in decoded if d != "hysteresis"]
    return name, decoded


def has_trials(storage: str, name: str) -> bool:
    """Whether ``storage`` (a study spec's ``storage``) holds a study ``name`` with trials. An
    SQLite file that is not there holds none and is not created; ``memory`` holds this
    process's studies; a database server's is opened as the study will be (Optuna sets up its
    tables there)."""
    import optuna

    from micro_doe.studies.spec import MEMORY_STORAGE
    from micro_doe.studies.study_storage import memory_storage
    from micro_doe.tracking.registry import sqlite_path

    if storage == MEMORY_STORAGE:
        opened: optuna.storages.BaseStorage = memory_storage()
    else:
        db = sqlite_path(storage)
        if db is not None and not db.is_file():
            return False
        opened = optuna.storages.RDBStorage(storage)
    try:
        study_id = opened.get_study_id_from_name(name)
    except KeyError:
        return False
    return len(opened.get_all_trials(study_id, deepcopy=False)) > 0


def tune(
    model: str | Path,
    options: TuneOptions = TuneOptions(),
    *,
    held_out_data: Path | None = None,
    training_data: Path | None = None,
    on_study: Callable[[Any], Any] | None = None,
    log: Callable[[str], None] = print,
) -> TuningRecord:
    """Tune a Micro3Diff bundle's default sampling settings (the four stages of
    :mod:`micro_doe.studies.tuning`).

    ``training_data``: the images the model trained on, for a bundle trained before its
    ``autocovariance`` was recorded: it is measured from them and written into the bundle, and
    the search includes the spectral variant (:func:`training_autocovariance`). A study begun
    before hysteresis decoding was searched resumes with its own search (:func:`study_to_resume`).

    ``on_study(study)`` runs the :class:`~micro_doe.studies.runner.Study` and returns its result
    (the CLI shows progress there); by default ``study.run()``. A shipped model
    (``pretrained:NAME``) is tuned in place.
    """
    from micro_doe.platform.diffusion.training import default_device
    from micro_doe.studies.preflight import check_before_start
    from micro_doe.studies.runner import Study
    from micro_doe.studies.spec import StudySpec
    from micro_doe.studies.study_storage import open_study

    bundle = resolve_bundle_path(model)
    check_held_out(bundle, held_out_data)
    config = Micro3DiffConfig.model_validate_json((bundle / "config.json").read_text())
    # Everything is read and checked (the held-out images, the stores) before the bundle is touched.
    held_out = load_held_out(bundle) if held_out_data is None else held_out_reference(held_out_data, config)
    if training_data is not None:  # written into the bundle below, once everything is checked
        config = config.model_copy(update={"autocovariance": training_autocovariance(training_data, config)})
    searched, wanted, device = variants(config), decodes(config), default_device()
    precisions = native_precisions(device)
    name, decoded = study_to_resume(bundle, searched, wanted, options.storage, precisions)
    if decoded != wanted:
        log(f"tune {bundle.name}: resuming {name}, begun before hysteresis decoding was searched; it keeps its search")
    if "bf16" not in precisions:
        log(f"tune {bundle.name}: {why_not_native('bf16', device)}, so the search samples in fp32 only, "
            f"a study of its own ({name})")
    preflight = tuning_spec(bundle, held_out, options, name, precisions, searched, decoded)
    preflight["generator"]["reference"] = "training"  # held_out.nc may not be written yet
    check_before_start(StudySpec.model_validate(preflight), "micro-doe tune")
    if held_out_data is not None:
        write_held_out(bundle, held_out, f"{held_out_data} (given to micro-doe tune)", held_out.sizes.sections)  # type: ignore[union-attr]
    if training_data is not None:
        update_config(bundle, autocovariance=config.autocovariance)
    raw = tuning_spec(bundle, held_out, options, name, precisions, searched, decoded)
    search, spec = raw["search"], StudySpec.model_validate(raw)

    generator = Micro3DiffGenerator(bundle)  # loaded once; its config follows every update below
    stored = open_study(spec)  # the Optuna study, which also keeps the calibrations and the rows measured
    calibrate_at(generator, at_precisions(PROBE, precisions), options, stored, log=log)

    budget = f"{options.trials} settings" if options.minutes is None else f"{options.minutes:g} min"
    log(f"tune {bundle.name}: study {name} ({budget}, {options.samples_per_trial} volumes per setting)")
    study = Study(spec)
    enqueue_starts(study.spec, options.trials - walk_trials(options) if options.minutes is None else options.trials)
    result, walked = search_settings(study, options, search, on_study, log)

    top = finalists(result.trials, options)
    measured = measure_finalists(generator, stored, top, held_out, options, log)
    vf_max_error = VF_TOLERANCE * held_out.volume_fraction
    pick, best, margin = choose(measured, options, vf_max_error)
    chosen = top[pick]
    defaults = defaults_of(chosen.params)
    if VARIANTS[defaults.variant].anchors and defaults.calibrate and defaults.decode == "sign":
        calibrate_at(generator, chosen.params, options, stored, log=log)
    log(f"tune {bundle.name}: confirming on {options.confirm_volumes} fresh volumes per setting")
    rows = [kept_row(stored, generator, chosen.params, held_out, options.confirm_volumes, options.seed, CONFIRM_SEED)
            | {"role": "tuned default"},
            kept_row(stored, generator, PAPER, held_out, options.confirm_volumes, options.seed, CONFIRM_SEED)
            | {"role": "paper (SamplingConfig())"},
            floor_row(generator.bundle.reference, held_out) | {"setting": "data floor: training images vs held out",
                                                                "role": "data floor"}]  # fmt: skip
    rule = rule_text(top, measured, best, chosen.number, walked, vf_max_error, options)
    record = TuningRecord(study=name, storage=masked_url(spec.storage), tracking=spec.tracking,
                          trials=len(result.completed), seed=options.seed, rule=rule, table=rows, finalists=measured)
    write_tuning(bundle, defaults, record, label(defaults), margin)
    return record


def measure_finalists(generator: Micro3DiffGenerator, study: Any, top: list[Any], held_out: Descriptors, options: TuneOptions,
                      log: Callable[[str], None]) -> list[dict[str, Any]]:  # fmt: skip
    """Stage 4's rows: each of the study's best settings on ``finalist_volumes`` fresh volumes (:func:`kept_row`)."""
    log(f"tune {generator.bundle.path.name}: measuring the {len(top)} best settings again on "
        f"{options.finalist_volumes} fresh volumes each")  # fmt: skip
    measured = []
    for i, trial in enumerate(top, 1):
        row = kept_row(study, generator, trial.params, held_out, options.finalist_volumes, options.seed, FINALIST_SEED)
        measured.append(row | {"trial": trial.number, "study_structure_error": trial.values[0]})
        log(f"  finalist {i}/{len(top)}: {row['setting']} (trial {trial.number}): structure error "
            f"{row['structure_error']:.2f} (study {trial.values[0]:.2f}), {row['seconds_per_volume']:.1f} s / volume")
    return measured


def rule_text(top: list[Any], measured: list[dict[str, Any]], best: int, chosen: int, walked: int, vf_max_error: float,
              options: TuneOptions) -> str:  # fmt: skip
    """How the default was chosen, as the card says it."""
    within = "" if any(r["vf_error"] <= vf_max_error for r in measured) else " (none kept vf within the constraint: all compared)"
    by = "worst judge" if options.choose_by == "worst_error" else "structure error"
    return (f"the study's {len(top)} best feasible settings measured again on {options.finalist_volumes} fresh volumes "
            f"each{within}; of those, the cheapest (CPU s / volume) within max({options.margin_points:g} points, "
            f"{options.margin_fraction:.0%} of the best) of the best {by} (trial {top[best].number}: "
            f"{compared_error(measured[best], options):.2f}); chose trial {chosen}"
            + (f" ({walked} of the study's settings walked from its best, one knob at a time)" if walked else ""))
