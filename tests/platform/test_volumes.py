from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from micro_doe.platform.volumes import (
    VolumeError,
    atomic_path,
    generator_params,
    make_volume,
    phase_names,
    read_volume,
    write_netcdf,
    write_png,
    write_tiff,
    write_volume,
)


@pytest.fixture
def volume(rng):
    return make_volume(
        rng.integers(0, 3, (6, 7, 8)),
        phase_names=["acceptor", "donor", "mixed"],
        voxel_size=2.5,
        voxel_unit="nm",
        source="test",
        seed=7,
        params={"phi": 0.4, "chi": np.float32(2.5)},
    )


def test_netcdf_round_trip_is_lossless(tmp_path, volume):
    path = write_netcdf(volume, tmp_path / "sub" / "v.nc")
    back = read_volume(path)
    assert back.dtype == np.int8 and back.dims == ("z", "y", "x")
    np.testing.assert_array_equal(back.values, volume.values)
    assert phase_names(back) == ["acceptor", "donor", "mixed"]
    assert back.attrs["voxel_size"] == 2.5 and back.attrs["voxel_unit"] == "nm" and back.attrs["seed"] == 7
    assert generator_params(back) == {"phi": 0.4, "chi": 2.5}


def test_stacks_round_trip(tmp_path, rng):
    stack = make_volume(rng.integers(0, 2, (5, 9, 9)), dims=("sample", "y", "x"))
    back = read_volume(write_netcdf(stack, tmp_path / "s.nc"))
    assert back.dims == ("sample", "y", "x")
    np.testing.assert_array_equal(back.values, stack.values)


def test_tiff_export_and_import(tmp_path, volume):
    path = write_tiff(volume, tmp_path / "v.tif")
    np.testing.assert_array_equal(read_volume(path).values, volume.values)
    assert tifffile.imread(path).shape == (6, 7, 8)


def test_grey_images_need_an_explicit_rule(tmp_path):
    grey = np.array([[0, 100, 200], [200, 100, 0]], dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "g.png")
    with pytest.raises(VolumeError, match=r"g\.png.*threshold or a label map"):
        read_volume(tmp_path / "g.png")
    np.testing.assert_array_equal(read_volume(tmp_path / "g.png", threshold=150).values, grey > 150)
    mapped = read_volume(tmp_path / "g.png", label_map={0: 0, 100: 2, 200: 1})
    np.testing.assert_array_equal(mapped.values, [[0, 2, 1], [1, 2, 0]])
    with pytest.raises(VolumeError, match="no entry in the label map"):
        read_volume(tmp_path / "g.png", label_map={0: 0, 100: 1})


def test_binary_images_map_low_to_zero_high_to_one(tmp_path, rng):
    binary = (rng.random((10, 12)) < 0.5).astype(np.uint8) * 255
    Image.fromarray(binary).save(tmp_path / "b.png")
    np.testing.assert_array_equal(read_volume(tmp_path / "b.png").values, binary == 255)
    image = make_volume(binary == 255)
    back = read_volume(write_png(image, tmp_path / "out.png"))
    np.testing.assert_array_equal(back.values, image.values)


def test_npy_import(tmp_path, rng):
    labels = rng.integers(0, 2, (4, 5, 6))
    np.save(tmp_path / "a.npy", labels.astype(np.float64))
    np.testing.assert_array_equal(read_volume(tmp_path / "a.npy").values, labels)


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.array([[0.0, np.nan], [1.0, 0.0]]), "NaN"),
        (np.array([[0.0, 0.5], [1.0, 0.0]]), "non-integer"),
        (np.zeros(5), "2D image or 3D volume"),
        (np.full((3, 3), -1), r"labels range over \[-1, -1\]"),
    ],
)
def test_bad_arrays_are_rejected_by_name(tmp_path, array, message):
    path = tmp_path / "bad.npy"
    np.save(path, array)
    with pytest.raises(VolumeError, match=message) as err:
        read_volume(path)
    assert "bad.npy" in str(err.value)


def test_missing_unreadable_and_unknown_files(tmp_path):
    with pytest.raises(VolumeError, match="no such file"):
        read_volume(tmp_path / "missing.nc")
    (tmp_path / "junk.nc").write_bytes(b"not a netcdf file")
    with pytest.raises(VolumeError, match="junk.nc: not a readable NetCDF"):
        read_volume(tmp_path / "junk.nc")
    (tmp_path / "junk.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(VolumeError, match="junk.png: not a readable image"):
        read_volume(tmp_path / "junk.png")
    (tmp_path / "v.xyz").write_text("1")
    with pytest.raises(VolumeError, match="unknown format '.xyz'"):
        read_volume(tmp_path / "v.xyz")
    with pytest.raises(VolumeError, match="unknown output format"):
        write_volume(make_volume(np.zeros((2, 2))), tmp_path / "v.xyz")


def test_writes_are_atomic(tmp_path, volume):
    target = tmp_path / "v.nc"
    write_netcdf(volume, target)
    before = target.read_bytes()
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half-written")
            raise RuntimeError("crash mid-write")
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.nc"]  # no temporary left behind


def test_make_volume_validates_its_arguments():
    with pytest.raises(VolumeError, match="dims"):
        make_volume(np.zeros((2, 3)), dims=("z", "y", "x"))
    with pytest.raises(VolumeError, match="3 phases present but only 2"):
        make_volume(np.array([[0, 1, 2]]), phase_names=["a", "b"])
    with pytest.raises(VolumeError, match="voxel_size"):
        make_volume(np.zeros((2, 2)), voxel_size=0)


def test_a_bundle_never_replaces_what_micro_doe_did_not_write(tmp_path):
    from micro_doe.platform.volumes import OutputExistsError, atomic_directory

    def write(target, overwrite=False, text="new"):  # type: ignore[no-untyped-def]
        with atomic_directory(target, overwrite=overwrite) as staging:
            (staging / "config.json").write_text('{"kind": "micro3diff"}')
            (staging / "card.md").write_text(text)

    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "thesis.txt").write_text("years of work")
    with pytest.raises(OutputExistsError, match="not a micro-doe bundle"):
        write(folder, overwrite=True)  # not even with overwrite
    assert (folder / "thesis.txt").read_text() == "years of work" and len(list(folder.iterdir())) == 1
    (tmp_path / "afile").write_text("x")
    with pytest.raises(OutputExistsError, match="not a bundle folder"):
        write(tmp_path / "afile", overwrite=True)

    bundle = tmp_path / "bundle"
    write(bundle, text="first")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        write(bundle, text="second")
    assert (bundle / "card.md").read_text() == "first"
    write(bundle, overwrite=True, text="second")
    assert (bundle / "card.md").read_text() == "second"
    (tmp_path / "empty").mkdir()
    write(tmp_path / "empty")  # an empty folder holds nothing to lose
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "bundle", "empty", "results"]  # no staging left


def test_check_output_file_refuses_existing_files_unless_overwrite(tmp_path):
    from micro_doe.platform.volumes import OutputExistsError, check_output_file

    (tmp_path / "v.nc").write_text("x")
    with pytest.raises(OutputExistsError, match="--out .*v.nc: exists; pass --overwrite"):
        check_output_file(tmp_path / "v.nc")
    assert check_output_file(tmp_path / "v.nc", overwrite=True) == tmp_path / "v.nc"
    with pytest.raises(OutputExistsError, match="is a file, not a folder"):
        check_output_file(tmp_path / "v.nc" / "inner.nc")
    assert not (tmp_path / "new").exists() and check_output_file(tmp_path / "new" / "a.nc")
