from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from micro_doe.platform.plots import pareto_figure, pareto_plot


def _legend(ax) -> list[str]:  # type: ignore[no-untyped-def]
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_pareto_views_join_a_front_only_in_two_dimensions_and_list_only_what_is_there(tmp_path):
    values = np.array([[1.0, 4.0, 2.0], [2.0, 2.0, 2.0], [4.0, 1.0, 2.0], [3.0, 3.0, 3.0]])
    front = [True, True, True, False]
    two = pareto_figure(values[:, :2], [True] * 4, front, ["a", "b"], ["minimize"] * 2)
    (ax,) = two.axes
    assert _legend(ax) == ["feasible", "Pareto front"]  # no trial infeasible: no such entry
    assert ax.get_lines()[0].get_linestyle() == "-"  # two objectives: the front is a curve
    three = pareto_figure(values, [True, True, False, True], front, ["a", "b", "c"], ["minimize"] * 3)
    assert len(three.axes) == 3 and "infeasible" in _legend(three.axes[0])
    assert all(ax.get_lines()[0].get_linestyle() == "None" for ax in three.axes)  # projections: points only
    plt.close("all")
    path = pareto_plot(values[:, :2], [True] * 4, front, ["a", "b"], ["minimize"] * 2, tmp_path / "p.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
