"""Stage 3: the study that searches the settings: its spec, its starts, TPE, and the walk
from the best setting so far, one knob at a time."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from micro_doe.platform.descriptors import Descriptors
from micro_doe.platform.micro3diff.generator import VARIANTS
from micro_doe.studies.tuning.choice import finalists
from micro_doe.studies.tuning.options import SEARCH, VF_TOLERANCE, TuneOptions, TuningError, defaults_of, label, passes, starts


def tuning_spec(bundle: Path, reference: Descriptors, options: TuneOptions, name: str, precisions: Sequence[str] | None = None,
                searched: list[str] | None = None, decoded: list[str] | None = None) -> dict[str, Any]:  # fmt: skip
    """The study that searches the sampling settings (stage 3 of :mod:`micro_doe.studies.tuning`); ``precisions``:
    those the generator's device runs natively, ``searched``: the variants, ``decoded``: the decodings (default:
    :data:`SEARCH`'s)."""
    search = {k: dict(v) for k, v in SEARCH.items()}
    for key, choices in (("variant", searched), ("decode", decoded), ("precision", precisions)):
        if choices is not None:
            search[key] = {"categorical": list(choices)}
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
                    "n_startup_trials": len(search_starts(search))},
        "budget": budget,
        "resources": {"generators": 1, "evaluators": 1},
        "evaluation": {"phase": reference.phase, "tortuosity_axis": None},
        "storage": options.storage,
        "tracking": options.tracking,
        "artifacts": options.artifacts,
    }


def search_starts(search: dict[str, Any]) -> list[dict[str, Any]]:
    """:func:`starts` for a search (a spec's, or its dict form): spectral's and hysteresis' starts
    when searched, each in a precision searched."""
    def choices(key: str) -> list[Any]:
        domain = search[key]
        return list(domain["categorical"] if isinstance(domain, dict) else domain.choices)

    return starts("spectral" in choices("variant"), "hysteresis" in choices("decode"), choices("precision"))


def enqueue_starts(spec: Any, budget: int) -> int:
    """On a new study, enqueue the starting settings (:func:`starts`, at most ``budget``); returns how many."""
    from micro_doe.studies.study_storage import open_study

    study = open_study(spec)
    if study.get_trials(deepcopy=False):
        return 0
    first = search_starts(spec.search)[: max(budget, 2)]
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
