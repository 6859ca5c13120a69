"""Orchestration cost of a study: generator busy fraction and overhead per trial.

    python benchmarks/orchestration.py [--trials 8] [--model pretrained:spheres-32] [--no-tune]

Runs the same small study on a local Ray instance three ways, in the same run:

- micro-doe, sequential (each trial's evaluation before the next generation);
- micro-doe, pipelined (generation of trial k+1 overlaps evaluation of trial k; the default),
  both with real sqlite Optuna and MLflow stores;
- the anchor: Ray Tune with its ``OptunaSearch`` on the same generator, evaluator, search
  space and objectives (a class trainable that loads the model once, ``reuse_actors``, one
  trial at a time), with no MLflow logging.

Prints, for each: wall time (after start-up for micro-doe; Tune's ``fit()`` whole, whose
start-up cannot be split off), generator busy time, busy fraction (busy / wall; target ≥ 90 %
pipelined), orchestration overhead per trial = (wall − generator busy) / trials, and
micro-doe's start-up time (Ray, actors, model load, stores); then the ratios.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

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


def tune_anchor(model: str, trials: int, root: str) -> tuple[float, float, int]:
    """Ray Tune + OptunaSearch on the same study: (wall of fit() [s], generator busy [s], trials)."""
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    from micro_doe.actors import EvaluatorWorker, GeneratorWorker
    from micro_doe.platform.bundles import load_reference
    from micro_doe.platform.descriptors import Descriptors
    from micro_doe.studies.objectives import Sample, evaluate_objectives
    from micro_doe.tracking.registry import resolve_model

    study = spec(model, trials, root, "bench-tune")
    generator_spec = study.generator.model_dump() | {"tracking_uri": None}
    objectives, e = study.resolved_objectives(), study.evaluation
    reference = load_reference(resolve_model(model))

    class StudyTrial(tune.Trainable):
        def setup(self, config):  # type: ignore[no-untyped-def]
            self.generator, self.evaluator, self.seed = GeneratorWorker(generator_spec), EvaluatorWorker(), 0

        def reset_config(self, new_config):  # type: ignore[no-untyped-def]
            self.config = new_config
            return True  # reuse the actor and its loaded model

        def save_checkpoint(self, checkpoint_dir):  # type: ignore[no-untyped-def]
            return {"seed": self.seed}  # all a trial carries between calls

        def load_checkpoint(self, checkpoint):  # type: ignore[no-untyped-def]
            self.seed = checkpoint["seed"]

        def step(self):  # type: ignore[no-untyped-def]
            params = dict(self.config) | study.fixed
            self.seed += 1000
            out = self.generator.sample(params, study.samples_per_trial, self.seed)
            samples = [
                Sample(volume=v, descriptors=Descriptors.model_validate(self.evaluator.describe(
                    v, phase=e.phase, tortuosity_axis=e.tortuosity_axis, periodic=e.periodic)),
                    params=params, predicted=p, seconds=t, reference=reference)
                for v, p, t in zip(out["volumes"], out["predicted"], out["seconds"])
            ]  # fmt: skip
            values = evaluate_objectives(objectives, samples)
            return values | {"busy": float(out.get("busy_seconds", sum(out["seconds"]))), "done": True}

    names = [o.name for o, _ in objectives]
    modes = ["min" if d == "minimize" else "max" for _, d in objectives]
    searcher = OptunaSearch(metric=names, mode=modes, seed=0)
    space = {"n_h": tune.randint(0, 2), "steps": tune.randint(10, 21)}  # the study's int ranges, high inclusive
    tuner = tune.Tuner(
        tune.with_resources(StudyTrial, {"cpu": 1}),
        param_space=space,
        tune_config=tune.TuneConfig(search_alg=searcher, num_samples=trials, max_concurrent_trials=1,
                                    reuse_actors=True),
        run_config=tune.RunConfig(storage_path=root, name="tune-anchor", stop={"training_iteration": 1}, verbose=0,
                                  checkpoint_config=tune.CheckpointConfig(checkpoint_at_end=False)),
    )  # fmt: skip
    start = time.perf_counter()
    results = tuner.fit()
    wall = time.perf_counter() - start
    busy = float(sum(r.metrics.get("busy", 0.0) for r in results if r.metrics and r.error is None))
    return wall, busy, sum(1 for r in results if r.metrics and r.error is None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--model", default="pretrained:spheres-32")
    parser.add_argument("--no-tune", action="store_true", help="skip the Ray Tune anchor")
    args = parser.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory() as root:
        for mode, pipelining in (("sequential (reference)", False), ("pipelined", True)):
            result = Study(spec(args.model, args.trials, root, f"bench-{int(pipelining)}")).run(pipelining=pipelining)
            wall = result.seconds - result.startup_seconds
            rows[mode] = (result, wall)
            print(f"{mode}: {len(result.completed)} trials, start-up {result.startup_seconds:.1f} s, "
                  f"wall {wall:.1f} s, generator busy {result.generator_busy_seconds:.1f} s", flush=True)
        tune_row = None
        if not args.no_tune:  # on the Ray instance the studies started
            tune_row = tune_anchor(args.model, args.trials, root)
            print(f"Ray Tune + OptunaSearch: {tune_row[2]} trials, wall {tune_row[0]:.1f} s, "
                  f"generator busy {tune_row[1]:.1f} s", flush=True)
    print(f"\n# study orchestration, {args.trials} trials × 2 volumes, {os.cpu_count()} cores, local Ray\n")
    print("| mode | wall after start-up [s] | generator busy [s] | busy fraction | overhead / trial [s] | start-up [s] |")
    print("|---|---:|---:|---:|---:|---:|")
    for mode, (r, wall) in rows.items():
        overhead = (wall - r.generator_busy_seconds) / max(len(r.completed), 1)
        print(f"| {mode} | {wall:.1f} | {r.generator_busy_seconds:.1f} | {100 * r.busy_fraction:.1f} % | {overhead:.2f} | {r.startup_seconds:.1f} |")
    if tune_row is not None:
        wall, busy, n = tune_row
        print(f"| Ray Tune + OptunaSearch (anchor; wall includes start-up) | {wall:.1f} | {busy:.1f} | "
              f"{100 * busy / wall:.1f} % | {(wall - busy) / max(n, 1):.2f} | (in wall) |")
    (_, seq_wall), (pipe, pipe_wall) = rows["sequential (reference)"], rows["pipelined"]
    print(f"\npipelined / sequential wall time: {pipe_wall / seq_wall:.2f}")
    print(f"target busy fraction ≥ 90 % (pipelined): {100 * pipe.busy_fraction:.1f} % "
          f"{'PASS' if pipe.busy_fraction >= 0.9 else 'MISS'}")


if __name__ == "__main__":
    main()
