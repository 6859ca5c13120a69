from __future__ import annotations

import shutil

import pytest
import torch

from micro_doe.platform.bundles import BundleError, resolve_bundle_path, update_sampling_defaults
from micro_doe.platform.micro3diff.bundle import SamplingConfig, load_bundle, write_bundle


def test_unknown_references_name_what_exists(tmp_path):
    with pytest.raises(BundleError, match="no shipped model of that name; shipped models are"):
        resolve_bundle_path("pretrained:nope")
    with pytest.raises(BundleError, match="not a model bundle"):
        resolve_bundle_path(tmp_path)


def test_broken_bundles_are_reported_by_file(tmp_path, tiny_bundle):
    copy = shutil.copytree(tiny_bundle, tmp_path / "b")
    (copy / "model.pt").unlink()
    with pytest.raises(BundleError, match="model.pt is missing"):
        load_bundle(copy)
    (copy / "config.json").write_text("{not json")
    with pytest.raises(BundleError, match="config.json: invalid bundle config"):
        load_bundle(copy)


def test_weights_load_only_plain_tensors(tmp_path, tiny_bundle):
    copy = shutil.copytree(tiny_bundle, tmp_path / "b")
    torch.save({"payload": SamplingConfig()}, copy / "model.pt")  # an arbitrary pickled object
    with pytest.raises(BundleError, match="not a plain weights file"):
        load_bundle(copy)


def test_rewrite_is_atomic_and_defaults_update(tmp_path, tiny_bundle):
    bundle = load_bundle(tiny_bundle)
    target = tmp_path / "again"
    for again in (False, True):  # writing over an existing bundle (with overwrite) replaces it whole
        write_bundle(target, bundle.config, bundle.model.state_dict(), bundle.reference, "card", overwrite=again)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again"]
    update_sampling_defaults(target, SamplingConfig(n_h=3, steps=20, variant="average"))
    reloaded = load_bundle(target)
    assert reloaded.config.sampling.n_h == 3 and reloaded.config.sampling.variant == "average"
    for key, value in bundle.model.state_dict().items():
        torch.testing.assert_close(reloaded.model.state_dict()[key], value)


def test_shipped_bundles_are_complete_and_documented():
    from micro_doe.platform.bundles import load_examples, shipped_models

    assert {"spheres-32", "polycrystal-32", "ternary-blend-32"} <= set(shipped_models())
    for name, steps, phases in (("spheres-32", 5000, 2), ("polycrystal-32", 5000, 2), ("ternary-blend-32", 3500, 3)):
        bundle = load_bundle(f"pretrained:{name}")
        recipe = bundle.config.recipe
        assert bundle.config.image_size == 32 and recipe.steps == steps and recipe.data_params
        assert len(bundle.config.phase_names) == phases == bundle.config.unet.in_channels + (phases == 2)
        card = (bundle.path / "card.md").read_text()
        assert "wall time" in card and "final loss" in card and "S2 error rate" in card
        assert 0 < bundle.reference.volume_fraction < 1
        assert bundle.reference.sizes is not None and bundle.reference.sizes.thickness_mean > 1
        examples = load_examples(f"pretrained:{name}")  # training images, shown atop study montages
        assert examples.dims == ("sample", "y", "x") and examples.shape[1:] == (32, 32)
        assert examples.attrs["phase_names"] == bundle.config.phase_names
        assert abs(float((examples.values == 1).mean()) - bundle.reference.volume_fraction) < 0.15
