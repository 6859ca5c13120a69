"""Does pruning save generator time without losing the Pareto front? micro3diff-tuning, CPU-sized.

    python benchmarks/pruning.py [--trials 16] [--seeds 2] [--samples 4] [--pruners median successive_halving]
                                 [--every 1] [--min-resource 1] [--reduction-factor 2] [--margin 0]
                                 [--pareto-objectives NAME ...] [--without-time] [--json FILE]
    python benchmarks/pruning.py --from-json FILE   # the table of a saved run

An arm may carry its own settings: ``--pruners successive_halving
pareto_halving:reduction_factor=3,margin=1,in_order=1``. Without ``in_order`` the seeds are
not a paired comparison once a trial is pruned: the runner interleaves the batches of trials
that survived a decision with new trials, so TPE is asked with other trials finished and
proposes other trials, and a front can grow or shrink by luck; hence several seeds, and
their mean. With ``in_order=1`` (the pruner's ``in_order``, see :mod:`micro_doe.studies.runner`)
TPE is asked for each trial with the same trials finished as in the reference arm, so the
arms propose the same trials until a pruned trial would have ranked among TPE's best (the
column "trials proposed as in the reference" counts them). ``learn_from_pruned=1`` (a sampler
setting) lets TPE see each pruned trial as complete with the values measured on its volumes
(:mod:`micro_doe.studies.pruned_observations`).

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
``--pareto-objectives lineal_path_error size_error`` ranks only those (its ``objectives:``);
``--margin Z`` gives the judged trial Z standard errors of benefit of the doubt (its ``margin:``;
an arm's ``margin_errors=pooled`` counts them in the competitors' pooled standard error).
``--common-seeds`` runs every arm with ``volume_seeds: common`` (volume i of every trial from
the same seed). With no arm after ``--pruners`` the reference runs alone: its trials keep each
objective's value per volume, which ``benchmarks/pruning_screen.py`` replays pruners on.
**Judges:**
- generator time: the generator actors' busy seconds, summed over the study; and, as a count
  the machine's load cannot move, the denoiser's slice evaluations, Σ over trials of
  (n_h + 1) · steps · 32 slices · volumes generated (the sampler's own count, see
  :mod:`micro_doe.platform.micro3diff.sampler`);
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

from micro_doe.studies.pareto_pruner import domination_ranks
from micro_doe.studies.runner import SEED_ATTR, VALUES_PER_VOLUME, Study, trial_seed
from micro_doe.studies.spec import StudySpec
from micro_doe.studies.study_yaml import load_spec

REFERENCE = np.array([100.0, 100.0])  # lineal-path error %, size error %
PRUNERS = {
    "median": {"kind": "median", "n_startup_trials": 4, "n_warmup_steps": 0},
    "successive_halving": {"kind": "successive_halving", "min_resource": 1, "reduction_factor": 2},
    "hyperband": {"kind": "hyperband", "min_resource": 1, "reduction_factor": 2},
    "pareto_halving": {"kind": "pareto_halving", "min_resource": 1, "reduction_factor": 2},
}


ARM_SETTINGS = ("min_resource", "reduction_factor", "margin", "margin_errors", "every", "n_startup_trials",
                "learn_from_pruned", "in_order")


def parse_arm(text: str) -> tuple[str, dict[str, int | float | str]]:
    """One ``--pruners`` entry, NAME or NAME:key=value,..., as (NAME, its own settings); a
    ValueError names what is wrong."""
    name, _, own = text.partition(":")
    if name not in PRUNERS:
        raise ValueError(f"{name!r}: expected one of {', '.join(PRUNERS)}")
    settings: dict[str, int | float | str] = {}
    for setting in filter(None, own.split(",")):
        key, eq, value = setting.partition("=")
        if not eq or key not in ARM_SETTINGS:
            raise ValueError(f"{setting!r} in {text!r}: expected key=value with key one of {', '.join(ARM_SETTINGS)}")
        if key == "margin_errors":  # a word: own or pooled (the spec checks it)
            settings[key] = value
            continue
        try:
            settings[key] = float(value) if key == "margin" else int(value)
        except ValueError:
            raise ValueError(f"{setting!r} in {text!r}: expected a number") from None
    return name, settings


def arm(text: str) -> str:
    """argparse type of one ``--pruners`` entry (:func:`parse_arm`); the entry is the arm's label."""
    try:
        parse_arm(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def pruner_block(arm: str | None, every: int, min_resource: int, reduction_factor: int,
                 pareto_objectives: list[str] | None = None, margin: float = 0.0) -> dict | None:  # fmt: skip
    """The ``pruner:`` block of one arm (``None``: the reference without pruning). ``arm`` is a
    pruner's name, optionally with its own settings: ``pareto_halving:reduction_factor=3,margin=1``."""
    if arm is None:
        return None
    pruner, own = parse_arm(arm)
    own.pop("learn_from_pruned", None)  # the sampler's setting (learns_from_pruned), not the pruner's
    block = PRUNERS[pruner] | {"every": every}
    if "min_resource" in block:
        block |= {"min_resource": min_resource, "reduction_factor": reduction_factor}
    if pruner == "pareto_halving" and pareto_objectives:
        block["objectives"] = pareto_objectives
    if pruner == "pareto_halving" and margin:
        block["margin"] = margin
    return block | own


def learns_from_pruned(arm: str | None) -> bool:
    """Whether an arm's TPE sees pruned trials as complete ones with their partial values
    (``learn_from_pruned=1``; :mod:`micro_doe.studies.pruned_observations`)."""
    return arm is not None and bool(parse_arm(arm)[1].get("learn_from_pruned", 0))


SIZE = 32  # the slices of one plane of a pretrained:spheres-32 volume


def volumes_generated(trial: optuna.trial.FrozenTrial, samples: int) -> int:
    """Volumes a finished trial generated: all of them, or as many as it had when pruned."""
    return int(trial.user_attrs.get("pruned_after_volumes", samples))


def slices(params: dict, volumes: int) -> int:
    """The denoiser's 2D slice evaluations for ``volumes`` volumes of a trial with ``params``:
    (n_h + 1) · steps · size per volume."""
    return (params["n_h"] + 1) * params["steps"] * SIZE * volumes


def slice_evaluations(trial: optuna.trial.FrozenTrial, samples: int) -> int:
    """The denoiser's 2D slice evaluations for a finished trial (:func:`slices`; a failed trial,
    shown in the table, is not counted)."""
    return slices(trial.params, volumes_generated(trial, samples))


QUALITY_OBJECTIVES = [{"name": "lineal_path_error", "direction": "minimize"}, {"name": "size_error", "direction": "minimize"}]


def study_spec(pruner: dict | None, name: str, seed: int, trials: int, samples: int, root: Path,
               without_time: bool = False, learn_from_pruned: bool = False, volume_seeds: str = "per_trial") -> StudySpec:  # fmt: skip
    """The benchmark's micro3diff-tuning: the bundled study at CPU size (module docstring)."""
    overrides = {
        "name": name,
        "search": {"n_h": {"int": [0, 1]}, "steps": {"int": [10, 30]}},  # deep-merged: the rest as bundled
        "generator": {"kind": "micro3diff", "model": "pretrained:spheres-32", "batch_size": samples},
        "samples_per_trial": samples,
        "volume_seeds": volume_seeds,
        "sampler": {"kind": "tpe", "seed": seed, "initial_design": {"kind": "sobol", "n": 4},
                    "learn_from_pruned": learn_from_pruned},
        "budget": {"n_trials": trials, "timeout_s": None},
        "resources": {"generators": 1, "evaluators": 1},
        "pruner": pruner,
        "storage": f"sqlite:///{root}/optuna.db",
        "tracking": f"sqlite:///{root}/mlflow.db",
        "artifacts": str(root / "artifacts"),
    }
    if without_time:  # no wall-time objective: TPE's proposals, and so the reference arm, repeat across runs
        overrides["objectives"] = QUALITY_OBJECTIVES
    return load_spec("micro3diff-tuning", overrides)


def run(pruner: dict | None, name: str, seed: int, trials: int, samples: int, root: Path,
        without_time: bool = False, learn_from_pruned: bool = False, volume_seeds: str = "per_trial") -> dict:  # fmt: skip
    spec = study_spec(pruner, name, seed, trials, samples, root, without_time, learn_from_pruned, volume_seeds)
    result = Study(spec).run()
    study = optuna.load_study(study_name=name, storage=spec.storage)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    finished = [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    return {
        "busy": result.generator_busy_seconds,
        "wall": result.seconds - result.startup_seconds,  # after Ray, actors and model are up
        "slice_evaluations": sum(slice_evaluations(t, samples) for t in finished),
        "hypervolume": front_hypervolume([t.values for t in complete]),
        "best_size_error": min((t.values[1] for t in complete), default=float("nan")),
        "complete": len(complete),
        "pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials),
        "failed": sum(t.state == optuna.trial.TrialState.FAIL for t in study.trials),
        "trials": [{"number": t.number, "state": t.state.name, "params": t.params, "volumes": volumes_generated(t, samples),
                    "seed": t.user_attrs[SEED_ATTR], "values": t.values,
                    "values_per_volume": t.user_attrs.get(VALUES_PER_VOLUME)} for t in finished],  # fmt: skip
    }


def front_hypervolume(points: list[list[float]]) -> float:
    """The hypervolume of ``points`` (lineal-path %, size %) inside the reference box."""
    inside = np.array([p[:2] for p in points if np.all(np.array(p[:2]) <= REFERENCE)])
    return float(compute_hypervolume(inside, REFERENCE)) if len(inside) else 0.0


def audit(r: dict, name: str, seed: int, samples: int, root: Path, without_time: bool) -> dict:
    """Would any trial the pruner stopped have joined the arm's final front? Each pruned trial is
    run again to completion, unpruned, with its own parameters and volume seeds (so its first
    volumes are the ones it was judged on), in a study of its own; then the arm's front is
    rebuilt with those completed trials added. A pruned trial that is non-dominated there was
    front lost to pruning; the hypervolume gained is how much."""
    pruned = [t for t in r["trials"] if t["state"] == "PRUNED"]
    complete = [t["values"] for t in r["trials"] if t["state"] == "COMPLETE"]
    if not pruned:
        return {"pruned": 0, "would_join": 0, "hypervolume_with_pruned": r["hypervolume"]}
    spec = study_spec(None, name, seed, len(pruned), samples, root, without_time)
    spec = spec.model_copy(update={"sampler": spec.sampler.model_copy(update={"initial_design": None})})
    study = optuna.create_study(study_name=name, storage=spec.storage, directions=spec.directions())
    for t in pruned:  # run in this order; each keeps the seeds it had
        study.enqueue_trial(t["params"], user_attrs={SEED_ATTR: t.get("seed", trial_seed(seed, t["number"]))})
    Study(spec).run()
    finished = optuna.load_study(study_name=name, storage=spec.storage).trials
    rerun = [t.values for t in finished if t.state == optuna.trial.TrialState.COMPLETE]
    if len(rerun) != len(pruned):
        raise RuntimeError(f"audit {name}: {len(rerun)} of {len(pruned)} pruned trials completed on a rerun")
    ranks = domination_ranks(np.array([p[:2] for p in complete + rerun], dtype=float))
    joins = int(np.sum(ranks[len(complete):] == 0))  # non-dominated among the arm's trials and the reruns
    return {"pruned": len(pruned), "would_join": joins, "values": rerun,
            "hypervolume_with_pruned": front_hypervolume(complete + rerun)}


def same_proposals(r: dict, reference: dict) -> int:
    """How many of an arm's trials TPE proposed exactly as in the reference arm (same number,
    same parameters): the part of the search path pruning left unchanged."""
    proposed = {t["number"]: t["params"] for t in reference["trials"]}
    return sum(proposed.get(t["number"]) == t["params"] for t in r["trials"])


def front_trials_pruned(r: dict, reference: dict) -> int:
    """How many trials on the reference arm's front the arm pruned, counting only trials it
    proposed as the reference did (same number, same parameters): with ``in_order`` the paired
    cost of its pruning decisions."""
    complete = [t for t in reference["trials"] if t["state"] == "COMPLETE"]
    ranks = domination_ranks(np.array([t["values"][:2] for t in complete], dtype=float))
    front = {t["number"]: t["params"] for t, rank in zip(complete, ranks) if rank == 0}
    return sum(t["state"] == "PRUNED" and front.get(t["number"]) == t["params"] for t in r["trials"])


def mean_and_error(differences: np.ndarray) -> str:
    """Per-seed differences in % as "mean ± standard error" (the error only with two seeds or more)."""
    if len(differences) < 2:
        return f"{differences.mean():+.1f} %"
    return f"{differences.mean():+.1f} % ± {differences.std(ddof=1) / np.sqrt(len(differences)):.1f} %"


def print_table(record: dict, console: Console) -> None:
    """The saved time and the fronts of every arm against the reference arm, seed by seed."""
    rows = record["runs"]
    table = Table(title=f"micro3diff-tuning on CPU: {record['trials']} trials × {record['samples']} volumes, "
                        f"{len(rows['none (reference)'])} seeds (same seeds per row), decisions every {record.get('every', '?')} volumes, "
                        f"{'common' if record.get('volume_seeds') == 'common' else 'per-trial'} volume seeds; "
                        f"front judged in (lineal-path %, size %) against {tuple(REFERENCE.tolist())}")  # fmt: skip
    for column in ("pruner", "generator busy [s]", "wall [s]", "saved: busy s", "saved: slice evaluations", "pruned (failed) trials",
                   "front hypervolume per seed", "front: mean vs reference ± s.e.", "seeds with a smaller front",
                   "trials proposed as in the reference", "reference front trials pruned",
                   "best size error [%]"):  # fmt: skip
        table.add_column(column, justify="right", no_wrap=column == "pruner")
    base = rows["none (reference)"]
    for label, rs in rows.items():
        is_base, rs = rs is base, rs[: len(base)]
        busy = np.array([r["busy"] for r in rs])
        saved = 1 - busy.sum() / sum(r["busy"] for r in base[: len(rs)])
        counted = all("slice_evaluations" in r for r in rs + base)  # runs saved before it was counted lack it
        slices = counted and 1 - sum(r["slice_evaluations"] for r in rs) / sum(r["slice_evaluations"] for r in base[: len(rs)])
        hv, ref_hv = np.array([r["hypervolume"] for r in rs]), np.array([r["hypervolume"] for r in base[: len(rs)]])
        lost = int(np.sum(hv < ref_hv - 1e-9))
        wall = f"{np.mean([r['wall'] for r in rs]):.0f}" if all("wall" in r for r in rs) else "—"  # older runs lack it
        table.add_row(label, f"{busy.mean():.0f}", wall, "—" if is_base else f"{100 * saved:.0f} %",
                      "—" if is_base or not counted else f"{100 * slices:.0f} %", f"{np.mean([r['pruned'] for r in rs]):.1f} ({np.mean([r.get('failed', 0) for r in rs]):.1f})",
                      " / ".join(f"{h:.0f}" for h in hv), "—" if is_base or not ref_hv.mean() else mean_and_error(100 * (hv - ref_hv) / ref_hv.mean()),
                      "—" if is_base else f"{lost} of {len(rs)}",
                      "—" if is_base else " / ".join(str(same_proposals(r, b)) for r, b in zip(rs, base)),
                      "—" if is_base else " / ".join(str(front_trials_pruned(r, b)) for r, b in zip(rs, base)),
                      " / ".join(f"{r['best_size_error']:.1f}" for r in rs))  # fmt: skip
    console.print(table)
    audited = {label: [r["audit"] for r in rs if "audit" in r] for label, rs in rows.items() if label != "none (reference)"}
    if any(audited.values()):
        table = Table(title="Audit: every pruned trial run again to completion (same parameters and volume seeds), "
                            "then added to its arm's front")  # fmt: skip
        for column in ("pruner", "seeds audited", "pruned trials", "would have joined the front", "front hypervolume: arm → with them"):
            table.add_column(column, justify="right", no_wrap=column == "pruner")
        for label, audits in audited.items():
            hv = [(r["hypervolume"], r["audit"]["hypervolume_with_pruned"]) for r in rows[label] if "audit" in r]
            table.add_row(label, str(len(audits)), str(sum(a["pruned"] for a in audits)),
                          str(sum(a["would_join"] for a in audits)), " / ".join(f"{a:.0f} → {b:.0f}" for a, b in hv))  # fmt: skip
        console.print(table)
    console.print("Best size error: the best complete trial's; blind for Optuna's pruners, read by pareto_halving.")


def merged(records: list[dict]) -> dict:
    """Runs of the same benchmark on different seeds as one record (every run needs the same
    arms, and the same trials, samples and decisions)."""
    first = records[0]
    for other in records[1:]:
        same = ("trials", "samples", "every", "without_time", "pruners", "volume_seeds")
        defaults = {"volume_seeds": "per_trial"}  # runs saved before the setting existed had per-trial seeds
        if any(other.get(k, defaults.get(k)) != first.get(k, defaults.get(k)) for k in same) or set(other["runs"]) != set(first["runs"]):
            raise SystemExit(f"--from-json: the runs differ in {', '.join(same)} or their arms; cannot merge them")
    seeds = [s for r in records for s in (r["seeds"] if isinstance(r["seeds"], list) else range(r["seeds"]))]
    if len(set(seeds)) != len(seeds):
        raise SystemExit(f"--from-json: a seed appears in two runs ({sorted(seeds)})")
    return first | {"seeds": seeds, "runs": {arm: [x for r in records for x in r["runs"][arm]] for arm in first["runs"]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--pruners", nargs="*", default=["median"], type=arm,
                        help=f"arms, each NAME or NAME:key=value,... (NAME one of {', '.join(PRUNERS)}), e.g. "
                             "pareto_halving:reduction_factor=3,margin=1; none given: the reference arm alone "
                             "(its volumes' values are what benchmarks/pruning_screen.py replays)")  # fmt: skip
    parser.add_argument("--every", type=int, default=1, help="volumes between two pruning decisions")
    parser.add_argument("--min-resource", type=int, default=1, help="successive halving / Hyperband: first rung")
    parser.add_argument("--reduction-factor", type=int, default=2, help="successive halving / Hyperband")
    parser.add_argument("--pareto-objectives", nargs="+", help="pareto_halving: rank only these objectives")
    parser.add_argument("--margin", type=float, default=0.0, help="pareto_halving: benefit of the doubt, in standard errors")
    parser.add_argument("--without-time", action="store_true",
                        help="drop seconds_per_volume from the study's objectives, so every arm's proposals repeat across runs")
    parser.add_argument("--common-seeds", action="store_true",
                        help="every arm's study with volume_seeds: common (volume i of every trial from the same seed)")
    parser.add_argument("--json", type=Path, help="also write the numbers here (rewritten after every seed)")
    parser.add_argument("--audit-arms", nargs="+", help="with --from-json --audit: audit only these arms (their labels)")
    parser.add_argument("--first-seed", type=int, default=0, help="seeds first-seed … first-seed + seeds − 1")
    parser.add_argument("--audit", action="store_true",
                        help="run every pruned trial again to completion: would it have joined the front? (with "
                             "--from-json: audit the saved runs, and write them with their audits to --json)")
    parser.add_argument("--from-json", type=Path, nargs="+",
                        help="print the table of saved runs instead of running (several: their seeds side by side)")
    args = parser.parse_args()
    console = Console(width=220)
    if args.from_json:
        record = merged([json.loads(path.read_text()) for path in args.from_json])
        if args.audit:
            if not args.json:
                parser.error("--from-json … --audit: name the file for the audited runs with --json")
            optuna.logging.set_verbosity(optuna.logging.WARNING)
            with tempfile.TemporaryDirectory(prefix="micro-doe-pruning-audit-") as tmp:
                for i, (label, rs) in enumerate(record["runs"].items()):
                    for seed, r in zip(record["seeds"], rs):
                        if label != "none (reference)" and "audit" not in r and (not args.audit_arms or label in args.audit_arms):
                            r["audit"] = audit(r, f"audit-{i}-{seed}", seed, record["samples"], Path(tmp),
                                               record["without_time"])  # fmt: skip
                            console.print(f"audit {label} seed {seed}: " + str({k: v for k, v in r["audit"].items() if k != "values"}))
                            args.json.write_text(json.dumps(record, indent=1))
        print_table(record, console)
        return
    if args.pareto_objectives and not any(a.startswith("pareto_halving") for a in args.pruners):
        parser.error("--pareto-objectives: only pareto_halving ranks objectives; add it to --pruners")
    if args.margin and not any(a.startswith("pareto_halving") for a in args.pruners):
        parser.error("--margin: only pareto_halving takes a margin; add it to --pruners")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    blocks = {p: pruner_block(p, args.every, args.min_resource, args.reduction_factor, args.pareto_objectives, args.margin)
              for p in [None, *args.pruners]}  # fmt: skip
    for p, block in blocks.items():  # every arm's study is checked before the first one runs
        try:
            study_spec(block, "check", 0, args.trials, args.samples, Path(tempfile.gettempdir()), args.without_time,
                       learns_from_pruned(p))  # fmt: skip
        except Exception as err:  # noqa: BLE001 — the spec's own message names the field
            parser.error(f"--pruners {p}: {err}")
    record = {"trials": args.trials, "seeds": list(range(args.first_seed, args.first_seed + args.seeds)),
              "samples": args.samples, "every": args.every,
              "without_time": args.without_time, "volume_seeds": "common" if args.common_seeds else "per_trial",
              "pruners": {p: b for p, b in blocks.items() if p is not None},
              "runs": {}}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="micro-doe-pruning-") as tmp:
        for seed in record["seeds"]:
            for i, (pruner, block) in enumerate(blocks.items()):
                name = f"prune-{i}-{seed}"
                r = run(block, name, seed, args.trials, args.samples, Path(tmp), args.without_time, learns_from_pruned(pruner),
                        record["volume_seeds"])  # fmt: skip
                if args.audit and block is not None:
                    r["audit"] = audit(r, f"audit-{i}-{seed}", seed, args.samples, Path(tmp), args.without_time)
                record["runs"].setdefault(pruner or "none (reference)", []).append(r)
                console.print(f"{pruner or 'none'} seed {seed}: " + str({k: v for k, v in r.items() if k != "trials"}))
            if args.json:  # after every seed, so a long run interrupted keeps what it measured
                args.json.write_text(json.dumps(record, indent=1))
    print_table(record, console)


if __name__ == "__main__":
    main()
