"""Near-duplicate proposals with several trials in flight, per sampler; TPE with and without constant liar.

    python benchmarks/parallel_proposals.py [--in-flight 2 4 8] [--trials 40] [--seeds 5]
                                            [--study-trials 32] [--study-seeds 3] [--no-study]

With several generators (or drivers) a study asks for a new point while other trials are
still running. A sampler that ignores them hands out points next to the ones being
generated, and those trials teach the study nearly nothing new.

**Judge.** For every proposal the sampler made (the Sobol start excluded), its distance to the
nearest trial *in flight* when it was asked: each parameter mapped onto [0, 1] (log-scaled
where the search space is), Euclidean distance divided by √d, so 1 is the cube's diagonal. A
*near-duplicate* is closer than 0.05; *close* means closer than 0.10. No sampler sees this distance. Random search is the
reference measured in the same run: it ignores trials in flight, yet spreads its points.

Part 1, the sampler alone: opv-design's search space (4 parameters) on an in-memory Optuna
study, pipelined as the runner pipelines: k trials asked before the first is told, then one
tell and one ask at a time. The two objectives come from a fixed analytic landscape (DTLZ2
on the unit cube), because here the judge is where the points go, not what they score.

Part 2, the real runner: ``opv-recipes`` (Cahn–Hilliard films, measured by the evaluators)
with ``resources.generators: 2``, TPE with and without constant liar, in-flight sets read
back from the stored trials' start and end times.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import optuna
from rich.console import Console
from rich.table import Table

from micro_doe.studies.spec import StudySpec
from micro_doe.studies.study_storage import enqueue_initial_design, make_sampler
from micro_doe.studies.study_yaml import load_spec

NEAR, CLOSE = 0.05, 0.10


def unit(params: dict, space: dict[str, optuna.distributions.BaseDistribution]) -> np.ndarray:
    """Parameters on [0, 1] each (log-scaled where the distribution is)."""
    out = []
    for name, dist in space.items():
        lo, hi, v = float(dist.low), float(dist.high), float(params[name])
        if getattr(dist, "log", False):
            lo, hi, v = np.log(lo), np.log(hi), np.log(v)
        out.append((v - lo) / (hi - lo))
    return np.array(out)


def nearest_in_flight(point: np.ndarray, in_flight: list[np.ndarray]) -> float:
    if not in_flight:
        return float("nan")
    return float(min(np.linalg.norm(point - q) for q in in_flight) / np.sqrt(point.size))


def dtlz2(x: np.ndarray) -> list[float]:
    """DTLZ2 with two objectives: x[0] the position on the front, the rest its distance to it."""
    g = float(np.sum((x[1:] - 0.5) ** 2))
    return [(1 + g) * np.cos(x[0] * np.pi / 2), (1 + g) * np.sin(x[0] * np.pi / 2)]


def pipelined_distances(spec: StudySpec, k: int, trials: int) -> list[float]:
    """Run the study's sampler and Sobol start pipelined, k trials in flight, on an in-memory
    study; the nearest-in-flight distance of each sampler proposal."""
    space = {name: p.distribution() for name, p in spec.search.items()}
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=make_sampler(spec.sampler))
    sobol = enqueue_initial_design(study, spec)
    running: list[tuple[optuna.trial.Trial, np.ndarray]] = []
    distances = []
    for i in range(trials):
        if len(running) == k:
            trial, x = running.pop(0)
            study.tell(trial, dtlz2(x))
        trial = study.ask(space)
        x = unit(trial.params, space)
        if i >= sobol:
            distances.append(nearest_in_flight(x, [q for _, q in running]))
        running.append((trial, x))
    return distances


def study_distances(trials: list[optuna.trial.FrozenTrial], space) -> list[float]:
    """From stored trials: each sampler proposal's nearest distance to the trials running when it started."""
    done = [t for t in trials if t.datetime_start is not None and set(space) <= set(t.params)]
    out = []
    for t in done:
        if t.user_attrs.get("initial_design") or "requeued_from" in t.user_attrs:
            continue
        running = [unit(o.params, space) for o in done
                   if o.number != t.number and o.datetime_start < t.datetime_start
                   and (o.datetime_complete is None or o.datetime_complete > t.datetime_start)]  # fmt: skip
        out.append(nearest_in_flight(unit(t.params, space), running))
    return out


def summarize(distances: list[float]) -> str:
    """'near-duplicate share / close share / median distance (n proposals)'."""
    d = np.array([x for x in distances if np.isfinite(x)])
    if not d.size:
        return "no proposals"
    return f"{100 * np.mean(d < NEAR):.1f} % / {100 * np.mean(d < CLOSE):.1f} % / {np.median(d):.3f} ({d.size})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--in-flight", nargs="+", type=int, default=[2, 4, 8])
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--study-trials", type=int, default=32)
    parser.add_argument("--study-seeds", type=int, default=3)
    parser.add_argument("--no-study", action="store_true", help="skip part 2 (the real runner)")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    console = Console(width=140)

    sobol = {"initial_design": {"kind": "sobol", "n": 4}}
    samplers = {
        "TPE, constant liar (default)": {"kind": "tpe"} | sobol,
        "TPE, no constant liar": {"kind": "tpe", "constant_liar": False} | sobol,
        "GP (conditions on running trials)": {"kind": "gp"} | sobol,
        "NSGA-II (population 8)": {"kind": "nsga2", "population_size": 8} | sobol,
        "random (reference)": {"kind": "random"} | sobol,
    }
    table = Table(title=f"Part 1, the sampler alone: opv-design's space, DTLZ2 landscape, {args.trials} trials "
                        f"(4 Sobol + {args.trials - 4} proposals) × {args.seeds} seeds. Each cell: near-duplicate "
                        f"share (nearest trial in flight < {NEAR}, unit cube, /√d) / close share (< {CLOSE}) / "
                        f"median distance (proposals)")  # fmt: skip
    table.add_column("sampler")
    for k in args.in_flight:
        table.add_column(f"{k} in flight", justify="right")
    for label, sampler in samplers.items():
        cells = []
        for k in args.in_flight:
            specs = [load_spec("opv-design", {"sampler": sampler | {"seed": seed}}) for seed in range(args.seeds)]
            d = [x for spec in specs for x in pipelined_distances(spec, k, args.trials)]
            cells.append(summarize(d))
        table.add_row(label, *cells)
        console.print(f"done: {label}")
    console.print(table)

    if args.no_study:
        return
    from micro_doe.actors.cluster import connect
    from micro_doe.studies.runner import Study

    connect(num_cpus=4)  # two generators and two evaluators on this machine's cores
    recipes = load_spec("opv-recipes")
    rspace = {name: p.distribution() for name, p in recipes.search.items()}
    table = Table(title=f"Part 2, the runner: opv-recipes, generators: 2, {args.study_trials} trials × "
                        f"{args.study_seeds} seeds (4 Sobol excluded)")  # fmt: skip
    for column in ("sampler", f"near-duplicate (< {NEAR}) / close (< {CLOSE}) / median distance (proposals)"):
        table.add_column(column, justify="right")
    with tempfile.TemporaryDirectory(prefix="micro-doe-proposals-") as tmp:
        for label, liar in (("TPE, constant liar (default)", True), ("TPE, no constant liar", False)):
            d: list[float] = []
            for seed in range(args.study_seeds):
                name = f"recipes-{int(liar)}-{seed}"
                spec = load_spec("opv-recipes", {
                    "name": name,
                    "sampler": {"kind": "tpe", "seed": seed, "constant_liar": liar, "initial_design": {"kind": "sobol", "n": 4}},
                    "budget": {"n_trials": args.study_trials, "timeout_s": None},
                    "resources": {"generators": 2, "evaluators": 2},
                    "storage": f"sqlite:///{tmp}/optuna.db", "tracking": f"sqlite:///{tmp}/mlflow.db",
                    "artifacts": str(Path(tmp) / "artifacts"),
                })  # fmt: skip
                Study(spec).run()
                d += study_distances(optuna.load_study(study_name=name, storage=spec.storage).trials, rspace)
                console.print(f"done: {label} seed {seed}")
            table.add_row(label, summarize(d))
    console.print(table)


if __name__ == "__main__":
    main()
