from __future__ import annotations

import math

import numpy as np
import pytest

from micro_doe.platform.descriptors import (
    SizeDistribution,
    describe,
    equivalent_diameters,
    local_thickness,
    section_sizes,
    size_error,
)
from micro_doe.platform.volumes import make_volume


def ball(shape: tuple[int, ...], centre: tuple[int, ...], r: int) -> np.ndarray:
    grid = np.indices(shape)
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) < r * r


@pytest.mark.parametrize("r", [1, 2, 3, 5])
@pytest.mark.parametrize("dims", [2, 3])
def test_a_discrete_ball_has_its_own_width_everywhere(r: int, dims: int) -> None:
    mask = ball((21,) * dims, (10,) * dims, r)
    thickness = local_thickness(mask)
    assert set(np.unique(thickness[mask])) == {2 * r - 1}
    assert not thickness[~mask].any()


def test_a_slab_of_odd_width_is_that_wide_and_two_balls_keep_their_sizes() -> None:
    slab = np.zeros((20, 9, 9), bool)
    slab[5:12] = True  # 7 voxels thick
    assert set(np.unique(local_thickness(slab)[slab])) == {7}
    two = ball((30, 30, 30), (8, 8, 8), 3) | ball((30, 30, 30), (20, 20, 20), 5)
    t = local_thickness(two)
    assert set(np.unique(t[ball((30, 30, 30), (8, 8, 8), 3)])) == {5}
    assert set(np.unique(t[ball((30, 30, 30), (20, 20, 20), 5)])) == {9}


def test_a_dumbbell_neck_is_covered_by_the_larger_balls_where_they_reach() -> None:
    # the sphere-fitting definition: a voxel takes the largest ball that contains it, not its own distance
    mask = ball((15, 31), (7, 7), 6) | ball((15, 31), (7, 23), 6)
    mask[6:9, 7:24] = True  # a neck 3 wide
    t = local_thickness(mask)
    assert t[7, 15] == 3
    assert t[7, 2] == 11


def test_section_thickness_is_per_slice() -> None:
    rng = np.random.default_rng(0)
    mask = rng.random((6, 16, 16)) < 0.6
    stacked = local_thickness(mask, section_axis=0)
    assert np.array_equal(stacked, np.stack([local_thickness(m) for m in mask]))


def test_equivalent_diameters_of_known_components() -> None:
    mask = np.zeros((20, 20), bool)
    mask[1:5, 1:5] = True  # 16 px
    mask[10:12, 10:19] = True  # 18 px
    d = np.sort(equivalent_diameters(mask))
    assert d == pytest.approx(np.sqrt(4 * np.array([16, 18]) / math.pi))
    cube = np.zeros((10, 10, 10), bool)
    cube[2:5, 2:5, 2:5] = True
    assert equivalent_diameters(cube) == pytest.approx([np.cbrt(6 * 27 / math.pi)])
    # as sections normal to z: three 3×3 squares
    assert equivalent_diameters(cube, section_axis=0) == pytest.approx([np.sqrt(4 * 9 / math.pi)] * 3)


def test_section_sizes_of_a_ball_pool_all_three_planes() -> None:
    vol = make_volume(ball((16, 16, 16), (8, 8, 8), 5).astype(np.int8))
    sizes = section_sizes(vol)
    assert sizes.sections == 48
    # the same disks in every plane by symmetry: 9 non-empty sections per axis
    assert sizes.components_per_kpx == pytest.approx(1000 * 27 / (3 * 16**3))
    assert sum(sizes.thickness) == pytest.approx(1.0)
    assert sizes.thickness_mean == pytest.approx(np.dot(sizes.thickness, 2 * np.arange(len(sizes.thickness)) + 1))


def test_size_error_is_the_relative_earth_movers_distance() -> None:
    ref = SizeDistribution(sections=1, components_per_kpx=1, diameter_mean=3, diameter_std=0, thickness=[0, 1.0], thickness_mean=3.0)
    same = ref.model_copy()
    wider = SizeDistribution(sections=1, components_per_kpx=1, diameter_mean=5, diameter_std=0, thickness=[0, 0, 1.0], thickness_mean=5.0)
    assert size_error(ref, same) == 0.0
    assert size_error(ref, wider) == pytest.approx(100 * 2 / 3)  # every voxel moved by 2 of a mean width 3
    empty = SizeDistribution(sections=1, components_per_kpx=0, diameter_mean=math.nan, diameter_std=math.nan,
                             thickness=[], thickness_mean=math.nan)  # fmt: skip
    assert size_error(ref, empty) == pytest.approx(100 * 2 / 3)  # as if every voxel were width 1
    with pytest.raises(ValueError, match="reference"):
        size_error(empty, ref)


def test_describe_includes_sizes_and_round_trips() -> None:
    vol = make_volume(ball((16, 16, 16), (8, 8, 8), 4).astype(np.int8))
    d = describe(vol, tortuosity_axis=None)
    assert d.sizes is not None and d.scalars()["thickness_mean"] == d.sizes.thickness_mean
    assert type(d).from_dataset(d.to_dataset()) == d
    assert describe(vol, tortuosity_axis=None, sizes=False).sizes is None


def test_largest_share_is_the_share_of_each_sections_largest_component():
    import numpy as np
    import xarray as xr

    from micro_doe.platform.descriptors.sizes import largest_component_pixels, section_sizes

    mask = np.zeros((4, 8, 8), bool)
    mask[:, 1:3, 1:3] = True  # 4 px per z-section
    mask[:, 5:8, 5:8] = True  # 9 px per z-section: the largest
    assert largest_component_pixels(mask[0]) == 9
    assert largest_component_pixels(mask, section_axis=0) == 4 * 9
    assert largest_component_pixels(mask, section_axis=1) == 2 * 8 + 3 * 12  # y-sections hold one of the two
    sizes = section_sizes(xr.DataArray(mask.astype(np.int8), dims=("z", "y", "x")), 1)
    assert sizes.largest_share == (36 + 52 + 52) / (3 * 52)
    one = section_sizes(xr.DataArray(np.ones((1, 6, 6), np.int8), dims=("sample", "y", "x")), 1)
    assert one.largest_share == 1.0


def test_the_fast_local_thickness_equals_the_first_implementation():
    import porespy as ps

    from micro_doe.platform.descriptors.sizes import _legacy_local_thickness

    masks = [~ps.generators.blobs(list(shape), porosity=p, blobiness=b, seed=seed)
             for seed in range(3) for shape, p, b in (((24, 24, 24), 0.7, 1.0), ((20, 31, 17), 0.5, 2.0))]  # fmt: skip
    masks += [np.ones((8, 9, 10), bool), np.zeros((5, 5, 5), bool), np.random.default_rng(0).random((12, 12, 12)) > 0.3]
    # Wide features (radii past SMALL_RADIUS, where the per-section transforms take over), and
    # sections that are all phase or none beside ordinary ones.
    wide = ~ps.generators.blobs([6, 48, 40], porosity=0.2, blobiness=0.4, seed=4)
    wide[1], wide[3] = True, False
    masks.append(wide)
    for mask in masks:
        for axis in (None, 0, 1, 2):
            assert np.array_equal(local_thickness(mask, axis), _legacy_local_thickness(mask, axis)), (mask.shape, axis)
    image = ~ps.generators.blobs([40, 40], porosity=0.6, seed=1)
    for axis in (None, 0, 1):  # a 2D image cut into lines, too
        assert np.array_equal(local_thickness(image, axis), _legacy_local_thickness(image, axis)), axis


def test_a_stride_measures_every_kth_section_and_describe_strides_only_large_volumes() -> None:
    from micro_doe.platform.descriptors.sizes import default_section_stride

    vol = make_volume(ball((16, 16, 16), (8, 8, 8), 5).astype(np.int8))
    every_2nd = section_sizes(vol, stride=2)
    assert every_2nd.sections == 24  # sections 0, 2, …, 14 along each axis
    # the disks of sections 4, 6, 8, 10 and 12 along each axis (the ball spans sections 4–12)
    assert every_2nd.components_per_kpx == pytest.approx(1000 * 3 * 5 / (3 * 8 * 16**2))
    by_hand = [vol.values[::2] == 1, vol.values[:, ::2] == 1, vol.values[:, :, ::2] == 1]  # the kept sections, axis by axis
    assert every_2nd.diameter_mean == pytest.approx(np.mean(np.concatenate(
        [equivalent_diameters(m, section_axis=a) for a, m in enumerate(by_hand)])))
    assert section_sizes(vol, stride=2, workers=3) == every_2nd
    with pytest.raises(ValueError, match="stride must be at least 1"):
        section_sizes(vol, stride=0)
    assert [default_section_stride((n, n, n)) for n in (32, 64, 127, 128, 200, 256)] == [1, 1, 1, 2, 3, 4]
    assert default_section_stride((256, 256, 64)) == 1  # the shortest edge decides
    assert describe(vol, tortuosity_axis=None).sizes == section_sizes(vol)  # small volumes: every section
    assert describe(vol, tortuosity_axis=None, section_stride=2, workers=2).sizes == every_2nd
