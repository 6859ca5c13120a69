"""Which in-order pruner would save the most without stopping a front trial? An offline screen.

    python benchmarks/pruning_screen.py FILE [FILE ...] [--pruners ARM ...] [--grid]

FILE is a ``benchmarks/pruning.py --without-time`` record whose reference arm stored each
trial's objective values on each volume (the runner's ``values_per_volume``; a reference-only
run is ``pruning.py … --pruners`` with no arm). ARM is written as in ``pruning.py``
(``pareto_halving:reduction_factor=3,margin=0.5``); every arm is screened as if run with
``in_order``, the only setting under which the replay below is the run. An arm that leaves
them out gets ``min_resource=2`` and ``reduction_factor=2``.

For each seed, the screen replays what the arm would do on one generator. Trial k, in the
reference's order, generates ``every`` volumes at a time (the record's, or the arm's own
``every=``). After each batch short of the last
it reports the running means (and their standard errors) to the arm's own pruner
(:func:`~micro_doe.studies.study_storage.make_pruner`, in the runner's companion study from
:func:`~micro_doe.studies.study_storage.open_pruning_study`, in memory), which holds trials
0 … k − 1 as they ended. Trial k's volumes are the reference's, because volume i of a trial
always comes from seed ``seed + i``.

That holds while TPE proposes the reference's trials. So each seed's screened trials are then
fed to a fresh TPE in the in-order sequence of asks and tells
(:func:`pruning_replay.replay`), the pruned ones told PRUNED. If every proposal replays, the
arm's run would be this replay, to the digit: its slice evaluations and its front are exact.
If not, the row names the trial where the path would leave the reference's, and the numbers
after it are unknown (marked ``*``).

It also prints how well a trial's first ``every`` volumes rank the trials against their other
volumes (Kendall's τ), a property of the volumes that no pruner touches.

A screen chooses; it does not judge. The arm it picks is then run for real by ``pruning.py``,
on seeds the screen did not see. Takes seconds.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np
import optuna
from optuna.trial import TrialState
from rich.console import Console
from rich.table import Table
from scipy.stats import kendalltau

sys.path.insert(0, str(Path(__file__).parent))
from pruning import arm, front_hypervolume, front_trials_pruned, parse_arm, pruner_block, slices, study_spec  # noqa: E402
from pruning_replay import replay  # noqa: E402

from micro_doe.studies.pareto_pruner import RUNNING_ERRORS, RUNNING_MEANS, running_summary  # noqa: E402
from micro_doe.studies.study_storage import open_pruning_study  # noqa: E402

GRID = [f"pareto_halving:min_resource={m},reduction_factor={rf},margin={z}"
        for m, rf, z in itertools.product((2, 4), (2, 3, 4), (0, 0.25, 0.5, 0.75, 1))] + [
        f"pareto_halving:min_resource=2,reduction_factor={rf},margin={z},margin_errors=pooled"
        for rf, z in itertools.product((2, 3, 4), (0.25, 0.5, 0.75, 1))] + [
        f"pareto_halving:every=1,min_resource=3,reduction_factor={rf},margin={z},margin_errors={e}"
        for rf, z, e in itertools.product((2, 3), (0, 0.5, 1), ("own", "pooled")) if z or e == "own"] + [
        f"successive_halving:min_resource={m},reduction_factor={rf}" for m, rf in itertools.product((2, 4), (2, 3, 4))] + [
        "median"]  # fmt: skip


def screen(label: str, reference: list[dict], seed: int, samples: int, every: int) -> dict:
    """The trials of one seed as the in-order arm ``label`` would end them (module docstring)."""
    block = pruner_block(label, every, 2, 2)  # an arm's own every= replaces the record's
    every = block["every"]
    if parse_arm(label)[1].get("learn_from_pruned"):
        raise ValueError(f"{label}: learn_from_pruned changes TPE's view of pruned trials; the replay cannot follow it")
    spec = study_spec(block | {"in_order": True}, "screen", seed, len(reference), samples, Path("."), without_time=True)
    study = optuna.create_study(directions=spec.directions())
    pruning = open_pruning_study(spec, study)
    names = spec.objective_names()
    trials = []
    for recorded in reference:
        per_volume = recorded.get("values_per_volume")
        if per_volume is None:
            raise ValueError(f"trial {recorded['number']} has no values_per_volume (a run from before they were stored)")
        reporter, means, errors, volumes = pruning.ask(), {}, {}, samples
        for step in range(every, samples, every):
            means[str(step)], errors[str(step)] = running_summary({n: per_volume[n][:step] for n in names})
            reporter.set_user_attr(RUNNING_MEANS, means)
            reporter.set_user_attr(RUNNING_ERRORS, errors)
            reporter.report(means[str(step)][0], step=step)
            if reporter.should_prune():
                volumes = step
                break
        if volumes < samples:
            pruning.tell(reporter, state=TrialState.PRUNED)
        else:
            pruning.tell(reporter, float(np.mean(per_volume[names[0]])))
        trials.append(recorded | {"state": "PRUNED" if volumes < samples else "COMPLETE", "volumes": volumes})
    path = replay(trials, seed, samples)
    leaves = None if path[-1]["same"] else path[-1]["number"]
    return {"trials": trials, "leaves_at": leaves}


def early_agreement(reference: list[dict], name: str, early: int) -> float:
    """Kendall's τ, over a run's trials, between the mean of an objective on each trial's first
    ``early`` volumes and on its other volumes: how well a first decision's view ranks trials
    (1: the same order). Read from the volumes alone; no pruner is involved."""
    values = np.array([t["values_per_volume"][name] for t in reference], dtype=float)
    return float(kendalltau(values[:, :early].mean(axis=1), values[:, early:].mean(axis=1)).statistic)


def total_slices(trials: list[dict]) -> int:
    """Σ of :func:`pruning.slices` over ``trials``, each with the volumes it generated."""
    return sum(slices(t["params"], t["volumes"]) for t in trials)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", type=Path, nargs="+")
    parser.add_argument("--pruners", nargs="+", type=arm, default=[], help="arms to screen (pruning.py's syntax)")
    parser.add_argument("--grid", action="store_true", help=f"also screen the {len(GRID)} arms of GRID")
    parser.add_argument("--json", type=Path, help="also write each arm's per-seed numbers here")
    args = parser.parse_args()
    records = [json.loads(path.read_text()) for path in args.files]
    for path, r in zip(args.files, records):
        if not r.get("without_time"):
            parser.error(f"{path}: a run with --without-time is needed (TPE read wall times the record lacks)")
        same = ("samples", "every", "volume_seeds")
        if any(r.get(k) != records[0].get(k) for k in same):
            parser.error(f"{path}: its {', '.join(same)} differ from {args.files[0]}'s")
    arms = list(dict.fromkeys(args.pruners + (GRID if args.grid else [])))
    if not arms:
        parser.error("name arms with --pruners, or --grid")
    samples, every = records[0]["samples"], records[0]["every"]
    seeds = [(s, ref) for r in records for s, ref in zip(r["seeds"], r["runs"]["none (reference)"])]
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    table = Table(title=f"Screen of in-order pruners on the reference's trials: seeds {', '.join(str(s) for s, _ in seeds)}, "
                        f"{samples} volumes a trial, decisions every {every}, {records[0].get('volume_seeds', 'per_trial')} volume seeds; "
                        "front in (lineal-path %, size %)")  # fmt: skip
    for column in ("pruner (in order)", "saved: slice evaluations", "pruned trials per seed",
                   "reference front trials pruned", "front HV vs reference", "path leaves the reference's at trial"):  # fmt: skip
        table.add_column(column, justify="right", no_wrap=column.startswith("pruner"))
    out = {}
    for label in arms:
        rows = [(ref, screen(label, ref["trials"], seed, samples, every)) for seed, ref in seeds]
        saved = 1 - sum(total_slices(s["trials"]) for _, s in rows) / sum(total_slices(ref["trials"]) for ref, _ in rows)
        hv = [(front_hypervolume([t["values"] for t in s["trials"] if t["state"] == "COMPLETE"]), ref["hypervolume"])
              for ref, s in rows]  # fmt: skip
        lost = [front_trials_pruned(s, ref) for ref, s in rows]
        out[label] = {"saved_slices": saved, "lost_front_trials": lost, "hypervolume": hv,
                      "leaves_at": [s["leaves_at"] for _, s in rows], "pruned": [sum(t["state"] == "PRUNED" for t in s["trials"]) for _, s in rows]}  # fmt: skip
        star = "*" if any(s["leaves_at"] is not None for _, s in rows) else ""
        table.add_row(label, f"{100 * saved:.0f} %{star}", " / ".join(str(p) for p in out[label]["pruned"]),
                      " / ".join(str(n) for n in lost), " / ".join(("=" if abs(a - b) < 1e-9 else f"{100 * (a - b) / b:+.1f} %") + ("" if s["leaves_at"] is None else "*")
                                 for (a, b), (_, s) in zip(hv, rows)),
                      " / ".join("—" if s["leaves_at"] is None else str(s["leaves_at"]) for _, s in rows))  # fmt: skip
    console = Console(width=200)
    console.print(table)
    names = list(seeds[0][1]["trials"][0]["values_per_volume"])
    agreement = Table(title=f"How well a trial's first {every} volumes rank it: Kendall's τ between their mean and the "
                            f"mean of its other {samples - every}, over each seed's trials")  # fmt: skip
    for column in ("objective", "τ per seed", "mean"):
        agreement.add_column(column, justify="right")
    for name in names:
        taus = [early_agreement(ref["trials"], name, every) for _, ref in seeds]
        agreement.add_row(name, " / ".join(f"{t:.2f}" for t in taus), f"{np.mean(taus):.2f}")
    console.print(agreement)
    if args.json:
        args.json.write_text(json.dumps({"files": [str(p) for p in args.files], "arms": out}, indent=1))


if __name__ == "__main__":
    main()
