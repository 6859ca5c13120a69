from __future__ import annotations

import json
import math

import numpy as np
import pytest

from micro_doe.platform.descriptors import (
    Descriptors,
    describe,
    error_rate,
    lineal_path_along_axes,
    s2_along_axes,
    tortuosity,
)
from micro_doe.platform.volumes import make_volume, read_volume, write_netcdf


def test_error_rate_is_the_area_between_over_the_area_under():
    ref = np.ones(11)
    assert error_rate(ref, ref) == 0.0
    assert error_rate(ref, 0.9 * ref) == pytest.approx(10.0)
    assert error_rate(ref, 1.1 * ref) == pytest.approx(10.0)
    assert error_rate(np.zeros(4), np.zeros(4)) == 0.0
    assert math.isinf(error_rate(np.zeros(4), np.ones(4)))
    with pytest.raises(ValueError, match="equal length"):
        error_rate(np.ones(3), np.ones(4))


def test_describe_matches_the_individual_descriptors(blobs64):
    vol = make_volume(blobs64, phase_names=["solid", "pore"])
    d = describe(vol, "pore")
    assert d.phase == 1 and d.phase_name == "pore"
    assert d.volume_fraction == pytest.approx(float(blobs64.mean()))
    assert sum(d.volume_fractions.values()) == pytest.approx(1.0)
    for axis, curve in s2_along_axes(blobs64, 1).items():
        np.testing.assert_array_equal(d.s2[axis], curve)
    for axis, curve in lineal_path_along_axes(blobs64, 1).items():
        np.testing.assert_array_equal(d.lineal_path[axis], curve)
    assert d.tortuosity is not None and d.tortuosity.tau == pytest.approx(tortuosity(blobs64, 1, "z").tau)
    scalars = d.scalars()
    assert set(scalars) >= {"volume_fraction", "vf_solid", "vf_pore", "tortuosity", "interfacial_area"}
    assert scalars["interfacial_area"] == d.interfacial_area["pore|solid"] > 0


def test_describe_gives_the_same_descriptors_on_one_thread_and_on_three(blobs64):
    # Three workers: each axis's sections split three ways (64 = 22 + 21 + 21).
    one = describe(blobs64, 1, workers=1).model_dump(exclude={"seconds"})
    three = describe(blobs64, 1, workers=3).model_dump(exclude={"seconds"})
    assert one["sizes"]["sections"] == three["sizes"]["sections"] == 3 * 64
    assert one == three
    with pytest.raises(ValueError, match="workers must be at least 1"):
        describe(blobs64, 1, workers=-1)


def test_descriptors_round_trip_through_json_and_netcdf(tmp_path):
    labels = np.zeros((12, 12, 12), np.int8)
    labels[3:6, 3:6, 3:6] = 1  # isolated: tau is inf and must survive serialisation
    d = describe(labels)
    assert math.isinf(d.tortuosity.tau)
    again = Descriptors.model_validate(json.loads(d.model_dump_json()))
    assert again == d
    path = tmp_path / "reference.nc"
    write_netcdf(d.to_dataset(), path)
    import xarray as xr

    with xr.open_dataset(path) as ds:
        assert Descriptors.from_dataset(ds.load()) == d


def test_describe_a_stack_of_images_and_a_three_phase_volume(rng):
    stack = make_volume((rng.random((4, 16, 16)) < 0.6).astype(np.int8), dims=("sample", "y", "x"))
    d = describe(stack, tortuosity_axis="x")
    assert set(d.s2) == {"y", "x"} and d.tortuosity is not None and d.tortuosity.axis == "x"
    three = make_volume(rng.integers(0, 3, (10, 10, 10)), phase_names=["acceptor", "donor", "mixed"])
    d3 = describe(three, "donor")
    assert set(d3.interfacial_area) == {"donor|acceptor", "donor|mixed"}
    assert sum(d3.volume_fractions.values()) == pytest.approx(1.0)


def test_describe_a_file_written_and_read_back(tmp_path, blobs64):
    path = write_netcdf(make_volume(blobs64[:16, :16, :16]), tmp_path / "v.nc")
    assert describe(read_volume(path)).shape == [16, 16, 16]
