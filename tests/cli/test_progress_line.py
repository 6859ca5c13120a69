"""What a study's progress line in a log file names as best."""

from __future__ import annotations

from micro_doe.cli.run import _best_line
from micro_doe.studies.runner import TrialRecord


def test_the_log_line_names_the_front_member_best_on_the_first_objective():
    front = [TrialRecord(1, "COMPLETE", {}, [52.0, 4.8]), TrialRecord(15, "COMPLETE", {}, [29.4, 29.3]),
             TrialRecord(9, "COMPLETE", {}, [67.0, 3.4])]
    names = ["structure_error", "seconds_per_volume"]
    line = _best_line(front, names, "minimize")
    assert line.startswith("structure_error 29.4") and "trial 15; 3 on the Pareto front" in line
    assert _best_line(front, names, "maximize").startswith("structure_error 67")
    assert _best_line(front[:1], names, "minimize") == "structure_error 52, seconds_per_volume 4.8"
    assert _best_line([], names, "minimize") == "-"
