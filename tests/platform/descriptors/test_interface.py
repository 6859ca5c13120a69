from __future__ import annotations

import numpy as np
import pytest

from micro_doe.platform.descriptors import interfacial_area
from micro_doe.platform.volumes import make_volume


def test_a_flat_interface_has_area_one_face_per_column():
    n = 16
    vol = np.zeros((n, n, n), np.int8)
    vol[: n // 2] = 1
    assert interfacial_area(vol, 0, 1) == pytest.approx(n * n / n**3)
    assert interfacial_area(vol, 0, 1, periodic=True) == pytest.approx(2 * n * n / n**3)


def test_single_voxel_has_six_faces_and_voxel_size_scales():
    labels = np.zeros((5, 5, 5), np.int8)
    labels[2, 2, 2] = 1
    assert interfacial_area(labels, 0, 1) == pytest.approx(6 / 125)
    vol = make_volume(labels, voxel_size=0.5, phase_names=["matrix", "inclusion"])
    assert interfacial_area(vol, "matrix", "inclusion") == pytest.approx(6 / 125 / 0.5)


def test_face_count_of_a_ball_is_three_halves_of_its_area():
    n, radius = 40, 12.0
    z, y, x = np.mgrid[:n, :n, :n] - (n - 1) / 2
    ball = (x**2 + y**2 + z**2 <= radius**2).astype(np.int8)
    faces = interfacial_area(ball, 0, 1) * n**3
    assert faces == pytest.approx(1.5 * 4 * np.pi * radius**2, rel=0.03)


def test_only_the_named_pair_counts():
    labels = np.array([[0, 1, 2, 2]], dtype=np.int8).repeat(3, axis=0)
    assert interfacial_area(labels, 0, 1) == pytest.approx(3 / 12)
    assert interfacial_area(labels, 1, 2) == pytest.approx(3 / 12)
    assert interfacial_area(labels, 0, 2) == 0.0
    with pytest.raises(ValueError, match="two different phases"):
        interfacial_area(labels, 1, 1)
