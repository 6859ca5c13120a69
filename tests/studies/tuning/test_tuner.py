"""``tune``: a real study (Ray, Optuna storage, MLflow) chooses a bundle's sampling defaults
against held-out images; the bundle records them, and an interrupted tuning resumes."""

from __future__ import annotations

import hashlib
import json
import shutil

import mlflow
import optuna
import pytest
from optuna.trial import TrialState

from micro_doe.platform.diffusion.precision import native_precisions
from micro_doe.platform.diffusion.training import default_device
from micro_doe.platform.micro3diff.bundle import Micro3DiffConfig
from micro_doe.platform.micro3diff.generator import Micro3DiffGenerator
from micro_doe.studies.tuning.choice import finalists
from micro_doe.studies.tuning.options import PAPER, TuneOptions, starts, study_name
from micro_doe.studies.tuning.tuner import tune

pytestmark = pytest.mark.filterwarnings("ignore")


def digest(path) -> str:  # type: ignore[no-untyped-def]
    return hashlib.sha256(path.read_bytes()).hexdigest()


def finalists_of(study):  # type: ignore[no-untyped-def]
    from micro_doe.studies.runner import _record

    return finalists([_record(t) for t in study.get_trials()], TuneOptions())


def test_tune_runs_a_study_and_writes_defaults_calibration_and_table(options, tmp_path, held_out_bundle, monkeypatch):
    bundle = tmp_path / "b"
    shutil.copytree(held_out_bundle, bundle)
    weights = digest(bundle / "model.pt")
    record = tune(bundle, options(tmp_path), log=lambda line: None)

    config = Micro3DiffConfig.model_validate_json((bundle / "config.json").read_text())
    searched = ["paper", "anchored", "spectral"]  # trained now: the autocovariance is recorded
    decoded = ["sign", "fractions", "hysteresis"]  # two phases: hysteresis grows one of them
    natives = native_precisions(default_device())  # the precisions searched: those this machine runs natively
    assert config.tuning == record and record.trials == 2 and record.study == study_name(bundle, searched, decoded, natives)
    assert "-spectral-hysteresis" in record.study
    assert config.held_out is not None and config.held_out.n_images == 6
    assert len(config.vf_calibration) == 3  # measured, not set by hand
    assert [r["role"] for r in record.table] == ["tuned default", "paper (SamplingConfig())", "data floor"]
    assert all(r["structure_error"] >= 0 for r in record.table)
    card = (bundle / "card.md").read_text()
    assert card.count("## Sampling defaults (chosen by `micro-doe tune`)") == 1 and "data floor" in card
    assert digest(bundle / "model.pt") == weights

    study = optuna.load_study(study_name=record.study, storage=f"sqlite:///{tmp_path}/optuna.db")
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert [t.params for t in trials] == starts(spectral=True, precisions=natives)[:2]  # the paper's algorithm is always tried
    assert study.trials[0].distributions["precision"].choices == natives
    assert study.trials[0].distributions["variant"].choices == tuple(searched)
    assert study.trials[0].distributions["decode"].choices == tuple(decoded)
    assert study.metric_names == ["structure_error", "seconds_per_volume"]
    # Every feasible setting (here both) was measured again; the default is chosen among those rows.
    assert sorted(r["trial"] for r in record.finalists) == sorted(t.number for t in finalists_of(study))
    chosen = next(r for r in record.finalists if r["setting"] == record.table[0]["setting"])
    best = min(r["structure_error"] for r in record.finalists)
    assert chosen["structure_error"] <= best + max(1.0, 0.1 * best)
    assert "Finalists" in (bundle / "card.md").read_text()
    # The chosen setting is what generate now uses.
    assert Micro3DiffGenerator(bundle).bundle.config.sampling == config.sampling

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    runs = mlflow.search_runs(experiment_names=[record.study], output_format="list")
    assert len([r for r in runs if "mlflow.parentRunId" in r.data.tags]) == 2

    # The finalists' and confirmations' rows are kept in the study, under what they depend on.
    study = optuna.load_study(study_name=record.study, storage=f"sqlite:///{tmp_path}/optuna.db")  # as it is now
    kept = {k: v for k, v in study.user_attrs.items() if k.startswith("tuning row ")}
    assert len(kept) == len(record.finalists) + 2  # the finalists, the default's and the paper's confirmation
    assert all(len(k) < 512 for k in kept)  # Optuna's key column
    planted = next(k for k, v in kept.items() if "from seed 200000" in v["about"])  # a finalist's (FINALIST_SEED + 0)
    study.set_user_attr(planted, kept[planted] | {"row": kept[planted]["row"] | {"seconds_per_volume": 12345.0}})

    # Tuning again reuses them (the planted value comes back: nothing was measured again) and
    # rewrites the card's section instead of adding a second one.
    again = tune(bundle, options(tmp_path, trials=2), log=lambda line: None)
    assert 12345.0 in [r["seconds_per_volume"] for r in again.finalists]
    assert (bundle / "card.md").read_text().count("chosen by `micro-doe tune`") == 1
    # Other seeds measure anew.
    other = tune(bundle, options(tmp_path, trials=2, seed=1), log=lambda line: None)
    assert 12345.0 not in [r["seconds_per_volume"] for r in other.finalists]


def test_an_interrupted_tuning_keeps_the_weights_and_resumes(options, tmp_path, held_out_bundle):
    from micro_doe.platform.interrupts import Interrupted

    bundle = tmp_path / "b"
    shutil.copytree(held_out_bundle, bundle)
    weights = digest(bundle / "model.pt")
    before = (bundle / "config.json").read_text()

    def stop_after_one(study):  # type: ignore[no-untyped-def]
        def progress(p):  # type: ignore[no-untyped-def]
            if p.done >= 1:
                raise Interrupted(2)
        return study.run(on_progress=progress)

    with pytest.raises(KeyboardInterrupt):
        tune(bundle, options(tmp_path, trials=3), on_study=stop_after_one, log=lambda line: None)
    assert digest(bundle / "model.pt") == weights
    assert json.loads((bundle / "config.json").read_text())["sampling"] == json.loads(before)["sampling"]

    record = tune(bundle, options(tmp_path, trials=3), log=lambda line: None)
    study = optuna.load_study(study_name=record.study, storage=f"sqlite:///{tmp_path}/optuna.db")
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 3 and record.trials == 3
    assert sum(t.params == PAPER for t in complete) == 1  # resumed, not started over
    # A third of 3 settings: the last one walked one knob from the best of the first two.
    walked = [t for t in complete if t.user_attrs.get("initial_design") == "tuning walk"]
    assert len(walked) == 1 and "walked from its best" in record.rule
    first_best = min(complete[:2], key=lambda t: t.values[0])
    assert sum(walked[0].params[k] != v for k, v in first_best.params.items()) == 1

    # A larger budget later walks on; the rule counts every walked setting of the study.
    record = tune(bundle, options(tmp_path, trials=4), log=lambda line: None)
    assert record.trials == 4 and "2 of the study's settings walked" in record.rule


def test_the_tune_command_tunes_a_bundle_in_the_working_folder(tmp_path, held_out_bundle, monkeypatch, capsys):
    from micro_doe.cli.app import main

    bundle = tmp_path / "b"
    shutil.copytree(held_out_bundle, bundle)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as done:
        main(["tune", str(bundle), "--tune-budget", "2", "--seed", "1", "--threads", "1"])
    captured = capsys.readouterr()
    assert done.value.code == 0, captured.err
    assert "tuned against held-out images" in captured.out and "data floor" in captured.out
    assert "trials: 2 done, 0 failed" in captured.err  # progress reads in a log, not only on a terminal
    config = Micro3DiffConfig.model_validate_json((bundle / "config.json").read_text())
    assert config.tuning is not None and config.tuning.seed == 1 and config.tuning.trials == 2
    assert (tmp_path / "micro-doe-runs" / "optuna.db").exists()
