from __future__ import annotations

import numpy as np
import pytest

from micro_doe.platform.generators import Micro3DiffGenerator, SamplingSettings, stack_volumes
from micro_doe.platform.volumes import generator_params


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


def test_a_diverged_model_raises_a_generation_error(tmp_path, tiny_bundle):
    import shutil

    import torch

    from micro_doe.platform.generators import GenerationError

    broken = shutil.copytree(tiny_bundle, tmp_path / "nan-model")
    state = torch.load(broken / "model.pt", weights_only=True)
    torch.save({k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in state.items()},
               broken / "model.pt")
    with pytest.raises(GenerationError, match="non-finite"):
        Micro3DiffGenerator(broken, device="cpu").sample(1, SamplingSettings(n_h=0, steps=2))
