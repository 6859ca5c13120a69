from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest

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


def test_a_montage_shows_each_rows_middle_slices_in_grey_framed_on_white(tmp_path):
    import matplotlib.image

    from micro_doe.platform.plots import slice_montage
    from micro_doe.platform.volumes import make_volume

    # Phase 1 everywhere but the middle z-slice: the xy panel is black, xz and yz mostly white.
    labels = np.ones((16, 16, 16), dtype=np.int8)
    labels[8] = 0
    one = slice_montage(make_volume(labels), tmp_path / "one.png")
    two = slice_montage([make_volume(labels)] * 2, tmp_path / "two.png", labels=["a", "b"], title="t")
    image = matplotlib.image.imread(one)[..., :3].mean(axis=2)  # grey levels in [0, 1]
    height, width = image.shape
    middle_row = image[int(height * 0.4)]  # above the black line that z = 8 draws across xz and yz
    thirds = [middle_row[int(width * f)] for f in (0.2, 0.5, 0.8)]  # through the xy, xz and yz panels
    assert thirds[0] < 0.1 and thirds[1] > 0.9 and thirds[2] > 0.9
    assert matplotlib.image.imread(two).shape[0] > 1.5 * height  # a row per volume
    with pytest.raises(ValueError, match="expected \\(z, y, x\\) volumes"):
        slice_montage(make_volume(labels).transpose("x", "y", "z"), tmp_path / "bad.png")
