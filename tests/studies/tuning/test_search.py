"""The tuning study: settings over the pass cap, and the walk from the best setting."""

from __future__ import annotations

import shutil

import optuna
import pytest
from optuna.trial import TrialState

from micro_doe.platform.diffusion.precision import native_precisions
from micro_doe.platform.diffusion.training import default_device
from micro_doe.studies.tuning.options import PAPER, SEARCH, TuneOptions, starts
from micro_doe.studies.tuning.search import neighbours, next_step, walk_trials
from micro_doe.studies.tuning.tuner import tune

pytestmark = pytest.mark.filterwarnings("ignore")


def test_settings_over_the_pass_cap_are_skipped_unrun_and_use_no_budget(options, tmp_path, held_out_bundle):
    from micro_doe.studies import trial_attrs as attrs
    from micro_doe.studies.tuning.options import passes

    bundle = tmp_path / "b"
    shutil.copytree(held_out_bundle, bundle)
    # The starts: the paper's 100 passes, then 175, 50 and 200: at most 150, the second start is skipped.
    record = tune(bundle, options(tmp_path, trials=3, max_passes=150), log=lambda line: None)
    study = optuna.load_study(study_name=record.study, storage=f"sqlite:///{tmp_path}/optuna.db")
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    skipped = [t for t in study.get_trials() if t.user_attrs.get(attrs.SKIPPED)]
    assert len(complete) == 3 and record.trials == 3
    assert all(passes(t.params) <= 150 for t in complete)
    assert starts(spectral=True, precisions=native_precisions(default_device()))[1] in [t.params for t in skipped]
    for t in skipped:
        if attrs.REPEAT_OF in t.user_attrs:  # a random draw of a setting already measured: skipped too
            continue
        assert t.state == TrialState.PRUNED and t.user_attrs[attrs.FEASIBLE] is False
        assert passes(t.params) > 150 and "passes_per_volume" in t.user_attrs[attrs.FAIL_REASON]
        assert t.system_attrs["constraints"][1] == passes(t.params) - 150  # infeasible for TPE
    assert all(r["passes"] <= 150 for r in record.finalists)


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


def test_hysteresis_is_searched_for_two_phases_only_with_its_start_and_a_study_of_its_own(held_out_bundle):
    from micro_doe.platform.micro3diff.bundle import Micro3DiffConfig
    from micro_doe.platform.micro3diff.generator import VARIANTS
    from micro_doe.studies.tuning.options import HYSTERESIS_START, decodes, study_name

    two = Micro3DiffConfig.model_validate_json((held_out_bundle / "config.json").read_text())
    three = two.model_copy(update={"phase_names": ["a", "b", "c"]})
    assert decodes(two) == ["sign", "fractions", "hysteresis"] and decodes(three) == ["sign", "fractions"]
    assert starts(spectral=True, hysteresis=True)[4] == HYSTERESIS_START and HYSTERESIS_START not in starts(spectral=True)
    assert starts(spectral=False, hysteresis=True)[:3] == [*starts(spectral=False)[:2], HYSTERESIS_START]
    assert VARIANTS[HYSTERESIS_START["variant"]].anchors
    plain = study_name(held_out_bundle, ["paper", "anchored"], decodes(three))
    assert study_name(held_out_bundle, ["paper", "anchored"], decodes(two)) == plain + "-hysteresis"
    assert study_name(held_out_bundle, ["paper", "anchored", "spectral"], decodes(two)) == plain + "-spectral-hysteresis"


def test_a_study_begun_before_hysteresis_decoding_resumes_with_its_own_search(held_out_bundle, tmp_path):
    from micro_doe.studies.tuning.options import study_name
    from micro_doe.studies.tuning.tuner import study_to_resume

    storage = f"sqlite:///{tmp_path}/optuna.db"
    searched, decoded = ["paper", "anchored"], ["sign", "fractions", "hysteresis"]
    new, earlier = study_name(held_out_bundle, searched, decoded), study_name(held_out_bundle, searched)
    assert study_to_resume(held_out_bundle, searched, decoded, storage) == (new, decoded)
    assert not (tmp_path / "optuna.db").exists()  # only read: nothing created
    optuna.create_study(study_name=earlier, storage=storage)  # no trials yet: nothing to resume
    assert study_to_resume(held_out_bundle, searched, decoded, storage) == (new, decoded)
    optuna.load_study(study_name=earlier, storage=storage).enqueue_trial(PAPER)
    assert study_to_resume(held_out_bundle, searched, decoded, storage) == (earlier, ["sign", "fractions"])
    optuna.create_study(study_name=new, storage=storage).enqueue_trial(PAPER)  # the new search has begun: it goes on
    assert study_to_resume(held_out_bundle, searched, decoded, storage) == (new, decoded)


def test_the_search_samples_in_the_precisions_the_machine_runs_natively(held_out_bundle, options, tmp_path):
    from micro_doe.platform.bundles import load_held_out
    from micro_doe.studies.tuning.options import study_name
    from micro_doe.studies.tuning.search import search_starts, tuning_spec

    fp32_only = starts(spectral=True, hysteresis=True, precisions=("fp32",))
    assert [s["precision"] for s in fp32_only] == ["fp32"] * len(fp32_only)
    assert [s | {"precision": "fp32"} for s in starts(spectral=True, hysteresis=True)] == fp32_only  # nothing else changes
    assert starts(spectral=True, hysteresis=True, precisions=("fp32", "bf16", "fp16")) == starts(spectral=True, hysteresis=True)
    searched, decoded = ["paper", "anchored"], ["sign", "fractions"]
    plain = study_name(held_out_bundle, searched, decoded)
    assert study_name(held_out_bundle, searched, decoded, SEARCH["precision"]["categorical"]) == plain
    assert study_name(held_out_bundle, searched, decoded, ("fp32",)) == plain + "-fp32"  # Optuna fixes a study's choices
    assert study_name(held_out_bundle, searched, decoded, ("fp32", "bf16", "fp16")) == plain + "-fp32-bf16-fp16"
    spec = tuning_spec(held_out_bundle, load_held_out(held_out_bundle), options(tmp_path), "s", ("fp32",), searched, decoded)
    assert spec["search"]["precision"] == {"categorical": ["fp32"]}
    assert search_starts(spec["search"]) == starts(spectral=False, precisions=("fp32",))
    assert spec["sampler"]["n_startup_trials"] == len(starts(spectral=False))
