"""Does the search earn its keep? Hypervolume against trials for each sampler, against random search.

    python benchmarks/search.py [--studies opv-design opv-recipes] [--samplers tpe gp nsga2 random]
                                [--seeds 5] [--trials 12] [--samples-per-trial N] [--also-at 40]
                                [--json FILE]
                                [--plot docs/search-hypervolume.png]

A sampler ``tpe:startup=10`` (or ``gp:…``) keeps Optuna's 10 random start-up trials instead
of handing over to the model right after the 4-point Sobol start (the default).

Each bundled fast study runs with every sampler and seed (``sampler.seed`` = seed, the same
Sobol start of ``initial_design`` for all but random search, which takes none), on the same
budget of trials, in this run, on one local Ray instance with fresh sqlite stores.

**Judge.** The hypervolume of the *feasible* Pareto front after each trial (every objective
as a loss: maximised ones negated), against a fixed reference point per study
(:data:`REFERENCE`, a point every sensible design dominates), computed by Optuna's exact
``compute_hypervolume``. No sampler sees the hypervolume; each sees only its objectives.

Printed per study and sampler: the final hypervolume (mean ± std over seeds), and the number
of trials needed to reach 90 % of the best hypervolume found by *any* run of that study
(a run that never reaches it counts as budget + 1), as a ratio to random search's (< 1:
faster than random). ``--also-at N`` judges the first N trials of every run as a budget of its
own (the 90 % level recomputed on them), so one long run also gives the shorter budgets'
numbers, and shows how much the budget + 1 charged to a run that never arrives caps a ratio.
The plot shows the mean hypervolume against trials.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import optuna  # noqa: E402
from optuna._hypervolume import compute_hypervolume  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from micro_doe.studies.runner import Study  # noqa: E402
from micro_doe.studies.study_yaml import load_spec  # noqa: E402

# Loss-space reference points (objectives in the study's order, maximised ones negated).
REFERENCE = {
    "opv-design": (0.0, 5.0),  # interfacial area ≥ 0, transport tortuosity ≤ 5
    "opv-recipes": (0.0, 5.0),
}


def hypervolume_history(trials: list[optuna.trial.FrozenTrial], directions: list[str], reference) -> list[float]:
    """Hypervolume of the feasible front of the first k trials, k = 1..len(trials) (trial-number order)."""
    sign = np.array([1.0 if d == "minimize" else -1.0 for d in directions])
    ref = np.asarray(reference, dtype=float)
    points: list[np.ndarray] = []
    out = []
    for t in sorted(trials, key=lambda t: t.number):
        feasible = all(v <= 0 for v in t.system_attrs.get("constraints", ()))
        if t.state == optuna.trial.TrialState.COMPLETE and t.values and feasible:
            loss = sign * np.asarray(t.values, dtype=float)
            if np.all(loss <= ref):
                points.append(loss)
        out.append(float(compute_hypervolume(np.array(points), ref)) if points else 0.0)
    return out


def sampler_block(sampler: str, seed: int) -> dict:
    """``kind`` or ``kind:startup=N`` (TPE/GP with ``n_startup_trials`` N instead of the
    default, the Sobol start's 4) as a study's ``sampler:`` block."""
    kind, _, option = sampler.partition(":")
    block = {"kind": kind, "seed": seed, "initial_design": None if kind == "random" else {"kind": "sobol", "n": 4}}
    if kind == "nsga2":
        block["population_size"] = 6
    if option:
        key, _, value = option.partition("=")
        if key != "startup" or kind not in ("tpe", "gp"):
            raise SystemExit(f"--samplers: {sampler!r}: the only option is tpe:startup=N or gp:startup=N")
        block["n_startup_trials"] = int(value)
    return block


def run_one(study: str, sampler: str, seed: int, trials: int, root: Path,
            samples_per_trial: int | None = None) -> tuple[list[float], float]:  # fmt: skip
    name = f"{study}-{sampler.replace(':', '-').replace('=', '')}-{seed}"
    overrides = {
        "name": name,
        "sampler": sampler_block(sampler, seed),
        "budget": {"n_trials": trials, "timeout_s": None},
        "storage": f"sqlite:///{root}/optuna.db",
        "tracking": f"sqlite:///{root}/mlflow.db",
        "artifacts": str(root / "artifacts"),
    } | ({"samples_per_trial": samples_per_trial} if samples_per_trial else {})
    spec = load_spec(study, overrides)
    start = time.perf_counter()
    Study(spec).run()
    seconds = time.perf_counter() - start
    loaded = optuna.load_study(study_name=name, storage=spec.storage)
    history = hypervolume_history(loaded.trials, spec.directions(), REFERENCE[study])
    return history, seconds


def trials_to_reach(history: list[float], level: float, budget: int) -> int:
    return next((k + 1 for k, hv in enumerate(history) if hv >= level), budget + 1)


def summary(runs: dict[str, list[list[float]]], budget: int) -> dict:
    """Trials to 90 % of the best hypervolume of any run, and their ratio to random search's,
    on the first ``budget`` trials of every run (a run that never reaches it counts budget + 1)."""
    best = max(h[budget - 1] for hs in runs.values() for h in hs)
    needed = {s: [trials_to_reach(h[:budget], 0.9 * best, budget) for h in hs] for s, hs in runs.items()}
    random_mean = float(np.mean(needed["random"])) if "random" in needed else float("nan")
    return {"budget": budget, "best_hypervolume": best, "trials_to_90": needed,
            "ratio_to_random": {s: float(np.mean(v)) / random_mean for s, v in needed.items()}}  # fmt: skip


def summary_table(study: str, runs: dict[str, list[list[float]]], r: dict, seeds: int) -> Table:
    """The printed table of one :func:`summary` ``r`` of ``runs``."""
    budget = r["budget"]
    table = Table(title=f"{study}: {seeds} seeds × {budget} trials; 90 % of the best hypervolume of any run = "
                        f"{0.9 * r['best_hypervolume']:.4g} (reference point {REFERENCE[study]})")  # fmt: skip
    for column in ("sampler", "final hypervolume (mean ± std)", "trials to 90 % (mean)", "ratio to random"):
        table.add_column(column, justify="right")
    for s, hs in runs.items():
        finals = [h[budget - 1] for h in hs]
        table.add_row(s, f"{np.mean(finals):.4g} ± {np.std(finals):.2g}", f"{np.mean(r['trials_to_90'][s]):.1f}",
                      f"{r['ratio_to_random'][s]:.2f}")  # fmt: skip
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", nargs="+", default=list(REFERENCE))
    parser.add_argument("--samplers", nargs="+", default=["tpe", "gp", "nsga2", "random"])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--samples-per-trial", type=int, help="override the studies' samples_per_trial")
    parser.add_argument("--also-at", type=int, nargs="*", default=[],
                        help="also judge the first N trials of every run as a budget of N (e.g. 40 of 80)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--plot", type=Path, default=Path(__file__).resolve().parent.parent / "docs" / "search-hypervolume.png")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    console = Console(width=140)
    report: dict = {"trials": args.trials, "seeds": args.seeds, "samples_per_trial": args.samples_per_trial,
                    "studies": {}}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="micro-doe-search-") as tmp:
        for study in args.studies:
            runs: dict[str, list[list[float]]] = {}
            for sampler in args.samplers:
                for seed in range(args.seeds):
                    history, seconds = run_one(study, sampler, seed, args.trials, Path(tmp) / study,
                                               args.samples_per_trial)  # fmt: skip
                    runs.setdefault(sampler, []).append(history)
                    console.print(f"{study} {sampler} seed {seed}: final hypervolume {history[-1]:.4g} ({seconds:.0f} s)")
            full = summary(runs, args.trials)
            shorter = {n: summary(runs, n) for n in args.also_at if n < args.trials}
            report["studies"][study] = {"reference": REFERENCE[study], "histories": runs, **full, "shorter_budgets": shorter}
            for r in [*shorter.values(), full]:
                console.print(summary_table(study, runs, r, args.seeds))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    fig, axes = plt.subplots(1, len(report["studies"]), figsize=(5.5 * len(report["studies"]), 4), squeeze=False)
    for ax, (study, r) in zip(axes[0], report["studies"].items()):
        for s, hs in r["histories"].items():
            mean = np.mean(np.array(hs), axis=0)
            ax.plot(np.arange(1, len(mean) + 1), mean, label=s, lw=2 if s != "random" else 1.5,
                    ls="-" if s != "random" else "--")  # fmt: skip
        ax.axhline(0.9 * r["best_hypervolume"], color="grey", lw=0.8, ls=":", label="90 % of best")
        ax.set(title=study, xlabel="trials", ylabel="feasible hypervolume (mean over seeds)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    args.plot.parent.mkdir(exist_ok=True)
    fig.savefig(args.plot, dpi=110)
    console.print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
