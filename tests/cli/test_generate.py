from __future__ import annotations

import json

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


def test_generate_with_targets_from_an_ldm_bundle(tmp_path, tiny_ldm_bundle, capsys):
    from micro_doe.platform.ldm.bundle import load_ldm_bundle

    config = load_ldm_bundle(tiny_ldm_bundle).config
    targets = [arg for name, value in config.condition_medians.items() for arg in ("--target", f"{name}={value}")]
    out = tmp_path / "opv.nc"
    assert run_cli("generate", str(tiny_ldm_bundle), *targets, "--n", "2", "--steps", "2", "--guidance", "2",
                   "--out", str(out)) == 0  # fmt: skip
    vols = read_volume(out)
    assert vols.shape == (2, 16, 16, 16) and generator_params(vols)["guidance"] == 2.0
    printed = capsys.readouterr().out
    assert "phi" in printed and "chi" in printed and "time" in printed  # the predicted recipe table
    lo, hi = config.label_ranges["vf_donor"]
    outside = [a if not a.startswith("vf_donor=") else f"vf_donor={hi + 0.1}" for a in targets]
    assert run_cli("generate", str(tiny_ldm_bundle), *outside, "--steps", "2", "--out", str(tmp_path / "x.nc")) == 2
    assert "outside the training range" in capsys.readouterr().err
    assert run_cli("generate", str(tiny_ldm_bundle), *outside, "--steps", "2", "--allow-extrapolation",
                   "--out", str(tmp_path / "x.nc")) == 0  # fmt: skip
    assert run_cli("generate", str(tiny_ldm_bundle), *targets, "--n-h", "1", "--out", str(tmp_path / "y.nc")) == 2
    assert "--n-h: not an option of" in capsys.readouterr().err


def test_verified_generation_from_the_command_line(tmp_path, tiny_ldm_bundle, capsys):
    from micro_doe.platform.ldm.bundle import load_ldm_bundle

    vf = load_ldm_bundle(tiny_ldm_bundle).config.condition_medians["vf_donor"]
    out = tmp_path / "v.nc"
    args = ("generate", str(tiny_ldm_bundle), "--target", f"vf_donor={vf}", "--steps", "2", "--n", "2")  # τ free
    assert run_cli(*args, "--tolerance", "1e-9", "--max-candidates", "3", "--batch-size", "4", "--out", str(out)) == 0
    captured = capsys.readouterr()
    assert "0/2 within tolerance, 6 candidates" in captured.err
    assert "measured (verified generation)" in captured.out and "candidates" in captured.out
    verification = json.loads(read_volume(out).attrs["verification"])
    assert [(v["met"], v["candidates"]) for v in verification] == [(False, 3), (False, 3)]
    assert run_cli(*args, "--tolerance", "1.0", "--out", str(tmp_path / "w.nc")) == 0
    assert "2/2 within tolerance, 2 candidates" in capsys.readouterr().err
    corrected = tmp_path / "c.nc"
    assert run_cli(*args, "--tolerance", "1e-9", "--max-candidates", "8", "--correct-requests", "--out",
                   str(corrected)) == 0  # fmt: skip
    rounds = [(v["rounds"], v["candidates"]) for v in json.loads(read_volume(corrected).attrs["verification"])]
    assert rounds == [(2, 8), (2, 8)]  # two rounds of 4 candidates, the second at a corrected request
    default = tmp_path / "d.nc"  # no option: verified with the default tolerance and candidates
    assert run_cli(*args, "--out", str(default)) == 0
    assert "within tolerance" in capsys.readouterr().err and "verification" in read_volume(default).attrs
    raw = tmp_path / "r.nc"
    assert run_cli(*args, "--no-verify", "--out", str(raw)) == 0
    assert "within tolerance" not in capsys.readouterr().err and "verification" not in read_volume(raw).attrs
    assert run_cli(*args, "--no-verify", "--tolerance", "0.1", "--out", str(tmp_path / "x.nc")) == 2
    assert "--no-verify: conflicts with --tolerance" in capsys.readouterr().err and not (tmp_path / "x.nc").exists()


def test_micro3diff_rejects_ldm_options(tmp_path, tiny_bundle, capsys):
    assert run_cli("generate", str(tiny_bundle), "--target", "vf=0.3", "--out", str(tmp_path / "g.nc")) == 2
    assert "target vf: not a phase of" in capsys.readouterr().err  # --target is the anchored variant's vf
    assert run_cli("generate", str(tiny_bundle), "--no-verify", "--out", str(tmp_path / "g.nc")) == 2
    assert "--no-verify: not an option of" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("name", ["spheres-32", "polycrystal-32", "ternary-blend-32"])
def test_shipped_models_generate_on_a_fresh_install(tmp_path, name):
    out = tmp_path / "vol.nc"
    assert run_cli("generate", f"pretrained:{name}", "--n-h", "0", "--steps", "2", "--out", str(out), "--no-show") == 0
    vol = read_volume(out)
    assert vol.shape == (32, 32, 32) and vol.attrs["source"] == f"micro3diff:{name}"


def test_the_shipped_ldm_generates_what_was_asked(tmp_path, capsys):
    from micro_doe.platform.ldm.bundle import load_ldm_bundle

    medians = load_ldm_bundle("pretrained:opv-32").config.condition_medians
    targets = [arg for name, value in medians.items() for arg in ("--target", f"{name}={value:.4f}")]
    out = tmp_path / "opv.nc"
    assert run_cli("generate", "pretrained:opv-32", *targets, "--n", "2", "--steps", "20", "--out", str(out)) == 0
    vols = read_volume(out)
    assert vols.shape == (2, 32, 32, 32) and vols.attrs["phase_names"] == ["acceptor", "donor"]
    measured = float((vols == 1).mean())
    assert abs(measured - medians["vf_donor"]) < 0.1, (measured, medians["vf_donor"])  # a trained model hits its target


def test_generate_micro3diff_at_a_vf_target(tmp_path, tiny_bundle, capsys):
    out = tmp_path / "vf.nc"
    args = ("generate", str(tiny_bundle), "--steps", "2", "--n-h", "0", "--precision", "bf16")
    assert run_cli(*args, "--target", "vf_inclusion=0.2", "--out", str(out)) == 0
    params = generator_params(read_volume(out))
    assert params["variant"] == "anchored" and params["target_fractions"] == {"inclusion": 0.2}
    assert params["precision"] == "bf16"
    assert run_cli(*args, "--target", "vf_inclusion=0.6", "--out", str(tmp_path / "far.nc")) == 2
    assert "outside the range" in capsys.readouterr().err and not (tmp_path / "far.nc").exists()
    assert run_cli(*args, "--target", "vf_inclusion=0.6", "--allow-extrapolation", "--out", str(tmp_path / "far.nc")) == 0
    assert run_cli(*args, "--guidance", "2", "--out", str(tmp_path / "g.nc")) == 2
    assert "--guidance: not an option" in capsys.readouterr().err


def test_generate_decodes_as_asked_and_refuses_hysteresis_for_three_phases(tmp_path, tiny_bundle, capsys):
    args = ("generate", str(tiny_bundle), "--steps", "2", "--n-h", "0", "--variant", "anchored")
    assert run_cli(*args, "--decode", "hysteresis", "--out", str(tmp_path / "h.nc")) == 0
    assert generator_params(read_volume(tmp_path / "h.nc"))["decode"] == "hysteresis"
    assert run_cli(*args, "--decode", "threshold", "--out", str(tmp_path / "bad.nc")) == 2
    assert "--decode" in capsys.readouterr().err
    three = ("generate", "pretrained:ternary-blend-32", "--steps", "2", "--n-h", "0", "--decode", "hysteresis")
    assert run_cli(*three, "--out", str(tmp_path / "three.nc")) == 2
    err = capsys.readouterr().err
    assert "--decode: 'hysteresis' grows one phase of two" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h.nc"]
