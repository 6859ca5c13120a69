"""Does pruning save generator time without losing the Pareto front? micro3diff-tuning, CPU-sized.

    python benchmarks/pruning.py [--trials 16] [--seeds 2] [--samples 4] [--pruners median successive_halving]
                                 [--every 1] [--min-resource 1] [--reduction-factor 2] [--json FILE]

``micro3diff-tuning`` is a 200-trial GPU study. Here it runs at a size 2 CPU cores finish:
the same objectives, model (``pretrained:spheres-32``), variants and decode options, with
``n_h`` in [0, 1], ``steps`` in [10, 30], ``samples_per_trial`` volumes a trial and the budget
given, on one generator and one evaluator. Each pruner is run beside the reference without
one, with the same sampler seeds, in this run. A pruned trial counts toward the budget.

Pruning decides on the running mean of the first objective (lineal-path error) after every
``--every`` volumes (a trial's volumes are generated in batches of that size; the reference
arm generates all of them in one batch); the median pruner after 4 complete trials, successive
halving and Hyperband with rungs at ``--min-resource`` · ``--reduction-factor``^k volumes.
Pareto halving (micro-doe's variant) has the same rungs but ranks the running means of all
three objectives (lineal-path error, size error, seconds per volume) by Pareto dominance;
``--pareto-objectives lineal_path_error size_error`` ranks only those (its ``objectives:``).
**Judges:**
- generator time: the generator actors' busy seconds, summed over the study;
- the final front: the hypervolume of the complete trials' front in (lineal-path error,
  size error), against a fixed reference point (100 %, 100 %). The front is what the study
  optimises; ``seconds_per_volume``, its third objective, is left out of the judge because
  it is wall time and moves with the machine's load;
- size error alone (the best complete trial's), which Optuna's pruners never read (they
  prune on the first objective); Pareto halving ranks it, so for that row it is not blind.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import optuna
from optuna._hypervolume import compute_hypervolume
from rich.console import Console
from rich.table import Table

from micro_doe.studies.runner import Study
from micro_doe.studies.study_yaml import load_spec

REFERENCE = np.array([100.0, 100.0])  # lineal-path error %, size error %
PRUNERS = {
    "median": {"kind": "median", "n_startup_trials": 4, "n_warmup_steps": 0},
    "successive_halving": {"kind": "successive_halving", "min_resource": 1, "reduction_factor": 2},
    "hyperband": {"kind": "hyperband", "min_resource": 1, "reduction_factor": 2},
    "pareto_halving": {"kind": "pareto_halving", "min_resource": 1, "reduction_factor": 2},
}


def pruner_block(pruner: str | None, every: int, min_resource: int, reduction_factor: int,
                 pareto_objectives: list[str] | None = None) -> dict | None:  # fmt: skip
    """The ``pruner:`` block of one arm (``None``: the reference without pruning)."""
    if pruner is None:
        return None
    block = PRUNERS[pruner] | {"every": every}
    if "min_resource" in block:
        block |= {"min_resource": min_resource, "reduction_factor": reduction_factor}
    if pruner == "pareto_halving" and pareto_objectives:
        block["objectives"] = pareto_objectives
    return block


QUALITY_OBJECTIVES = [{"name": "lineal_path_error", "direction": "minimize"}, {"name": "size_error", "direction": "minimize"}]


def run(pruner: dict | None, name: str, seed: int, trials: int, samples: int, root: Path,
        without_time: bool = False) -> dict:  # fmt: skip
    overrides = {
        "name": name,
        "search": {"n_h": {"int": [0, 1]}, "steps": {"int": [10, 30]}},  # deep-merged: the rest as bundled
        "generator": {"kind": "micro3diff", "model": "pretrained:spheres-32", "batch_size": samples},
        "samples_per_trial": samples,
        "sampler": {"kind": "tpe", "seed": seed, "initial_design": {"kind": "sobol", "n": 4}},
        "budget": {"n_trials": trials, "timeout_s": None},
        "resources": {"generators": 1, "evaluators": 1},
        "pruner": pruner,
        "storage": f"sqlite:///{root}/optuna.db",
        "tracking": f"sqlite:///{root}/mlflow.db",
        "artifacts": str(root / "artifacts"),
    }
    if without_time:  # no wall-time objective: TPE's proposals, and so the reference arm, repeat across runs
        overrides["objectives"] = QUALITY_OBJECTIVES
    spec = load_spec("micro3diff-tuning", overrides)
    result = Study(spec).run()
    study = optuna.load_study(study_name=name, storage=spec.storage)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    points = np.array([t.values[:2] for t in complete if np.all(np.array(t.values[:2]) <= REFERENCE)])
    return {
        "busy": result.generator_busy_seconds,
        "hypervolume": float(compute_hypervolume(points, REFERENCE)) if len(points) else 0.0,
        "best_size_error": min((t.values[1] for t in complete), default=float("nan")),
        "complete": len(complete),
        "pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--pruners", nargs="+", default=["median"], choices=list(PRUNERS))
    parser.add_argument("--every", type=int, default=1, help="volumes between two pruning decisions")
    parser.add_argument("--min-resource", type=int, default=1, help="successive halving / Hyperband: first rung")
    parser.add_argument("--reduction-factor", type=int, default=2, help="successive halving / Hyperband")
    parser.add_argument("--pareto-objectives", nargs="+", help="pareto_halving: rank only these objectives")
    parser.add_argument("--without-time", action="store_true",
                        help="drop seconds_per_volume from the study's objectives, so every arm's proposals repeat across runs")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    if args.pareto_objectives and "pareto_halving" not in args.pruners:
        parser.error("--pareto-objectives: only pareto_halving ranks objectives; add it to --pruners")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    console = Console(width=140)
    rows: dict[str, list[dict]] = {}
    blocks = {p: pruner_block(p, args.every, args.min_resource, args.reduction_factor, args.pareto_objectives)
              for p in [None, *args.pruners]}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="micro-doe-pruning-") as tmp:
        for seed in range(args.seeds):
            for pruner, block in blocks.items():
                name = f"prune-{pruner or 'none'}-{seed}"
                r = run(block, name, seed, args.trials, args.samples, Path(tmp), args.without_time)
                rows.setdefault(pruner or "none (reference)", []).append(r)
                console.print(f"{pruner or 'none'} seed {seed}: {r}")
    table = Table(title=f"micro3diff-tuning on CPU: {args.trials} trials × {args.samples} volumes, {args.seeds} seeds "
                        f"(same seeds per row), decisions every {args.every} volumes; front judged in (lineal-path %, size %) against {tuple(REFERENCE.tolist())}")  # fmt: skip
    for column in ("pruner", "generator busy [s]", "saved vs none", "pruned trials", "front hypervolume",
                   "best size error [%] (blind to all but pareto_halving)"):  # fmt: skip
        table.add_column(column, justify="right")
    base = rows["none (reference)"]
    for label, rs in rows.items():
        busy = np.array([r["busy"] for r in rs])
        saved = 1 - busy.sum() / sum(r["busy"] for r in base)
        table.add_row(label, f"{busy.mean():.0f}", "—" if rs is base else f"{100 * saved:.0f} %",
                      f"{np.mean([r['pruned'] for r in rs]):.1f}",
                      " / ".join(f"{r['hypervolume']:.0f}" for r in rs),
                      " / ".join(f"{r['best_size_error']:.1f}" for r in rs))  # fmt: skip
    console.print(table)
    if args.json:
        args.json.write_text(json.dumps({"trials": args.trials, "seeds": args.seeds, "samples": args.samples,
                                         "without_time": args.without_time,
                                         "pruners": {p: b for p, b in blocks.items() if p is not None},
                                         "runs": rows}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
