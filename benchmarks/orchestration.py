"""Orchestration cost of a study: generator busy fraction and overhead per trial.

    python benchmarks/orchestration.py [--trials 8] [--model pretrained:spheres-32]

Runs the same small study twice on a local Ray instance with real sqlite Optuna and MLflow
stores: pipelined (generation of trial k+1 overlaps evaluation of trial k; the default) and
sequential (the reference, measured in the same run). Prints, for each: wall time after
start-up, generator busy time, busy fraction (target ≥ 90 % pipelined), orchestration
overhead per trial = (wall − generator busy) / trials, and start-up time (Ray, actors,
model load, stores); then the pipelined/sequential ratios.
"""

from __future__ import annotations

import argparse
import os
import tempfile

from micro_doe.studies.runner import Study
from micro_doe.studies.spec import StudySpec


def spec(model: str, trials: int, root: str, name: str) -> StudySpec:
    return StudySpec.model_validate(
        {
            "name": name,
            "generator": {"kind": "micro3diff", "model": model},
            "search": {"n_h": {"int": [0, 1]}, "steps": {"int": [10, 20]}},
            "samples_per_trial": 2,
            "objectives": [{"name": "s2_error"}, {"name": "seconds_per_volume"}],
            "sampler": {"kind": "random", "seed": 0},
            "budget": {"n_trials": trials},
            "resources": {"generators": 1, "evaluators": 1},
            "storage": f"sqlite:///{root}/optuna.db",
            "tracking": f"sqlite:///{root}/mlflow.db",
            "artifacts": f"{root}/artifacts",
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--model", default="pretrained:spheres-32")
    args = parser.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory() as root:
        for mode, pipelining in (("sequential (reference)", False), ("pipelined", True)):
            result = Study(spec(args.model, args.trials, root, f"bench-{int(pipelining)}")).run(pipelining=pipelining)
            wall = result.seconds - result.startup_seconds
            rows[mode] = (result, wall)
            print(f"{mode}: {len(result.completed)} trials, start-up {result.startup_seconds:.1f} s, "
                  f"wall {wall:.1f} s, generator busy {result.generator_busy_seconds:.1f} s", flush=True)
    print(f"\n# study orchestration, {args.trials} trials × 2 volumes, {os.cpu_count()} cores, local Ray\n")
    print("| mode | wall after start-up [s] | generator busy [s] | busy fraction | overhead / trial [s] | start-up [s] |")
    print("|---|---:|---:|---:|---:|---:|")
    for mode, (r, wall) in rows.items():
        overhead = (wall - r.generator_busy_seconds) / max(len(r.completed), 1)
        print(f"| {mode} | {wall:.1f} | {r.generator_busy_seconds:.1f} | {100 * r.busy_fraction:.1f} % | {overhead:.2f} | {r.startup_seconds:.1f} |")
    (_, seq_wall), (pipe, pipe_wall) = rows["sequential (reference)"], rows["pipelined"]
    print(f"\npipelined / sequential wall time: {pipe_wall / seq_wall:.2f}")
    print(f"target busy fraction ≥ 90 % (pipelined): {100 * pipe.busy_fraction:.1f} % "
          f"{'PASS' if pipe.busy_fraction >= 0.9 else 'MISS'}")


if __name__ == "__main__":
    main()
