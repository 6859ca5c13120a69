"""Does the search earn its keep? Hypervolume against trials for each sampler, against random search.

    python benchmarks/search.py [--studies opv-design opv-recipes] [--samplers tpe gp nsga2 random]
                                [--seeds 5] [--trials 12] [--samples-per-trial N] [--also-at 40]
                                [--json FILE] [--plot docs/search-hypervolume.png]
    python benchmarks/search.py --from-json FILE [--plot PNG] [--json FILE]

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
faster than random). A random run that never arrives is charged only budget + 1, so that
ratio is capped by the budget, and a mean over runs some of which never arrive is only a
lower bound. Two more columns therefore: the median over runs (exact whenever more than half
arrive) and its ratio to random search's median *estimated from its pooled trials*: random
search's trials are independent and identically distributed, so every ordering of all its
runs' trials pooled (seeds × budget) is itself a valid random-search run, and the median
trials-to-90 % over many random orderings of the pool estimates what random search needs
beyond one run's budget ("<": the whole pool never arrives, so random search's median is
only bounded below by the pool's size + 1). When no random run arrives, a line below the
table gives the bound that needs no pooling (:func:`censoring_bound`).

``--also-at N`` judges the first N trials of every run as a budget of its
own (the 90 % level recomputed on them), so one long run also gives the shorter budgets'
numbers, and shows how much the budget + 1 charged to a run that never arrives caps a ratio.
The plot shows the mean hypervolume against trials. ``--from-json FILE`` re-prints the tables
and the plot of an earlier run's JSON without running anything.
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


def loss_points(trials: list[optuna.trial.FrozenTrial], directions: list[str], reference) -> list[list[float] | None]:
    """Per trial (trial-number order): its objectives as losses (maximised ones negated) when it
    is complete, feasible and dominates the reference point; None otherwise (it adds no volume)."""
    sign = np.array([1.0 if d == "minimize" else -1.0 for d in directions])
    ref = np.asarray(reference, dtype=float)
    out: list[list[float] | None] = []
    for t in sorted(trials, key=lambda t: t.number):
        feasible = all(v <= 0 for v in t.system_attrs.get("constraints", ()))
        complete = t.state == optuna.trial.TrialState.COMPLETE and t.values
        loss = sign * np.asarray(t.values, dtype=float) if complete else None
        out.append(loss.tolist() if loss is not None and feasible and np.all(loss <= ref) else None)
    return out


def prefix_hypervolume(points: list[list[float] | None], n: int, reference) -> float:
    """Hypervolume of the front of the first n of ``points`` against ``reference``."""
    kept = [p for p in points[:n] if p is not None]
    return float(compute_hypervolume(np.array(kept), np.asarray(reference, dtype=float))) if kept else 0.0


def hypervolume_history(points: list[list[float] | None], reference) -> list[float]:
    """Hypervolume of the feasible front of the first k trials, k = 1..len(points)."""
    return [prefix_hypervolume(points, k, reference) for k in range(1, len(points) + 1)]


def pooled_random_trials_to_reach(pool: list[list[float] | None], level: float, reference,
                                  orderings: int = 2000, seed: int = 0) -> dict:  # fmt: skip
    """Random search's trials to reach ``level``, estimated from its pooled i.i.d. trials.

    Every ordering of the pool is a random-search run of len(pool) trials; for each of
    ``orderings`` random orderings the first prefix whose hypervolume reaches ``level`` is
    found by bisection (hypervolume only grows with the prefix). Returns the mean and median
    over orderings, the pool size and the whole pool's hypervolume; ``never`` is True when the
    whole pool stays below the level (mean and median are then len(pool) + 1, lower bounds)."""
    n = len(pool)
    whole = prefix_hypervolume(pool, n, reference)
    if whole < level:
        return {"mean": float(n + 1), "median": float(n + 1), "pool": n, "never": True, "pool_hypervolume": whole}
    rng = np.random.default_rng(seed)
    needed = []
    for _ in range(orderings):
        order = [pool[i] for i in rng.permutation(n)]
        lo, hi = 1, n  # the answer lies in [lo, hi]
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if prefix_hypervolume(order, mid, reference) >= level else (mid + 1, hi)
        needed.append(lo)
    return {"mean": float(np.mean(needed)), "median": float(np.median(needed)), "pool": n, "never": False,
            "pool_hypervolume": whole}  # fmt: skip


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
            samples_per_trial: int | None = None) -> tuple[list[list[float] | None], float]:  # fmt: skip
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
    return loss_points(loaded.trials, spec.directions(), REFERENCE[study]), seconds


def trials_to_reach(history: list[float], level: float, budget: int) -> int:
    return next((k + 1 for k, hv in enumerate(history) if hv >= level), budget + 1)


def summary(runs: dict[str, list[list[float]]], budget: int, points: dict[str, list[list]] | None = None,
            reference=None) -> dict:  # fmt: skip
    """Trials to 90 % of the best hypervolume of any run on the first ``budget`` trials of every
    run (a run that never reaches it counts budget + 1), their mean's ratio to random search's,
    their median (None unless more than half arrive: only then is it exact), and, with the
    runs' ``points``, random search's median estimated from its pooled trials (:func:`pooled_random_trials_to_reach`)
    and every other sampler's median ratio to it."""
    best = max(h[budget - 1] for hs in runs.values() for h in hs)
    needed = {s: [trials_to_reach(h[:budget], 0.9 * best, budget) for h in hs] for s, hs in runs.items()}
    random_mean = float(np.mean(needed["random"])) if "random" in needed else float("nan")
    out = {"budget": budget, "best_hypervolume": best, "trials_to_90": needed,
           "ratio_to_random": {s: float(np.mean(v)) / random_mean for s, v in needed.items()},
           "median_trials_to_90": {s: float(np.median(v)) if 2 * sum(n <= budget for n in v) > len(v) else None
                                   for s, v in needed.items()}}  # fmt: skip
    if points and "random" in points:
        pool = [p for run in points["random"] for p in run[:budget]]
        pooled = pooled_random_trials_to_reach(pool, 0.9 * best, reference)
        out["random_pooled"] = pooled
        out["median_ratio_to_random_pooled"] = {
            s: m / pooled["median"] if m is not None else None
            for s, m in out["median_trials_to_90"].items() if s != "random"}  # fmt: skip
    return out


def summary_table(study: str, runs: dict[str, list[list[float]]], r: dict, seeds: int, reference) -> Table:
    """The printed table of one :func:`summary` ``r`` of ``runs``."""
    budget = r["budget"]
    table = Table(title=f"{study}: {seeds} seeds × {budget} trials; 90 % of the best hypervolume of any run = "
                        f"{0.9 * r['best_hypervolume']:.4g} (reference point {tuple(reference)})")  # fmt: skip
    pooled = r.get("random_pooled")
    columns = ["sampler", "final hypervolume (mean ± std)", "runs reaching 90 %",
               "trials to 90 %: mean (budget + 1 if never)", "ratio to random", "median trials to 90 %"]  # fmt: skip
    if pooled:
        columns.append(f"median ratio to random (pooled, {pooled['pool']} trials)")
    for column in columns:
        table.add_column(column, justify="right")
    for s, hs in runs.items():
        finals = [h[budget - 1] for h in hs]
        median = r["median_trials_to_90"][s]
        row = [s, f"{np.mean(finals):.4g} ± {np.std(finals):.2g}",
               f"{sum(n <= budget for n in r['trials_to_90'][s])} of {len(hs)}",
               f"{np.mean(r['trials_to_90'][s]):.1f}", f"{r['ratio_to_random'][s]:.2f}",
               f"{median:.0f}" if median is not None else f"> {budget}"]  # fmt: skip
        if pooled and s == "random":
            row[-1] += (f" (pooled: {'> ' if pooled['never'] else ''}{pooled['median']:.0f}; "
                        f"all {pooled['pool']} together: {pooled['pool_hypervolume']:.4g})")  # fmt: skip
            row.append("1.00")
        elif pooled:
            ratio = r["median_ratio_to_random_pooled"][s]
            row.append("—" if ratio is None else f"{'< ' if pooled['never'] else ''}{ratio:.3f}")
        table.add_row(*row)
    return table


def censoring_bound(r: dict) -> str | None:
    """A bound that needs no pooling, when no random run reaches the level within the budget:
    were random search's median ≤ budget, each of its n runs would miss with probability
    ≤ 1/2, all n with ≤ 2^-n. So at that confidence its median is > budget, and every
    sampler's median ratio is below its median / (budget + 1)."""
    budget, needed = r["budget"], r["trials_to_90"].get("random")
    if not needed or any(n <= budget for n in needed):
        return None
    bounds = ", ".join(f"{s} < {m / (budget + 1):.2f}" for s, m in r["median_trials_to_90"].items()
                       if s != "random" and m is not None)  # fmt: skip
    return (f"No random run reaches the level in {budget} trials (probability ≤ 2^-{len(needed)} = "
            f"{0.5 ** len(needed):.3f} were its median ≤ {budget}); so median ratio to random: {bounds or 'no sampler has a median'}")


def run_all(args: argparse.Namespace, console: Console) -> dict:
    """Every study × sampler × seed, in this run; prints each run and the tables."""
    report: dict = {"trials": args.trials, "seeds": args.seeds, "samples_per_trial": args.samples_per_trial,
                    "studies": {}}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="micro-doe-search-") as tmp:
        for study in args.studies:
            points: dict[str, list[list]] = {}
            for sampler in args.samplers:
                for seed in range(args.seeds):
                    run_points, seconds = run_one(study, sampler, seed, args.trials, Path(tmp) / study,
                                                  args.samples_per_trial)  # fmt: skip
                    points.setdefault(sampler, []).append(run_points)
                    final = prefix_hypervolume(run_points, len(run_points), REFERENCE[study])
                    console.print(f"{study} {sampler} seed {seed}: final hypervolume {final:.4g} ({seconds:.0f} s)")
            report["studies"][study] = judged(study, points, REFERENCE[study], args.trials, args.also_at, args.seeds,
                                              console)  # fmt: skip
    return report


def judged(study: str, points: dict[str, list[list]], reference, budget: int, also_at: list[int], seeds: int,
           console: Console) -> dict:  # fmt: skip
    """One study's saved record: its points, histories and summaries at ``budget`` and at each
    shorter budget in ``also_at``; prints their tables."""
    runs = {s: [hypervolume_history(run, reference) for run in ps] for s, ps in points.items()}
    full = summary(runs, budget, points, reference)
    shorter = {n: summary(runs, n, points, reference) for n in also_at if n < budget}
    for r in [*shorter.values(), full]:
        console.print(summary_table(study, runs, r, seeds, reference))
        if (note := censoring_bound(r)) is not None:
            console.print(note)
    return {"reference": list(reference), "histories": runs, "points": points, **full, "shorter_budgets": shorter}


def rerun_from_json(path: Path, also_at: list[int], console: Console) -> dict:
    """An earlier run's report, rebuilt from its points (its shorter budgets too, unless
    ``also_at`` names others), its tables printed."""
    report = json.loads(path.read_text())
    for study, saved in list(report["studies"].items()):
        if "points" not in saved:
            raise SystemExit(f"--from-json {path}: study {study!r} has no 'points' (written before they were saved)")
        shorter = also_at or [int(n) for n in saved.get("shorter_budgets", {})]
        report["studies"][study] = judged(study, saved["points"], saved["reference"], report["trials"], shorter,
                                          report["seeds"], console)  # fmt: skip
    return report


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
    parser.add_argument("--from-json", type=Path, help="re-print the tables (and, with --plot, the plot) of an earlier run's JSON")
    parser.add_argument("--plot", type=Path, help="default: docs/search-hypervolume.png, none with --from-json")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    console = Console(width=140)
    report = rerun_from_json(args.from_json, args.also_at, console) if args.from_json else run_all(args, console)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    if args.plot is None and args.from_json:
        return
    args.plot = args.plot or Path(__file__).resolve().parent.parent / "docs" / "search-hypervolume.png"
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
