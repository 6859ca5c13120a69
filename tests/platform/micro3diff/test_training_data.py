from __future__ import annotations

import numpy as np
import pytest

from micro_doe.platform.micro3diff.training_data import load_training_data, split_held_out, training_images
from micro_doe.platform.volumes import make_volume, write_png


def test_training_images_shapes_and_errors(rng):
    volume = make_volume(rng.integers(0, 2, (5, 8, 8)))
    assert training_images(volume).dims == ("sample", "y", "x")
    with pytest.raises(ValueError, match="data make crops"):
        training_images(make_volume(rng.integers(0, 2, (8, 8))))
    with pytest.raises(ValueError, match="square"):
        training_images(make_volume(rng.integers(0, 2, (5, 8, 6))))
    stack = make_volume(rng.integers(0, 3, (2, 5, 8, 8)), dims=("sample", "z", "y", "x"), phase_names=["a", "b", "c"])
    images = training_images(stack)
    assert images.dims == ("sample", "y", "x") and images.shape == (10, 8, 8)
    assert np.array_equal(images.values[5:], stack.values[1]) and images.attrs["phase_names"] == ["a", "b", "c"]


def test_load_training_data_from_a_folder_and_by_cropping(tmp_path, rng):
    folder = tmp_path / "images"
    for i in range(3):
        write_png(make_volume((rng.random((8, 8)) < 0.5).astype(np.int8)), folder / f"{i}.png")
    assert load_training_data(folder).shape == (3, 8, 8)
    write_png(make_volume((rng.random((40, 50)) < 0.5).astype(np.int8)), tmp_path / "big.png")
    assert load_training_data(tmp_path / "big.png", crop_size=16, n_crops=7).shape == (7, 16, 16)
    with pytest.raises(ValueError, match="no .png"):
        load_training_data(_empty(tmp_path))


def test_held_out_crops_come_from_a_strip_no_training_crop_touches(tmp_path, rng):
    image = (rng.random((60, 50)) < 0.5).astype(np.int8)
    write_png(make_volume(image), tmp_path / "big.png")
    crops = load_training_data(tmp_path / "big.png", crop_size=16, n_crops=40, held_out=0.1, seed=3)
    train, held = split_held_out(crops, 0.1)
    assert held is not None and (train.sizes["sample"], held.sizes["sample"]) == (36, 4)
    strip = 60 - 16  # max(crop size, ⌈0.1 · 60⌉) rows at the bottom
    assert int(train["y0"].max()) + 16 <= strip and int(held["y0"].min()) >= strip
    for crop in held:  # the recorded corners are the crops' place in the whole image
        y0, x0 = int(crop["y0"]), int(crop["x0"])
        assert np.array_equal(crop.values, image[y0 : y0 + 16, x0 : x0 + 16])
    plain = load_training_data(tmp_path / "big.png", crop_size=16, n_crops=40, seed=3)  # nothing held out: anywhere
    assert int(plain["y0"].max()) + 16 > strip
    with pytest.raises(ValueError, match="--crop-size 32"):  # 60 rows hold no 32-row strip and a 32-px crop above it
        load_training_data(tmp_path / "big.png", crop_size=32, n_crops=40, held_out=0.1)


def _empty(tmp_path):  # type: ignore[no-untyped-def]
    (tmp_path / "empty").mkdir()
    return tmp_path / "empty"
