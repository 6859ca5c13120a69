"""Stage 4: the finalists measured again, the choice among them, and the rows of the tables."""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import time
from typing import Any

import numpy as np
import torch

from micro_doe.platform.descriptors import Descriptors, describe
from micro_doe.platform.micro3diff.generator import VARIANTS, Micro3DiffGenerator, SamplingSettings
from micro_doe.studies.objectives import BUILTIN_OBJECTIVES, STRUCTURE_JUDGES, Sample
from micro_doe.studies.tuning.options import TuneOptions, TuningError, label, passes

CONFIRM_SEED = 100_000  # confirmation volumes: seeds the study never used
FINALIST_SEED = 200_000  # the finalists' volumes: seeds neither the study nor the confirmation used


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
    :func:`cost`, ``vf_error``): of the rows within the vf constraint (all rows when none is),
    the cheapest whose error (``options.choose_by``) is within the margin of the best one's."""
    def error(i: int) -> float:
        return compared_error(rows[i], options)

    feasible = [i for i, r in enumerate(rows) if r["vf_error"] <= vf_max_error] or list(range(len(rows)))
    best = min(feasible, key=error)
    margin = max(options.margin_points, options.margin_fraction * error(best))
    near = [i for i in feasible if error(i) <= error(best) + margin]
    return min(near, key=lambda i: (cost(rows[i]), error(i))), best, margin


def cost(row: dict[str, Any]) -> float:
    """What "cheapest" compares: the CPU seconds this process spent per volume, which other work
    on the machine does not inflate (wall seconds of rows measured at different times do: a
    default chosen on a shared machine would follow the load), else the wall seconds."""
    return float(row.get("cpu_seconds_per_volume", row["seconds_per_volume"]))


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
    """The four judges (the study's objective functions), their sum, vf, Ø, connectivity and
    seconds, each the mean over ``samples``."""
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
    against the held-out images; ``vf_error`` is |vf − held-out vf|; seconds per volume in wall
    time and in this process's CPU time (``cpu_seconds_per_volume``)."""
    start, cpu_start = time.perf_counter(), time.process_time()
    vols = generator.sample(volumes, SamplingSettings(**settings), seed=first_seed + seed, allow_extrapolation=True)
    seconds, cpu_seconds = (time.perf_counter() - start) / volumes, (time.process_time() - cpu_start) / volumes
    s = SamplingSettings(**settings).resolved(generator.bundle.config.sampling)
    row = judge(vols, held_out, [seconds] * volumes)
    return {"setting": label(s), "passes": (s.n_h + 1) * s.steps, **row, "cpu_seconds_per_volume": cpu_seconds,
            "vf_error": abs(row["vf"] - held_out.volume_fraction)}


def kept_row(study: Any, generator: Micro3DiffGenerator, settings: dict[str, Any], held_out: Descriptors, volumes: int,
             seed: int, first_seed: int) -> dict[str, Any]:  # fmt: skip
    """:func:`confirm`, measured once per study: the row is kept in the Optuna study's user
    attributes under a digest of what it depends on (:func:`row_about`), so an interrupted
    tuning resumes past the finalists and confirmations it measured (at 64³ or n_h 40, each is
    minutes)."""
    about = row_about(generator, settings, held_out, volumes, seed + first_seed)
    key = f"tuning row {hashlib.sha256(about.encode()).hexdigest()[:16]}"  # Optuna's keys hold 512 characters
    if (kept := study.user_attrs.get(key)) is not None and kept.get("about") == about:
        return dict(kept["row"])
    row = confirm(generator, settings, held_out, volumes, seed, first_seed)
    study.set_user_attr(key, {"about": about, "row": row})
    return row


def row_about(generator: Micro3DiffGenerator, settings: dict[str, Any], held_out: Descriptors, volumes: int, first: int) -> str:
    """What a row of :func:`confirm` depends on beyond the study's weights: the setting, the volumes
    and their first seed, the vf calibration when the setting anchors with it, the held-out
    reference, and the machine that timed it (seconds per volume choose among the finalists)."""
    config = generator.bundle.config
    resolved = SamplingSettings(**settings).resolved(config.sampling)
    calibrated = resolved.calibrate and VARIANTS[resolved.variant].anchors
    calibration = hashlib.sha256(json.dumps(config.vf_calibration).encode()).hexdigest()[:12] if calibrated else "none"
    reference = hashlib.sha256(held_out.model_dump_json(exclude={"seconds"}).encode()).hexdigest()[:12]
    machine = f"{generator.device}, {torch.get_num_threads()} threads, {os.cpu_count()} cores, {platform.machine()}"
    return (f"{resolved.model_dump_json()}; {volumes} volumes from seed {first}; calibration {calibration}; "
            f"held out {reference}; timed on {machine}")
