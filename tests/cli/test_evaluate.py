from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from micro_doe.cli.app import main
from micro_doe.platform.volumes import make_volume, write_netcdf


def run_cli(*args: str) -> int:
    with pytest.raises(SystemExit) as done:
        main(list(args))
    return int(done.value.code)


@pytest.fixture
def volume_file(tmp_path, blobs64):
    return write_netcdf(make_volume(blobs64[:24, :24, :24], phase_names=["solid", "pore"]), tmp_path / "v.nc")


def test_evaluate_prints_a_table_and_writes_json(tmp_path, volume_file, capsys):
    out = tmp_path / "d.json"
    assert run_cli("evaluate", str(volume_file), "--phase", "pore", "--json", str(out)) == 0
    printed = capsys.readouterr().out
    assert "vf[pore]" in printed and "tortuosity" in printed
    data = json.loads(out.read_text())
    assert data["phase_name"] == "pore" and len(data["s2"]["z"]) == 13


def test_bad_input_exits_2_with_one_line_and_no_traceback(tmp_path, volume_file):
    missing = subprocess.run(
        [sys.executable, "-m", "micro_doe.cli.app", "evaluate", str(tmp_path / "nope.nc")],
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 2
    assert "nope.nc: no such file" in missing.stderr and "Traceback" not in missing.stderr
    assert run_cli("evaluate", str(volume_file), "--phase", "ice") == 2
    assert run_cli("evaluate", str(volume_file), "--axis", "w") == 2
    assert run_cli("evaluate", str(volume_file), "--r-max", "500") == 2
    assert run_cli("evaluate") == 2  # missing argument: click's usage error


def test_help_lists_commands(capsys):
    assert run_cli("--help") == 0
    text = capsys.readouterr().out
    assert "evaluate" in text and "data" in text


def test_grey_image_without_threshold_is_refused(tmp_path, capsys):
    from PIL import Image

    Image.fromarray((4 * np.arange(64)).astype(np.uint8).reshape(8, 8)).save(tmp_path / "g.png")
    assert run_cli("evaluate", str(tmp_path / "g.png")) == 2
    assert "threshold" in capsys.readouterr().err
    assert run_cli("evaluate", str(tmp_path / "g.png"), "--threshold", "127", "--axis", "y") == 0


def test_images_and_stacks_are_described_without_tortuosity_by_default(tmp_path, blobs64, capsys):
    image = write_netcdf(make_volume(blobs64[0, :24, :24]), tmp_path / "image.nc")
    stack = write_netcdf(make_volume(blobs64[:6, :24, :24], dims=("sample", "y", "x")), tmp_path / "stack.nc")
    for path in (image, stack):
        out = tmp_path / f"{path.stem}.json"
        assert run_cli("evaluate", str(path), "--json", str(out)) == 0
        assert json.loads(out.read_text())["tortuosity"] is None and "tortuosity" not in capsys.readouterr().out
    assert run_cli("evaluate", str(image), "--axis", "z") == 2  # asked for: an image has no z
    assert "--axis z" in capsys.readouterr().err


def test_a_failure_that_is_no_input_error_exits_1_with_one_line_and_a_log(tmp_path, tiny_bundle, monkeypatch, capsys):
    import shutil

    import torch

    monkeypatch.setenv("MICRO_DOE_CACHE", str(tmp_path / "cache"))
    broken = shutil.copytree(tiny_bundle, tmp_path / "nan-model")  # a diverged model: NaN weights
    state = torch.load(broken / "model.pt", weights_only=True)
    torch.save({k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in state.items()},
               broken / "model.pt")
    out = tmp_path / "v.nc"
    assert run_cli("generate", str(broken), "--out", str(out), "--n-h", "0", "--steps", "2", "--device", "cpu") == 1
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]  # (after the progress bar)
    assert "non-finite" in line and "Traceback" not in err, err
    (log,) = (tmp_path / "cache" / "logs").iterdir()
    assert f"(traceback: {log})" in err and "GenerationError" in log.read_text()
    assert not out.exists()
