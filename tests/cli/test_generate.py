from __future__ import annotations

import pytest

from micro_doe.cli.app import main
from micro_doe.platform.volumes import generator_params, read_volume


def run_cli(*args: str) -> int:
    with pytest.raises(SystemExit) as done:
        main(list(args))
    return int(done.value.code)


def test_generate_writes_volumes(tmp_path, tiny_bundle, capsys):
    out = tmp_path / "g.nc"
    assert run_cli("generate", str(tiny_bundle), "--n", "2", "--n-h", "1", "--steps", "2", "--out", str(out)) == 0
    vols = read_volume(out)
    assert vols.dims == ("sample", "z", "y", "x") and vols.sizes["sample"] == 2
    assert generator_params(vols)["n_h"] == 1
    assert "vf[inclusion]" in capsys.readouterr().out


def test_generate_rejects_bad_requests(tmp_path, tiny_bundle, capsys):
    assert run_cli("generate", "pretrained:nope", "--out", str(tmp_path / "g.nc")) == 2
    assert "shipped models are" in capsys.readouterr().err
    assert run_cli("generate", str(tiny_bundle), "--n", "2", "--out", str(tmp_path / "g.tif")) == 2
    assert run_cli("generate", str(tiny_bundle), "--sampler", "euler", "--out", str(tmp_path / "g.nc")) == 2
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("name", ["spheres-32", "polycrystal-32"])
def test_shipped_models_generate_on_a_fresh_install(tmp_path, name):
    out = tmp_path / "vol.nc"
    assert run_cli("generate", f"pretrained:{name}", "--n-h", "0", "--steps", "2", "--out", str(out), "--no-show") == 0
    vol = read_volume(out)
    assert vol.shape == (32, 32, 32) and vol.attrs["source"] == f"micro3diff:{name}"
