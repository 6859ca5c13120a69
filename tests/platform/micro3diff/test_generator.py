from __future__ import annotations

import shutil

import numpy as np
import pytest

from micro_doe.platform.micro3diff.generator import Micro3DiffGenerator, SamplingSettings
from micro_doe.platform.volumes import generator_params, stack_volumes


@pytest.fixture(scope="module")
def generator(tiny_bundle):
    return Micro3DiffGenerator(tiny_bundle, device="cpu")


def test_volumes_carry_their_settings_and_are_reproducible(generator):
    settings = SamplingSettings(n_h=1, steps=3)
    first, second = generator.sample(2, settings, seed=5)
    assert first.dims == ("z", "y", "x") and first.shape == (16, 16, 16) and first.dtype == np.int8
    params = generator_params(first)
    assert params["n_h"] == 1 and params["steps"] == 3 and params["variant"] == "paper" and params["seconds"] > 0
    assert first.attrs["seed"] == 5 and second.attrs["seed"] == 6
    again = generator.sample(1, settings, seed=6)[0]
    np.testing.assert_array_equal(again.values, second.values)
    assert not np.array_equal(first.values, second.values)


def test_passes_follow_n_h_and_steps(generator):
    for n_h, steps in [(0, 2), (2, 3)]:
        seen = []
        generator.sample(1, SamplingSettings(n_h=n_h, steps=steps), on_pass=seen.append)
        assert len(seen) == (n_h + 1) * steps == generator.passes_per_volume(SamplingSettings(n_h=n_h, steps=steps))


def test_unset_settings_take_the_bundle_defaults(generator):
    defaults = generator.bundle.config.sampling
    resolved = SamplingSettings(steps=7).resolved(defaults)
    assert resolved.steps == 7 and resolved.n_h == defaults.n_h and resolved.variance == "beta"
    with pytest.raises(ValueError, match="variant: expected one of"):
        SamplingSettings(variant="magic").resolved(defaults)
    with pytest.raises(ValueError, match="at most the model's T = 1000"):
        generator.sample(1, SamplingSettings(steps=2000))


def test_stacking_volumes_keeps_their_seeds(generator):
    volumes = generator.sample(2, SamplingSettings(n_h=0, steps=2), seed=0)
    stacked = stack_volumes(volumes)
    assert stacked.dims == ("sample", "z", "y", "x") and list(stacked.attrs["seeds"]) == [0, 1]
    assert stack_volumes(volumes[:1]) is volumes[0]
    unseeded = [v.copy() for v in volumes]
    del unseeded[1].attrs["seed"]
    assert "seeds" not in stack_volumes(unseeded).attrs and "seed" not in stack_volumes(unseeded).attrs


def test_a_diverged_model_raises_a_generation_error(tmp_path, tiny_bundle):
    import torch

    from micro_doe.platform.bundles import GenerationError

    broken = shutil.copytree(tiny_bundle, tmp_path / "nan-model")
    state = torch.load(broken / "model.pt", weights_only=True)
    torch.save({k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in state.items()},
               broken / "model.pt")
    with pytest.raises(GenerationError, match="non-finite"):
        Micro3DiffGenerator(broken, device="cpu").sample(1, SamplingSettings(n_h=0, steps=2))


def test_batched_volumes_match_volumes_sampled_alone(generator):
    settings = SamplingSettings(n_h=1, steps=3, variant="anchored")
    batch = generator.sample(3, settings, seed=2, volumes_per_batch=2)
    for i, vol in enumerate(batch):
        alone = generator.sample(1, settings, seed=2 + i)[0]
        assert (alone.values == vol.values).mean() > 0.999  # float sums may flip a voxel at the threshold
        assert vol.attrs["seed"] == 2 + i


def test_vf_targets_steer_the_anchored_variant_within_the_documented_range(generator):
    train = generator.training_fractions()
    names = generator.bundle.config.phase_names
    key = f"vf_{names[1]}"
    lo, hi = (m * train[names[1]] for m in generator.bundle.config.vf_range)
    target = round(0.5 * (train[names[1]] + hi), 4)
    vol = generator.sample(1, SamplingSettings(n_h=0, steps=3, variant="anchored", targets={key: target}))[0]
    assert generator_params(vol)["target_fractions"] == {names[1]: target}
    assert generator.target_fractions({key: target}) == pytest.approx({names[1]: target, names[0]: 1 - target})
    with pytest.raises(ValueError, match=r"outside the range .*allow extrapolation"):
        generator.sample(1, SamplingSettings(n_h=0, steps=2, variant="anchored", targets={key: min(0.99, hi + 0.05)}))
    assert generator.target_fractions({key: min(0.99, hi + 0.05)}, allow_extrapolation=True)
    with pytest.raises(ValueError, match="not a phase"):
        generator.target_fractions({"vf_nothing": 0.2})
    with pytest.raises(ValueError, match="steers no volume fraction"):
        generator.sample(1, SamplingSettings(n_h=0, steps=2, variant="paper", targets={key: target}))


def test_vf_spread_draws_each_volumes_target_from_its_own_seed(generator):
    s = SamplingSettings(n_h=0, steps=2, variant="anchored", vf_spread=True).resolved(generator.bundle.config.sampling)
    fractions = generator.target_fractions({})
    a = generator.volume_targets(s, fractions, [0, 1, 2, 3])
    assert generator.volume_targets(s, fractions, [2]) == [a[2]]
    assert len({t["inclusion"] for t in a}) == 4 and all(sum(t.values()) == pytest.approx(1) for t in a)
    assert generator.volume_targets(s.model_copy(update={"vf_spread": False}), fractions, [0, 1]) == [fractions] * 2


def test_calibration_anchors_where_the_measured_vf_comes_out_on_target(generator):
    train = generator.training_fractions()["inclusion"]
    s = SamplingSettings(n_h=0, steps=2, variant="anchored", calibrate=True).resolved(generator.bundle.config.sampling)
    targets = [generator._with_fraction(generator.training_fractions(), train)]
    assert generator.anchors(s, targets)[0].fractions == (pytest.approx(train),)  # no calibration in the bundle
    generator.bundle.config.vf_calibration = [(0.10, 0.08), (0.20, 0.17)]  # anchored at 0.2, 0.17 came out
    try:
        assert generator.anchors(s, [{"matrix": 0.83, "inclusion": 0.17}])[0].fractions == (pytest.approx(0.20),)
        assert generator.anchors(s, [{"matrix": 0.875, "inclusion": 0.125}])[0].fractions == (pytest.approx(0.15),)
        vol = generator.sample(1, SamplingSettings(n_h=0, steps=2, variant="anchored", calibrate=True,
                                                   targets={"vf_inclusion": 0.125}))[0]  # fmt: skip
        params = generator_params(vol)
        assert params["target_fractions"] == {"inclusion": 0.125} and params["anchor_fractions"] == {"inclusion": 0.15}
    finally:
        generator.bundle.config.vf_calibration = []


def test_any_cube_edge_the_unet_takes(tiny_bundle, monkeypatch):
    import micro_doe.platform.memory as memory
    from micro_doe.platform.micro3diff.generator import Micro3DiffGenerator, SamplingSettings

    generator = Micro3DiffGenerator(tiny_bundle, device="cpu")
    quick = SamplingSettings(n_h=0, steps=2)
    (volume,) = generator.sample(1, quick, seed=0, size=24)
    assert volume.shape == (24, 24, 24)
    # The same seed at the training size is the same as before (the default is unchanged).
    assert generator.sample(1, quick, seed=0)[0].shape == (16, 16, 16)
    assert generator.slices_per_pass(16) == 64 and generator.slices_per_pass(32) == 16
    assert generator.memory_estimate(64, 1, 4) > generator.memory_estimate(32, 1, 4) > 0
    with pytest.raises(ValueError, match="≥ 16, the side of the model's training images"):
        generator.sample(1, quick, size=8)
    with pytest.raises(ValueError, match="a multiple of 2"):
        generator.sample(1, quick, size=23)
    monkeypatch.setattr(memory, "available_memory", lambda: 10_000_000)  # 10 MB available
    with pytest.raises(memory.InsufficientMemoryError, match=r"size 256: needs about .* this machine has 10.0 MB"):
        generator.sample(1, quick, size=256)


def test_check_size_is_the_one_size_and_memory_check(generator):
    from micro_doe.platform.memory import InsufficientMemoryError

    edge, slices = generator.check_size(None, n=2)
    assert edge == generator.size and slices == generator.slices_per_pass(edge)
    assert generator.check_size(2 * generator.size, n=1, batch_size=5) == (2 * generator.size, 5)
    with pytest.raises(InsufficientMemoryError, match=r"size 4096: needs about"):
        generator.check_size(4096, n=1)
    with pytest.raises(InsufficientMemoryError):  # sample() refuses it the same way, before any pass
        generator.sample(1, SamplingSettings(n_h=0, steps=2), size=4096)


def test_the_spectral_variant_anchors_to_the_recorded_autocovariance(tiny_bundle, tmp_path, sphere_slices):
    import shutil

    from micro_doe.platform.micro3diff.training_data import image_autocovariance
    from micro_doe.studies.tuning.held_out import update_config

    generator = Micro3DiffGenerator(tiny_bundle, device="cpu")
    curves = generator.bundle.config.autocovariance
    assert curves is not None and len(curves) == 1 and len(curves[0]) == 16 // 2 + 1 and curves[0][0] == pytest.approx(1)
    # Recorded by training: the autocovariance of the images it trained on (all 40 z-slices here).
    np.testing.assert_allclose(curves, image_autocovariance(sphere_slices.rename(z="sample"), 2))
    spectral = SamplingSettings(variant="spectral", n_h=0, steps=3)
    volume = generator.sample(1, spectral, seed=3)[0]
    anchored = generator.sample(1, spectral.model_copy(update={"variant": "anchored"}), seed=3)[0]
    assert generator_params(volume)["variant"] == "spectral" and (volume.values != anchored.values).any()
    assert generator.sample(1, spectral, seed=3, size=24)[0].shape == (24, 24, 24)  # its target at any N

    older = tmp_path / "older"
    shutil.copytree(tiny_bundle, older)
    update_config(older, autocovariance=None)  # a bundle trained before it was recorded
    with pytest.raises(ValueError, match="variant 'spectral': .* records no autocovariance .* --training-data"):
        Micro3DiffGenerator(older, device="cpu").check(spectral)  # refused before anything samples


def test_hysteresis_decoding_grows_the_phase_to_its_target_and_takes_two_phases_only(generator):
    names = generator.bundle.config.phase_names
    target = generator.training_fractions()[names[1]]
    plain = SamplingSettings(n_h=0, steps=3, variant="anchored")
    sign, grown = (generator.sample(1, plain.model_copy(update={"decode": d}), seed=5)[0] for d in ("sign", "hysteresis"))
    vf, voxels = float((grown.values == 1).mean()), grown.values.size
    assert generator_params(grown)["decode"] == "hysteresis" and generator_params(grown)["target_fractions"] == {names[1]: round(target, 6)}
    by_sign = float((sign.values == 1).mean())
    grows = by_sign < target  # phase 1 grows up to the target, else phase 0 grows and phase 1 keeps at least it
    assert vf <= round(target * voxels) / voxels if grows else vf >= 1 - round((1 - target) * voxels) / voxels
    assert abs(vf - target) < abs(by_sign - target)
    with pytest.raises(ValueError, match="'hysteresis' grows one phase of two"):
        Micro3DiffGenerator("pretrained:ternary-blend-32").sample(1, SamplingSettings(decode="hysteresis", n_h=0, steps=2))


def test_a_default_precision_the_cpu_emulates_samples_in_fp32_and_an_asked_one_is_kept(tiny_bundle, tmp_path, caplog, monkeypatch):
    from micro_doe.platform.bundles import update_sampling_defaults
    from micro_doe.platform.diffusion import precision
    from micro_doe.platform.diffusion.precision import default_precision, native_precisions

    monkeypatch.setattr(precision, "_warned", set())
    bundle = shutil.copytree(tiny_bundle, tmp_path / "bf16-default")
    generator = Micro3DiffGenerator(bundle, device="cpu")
    update_sampling_defaults(bundle, generator.bundle.config.sampling.model_copy(update={"precision": "bf16"}))
    generator = Micro3DiffGenerator(bundle, device="cpu")
    with caplog.at_level("WARNING", logger="micro_doe.platform.diffusion.precision"):
        default = generator.sample(1, SamplingSettings(n_h=0, steps=2), seed=1)[0]
        asked = generator.sample(1, SamplingSettings(n_h=0, steps=2, precision="bf16"), seed=1)[0]
    emulated = default_precision("bf16", native_precisions("cpu")) == "fp32"
    assert generator_params(default)["precision"] == ("fp32" if emulated else "bf16")
    assert generator_params(asked)["precision"] == "bf16"
    said = [r.getMessage() for r in caplog.records]
    assert any("its default precision bf16 is not native" in m and "samples in fp32" in m for m in said) == emulated
    assert any("precision bf16 is not native" in m and "runs emulated" in m for m in said) == emulated
