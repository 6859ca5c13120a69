"""``micro-doe tune``: a real study (Ray, Optuna storage, MLflow) chooses a bundle's sampling
defaults against held-out images; the bundle records them, and an interrupted tuning resumes."""

from __future__ import annotations

import hashlib
import json
import shutil

import mlflow
import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from micro_doe.platform.micro3diff.bundle import Micro3DiffConfig
from micro_doe.platform.micro3diff.generator import Micro3DiffGenerator
from micro_doe.studies.tuning import (
    PAPER,
    SEARCH,
    TuneOptions,
    choose,
    finalists,
    neighbours,
    next_step,
    starts,
    study_name,
    tune,
    walk_trials,
    worst_error,
)

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(autouse=True)
def quiet_env(monkeypatch):
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="module")
def held_out_bundle(tmp_path_factory, sphere_slices, tiny_unet):
    """A tiny bundle trained with 15 % of its images held out."""
    from micro_doe.platform.micro3diff.training import TrainConfig, train_micro3diff

    config = TrainConfig(steps=12, batch_size=8, checkpoint_every=6, unet=tiny_unet, quality_images=0, held_out=0.15)
    out = tmp_path_factory.mktemp("held") / "tiny-held"
    return train_micro3diff(sphere_slices, out, config, device="cpu", data_label="spheres fixture", progress=False)


def options(tmp_path, **changes) -> TuneOptions:  # type: ignore[no-untyped-def]
    base = {"trials": 2, "samples_per_trial": 1, "confirm_volumes": 1, "calibration_volumes": 1, "finalist_volumes": 1,
            "storage": f"sqlite:///{tmp_path}/optuna.db", "tracking": f"sqlite:///{tmp_path}/mlflow.db",
            "artifacts": f"{tmp_path}/artifacts"}
    return TuneOptions(**(base | changes))


def digest(path) -> str:  # type: ignore[no-untyped-def]
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_tune_runs_a_study_and_writes_defaults_calibration_and_table(tmp_path, held_out_bundle, monkeypatch):
    bundle = tmp_path / "b"
    shutil.copytree(held_out_bundle, bundle)
    weights = digest(bundle / "model.pt")
    record = tune(bundle, options(tmp_path), log=lambda line: None)

    config = Micro3DiffConfig.model_validate_json((bundle / "config.json").read_text())
    searched = ["paper", "anchored", "spectral"]  # trained now: the autocovariance is recorded
    assert config.tuning == record and record.trials == 2 and record.study == study_name(bundle, searched)
    assert record.study.endswith("-spectral")
    assert config.held_out is not None and config.held_out.n_images == 6
    assert len(config.vf_calibration) == 3  # measured, not set by hand
    assert [r["role"] for r in record.table] == ["tuned default", "paper (SamplingConfig())", "data floor"]
    assert all(r["structure_error"] >= 0 for r in record.table)
    card = (bundle / "card.md").read_text()
    assert card.count("## Sampling defaults (chosen by `micro-doe tune`)") == 1 and "data floor" in card
    assert digest(bundle / "model.pt") == weights

    study = optuna.load_study(study_name=record.study, storage=f"sqlite:///{tmp_path}/optuna.db")
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert [t.params for t in trials] == starts(spectral=True)[:2]  # the paper's algorithm is always tried
    assert study.trials[0].distributions["variant"].choices == tuple(searched)
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

    # Tuning again rewrites the card's section instead of adding a second one.
    tune(bundle, options(tmp_path, trials=2), log=lambda line: None)
    assert (bundle / "card.md").read_text().count("chosen by `micro-doe tune`") == 1


def test_an_interrupted_tuning_keeps_the_weights_and_resumes(tmp_path, held_out_bundle):
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
    assert record.trials == 4 and "last 2 settings walked" in record.rule


def test_settings_over_the_pass_cap_are_skipped_unrun_and_use_no_budget(tmp_path, held_out_bundle):
    from micro_doe.studies import trial_attrs as attrs
    from micro_doe.studies.tuning import passes

    bundle = tmp_path / "b"
    shutil.copytree(held_out_bundle, bundle)
    # The starts: the paper's 100 passes, then 175, 50 and 200: at most 150, the second start is skipped.
    record = tune(bundle, options(tmp_path, trials=3, max_passes=150), log=lambda line: None)
    study = optuna.load_study(study_name=record.study, storage=f"sqlite:///{tmp_path}/optuna.db")
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    skipped = [t for t in study.get_trials() if t.user_attrs.get(attrs.SKIPPED)]
    assert len(complete) == 3 and record.trials == 3
    assert all(passes(t.params) <= 150 for t in complete)
    assert starts(spectral=True)[1] in [t.params for t in skipped]
    for t in skipped:
        if attrs.REPEAT_OF in t.user_attrs:  # a random draw of a setting already measured: skipped too
            continue
        assert t.state == TrialState.PRUNED and t.user_attrs[attrs.FEASIBLE] is False
        assert passes(t.params) > 150 and "passes_per_volume" in t.user_attrs[attrs.FAIL_REASON]
        assert t.system_attrs["constraints"][1] == passes(t.params) - 150  # infeasible for TPE
    assert all(r["passes"] <= 150 for r in record.finalists)


def finalists_of(study):  # type: ignore[no-untyped-def]
    from micro_doe.studies.runner import _record

    return finalists([_record(t) for t in study.get_trials()], TuneOptions())


def test_finalists_are_the_best_feasible_settings_once_each():
    from micro_doe.studies.runner import TrialRecord

    trials = [TrialRecord(0, "COMPLETE", {"n": 0}, [10.0, 5.0]), TrialRecord(1, "COMPLETE", {"n": 1}, [10.9, 1.0]),
              TrialRecord(2, "COMPLETE", {"n": 2}, [12.0, 0.1]), TrialRecord(3, "COMPLETE", {"n": 3}, [1.0, 0.1], violation=1.0),
              TrialRecord(4, "FAIL", {"n": 4}, None), TrialRecord(5, "COMPLETE", {"n": 0}, [9.0, 5.0]),
              TrialRecord(6, "COMPLETE", {"n": 6}, [20.0, 0.1])]  # fmt: skip
    assert [t.number for t in finalists(trials, TuneOptions(finalists=3))] == [5, 1, 2]  # trial 0 repeats trial 5
    costly = [TrialRecord(7, "COMPLETE", {"n_h": 40, "steps": 50}, [1.0, 90.0]),
              TrialRecord(8, "COMPLETE", {"n_h": 40, "steps": 25}, [2.0, 40.0])]
    assert [t.number for t in finalists(costly + trials, TuneOptions(finalists=2))] == [8, 5]  # 2 050 passes: not a finalist


def test_choose_takes_the_cheapest_remeasured_setting_within_the_margin():
    def row(error, seconds, vf_error=0.0):  # type: ignore[no-untyped-def]
        return {"structure_error": error, "seconds_per_volume": seconds, "vf_error": vf_error}

    by_sum = TuneOptions(choose_by="structure_error")
    rows = [row(10.0, 5.0), row(10.9, 1.0), row(12.0, 0.1), row(1.0, 0.1, vf_error=0.5)]
    assert choose(rows, by_sum, vf_max_error=0.05) == (1, 0, 1.0)
    chosen, _, margin = choose(rows, by_sum.model_copy(update={"margin_fraction": 0.25}), vf_max_error=0.05)
    assert chosen == 2 and margin == 2.5
    # When no row keeps vf within the constraint, all are compared (rather than no default at all).
    assert choose([row(3.0, 1.0, 0.5), row(2.0, 9.0, 0.6)], by_sum, vf_max_error=0.05)[1] == 1


def test_by_default_the_finalists_are_compared_by_their_worst_judge():
    def row(errors, seconds):  # type: ignore[no-untyped-def]
        judges = dict(zip(("lineal_path_error", "size_error", "diameter_error", "connectivity_error"), errors))
        return judges | {"structure_error": sum(errors), "seconds_per_volume": seconds, "vf_error": 0.0}

    # Clustered particles' finalists (rounded): the lowest sum with particles too small (size
    # error 20 %), and a costlier setting whose every judge is within 14 %.
    small, even = row((7.5, 20.2, 6.6, 8.9), 24.0), row((8.6, 11.1, 11.3, 13.4), 60.0)
    assert worst_error(small) == 20.2 and small["structure_error"] < even["structure_error"]
    chosen, best, margin = choose([small, even], TuneOptions(), vf_max_error=0.05)
    assert (chosen, best) == (1, 1) and margin == pytest.approx(1.34)
    assert choose([small, even], TuneOptions(choose_by="structure_error"), vf_max_error=0.05)[0] == 0


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


def test_held_out_images_that_do_not_fit_the_model_are_refused_before_anything(tmp_path, held_out_bundle, rng):
    from micro_doe.platform.volumes import make_volume, write_netcdf
    from micro_doe.studies.tuning import TuningError

    bundle = tmp_path / "b"
    shutil.copytree(held_out_bundle, bundle)
    before = {p.name: p.read_bytes() for p in bundle.iterdir()}
    for shape, message in (((8, 32, 32), "images of 32² but the model makes 16²"), ((8, 16, 12), "must be square"),
                           ((2, 16, 16), "at least 4 are needed")):
        data = write_netcdf(make_volume(rng.integers(0, 2, shape).astype("int8"), dims=("sample", "y", "x")),
                            tmp_path / f"held-{shape[0]}-{shape[2]}.nc")
        with pytest.raises((TuningError, ValueError), match=message):
            tune(bundle, options(tmp_path), held_out_data=data, log=lambda line: None)
    assert {p.name: p.read_bytes() for p in bundle.iterdir()} == before
    assert not (tmp_path / "optuna.db").exists()


def test_the_floor_of_a_reference_without_connectivity_says_unknown_not_100(sphere_slices):
    import math

    from micro_doe.platform.descriptors import describe
    from micro_doe.studies.tuning import floor_row

    held_out = describe(sphere_slices.isel(z=slice(20, 40)).rename(z="sample"), 1, tortuosity_axis=None)
    training = describe(sphere_slices.isel(z=slice(0, 20)).rename(z="sample"), 1, tortuosity_axis=None)
    assert math.isfinite(floor_row(training, held_out)["connectivity_error"])
    old = training.model_copy(update={"sizes": training.sizes.model_copy(update={"largest_share": math.nan})})
    row = floor_row(old, held_out)  # a reference.nc made before largest_share existed
    assert math.isnan(row["connectivity_error"]) and math.isnan(row["structure_error"])
    assert math.isfinite(row["lineal_path_error"]) and math.isfinite(row["size_error"])


def test_training_data_records_the_autocovariance_of_a_bundle_trained_before_it(tmp_path, held_out_bundle, sphere_slices,
                                                                                 rng):
    from micro_doe.platform.micro3diff.training import image_autocovariance
    from micro_doe.platform.volumes import make_volume, write_netcdf
    from micro_doe.studies.tuning import TuningError, training_autocovariance, update_config, variants

    bundle = tmp_path / "b"
    shutil.copytree(held_out_bundle, bundle)
    recorded = Micro3DiffConfig.model_validate_json((bundle / "config.json").read_text()).autocovariance
    older = update_config(bundle, autocovariance=None)
    assert variants(older) == ["paper", "anchored"]  # no target, no spectral variant
    data = write_netcdf(sphere_slices, tmp_path / "spheres.nc")
    # The data given to train: its held-out block (the last 6 of 40 images) is left out again.
    np.testing.assert_allclose(training_autocovariance(data, older), recorded)
    assert training_autocovariance(data, older) != image_autocovariance(sphere_slices.rename(z="sample"), 2)
    for shape, message in (((8, 32, 32), "images of 32², but the model was trained on 16²"),
                           ((8, 16, 12), "must be square")):
        other = write_netcdf(make_volume(rng.integers(0, 2, shape).astype("int8"), dims=("sample", "y", "x")),
                             tmp_path / f"other-{shape[1]}-{shape[2]}.nc")
        with pytest.raises((TuningError, ValueError), match=message):
            tune(bundle, options(tmp_path), training_data=other, log=lambda line: None)
    with pytest.raises(TuningError, match="--training-data .*nothing.nc"):
        tune(bundle, options(tmp_path), training_data=tmp_path / "nothing.nc", log=lambda line: None)
    assert Micro3DiffConfig.model_validate_json((bundle / "config.json").read_text()).autocovariance is None
    assert not (tmp_path / "optuna.db").exists()


def test_the_calibration_is_measured_with_the_settings_own_anchoring_variant(held_out_bundle):
    """A spectral default falls short of its anchor by its own amount, not the anchored variant's."""
    from micro_doe.platform.micro3diff.generator import SamplingSettings
    from micro_doe.studies.tuning import CALIBRATION_FACTORS, measure_calibration

    generator = Micro3DiffGenerator(held_out_bundle)
    setting = {"variant": "spectral", "n_h": 1, "steps": 4, "precision": "fp32", "decode": "sign", "calibrate": True}
    pairs = measure_calibration(generator, setting, 1, 3)
    phase = generator.bundle.reference.phase_name
    label = generator.bundle.config.phase_names.index(phase)
    for factor, (anchored, vf) in zip(CALIBRATION_FACTORS, pairs):
        assert anchored == round(generator.training_fractions()[phase] * factor, 4)
        settings = SamplingSettings(**(setting | {"calibrate": False}), targets={f"vf_{phase}": anchored})
        volume = generator.sample(1, settings, seed=3, allow_extrapolation=True)[0]
        assert vf == round(float((volume.values == label).mean()), 4)
    assert measure_calibration(generator, setting | {"variant": "anchored"}, 1, 3) != pairs  # the check above can tell


def test_a_calibration_measured_at_the_same_key_is_kept_and_any_other_is_measured(tmp_path, held_out_bundle):
    """Seeded, the same setting, volumes and weights would measure the same calibration again
    (minutes per fraction at 64³); a change of any of them measures anew."""
    from micro_doe.studies.tuning import PROBE, calibrate_at, calibration_key, update_config

    bundle = tmp_path / "b"
    shutil.copytree(held_out_bundle, bundle)
    generator = Micro3DiffGenerator(bundle)
    lines: list[str] = []
    opts = options(tmp_path, seed=3)
    calibrate_at(generator, PROBE, opts, resumed=False, log=lines.append)
    measured = generator.bundle.config.vf_calibration
    assert generator.bundle.config.vf_calibration_setting == calibration_key(bundle, PROBE, 1, 3) and len(measured) == 3

    planted = [(0.1, 0.05), (0.2, 0.1), (0.3, 0.15)]  # not what sampling measures: a re-measure would replace it
    generator.bundle.config = update_config(bundle, vf_calibration=planted)
    calibrate_at(generator, PROBE, opts, resumed=False, log=lines.append)
    assert generator.bundle.config.vf_calibration == planted and "kept" in lines[-1]

    calibrate_at(generator, PROBE, options(tmp_path, seed=4), resumed=False, log=lines.append)  # another seed
    assert generator.bundle.config.vf_calibration != planted
    assert generator.bundle.config.vf_calibration_setting == calibration_key(bundle, PROBE, 1, 4)

    # Written before keys were recorded: kept only by a resumed study on an untuned bundle.
    generator.bundle.config = update_config(bundle, vf_calibration=planted, vf_calibration_setting=None)
    calibrate_at(generator, PROBE, opts, resumed=True, log=lines.append)
    assert generator.bundle.config.vf_calibration == planted
    calibrate_at(generator, PROBE, opts, resumed=False, log=lines.append)
    assert generator.bundle.config.vf_calibration == measured  # seeded: the first measurement again


def test_the_walk_climbs_the_n_h_ladder_of_the_best_setting_first():
    from micro_doe.studies.runner import TrialRecord

    search = SEARCH | {"variant": {"categorical": ["paper", "anchored", "spectral"]}}
    best = {"variant": "spectral", "n_h": 3, "steps": 25, "decode": "sign", "calibrate": True, "precision": "bf16"}
    steps = neighbours(best, search, max_passes=1100)
    assert [p["n_h"] for p in steps[:2]] == [6, 1]  # up the ladder, then down
    assert [next(k for k in best if p[k] != best[k]) for p in steps[2:]] == ["calibrate", "steps", "precision", "decode"]
    assert all(p["n_h"] != 40 for p in neighbours(best | {"n_h": 20}, search, max_passes=1000))  # 41 · 25 passes: over
    assert not any(p["calibrate"] for p in neighbours(best | {"variant": "paper", "calibrate": False}, search, 1100))

    def trial(number, params, error):  # type: ignore[no-untyped-def]
        return TrialRecord(number, "COMPLETE", params, [error, 1.0])

    options = TuneOptions()
    trials = [trial(0, PAPER, 90.0), trial(1, best, 30.0)]
    assert next_step(trials, search, options) == best | {"n_h": 6}
    trials.append(trial(2, best | {"n_h": 6}, 25.0))  # better: the walk goes on up from there
    assert next_step(trials, search, options) == best | {"n_h": 10}
    trials.append(trial(3, best | {"n_h": 10}, 28.0))  # worse: n_h 6's next untried neighbour
    assert next_step(trials, search, options) == best | {"n_h": 6, "calibrate": False}
    assert next_step([TrialRecord(0, "FAIL", PAPER, None)], search, options) is None  # nothing feasible yet
    assert [walk_trials(TuneOptions(trials=n)) for n in (2, 3, 16, 21)] == [0, 1, 5, 7]
