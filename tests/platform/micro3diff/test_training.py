from __future__ import annotations

import json
import re

import pytest
import torch

from micro_doe.platform.micro3diff.bundle import Micro3DiffConfig, load_bundle
from micro_doe.platform.micro3diff.training import TrainConfig, train_micro3diff
from micro_doe.platform.micro3diff.unet import UNetConfig
from micro_doe.platform.volumes import make_volume

TINY = UNetConfig(base_channels=8, channel_mults=(1, 2), groups=4)


def tiny_config(**overrides) -> TrainConfig:  # type: ignore[no-untyped-def]
    defaults = {"steps": 10, "batch_size": 4, "checkpoint_every": 5, "unet": TINY, "quality_images": 0}
    return TrainConfig(**(defaults | overrides))


def test_bundle_holds_config_weights_reference_and_card(tiny_bundle, sphere_slices):
    assert sorted(p.name for p in tiny_bundle.iterdir()) == ["card.md", "config.json", "examples.nc", "model.pt", "reference.nc"]
    config = Micro3DiffConfig.model_validate_json((tiny_bundle / "config.json").read_text())
    assert config.image_size == 16 and config.phase_names == ["matrix", "inclusion"]
    assert config.recipe.steps == 12 and config.recipe.data_seed == 1 and config.recipe.n_images == 40
    assert config.noise_schedule().T == 1000
    bundle = load_bundle(tiny_bundle)
    assert not bundle.model.training
    assert bundle.reference.volume_fraction == pytest.approx(float((sphere_slices == 1).mean()))
    card = (tiny_bundle / "card.md").read_text()
    assert "12 steps" in card and "final loss" in card and "S2 error rate" in card
    assert tiny_bundle.with_name("tiny.checkpoint.pt").exists()


def test_resume_continues_exactly_where_training_stopped(tmp_path, sphere_slices):
    straight = train_micro3diff(sphere_slices, tmp_path / "a", tiny_config(steps=10), device="cpu", progress=False)
    train_micro3diff(sphere_slices, tmp_path / "b", tiny_config(steps=5), device="cpu", progress=False)
    resumed = train_micro3diff(
        sphere_slices, tmp_path / "b", tiny_config(steps=10), resume=True, overwrite=True, device="cpu", progress=False
    )
    a = torch.load(straight / "model.pt", weights_only=True)
    b = torch.load(resumed / "model.pt", weights_only=True)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    # The card's check is no part of the recipe: it may change on resume (zero steps to go here).
    train_micro3diff(sphere_slices, tmp_path / "b", tiny_config(steps=10, quality_images=2), resume=True, overwrite=True,
                     device="cpu", progress=False)  # fmt: skip
    with pytest.raises(ValueError, match="different recipe"):
        train_micro3diff(sphere_slices, tmp_path / "b", tiny_config(lr=1e-3), resume=True, overwrite=True, device="cpu",
                         progress=False)
    with pytest.raises(ValueError, match="pass --overwrite"):  # the bundle of the first run is never replaced silently
        train_micro3diff(sphere_slices, tmp_path / "b", tiny_config(steps=12), resume=True, device="cpu", progress=False)
    (tmp_path / "b2.checkpoint.pt").write_bytes((tmp_path / "b.checkpoint.pt").read_bytes())
    with pytest.raises(ValueError, match="pass --resume to continue it or --overwrite"):  # an earlier run's checkpoint
        train_micro3diff(sphere_slices, tmp_path / "b2", tiny_config(steps=12), device="cpu", progress=False)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train_micro3diff(sphere_slices, tmp_path / "c", tiny_config(), resume=True, device="cpu", progress=False)


def test_bf16_training_continues_an_fp32_piece_and_is_recorded(tmp_path, sphere_slices):
    # 5 fp32 steps, then 5 under bf16 autocast (precision may change on resume), against 10 fp32
    # steps straight: the same run but for the last 5 steps' arithmetic.
    straight = train_micro3diff(sphere_slices, tmp_path / "a", tiny_config(steps=10), device="cpu", progress=False)
    train_micro3diff(sphere_slices, tmp_path / "b", tiny_config(steps=5), device="cpu", progress=False)
    mixed = train_micro3diff(sphere_slices, tmp_path / "b", tiny_config(steps=10, precision="bf16"), resume=True,
                             overwrite=True, device="cpu", progress=False)
    a = torch.load(tmp_path / "a.checkpoint.pt", weights_only=True)["model"]  # trained weights, not the EMA's
    b = torch.load(tmp_path / "b.checkpoint.pt", weights_only=True)["model"]
    assert all(b[k].dtype == a[k].dtype for k in a)  # the weights stay fp32
    assert max(float((a[k] - b[k]).abs().max()) for k in a if a[k].is_floating_point()) > 1e-5  # resume noise: 1e-6
    config = Micro3DiffConfig.model_validate_json((mixed / "config.json").read_text())
    assert config.recipe.precision == "bf16" and "bf16 forward" in (mixed / "card.md").read_text()
    assert Micro3DiffConfig.model_validate_json((straight / "config.json").read_text()).recipe.precision == "fp32"


def test_three_phase_images_train_as_one_hot_channels(tmp_path, rng):
    stack = make_volume(rng.integers(0, 3, (6, 8, 8)), dims=("sample", "y", "x"), phase_names=["a", "b", "c"])
    bundle = train_micro3diff(stack, tmp_path / "k3", tiny_config(steps=2), device="cpu", progress=False)
    assert json.loads((bundle / "config.json").read_text())["unet"]["in_channels"] == 3


def test_held_out_images_are_set_aside_recorded_and_described(tmp_path, sphere_slices):
    from micro_doe.platform.bundles import load_held_out

    bundle = train_micro3diff(sphere_slices, tmp_path / "h", tiny_config(steps=2, held_out=0.1), device="cpu", progress=False)
    config = Micro3DiffConfig.model_validate_json((bundle / "config.json").read_text())
    assert config.held_out is not None and (config.held_out.first, config.held_out.n_images) == (36, 4)
    assert config.recipe.n_images == 36  # trained on the other 36 of 40
    held = load_held_out(bundle)
    assert held.volume_fraction == pytest.approx(float((sphere_slices.values[36:] == 1).mean()))
    assert load_bundle(bundle).reference.volume_fraction == pytest.approx(float((sphere_slices.values[:36] == 1).mean()))
    assert 0.0 < held.sizes.largest_share <= 1.0
    assert "images 36–39 of the data, never trained on" in (bundle / "card.md").read_text()
    with pytest.raises(ValueError, match="too few to set 4 aside"):
        train_micro3diff(sphere_slices.isel(z=slice(0, 18)), tmp_path / "few", tiny_config(held_out=0.1), device="cpu",
                         progress=False)
    assert not (tmp_path / "few").exists() and not (tmp_path / "few.checkpoint.pt").exists()


def test_an_interrupt_writes_a_checkpoint_that_resumes_exactly(tmp_path, sphere_slices):
    import os
    import signal

    from micro_doe.platform.interrupts import interrupts_raise
    from micro_doe.platform.micro3diff.training import TrainingInterrupted

    straight = train_micro3diff(sphere_slices, tmp_path / "a", tiny_config(steps=8, checkpoint_every=100), device="cpu",
                                progress=False)

    def sigterm_at_step_3(step: int, loss: float) -> None:
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    with interrupts_raise(), pytest.raises(TrainingInterrupted, match="stopped at step 3 of 8"):
        train_micro3diff(sphere_slices, tmp_path / "b", tiny_config(steps=8, checkpoint_every=100), device="cpu",
                         progress=False, on_log=sigterm_at_step_3)
    assert torch.load(tmp_path / "b.checkpoint.pt", weights_only=True)["step"] == 3 and not (tmp_path / "b").exists()
    resumed = train_micro3diff(sphere_slices, tmp_path / "b", tiny_config(steps=8, checkpoint_every=100), resume=True,
                               device="cpu", progress=False)
    a = torch.load(straight / "model.pt", weights_only=True)
    b = torch.load(resumed / "model.pt", weights_only=True)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    # A resume with nothing left to do reports the loss it stopped at, never nan.
    again = train_micro3diff(sphere_slices, tmp_path / "b", tiny_config(steps=8, checkpoint_every=100), resume=True,
                             overwrite=True, device="cpu", progress=False)
    card = (again / "card.md").read_text()
    assert re.search(r"final loss \(running mean\): \d+\.\d{4}\n", card), card


def test_training_progress_reads_in_a_log_file(tmp_path, sphere_slices):
    import subprocess
    import sys

    from micro_doe.platform.volumes import write_netcdf

    data = write_netcdf(sphere_slices, tmp_path / "s.nc")
    argv = [sys.executable, "-m", "micro_doe.cli.app", "train", "micro3diff", "--data", str(data), "--out",
            str(tmp_path / "m"), "--steps", "4", "--base-channels", "8", "--channel-mults", "1,2", "--quality-images", "0",
            "--no-tune", "--threads", "1"]
    with open(tmp_path / "train.log", "w") as log:  # stderr is a file, not a terminal
        proc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=log, timeout=300)
    text = (tmp_path / "train.log").read_text()
    assert proc.returncode == 0, text
    assert "training m: step 4/4 (100 %), loss" in text and "min left" in text
    assert "(1 threads)" in (tmp_path / "m" / "card.md").read_text()


def test_sigterm_during_train_writes_a_checkpoint_and_says_so(tmp_path, sphere_slices):
    import signal
    import subprocess
    import sys
    import time

    from micro_doe.platform.volumes import write_netcdf

    data = write_netcdf(sphere_slices, tmp_path / "s.nc")
    argv = [sys.executable, "-m", "micro_doe.cli.app", "train", "micro3diff", "--data", str(data), "--out",
            str(tmp_path / "m"), "--steps", "2000", "--batch-size", "4", "--base-channels", "8", "--channel-mults", "1,2",
            "--quality-images", "0", "--no-tune", "--held-out", "0", "--threads", "1"]
    with open(tmp_path / "train.log", "w") as log:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + 240
        while "step 100/2000" not in (tmp_path / "train.log").read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 143
    text = (tmp_path / "train.log").read_text()
    assert "interrupted (SIGTERM): training stopped at step" in text and "--resume" in text, text
    assert "Traceback" not in text
    step = torch.load(tmp_path / "m.checkpoint.pt", weights_only=True)["step"]
    assert 100 <= step < 2000 and not (tmp_path / "m").exists()


def test_the_card_check_samples_16_images_per_32_squared_of_image_area():
    from micro_doe.platform.micro3diff.training import quality_image_count

    assert [quality_image_count(None, n) for n in (16, 32, 48, 64, 128)] == [16, 16, 32, 64, 256]
    assert quality_image_count(0, 64) == 0 and quality_image_count(5, 64) == 5
