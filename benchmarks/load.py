"""A long study with a generator that takes milliseconds: what the driver itself costs per trial.

    python benchmarks/load.py [--trials 2000] [--storage sqlite:///micro-doe-runs/load/optuna.db]
                              [--executor local|ray] [--sampler random|tpe] [--tracking]

The generator (registered here, ``instant-noise``) thresholds 8³ white noise: a millisecond per
volume, so nearly all of a trial's time is the platform's: asking, evaluating the descriptors of
an 8³ volume, writing the trial's attributes and constraints, telling. One volume per trial, no
tortuosity. Beside it, in the same run and on the same kind of storage, Optuna's own loop
(``study.optimize`` with an objective that returns at once, the same sampler): the reference.

Printed per row: trials, wall seconds, milliseconds per trial (all of it, and the last 10 %
alone: does a trial get slower as the study grows?), the storage's size on disk, and the
driver's peak resident memory. ``--tracking`` adds an MLflow run per trial (sqlite beside the
storage). PostgreSQL: give its URL as ``--storage``; the size column then says n/a.
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import numpy as np
import optuna

import micro_doe as md
from micro_doe.platform.volumes import make_volume


@md.generator_kind("instant-noise", parameters={"threshold": (0.0, 1.0)}, phase_names=["matrix", "pore"])
class InstantNoise:
    """8³ uniform noise below ``threshold``: a generator that costs almost nothing."""

    def __init__(self, size: int = 8):
        self.size, self.phase_names = size, ["matrix", "pore"]

    def sample_batch(self, params, n, seed):  # type: ignore[no-untyped-def]
        volumes, seconds = [], []
        for i in range(n):
            start = time.perf_counter()
            labels = (np.random.default_rng(seed + i).random((self.size,) * 3) < params["threshold"]).astype(np.int8)
            labels.flat[0], labels.flat[1] = 0, 1  # never one phase
            volumes.append(make_volume(labels, phase_names=self.phase_names, source="instant-noise", seed=seed + i))
            seconds.append(time.perf_counter() - start)
        return md.GeneratedBatch(volumes, seconds)


def db_size(url: str) -> str:
    if not url.startswith("sqlite:///"):
        return "n/a"
    path = Path(url[len("sqlite:///") :])
    total = sum(p.stat().st_size for p in path.parent.glob(path.name + "*") if p.is_file())
    return f"{total / 1e6:.1f} MB"


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def micro_doe_row(args: argparse.Namespace, storage: str, folder: Path) -> dict:
    marks: list[tuple[int, float]] = []

    def progress(p):  # type: ignore[no-untyped-def]
        marks.append((p.done + p.failed, time.perf_counter()))

    spec = {
        "name": "load", "generator": {"kind": "instant-noise"}, "search": {"threshold": {"float": [0.2, 0.8]}},
        "samples_per_trial": 1, "objectives": [{"name": "volume_fraction", "direction": "maximize"}],
        "constraints": [{"metric": "volume_fraction", "max": 0.7}], "sampler": {"kind": args.sampler, "seed": 0},
        "budget": {"n_trials": args.trials}, "evaluation": {"phase": "pore", "tortuosity_axis": None},
        "storage": storage, "tracking": f"sqlite:///{folder}/mlflow.db" if args.tracking else None,
        "artifacts": str(folder / "artifacts"),
    }  # fmt: skip
    start = time.perf_counter()
    result = md.Study(spec, executor=args.executor).run(on_progress=progress)
    wall = time.perf_counter() - start
    done = [(n, t) for n, t in marks if n > 0]
    tail_from = next(t for n, t in done if n >= int(0.9 * args.trials))
    tail_ms = 1000 * (done[-1][1] - tail_from) / max(done[-1][0] - int(0.9 * args.trials), 1)
    return {"what": f"micro-doe ({args.executor} executor{', MLflow' if args.tracking else ''})", "trials": len(result.trials),
            "wall": wall, "ms": 1000 * wall / args.trials, "tail_ms": tail_ms, "size": db_size(storage), "mb": peak_mb()}


def optuna_row(args: argparse.Namespace, storage: str) -> dict:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.RandomSampler(seed=0) if args.sampler == "random" else optuna.samplers.TPESampler(seed=0)
    study = optuna.create_study(storage=storage, study_name="optuna-alone", sampler=sampler, direction="maximize")
    times: list[float] = []
    start = time.perf_counter()
    study.optimize(lambda t: t.suggest_float("threshold", 0.2, 0.8), n_trials=args.trials,
                   callbacks=[lambda s, t: times.append(time.perf_counter())])  # fmt: skip
    wall = time.perf_counter() - start
    tail = times[int(0.9 * args.trials) :]
    return {"what": "Optuna alone (study.optimize, same sampler and storage kind)", "trials": args.trials, "wall": wall,
            "ms": 1000 * wall / args.trials, "tail_ms": 1000 * (tail[-1] - tail[0]) / max(len(tail) - 1, 1),
            "size": db_size(storage), "mb": peak_mb()}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=2000)
    parser.add_argument("--storage", default="sqlite:///micro-doe-runs/load/optuna.db")
    parser.add_argument("--executor", choices=("local", "ray"), default="local")
    parser.add_argument("--sampler", choices=("random", "tpe"), default="random")
    parser.add_argument("--tracking", action="store_true", help="an MLflow run per trial (sqlite)")
    args = parser.parse_args()
    folder = Path("micro-doe-runs/load")
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.db*"):
        old.unlink()  # a fresh study each run (this folder is the benchmark's own)
    reference_storage = args.storage.replace("optuna.db", "optuna-alone.db")
    rows = [optuna_row(args, reference_storage), micro_doe_row(args, args.storage, folder)]
    print(f"\n### {args.trials} trials, sampler {args.sampler}, storage {args.storage.split(':')[0]}\n")
    print("| loop | trials | wall s | ms / trial | ms / trial, last 10 % | storage on disk | driver peak memory MB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['what']} | {r['trials']} | {r['wall']:.1f} | {r['ms']:.1f} | {r['tail_ms']:.1f} | {r['size']} | {r['mb']:.0f} |")


if __name__ == "__main__":
    main()
