"""Finalists, the choice among them, and the data floor's row."""

from __future__ import annotations

import pytest

from micro_doe.studies.tuning.choice import choose, finalists, worst_error
from micro_doe.studies.tuning.options import TuneOptions

pytestmark = pytest.mark.filterwarnings("ignore")


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
    # Rows that say their CPU seconds are compared by those: wall seconds follow the machine's load.
    loaded, quiet = row(10.0, 9.0) | {"cpu_seconds_per_volume": 2.0}, row(10.2, 3.0) | {"cpu_seconds_per_volume": 4.0}
    assert choose([loaded, quiet], by_sum, vf_max_error=0.05)[0] == 0


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


def test_the_floor_of_a_reference_without_connectivity_says_unknown_not_100(sphere_slices):
    import math

    from micro_doe.platform.descriptors import describe
    from micro_doe.studies.tuning.choice import floor_row

    held_out = describe(sphere_slices.isel(z=slice(20, 40)).rename(z="sample"), 1, tortuosity_axis=None)
    training = describe(sphere_slices.isel(z=slice(0, 20)).rename(z="sample"), 1, tortuosity_axis=None)
    assert math.isfinite(floor_row(training, held_out)["connectivity_error"])
    old = training.model_copy(update={"sizes": training.sizes.model_copy(update={"largest_share": math.nan})})
    row = floor_row(old, held_out)  # a reference.nc made before largest_share existed
    assert math.isnan(row["connectivity_error"]) and math.isnan(row["structure_error"])
    assert math.isfinite(row["lineal_path_error"]) and math.isfinite(row["size_error"])
