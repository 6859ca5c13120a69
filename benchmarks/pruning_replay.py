"""Where does a pruned arm's search leave the reference's? Replay saved trials through TPE.

    python benchmarks/pruning_replay.py FILE [--arms LABEL ...]

FILE is a ``benchmarks/pruning.py --json`` record (run ``--without-time``, so that the values
TPE read are the recorded ones). For every arm and seed, a fresh TPE with the run's sampler
settings and seed is asked for the trials one by one, in the order of a study without a
pruner on one generator: trial k + 1 is asked while trial k is still running and every older
trial has been told (COMPLETE with its recorded values, or PRUNED). The replay is fed each
recorded trial in turn and stops at the first proposal that differs from the recorded one.

For the reference arm every proposal matches: that is the order its run had. For an arm
pruned without ``in_order``, the replay shows the proposals TPE would have made from the
arm's own trials had it been asked in that order; where they match the *reference's* trial
at the point the arm left it, the arm's path moved because of the order of asks, not because
its pruned trials carry no values. Takes seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import optuna
from optuna.trial import TrialState

sys.path.insert(0, str(Path(__file__).parent))
from pruning import study_spec  # noqa: E402

from micro_doe.studies.study_storage import make_sampler  # noqa: E402


def replay(trials: list[dict], seed: int, samples: int) -> list[dict]:
    """TPE's proposal for each recorded trial, in the reference's order of asks and tells, up to
    and including the first that differs from the record."""
    spec = study_spec(None, "replay", seed, len(trials), samples, Path("."), without_time=True)
    study = optuna.create_study(directions=spec.directions(), sampler=make_sampler(spec.sampler))
    for t in trials[: spec.sampler.initial_design.n]:  # the Sobol start, enqueued as the runner does
        study.enqueue_trial(t["params"])
    running: list[tuple[optuna.trial.Trial, dict]] = []
    out = []
    for recorded in trials:
        while len(running) > 1:  # every trial but the newest is told before the next ask
            trial, done = running.pop(0)
            if done["state"] == "COMPLETE":
                study.tell(trial, done["values"])
            else:
                study.tell(trial, state=TrialState.PRUNED)
        trial = study.ask()
        proposed = {name: p.suggest(trial, name) for name, p in spec.search.items()}
        out.append({"number": recorded["number"], "proposed": proposed, "same": proposed == recorded["params"]})
        if proposed != recorded["params"]:
            break
        running.append((trial, recorded))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("file", type=Path)
    parser.add_argument("--arms", nargs="+", help="only these arms (their labels)")
    args = parser.parse_args()
    record = json.loads(args.file.read_text())
    if not record.get("without_time"):
        parser.error(f"{args.file}: a run with --without-time is needed (TPE read wall times the record lacks)")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    seeds = record["seeds"] if isinstance(record["seeds"], list) else list(range(record["seeds"]))
    reference = record["runs"]["none (reference)"]
    for label, runs in record["runs"].items():
        if args.arms and label not in args.arms:
            continue
        for seed, run, ref in zip(seeds, runs, reference):
            steps = replay(run["trials"], seed, record["samples"])
            last = steps[-1]
            if last["same"]:
                print(f"{label}, seed {seed}: all {len(steps)} proposals replayed")
                continue
            ref_trial = next((t for t in ref["trials"] if t["number"] == last["number"]), None)
            as_reference = ref_trial is not None and ref_trial["params"] == last["proposed"]
            whose = "the reference arm's trial" if as_reference else "neither arm's trial"
            print(f"{label}, seed {seed}: trial {last['number']} differs from the arm's own; replayed, it is {whose}")


if __name__ == "__main__":
    main()
