from __future__ import annotations

import numpy as np
import pytest

from micro_doe.cli.app import main
from micro_doe.platform.volumes import generator_params, make_volume, read_volume, write_png


def run_cli(*args: str) -> int:
    with pytest.raises(SystemExit) as done:
        main(list(args))
    return int(done.value.code)


def test_make_spheres_writes_a_seeded_volume(tmp_path):
    out = tmp_path / "s.nc"
    assert run_cli("data", "make", "spheres", "--shape", "24", "32", "32", "--mean-diameter", "8",
                   "--sd-diameter", "2", "--seed", "3", "--out", str(out)) == 0
    vol = read_volume(out)
    assert vol.dims == ("z", "y", "x") and vol.shape == (24, 32, 32)
    assert vol.attrs["seed"] == 3 and generator_params(vol)["mean_diameter"] == 8
    assert float((vol == 1).mean()) == pytest.approx(0.25, abs=0.01)


def test_make_polycrystal_and_cahn_hilliard(tmp_path):
    assert run_cli("data", "make", "polycrystal", "--n-images", "3", "--size", "32", "--out", str(tmp_path / "p.nc")) == 0
    grains = read_volume(tmp_path / "p.nc")
    assert grains.dims == ("sample", "y", "x") and grains.shape == (3, 32, 32)
    assert run_cli("data", "make", "cahn-hilliard-trajectory", "--shape", "16", "16", "16", "--steps", "20",
                   "--snapshot-every", "10", "--phases", "3", "--out", str(tmp_path / "ch.nc")) == 0
    ch = read_volume(tmp_path / "ch.nc")
    assert ch.dims == ("sample", "z", "y", "x") and ch.sizes["sample"] == 2


def test_make_crops_of_one_image(tmp_path, rng):
    write_png(make_volume((rng.random((80, 90)) < 0.4).astype(np.int8)), tmp_path / "big.png")
    assert run_cli("data", "make", "crops", "--image", str(tmp_path / "big.png"), "--n", "5", "--size", "32",
                   "--out", str(tmp_path / "c.nc")) == 0
    assert read_volume(tmp_path / "c.nc").shape == (5, 32, 32)


def test_bad_parameters_exit_2(tmp_path, capsys):
    assert run_cli("data", "make", "spheres", "--volume-fraction", "0.9", "--out", str(tmp_path / "x.nc")) == 2
    assert "--volume-fraction" in capsys.readouterr().err
    assert run_cli("data", "make", "cahn-hilliard-trajectory", "--phases", "4", "--out", str(tmp_path / "x.nc")) == 2
    assert not (tmp_path / "x.nc").exists()
