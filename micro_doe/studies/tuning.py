"""Tuning a Micro3Diff model's own sampling settings (``micro-doe tune MODEL``).

A model trained on a user's micrographs samples best with settings that depend on its
morphology (the anchored variant, n_h, S, the decoding, the vf calibration). This module finds
them with the platform itself, in four stages:

1. **Held-out reference.** The judges compare with images the network never saw: the bundle's
   ``held_out.nc`` (training set them aside), or images given here (``held_out_data``), whose
   descriptors are then written into the bundle.
2. **vf calibration** (:func:`measure_calibration`): the anchored variant at a probe setting,
   anchored at 0.75, 1 and 1.25 times the training vf; the measured vf against the anchored one
   is the bundle's ``vf_calibration`` (used by settings with ``calibrate: true``).
3. **A real study** (:func:`tuning_spec`, run by :class:`~micro_doe.studies.runner.Study`:
   Ray actors, Optuna storage, MLflow). It searches variant (paper, anchored, and spectral when
   the bundle records its training images' autocovariance: :func:`variants`), n_h, S, decoding,
   calibration and precision; it starts from the paper's algorithm and the settings that served
   the shipped models (:func:`starts`), then TPE; the last ``walk_share`` of the budget walks from
   the best setting so far, one knob at a time (:func:`next_step`: n_h a rung up or down the
   ladder first, then calibration, S, precision and decoding), because n_h matters most and a
   short TPE run rarely visits the ladder of its best variant. Objectives: ``structure_error`` (L + size + diameter + connectivity error
   against the held-out images: descriptors no setting steers) and ``seconds_per_volume``.
   vf is a constraint (within 25 % of the held-out vf), never a judge; so is the cost, at most
   ``max_passes`` denoising passes per volume, checked before a setting runs (a costlier one is
   skipped unrun, and TPE learns to avoid it). Every trial's volumes
   share seeds (``volume_seeds: common``), so settings are compared on the same noise.
4. **Finalists, choice and confirmation.** The study ranks settings on a few volumes each, where
   settings a few points apart trade places by noise. So the best feasible settings of the study
   of at most ``max_passes`` passes per volume (:func:`finalists`, ``finalists`` of them) are measured again on ``finalist_volumes`` fresh
   volumes each (seeds the study never used), and :func:`choose` picks among those rows: of the
   ones whose vf stays within the constraint, the cheapest (seconds per volume) whose worst
   judge (the largest of the four errors: :func:`worst_error`) is within the margin of the best
   (``max(margin_points, margin_fraction · best)``). The worst judge, not the sum the study
   ranks by, because a default must hold every judge: a sum lets one large error (particles
   too small) hide behind small ones (``choose_by: structure_error`` keeps the sum).
   If it anchors with calibration, the calibration is measured again at that setting, in its own variant. The
   choice and the paper's default are then measured on fresh seeds again (:func:`confirm`),
   beside the data floor (the training images' own descriptors against the held-out ones), and
   the defaults, calibration, finalists and table are written into the bundle (config.json and
   card.md).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from micro_doe.errors import InputError
from micro_doe.platform.bundles import HELD_OUT_FILE, has_held_out, load_held_out, model_digest, resolve_bundle_path
from micro_doe.platform.descriptors import Descriptors, describe
from micro_doe.platform.micro3diff.bundle import (
    HeldOutRecord,
    Micro3DiffConfig,
    SamplingConfig,
    TuningRecord,
)
from micro_doe.platform.micro3diff.generator import VARIANTS, Micro3DiffGenerator, SamplingSettings
from micro_doe.platform.micro3diff.training import (
    MIN_HELD_OUT,
    image_autocovariance,
    load_training_data,
    training_images,
    training_reference,
)
from micro_doe.platform.volumes import atomic_path, why_missing
from micro_doe.studies.objectives import BUILTIN_OBJECTIVES, STRUCTURE_JUDGES, Sample
from micro_doe.studies.preflight import masked_url

SEARCH: dict[str, dict[str, list[Any]]] = {
    "variant": {"categorical": ["paper", "anchored"]},
    "n_h": {"categorical": [0, 1, 3, 6, 10, 20, 40]},
    "steps": {"categorical": [25, 50]},
    "decode": {"categorical": ["sign", "fractions"]},
    "calibrate": {"categorical": [False, True]},
    "precision": {"categorical": ["fp32", "bf16"]},
}
PAPER = {"variant": "paper", "n_h": 1, "steps": 50, "decode": "sign", "calibrate": False, "precision": "fp32"}
# The first trials: the paper's algorithm (SamplingConfig()), then the settings measured best on
# the shipped models (spheres, polycrystal, ternary blend) and the anchored variant at n_h 10.
STARTS: list[dict[str, Any]] = [
    PAPER,
    {"variant": "anchored", "n_h": 6, "steps": 25, "decode": "sign", "calibrate": True, "precision": "bf16"},
    {"variant": "anchored", "n_h": 10, "steps": 25, "decode": "sign", "calibrate": False, "precision": "bf16"},
    {"variant": "anchored", "n_h": 3, "steps": 50, "decode": "sign", "calibrate": False, "precision": "bf16"},
    {"variant": "anchored", "n_h": 40, "steps": 25, "decode": "fractions", "calibrate": False, "precision": "bf16"},
]
# With a recorded autocovariance, the spectral variant's starts come after the paper's and the
# shipped spheres' (a budget of 2 keeps those two): the cheap and the middle setting measured on
# the unseen morphologies (docs/explanation/micro3diff.md).
SPECTRAL_STARTS: list[dict[str, Any]] = [
    {"variant": "spectral", "n_h": 1, "steps": 25, "decode": "sign", "calibrate": False, "precision": "bf16"},
    {"variant": "spectral", "n_h": 3, "steps": 50, "decode": "sign", "calibrate": False, "precision": "bf16"},
]


def starts(spectral: bool) -> list[dict[str, Any]]:
    """The study's first settings, in order: :data:`STARTS`, with :data:`SPECTRAL_STARTS` third
    and fourth when the bundle can sample the spectral variant."""
    return [*STARTS[:2], *SPECTRAL_STARTS, *STARTS[2:]] if spectral else list(STARTS)


def variants(config: Micro3DiffConfig) -> list[str]:
    """The variants searched: the paper's and anchored, and spectral when the bundle records an autocovariance."""
    return ["paper", "anchored"] + (["spectral"] if config.autocovariance is not None else [])


PROBE = {"variant": "anchored", "n_h": 6, "steps": 25, "precision": "bf16", "decode": "sign", "calibrate": False}
CALIBRATION_FACTORS = (0.75, 1.0, 1.25)
CONFIRM_SEED = 100_000  # confirmation volumes: seeds the study never used
FINALIST_SEED = 200_000  # the finalists' volumes: seeds neither the study nor the confirmation used
VF_TOLERANCE = 0.25  # constraint: |vf − held-out vf| ≤ 25 % of the held-out vf


class TuningError(InputError):
    """Tuning cannot start or cannot choose (names the option)."""


class TuneOptions(BaseModel):
    """How ``micro-doe tune`` searches. The default budget: 16 settings (≈ 50 min for a 32² model
    measured with two tunings sharing 2 CPU cores)."""

    model_config = ConfigDict(extra="forbid")
    trials: int = Field(16, ge=2, le=10_000, description="settings tried (the study's n_trials)")
    minutes: float | None = Field(None, gt=0, description="wall-time budget of the study; None: trials alone")
    samples_per_trial: int = Field(2, ge=1, le=64, description="volumes per setting in the study")
    finalists: int = Field(4, ge=1, le=64, description="best settings of the study measured again before choosing")
    max_passes: int = Field(1100, ge=100, description="at most this many denoising passes, (n_h + 1) · S, per volume: "
                            "the study skips costlier settings unrun, and a default must stay affordable")
    finalist_volumes: int = Field(8, ge=1, le=64, description="volumes per finalist (fresh seeds)")
    confirm_volumes: int = Field(4, ge=1, le=64, description="volumes per setting in the confirmation")
    calibration_volumes: int = Field(2, ge=1, le=64, description="volumes per anchored fraction when calibrating")
    walk_share: float = Field(1 / 3, ge=0, lt=1, description="share of the budget (settings or minutes) spent walking "
                              "from the best setting so far, one knob at a time (the rest: the starts, then TPE)")
    choose_by: Literal["worst_error", "structure_error"] = Field(
        "worst_error", description="what the finalists are compared by: their worst judge, or the sum of the four")
    margin_points: float = Field(1.0, ge=0, description="error a cheaper setting may give up, in % points")
    margin_fraction: float = Field(0.1, ge=0, description="... or this fraction of the best's, whichever is larger")
    seed: int = Field(0, ge=0, description="the sampler's and the volumes' seed")
    storage: str = "sqlite:///micro-doe-runs/optuna.db"
    tracking: str = "sqlite:///micro-doe-runs/mlflow.db"
    artifacts: str = "micro-doe-runs/artifacts"


def parse_budget(text: str, option: str = "--tune-budget") -> tuple[int | None, float | None]:
    """``"16"`` → 16 trials; ``"30m"`` / ``"30min"`` → 30 minutes. At least 2 trials or 2 minutes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(m|min|minutes)?\s*", text)
    if match is None:
        raise TuningError(f"{option} {text!r}: expected a number of trials (16) or minutes (30m)")
    value, unit = float(match.group(1)), match.group(2)
    if unit is None:
        if value != int(value) or value < 2:
            raise TuningError(f"{option} {text}: a tuning budget must try at least 2 settings (the paper's and one more)")
        return int(value), None
    if value < 2:
        raise TuningError(f"{option} {text}: at least 2 minutes, enough to try more than one setting")
    return None, value


def study_name(bundle: Path, searched: list[str] | None = None) -> str:
    """``tune-<bundle name>-<8 hex of model.pt>``, then ``-spectral`` when that variant is
    searched: a retrained model, or a bundle that gained a variant, gets a study of its own."""
    digest = model_digest(bundle)[:8]
    slug = re.sub(r"[^a-z0-9_-]+", "-", bundle.name.lower()).strip("-_") or "model"
    return f"tune-{slug}-{digest}" + ("-spectral" if searched and "spectral" in searched else "")


# ----------------------------------------------------------------------------- stage 1: held out


def check_held_out(bundle: Path, held_out_data: Path | None, option: str = "--held-out-data") -> None:
    """Tuning needs images the model never saw: the bundle's own, or ``held_out_data``."""
    if held_out_data is None and not has_held_out(bundle):
        raise TuningError(f"{bundle}: no held-out images ({HELD_OUT_FILE}); give images the model was not trained on "
                          f"with {option}, or retrain with --held-out")
    if held_out_data is not None and (reason := why_missing(held_out_data)):
        raise TuningError(f"{option} {held_out_data}: {reason}")


def held_out_reference(path: Path, config: Micro3DiffConfig, option: str = "--held-out-data") -> Descriptors:
    """Descriptors of images from ``path`` (any training-data format), checked against the model."""
    stack = training_images(load_training_data(path), f"{option} {path}")
    if stack.sizes["y"] != config.image_size:
        raise TuningError(f"{option} {path}: images of {stack.sizes['y']}² but the model makes {config.image_size}²")
    if stack.sizes["sample"] < MIN_HELD_OUT:
        raise TuningError(f"{option} {path}: {stack.sizes['sample']} images; at least {MIN_HELD_OUT} are needed to judge")
    return training_reference(stack, stack)


def write_held_out(bundle: Path, reference: Descriptors, source: str, n_images: int) -> None:
    """Put held-out descriptors into a bundle (held_out.nc, and ``held_out`` in config.json)."""
    with atomic_path(bundle / HELD_OUT_FILE) as tmp:
        reference.to_dataset().to_netcdf(tmp, engine="netcdf4")
    update_config(bundle, held_out=HeldOutRecord(source=source, n_images=n_images))


def update_config(bundle: Path, **fields: Any) -> Micro3DiffConfig:
    """Rewrite fields of a bundle's config.json atomically; returns the new config."""
    path = bundle / "config.json"
    config = Micro3DiffConfig.model_validate_json(path.read_text()).model_copy(update=fields)
    config = Micro3DiffConfig.model_validate(config.model_dump())  # re-check the updated fields
    with atomic_path(path) as tmp:
        tmp.write_text(config.model_dump_json(indent=2) + "\n")
    return config


def training_autocovariance(path: Path, config: Micro3DiffConfig, option: str = "--training-data") -> list[list[float]]:
    """The radial autocovariance of the images a bundle trained on, read from ``path`` (the data
    given to ``train``): its images of the model's size and phases, without the held-out block
    when ``path`` holds exactly the training images and the held-out ones after them."""
    if reason := why_missing(path):
        raise TuningError(f"{option} {path}: {reason}")
    try:
        stack = training_images(load_training_data(path), f"{option} {path}")
    except ValueError as err:
        raise TuningError(str(err) if str(err).startswith(option) else f"{option} {path}: {err}") from None
    side, n = int(stack.sizes["y"]), int(stack.sizes["sample"])
    if side != config.image_size:
        raise TuningError(f"{option} {path}: images of {side}², but the model was trained on {config.image_size}²")
    if int(stack.max()) >= config.n_phases:
        raise TuningError(f"{option} {path}: labels up to {int(stack.max())}, but the model has {config.n_phases} phases")
    held = config.held_out
    if held is not None and held.first is not None and n == held.first + held.n_images:
        stack = stack.isel(sample=slice(0, held.first))
    return image_autocovariance(stack, config.n_phases)


# ----------------------------------------------------------------------------- stage 2: calibration


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


# ----------------------------------------------------------------------------- stage 3: the study


def tuning_spec(bundle: Path, reference: Descriptors, options: TuneOptions, name: str, device_has_fp16: bool = False,
                searched: list[str] | None = None) -> dict[str, Any]:  # fmt: skip
    """The study that searches the sampling settings (see the module doc); ``searched``: the
    variants (default: :data:`SEARCH`'s)."""
    search = {k: dict(v) for k, v in SEARCH.items()}
    if searched is not None:
        search["variant"] = {"categorical": list(searched)}
    if device_has_fp16:
        search["precision"] = {"categorical": ["fp32", "bf16", "fp16"]}
    budget: dict[str, Any] = {"n_trials": options.trials if options.minutes is None else 10_000}
    if options.minutes is not None:
        budget["timeout_s"] = 60.0 * options.minutes
    return {
        "name": name,
        "generator": {"kind": "micro3diff", "model": str(bundle), "reference": "held_out"},
        "search": search,
        "fixed": {"sampler": "ddpm", "variance": "beta"},
        "samples_per_trial": options.samples_per_trial,
        "volume_seeds": "common",
        "objectives": [{"name": "structure_error", "direction": "minimize"},
                       {"name": "seconds_per_volume", "direction": "minimize"}],
        "constraints": [{"metric": "vf_error", "max": round(VF_TOLERANCE * reference.volume_fraction, 4)},
                        {"metric": "passes_per_volume", "max": options.max_passes}],  # skipped unrun when over
        "sampler": {"kind": "tpe", "seed": options.seed,
                    "n_startup_trials": len(starts("spectral" in search["variant"]["categorical"]))},
        "budget": budget,
        "resources": {"generators": 1, "evaluators": 1},
        "evaluation": {"phase": reference.phase, "tortuosity_axis": None},
        "storage": options.storage,
        "tracking": options.tracking,
        "artifacts": options.artifacts,
    }


def enqueue_starts(spec: Any, budget: int) -> int:
    """On a new study, enqueue the starting settings (:func:`starts`, at most ``budget``); returns how many."""
    from micro_doe.studies.study_storage import open_study

    study = open_study(spec)
    if study.get_trials(deepcopy=False):
        return 0
    first = starts("spectral" in spec.search["variant"].choices)[: max(budget, 2)]
    for params in first:
        study.enqueue_trial(params, user_attrs={"initial_design": "tuning start"})
    return len(first)


WALK = "tuning walk"  # the initial_design attribute of a setting the walk queued


def walk_trials(options: TuneOptions) -> int:
    """Settings of a trial budget spent on the walk: ``walk_share`` of it, leaving at least two
    (the paper's and one more) to the starts."""
    return max(0, min(int(options.trials * options.walk_share), options.trials - 2))


def neighbours(params: dict[str, Any], search: dict[str, dict[str, list[Any]]], max_passes: int) -> list[dict[str, Any]]:
    """The settings one step from ``params``, in the order the walk tries them: n_h one rung up,
    then one rung down the searched ladder; then the other values of calibrate (variants that
    anchor only), S, precision and decode. None costlier than ``max_passes`` passes per volume."""
    ladder = search["n_h"]["categorical"]
    rung = ladder.index(params["n_h"])
    steps = [params | {"n_h": ladder[j]} for j in (rung + 1, rung - 1) if 0 <= j < len(ladder)]
    for key in ("calibrate", "steps", "precision", "decode"):
        if key == "calibrate" and not VARIANTS[params["variant"]].anchors:
            continue  # calibration changes nothing that does not anchor
        steps += [params | {key: value} for value in search[key]["categorical"] if value != params[key]]
    return [p for p in steps if passes(p) <= max_passes]


def next_step(trials: list[Any], search: dict[str, dict[str, list[Any]]], options: TuneOptions) -> dict[str, Any] | None:
    """The walk's next setting: the first untried neighbour (:func:`neighbours`) of the best
    feasible setting so far (by the study's structure error, :func:`finalists`); None when every
    neighbour was tried (a local optimum) or nothing is feasible yet. A setting counts as tried
    once any finished trial holds it, failed and skipped ones included (:func:`search_settings`
    runs a waiting trial before it asks for a new step)."""
    try:
        best = finalists(trials, options)[0]
    except TuningError:
        return None
    tried = [t.params for t in trials]
    return next((p for p in neighbours(dict(best.params), search, options.max_passes) if p not in tried), None)


# ----------------------------------------------------------------------------- stage 4: choice


def passes(params: dict[str, Any]) -> int:
    """Denoising passes per volume of a setting: (n_h + 1) · S."""
    return (int(params.get("n_h", 0)) + 1) * int(params.get("steps", 1))


def finalists(trials: list[Any], options: TuneOptions) -> list[Any]:
    """The study's best ``options.finalists`` feasible complete trials (by structure error) of at
    most ``options.max_passes`` passes per volume, one per setting."""
    feasible = [t for t in trials if t.state == "COMPLETE" and t.violation <= 0 and t.values and math.isfinite(t.values[0])
                and passes(t.params) <= options.max_passes]  # fmt: skip
    if not feasible:
        raise TuningError(f"no setting of at most {options.max_passes} passes met the vf constraint with a finite "
                          "structure error; raise --tune-budget")
    unique: dict[str, Any] = {}
    for t in sorted(feasible, key=lambda t: (t.values[0], t.number)):
        unique.setdefault(repr(sorted(t.params.items())), t)
    return list(unique.values())[: options.finalists]


def worst_error(row: dict[str, Any]) -> float:
    """The largest of a row's four judges (L, size, diameter and connectivity error), in %."""
    return float(np.max([row[name] for name in STRUCTURE_JUDGES]))


def compared_error(row: dict[str, Any], options: TuneOptions) -> float:
    """What the finalists are compared by (``options.choose_by``): the worst judge or the sum."""
    return worst_error(row) if options.choose_by == "worst_error" else float(row["structure_error"])


def choose(rows: list[dict[str, Any]], options: TuneOptions, vf_max_error: float) -> tuple[int, int, float]:
    """(chosen, best, margin) among measured rows (the four judges or ``structure_error``,
    ``seconds_per_volume``, ``vf_error``): of the rows within the vf constraint (all rows when
    none is), the cheapest whose error (``options.choose_by``) is within the margin of the best one's."""
    def error(i: int) -> float:
        return compared_error(rows[i], options)

    feasible = [i for i, r in enumerate(rows) if r["vf_error"] <= vf_max_error] or list(range(len(rows)))
    best = min(feasible, key=error)
    margin = max(options.margin_points, options.margin_fraction * error(best))
    near = [i for i in feasible if error(i) <= error(best) + margin]
    return min(near, key=lambda i: (rows[i]["seconds_per_volume"], error(i))), best, margin


def judge(volumes: list[Any], held_out: Descriptors, seconds: list[float]) -> dict[str, float]:
    """Every judge's mean over ``volumes`` against the held-out reference (the study's own
    objective functions), plus vf, Ø, connectivity and seconds per volume."""
    phase = held_out.phase
    samples = [Sample(volume=v, descriptors=describe(v, phase, tortuosity_axis=None), params={}, predicted={},
                      seconds=s, reference=held_out) for v, s in zip(volumes, seconds)]
    return _judged(samples)


def floor_row(training: Descriptors, held_out: Descriptors) -> dict[str, float]:
    """The data floor: the training images' own descriptors judged against the held-out ones.
    A training reference made before connectivity was measured has none: its connectivity error
    is unknown (NaN), not the 100 % a generated volume without the phase scores."""
    row = _judged([Sample(volume=None, descriptors=training, params={}, predicted={}, seconds=0.0, reference=held_out)])  # type: ignore[arg-type]
    if training.sizes is None or not math.isfinite(training.sizes.largest_share):
        row["connectivity_error"] = row["structure_error"] = math.nan
    return row


def _judged(samples: list[Sample]) -> dict[str, float]:
    row = {name: float(np.mean([BUILTIN_OBJECTIVES[name].fn(s) for s in samples])) for name in STRUCTURE_JUDGES}
    row["structure_error"] = sum(row[name] for name in STRUCTURE_JUDGES)  # the mean of sums is the sum of means
    sizes = [s.descriptors.sizes for s in samples]
    row["vf"] = float(np.mean([s.descriptors.volume_fraction for s in samples]))
    row["diameter"] = float(np.mean([z.diameter_mean for z in sizes if z is not None]))
    row["connectivity"] = float(np.mean([z.largest_share for z in sizes if z is not None]))
    row["seconds_per_volume"] = float(np.mean([s.seconds for s in samples]))
    return row


def confirm(generator: Micro3DiffGenerator, settings: dict[str, Any], held_out: Descriptors, volumes: int,
            seed: int = 0, first_seed: int = CONFIRM_SEED) -> dict[str, Any]:
    """One table row: ``settings`` sampled on fresh seeds (first_seed + seed + i) and judged
    against the held-out images; ``vf_error`` is |vf − held-out vf|."""
    start = time.perf_counter()
    vols = generator.sample(volumes, SamplingSettings(**settings), seed=first_seed + seed, allow_extrapolation=True)
    seconds = (time.perf_counter() - start) / volumes
    s = SamplingSettings(**settings).resolved(generator.bundle.config.sampling)
    row = judge(vols, held_out, [seconds] * volumes)
    return {"setting": label(s), "passes": (s.n_h + 1) * s.steps, **row,
            "vf_error": abs(row["vf"] - held_out.volume_fraction)}


def label(s: SamplingConfig) -> str:
    extra = [x for x, on in (("calibrated", s.calibrate and VARIANTS[s.variant].anchors),
                             ("decode at vf", s.decode == "fractions")) if on]  # fmt: skip
    return f"{s.variant}{' (' + ', '.join(extra) + ')' if extra else ''}, n_h {s.n_h}, S {s.steps}, {s.precision}"


def defaults_of(params: dict[str, Any]) -> SamplingConfig:
    return SamplingConfig(**(params | {"sampler": "ddpm", "variance": "beta"}))


TABLE_HEAD = ["| setting | passes | L error % | size error % | diameter error % | connectivity error % | worst % | "
              "structure error | vf | Ø | connectivity | s / volume |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]


def card_section(record: TuningRecord, chosen: str, margin: float) -> str:
    """The card's tuning section: rule, finalists, table with the data floor, where the study lives."""
    lines = ["", "## Sampling defaults (chosen by `micro-doe tune`)", "",
             f"Default: **{chosen}**. {record.rule} (margin {margin:.2f} points); {record.trials} settings tried, "
             f"study `{record.study}` in {record.storage}, MLflow {record.tracking}, seed {record.seed}.", "",
             "Judged against images the network never saw (held out); vf is a constraint, never a judge.", ""]
    if record.finalists:
        lines += ["Finalists (the study's best settings, measured again on fresh volumes; the choice is made here):", "",
                  *TABLE_HEAD, *map(table_line, record.finalists), "", "Confirmation (fresh volumes again):", ""]
    lines += [*TABLE_HEAD, *map(table_line, record.table)]
    return "\n".join(lines) + "\n"


def table_line(r: dict[str, Any]) -> str:
    return (f"| {r['setting']} | {r.get('passes', '')} | {r['lineal_path_error']:.2f} | {r['size_error']:.2f} | "
            f"{r['diameter_error']:.2f} | {r['connectivity_error']:.2f} | {worst_error(r):.2f} | {r['structure_error']:.2f} | "
            f"{r['vf']:.3f} | {r['diameter']:.2f} | {r['connectivity']:.2f} | {r['seconds_per_volume']:.2f} |")


def write_tuning(bundle: Path, defaults: SamplingConfig, record: TuningRecord, chosen: str, margin: float) -> None:
    """Defaults and record into config.json, the tuning section into card.md (replacing an earlier one)."""
    update_config(bundle, sampling=defaults, tuning=record)
    card = (bundle / "card.md").read_text()
    card = card.split("\n## Sampling defaults (chosen by `micro-doe tune`)")[0].rstrip("\n") + "\n"
    with atomic_path(bundle / "card.md") as tmp:
        tmp.write_text(card + card_section(record, chosen, margin))


def search_settings(study: Any, options: TuneOptions, search: dict[str, dict[str, list[Any]]],
                    on_study: Callable[[Any], Any] | None, log: Callable[[str], None]) -> tuple[Any, int]:  # fmt: skip
    """Stage 3's two parts on one study: the starts and TPE on the first ``1 − walk_share`` of
    the budget, then the walk (:func:`next_step`, one setting per run) until the budget is used;
    at a local optimum TPE takes the rest. Returns the last run's result and the settings walked.
    Resumable like any study: a re-run finds what was done and goes on (a setting the walk had
    queued and an interruption left waiting runs first)."""
    from optuna.trial import TrialState

    from micro_doe.studies.study_storage import open_study
    from micro_doe.studies.trial_attrs import uses_budget

    def run(n_trials: int, timeout_s: float | None) -> Any:
        budget = study.spec.budget.model_copy(update={"n_trials": n_trials, "timeout_s": timeout_s})
        study.spec = study.spec.model_copy(update={"budget": budget})
        return on_study(study) if on_study is not None else study.run()

    if options.minutes is None:
        deadline, result = math.inf, run(options.trials - walk_trials(options), None)
    else:
        deadline = time.monotonic() + 60.0 * options.minutes
        result = run(10_000, 60.0 * options.minutes * (1 - options.walk_share))
    stored = open_study(study.spec)

    def walked() -> int:  # over every run of the study, this one's and earlier ones'
        return sum(t.user_attrs.get("initial_design") == WALK and uses_budget(t) for t in stored.get_trials(deepcopy=False))

    while True:
        trials = stored.get_trials(deepcopy=False)
        left = deadline - time.monotonic()
        counted = sum(uses_budget(t) for t in trials)
        if (left <= 0) if options.minutes is not None else counted >= options.trials:
            return result, walked()
        if not any(t.state == TrialState.WAITING for t in trials):
            step = next_step(result.trials, search, options)
            if step is None:
                log("  the walk found no untried neighbour of the best setting: TPE takes the rest of the budget")
                result = run(options.trials if options.minutes is None else 10_000, None if math.isinf(left) else left)
                return result, walked()
            log(f"  walk: {label(defaults_of(step))}")
            stored.enqueue_trial(step, user_attrs={"initial_design": WALK})
        result = run(counted + 1, None if math.isinf(left) else left)


# ----------------------------------------------------------------------------- all four


def tune(
    model: str | Path,
    options: TuneOptions = TuneOptions(),
    *,
    held_out_data: Path | None = None,
    training_data: Path | None = None,
    on_study: Callable[[Any], Any] | None = None,
    log: Callable[[str], None] = print,
) -> TuningRecord:
    """Tune a Micro3Diff bundle's default sampling settings (the module doc's four stages).

    ``training_data``: the images the model trained on, for a bundle trained before its
    ``autocovariance`` was recorded: it is measured from them and written into the bundle, and
    the search includes the spectral variant (:func:`training_autocovariance`).

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
    searched = variants(config)
    name = study_name(bundle, searched)
    fp16 = default_device() == "cuda"
    preflight = tuning_spec(bundle, held_out, options, name, fp16, searched)
    preflight["generator"]["reference"] = "training"  # held_out.nc may not be written yet
    check_before_start(StudySpec.model_validate(preflight), "micro-doe tune")
    if held_out_data is not None:
        write_held_out(bundle, held_out, f"{held_out_data} (given to micro-doe tune)", held_out.sizes.sections)  # type: ignore[union-attr]
    if training_data is not None:
        update_config(bundle, autocovariance=config.autocovariance)
    raw = tuning_spec(bundle, held_out, options, name, fp16, searched)
    search, spec = raw["search"], StudySpec.model_validate(raw)

    generator = Micro3DiffGenerator(bundle)  # loaded once; its config follows every update below
    calibrate_at(generator, PROBE, options, resumed=bool(open_study(spec).get_trials(deepcopy=False)), log=log)

    budget = f"{options.trials} settings" if options.minutes is None else f"{options.minutes:g} min"
    log(f"tune {bundle.name}: study {name} ({budget}, {options.samples_per_trial} volumes per setting)")
    study = Study(spec)
    enqueue_starts(study.spec, options.trials - walk_trials(options) if options.minutes is None else options.trials)
    result, walked = search_settings(study, options, search, on_study, log)

    top = finalists(result.trials, options)
    log(f"tune {bundle.name}: measuring the {len(top)} best settings again on {options.finalist_volumes} fresh volumes each")
    measured = []
    for i, trial in enumerate(top, 1):
        row = confirm(generator, trial.params, held_out, options.finalist_volumes, options.seed, FINALIST_SEED)
        measured.append(row | {"trial": trial.number, "study_structure_error": trial.values[0]})
        log(f"  finalist {i}/{len(top)}: {row['setting']} (trial {trial.number}): structure error "
            f"{row['structure_error']:.2f} (study {trial.values[0]:.2f}), {row['seconds_per_volume']:.1f} s / volume")
    vf_max_error = VF_TOLERANCE * held_out.volume_fraction
    pick, best, margin = choose(measured, options, vf_max_error)
    chosen = top[pick]
    defaults = defaults_of(chosen.params)
    if VARIANTS[defaults.variant].anchors and defaults.calibrate and defaults.decode == "sign":
        calibrate_at(generator, chosen.params, options, resumed=False, log=log)
    log(f"tune {bundle.name}: confirming on {options.confirm_volumes} fresh volumes per setting")
    rows = [confirm(generator, chosen.params, held_out, options.confirm_volumes, options.seed) | {"role": "tuned default"},
            confirm(generator, PAPER, held_out, options.confirm_volumes, options.seed) | {"role": "paper (SamplingConfig())"},
            floor_row(generator.bundle.reference, held_out) | {"setting": "data floor: training images vs held out",
                                                                "role": "data floor"}]
    within = "" if any(r["vf_error"] <= vf_max_error for r in measured) else " (none kept vf within the constraint: all compared)"
    by = "worst judge" if options.choose_by == "worst_error" else "structure error"
    rule = (f"the study's {len(top)} best feasible settings measured again on {options.finalist_volumes} fresh volumes "
            f"each{within}; of those, the cheapest (s / volume) within max({options.margin_points:g} points, "
            f"{options.margin_fraction:.0%} of the best) of the best {by} (trial {top[best].number}: "
            f"{compared_error(measured[best], options):.2f}); chose trial {chosen.number}"
            + (f" (the study's last {walked} settings walked from its best, one knob at a time)" if walked else ""))
    record = TuningRecord(study=name, storage=masked_url(spec.storage), tracking=spec.tracking,
                          trials=len(result.completed), seed=options.seed, rule=rule, table=rows, finalists=measured)
    write_tuning(bundle, defaults, record, label(defaults), margin)
    return record
