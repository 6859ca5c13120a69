"""The conditional-LDM pipeline at tiny sizes: train (3 stages, resume), bundle, generate, recipe check, CLI.

One 16³ OPV data set (2 φ × 2 χ, 4 snapshots each: 12 training / 4 validation volumes) and
one bundle trained for a few steps per stage with tiny networks are shared by the module;
the tests check plumbing and exactness, not quality.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from ldm_fixtures import one_torch_thread
from ldm_fixtures import tiny_ldm_recipe as tiny  # the recipe of the tiny_ldm_bundle fixture

from micro_doe.cli.ldm import generate_ldm, parse_targets, train_ldm_command
from micro_doe.platform.bundles import BundleError
from micro_doe.platform.descriptors import volume_fraction
from micro_doe.platform.ldm.bundle import LDMConfig, load_ldm_bundle
from micro_doe.platform.ldm.dataset import split, trajectory_seed
from micro_doe.platform.ldm.generator import LDMGenerator, LDMSample
from micro_doe.platform.ldm.recipe import check_recipe, recipe_params
from micro_doe.platform.ldm.training import LDMTrainConfig, staging_dir, train_ldm
from micro_doe.platform.ldm.verify import DEFAULT_VERIFY, VerifySettings, candidate_seed, corrected_request
from micro_doe.platform.volumes import make_volume


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def dataset(tiny_opv_dataset) -> xr.Dataset:
    return tiny_opv_dataset


@pytest.fixture(scope="module")
def bundle(tiny_ldm_bundle) -> Path:
    return tiny_ldm_bundle


@pytest.fixture(scope="module")
def generator(bundle) -> LDMGenerator:
    return LDMGenerator(bundle, device="cpu")


def medians(generator: LDMGenerator) -> dict[str, float]:
    return dict(generator.bundle.config.condition_medians)


def _copy_staging(bundle: Path, to: Path) -> Path:
    shutil.copytree(staging_dir(bundle), staging_dir(to))
    return to


# ---------------------------------------------------------------- training and bundle


def test_all_stages_write_a_bundle_that_loads(bundle, dataset):
    assert sorted(p.name for p in bundle.iterdir()) == ["card.md", "config.json", "model.pt", "reference.nc"]
    config = LDMConfig.model_validate_json((bundle / "config.json").read_text())
    assert config.kind == "ldm" and config.volume_size == 16 and config.phase_names == ["acceptor", "donor"]
    assert config.conditioning == ["vf_donor", "tau_donor", "tau_acceptor"] and config.condition_on == "labels"
    assert config.fp.outputs == ("vf_donor", "tau_donor", "tau_acceptor", "interfacial_area", "phi", "chi", "log_time")
    assert config.condition_normaliser["inverse"] == ["tau_donor", "tau_acceptor"]
    assert config.noise_schedule().T == 1000 and config.noise_schedule().kind == "linear"
    assert config.latent_shape() == (2, 4, 4, 4) and config.latent_scale > 0
    assert config.label_ranges["vf_donor"] == pytest.approx(
        (float(split(dataset, "train")["vf_donor"].min()), float(split(dataset, "train")["vf_donor"].max()))
    )
    assert set(config.val_r2) == set(config.fp.outputs)
    assert config.recipe.data_config["snapshot_every"] == 20 and config.recipe.n_train == 12
    assert [config.stages[s].steps for s in ("vae", "fp", "ldm")] == [4, 4, 4]
    assert config.stages["fp"].upstream == config.stages["ldm"].upstream == config.stages["vae"].weights
    loaded = load_ldm_bundle(bundle)
    assert not (loaded.vae.training or loaded.fp.training or loaded.unet.training)
    assert loaded.reference.sizes["sample"] == 16 and "phase" not in loaded.reference
    card = (bundle / "card.md").read_text()
    assert all(f"- {s}:" in card for s in ("vae", "fp", "ldm")) and "validation R²" in card and "s/step" in card
    assert sorted(p.name for p in staging_dir(bundle).iterdir() if p.suffix == ".json") == ["fp.json", "ldm.json",
                                                                                             "vae.json"]


def _train_resumed(dataset, tmp_path, bundle, stage, steps):  # type: ignore[no-untyped-def]
    """Weights of ``stage`` trained 2·steps straight, and steps + steps with a resume."""
    kwargs = {stage: 2 * steps}
    a, b = tmp_path / "a", tmp_path / "b"
    if stage != "vae":
        _copy_staging(bundle, a), _copy_staging(bundle, b)
    train_ldm(dataset, a, tiny(**kwargs), stage=stage, device="cpu", progress=False)
    train_ldm(dataset, b, tiny(**{stage: steps}), stage=stage, device="cpu", progress=False)
    train_ldm(dataset, b, tiny(**kwargs), stage=stage, resume=True, overwrite=True, device="cpu", progress=False)
    load = lambda root: torch.load(staging_dir(root) / f"{stage}.pt", weights_only=True)  # noqa: E731
    summary = lambda root: json.loads((staging_dir(root) / f"{stage}.json").read_text())  # noqa: E731
    return load(a), load(b), summary(a), summary(b)


@pytest.mark.parametrize("stage", ["vae", "fp", "ldm"])
def test_resume_continues_exactly_where_training_stopped(dataset, tmp_path, bundle, stage):
    straight, resumed, sa, sb = _train_resumed(dataset, tmp_path, bundle, stage, 3)
    assert straight.keys() == resumed.keys()
    for key in straight:
        torch.testing.assert_close(straight[key], resumed[key], rtol=1e-5, atol=1e-6)
    assert sb["steps"] == 6 and sb["final_loss"] == pytest.approx(sa["final_loss"], rel=1e-5)
    assert sb["losses"] == pytest.approx(sa["losses"], rel=1e-5)


def test_an_interrupt_writes_a_checkpoint_that_resumes_exactly(dataset, tmp_path, bundle):
    import os
    import signal

    from micro_doe.platform.diffusion.training import TrainingInterrupted
    from micro_doe.platform.interrupts import interrupts_raise

    a, b = _copy_staging(bundle, tmp_path / "a"), _copy_staging(bundle, tmp_path / "b")
    train_ldm(dataset, a, tiny(ldm=6), stage="ldm", device="cpu", progress=False)

    def sigterm_at_step_3(stage: str, step: int, loss: float) -> None:
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    # Checkpoints fall every 2 steps here: the one at step 3 is the interrupt's own.
    with interrupts_raise(), pytest.raises(TrainingInterrupted, match="stopped at ldm step 3 of 6"):
        train_ldm(dataset, b, tiny(ldm=6), stage="ldm", device="cpu", progress=False, on_log=sigterm_at_step_3)
    assert torch.load(staging_dir(b) / "ldm.checkpoint.pt", weights_only=True)["step"] == 3
    assert json.loads((staging_dir(b) / "ldm.json").read_text())["steps"] == 4  # still the copied bundle's stage
    train_ldm(dataset, b, tiny(ldm=6), stage="ldm", resume=True, overwrite=True, device="cpu", progress=False)
    straight, resumed = (torch.load(staging_dir(root) / "ldm.pt", weights_only=True) for root in (a, b))
    for key in straight:
        torch.testing.assert_close(straight[key], resumed[key], rtol=1e-5, atol=1e-6)


def _with_precision(recipe, stage: str, precision: str):  # type: ignore[no-untyped-def]
    return recipe.model_copy(update={stage: getattr(recipe, stage).model_copy(update={"precision": precision})})


@pytest.mark.parametrize("stage", ["vae", "fp", "ldm"])
def test_bf16_training_continues_an_fp32_piece_and_changes_the_arithmetic(dataset, tmp_path, bundle, stage):
    # 3 fp32 steps, then 3 more under bf16 autocast (precision is not part of the checkpoint's
    # identity), against 6 fp32 steps straight: the same run but for the last 3 steps' arithmetic.
    fp32, mixed = tmp_path / "fp32", tmp_path / "mixed"
    if stage != "vae":
        _copy_staging(bundle, fp32), _copy_staging(bundle, mixed)
    train_ldm(dataset, fp32, tiny(**{stage: 6}), stage=stage, device="cpu", progress=False)
    train_ldm(dataset, mixed, tiny(**{stage: 3}), stage=stage, device="cpu", progress=False)
    train_ldm(dataset, mixed, _with_precision(tiny(**{stage: 6}), stage, "bf16"), stage=stage, resume=True,
              overwrite=True, device="cpu", progress=False)
    # The trained (not the EMA) weights, from the last checkpoint: an EMA of 0.995 hides 3 steps.
    a, b = (torch.load(staging_dir(root) / f"{stage}.checkpoint.pt", weights_only=True)["model"] for root in (fp32, mixed))
    summary = json.loads((staging_dir(mixed) / f"{stage}.json").read_text())
    assert summary["steps"] == 6 and summary["config"]["precision"] == "bf16" and math.isfinite(summary["final_loss"])
    assert summary["skipped_steps"] == 0  # every bf16 step stepped (the 2³ convolutions compute in fp32)
    assert all(b[k].dtype == a[k].dtype for k in a)  # the weights stay fp32
    change = max(float((a[k] - b[k]).abs().max()) for k in a if a[k].is_floating_point())
    assert change > 1e-5  # ten times a resumed fp32 run's differences (1e-6: test_resume_continues_...)


def test_resume_errors(dataset, tmp_path, bundle):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train_ldm(dataset, tmp_path / "none", tiny(), stage="vae", resume=True, device="cpu", progress=False)
    _copy_staging(bundle, tmp_path / "c")
    with pytest.raises(ValueError, match="different recipe"):
        train_ldm(dataset, tmp_path / "c", tiny(seed=1), stage="ldm", resume=True, device="cpu", progress=False)
    with pytest.raises(ValueError, match="beyond steps"):
        train_ldm(dataset, tmp_path / "c", tiny(ldm=2), stage="ldm", resume=True, device="cpu", progress=False)


def test_stages_must_share_their_vae_and_predictions_conditioning_trains(dataset, tmp_path, bundle):
    out = _copy_staging(bundle, tmp_path / "d")
    train_ldm(dataset, out, tiny(seed=3), stage="vae", device="cpu", progress=False)  # new VAE, stale FP
    with pytest.raises(ValueError, match="train stage 'fp' again"):
        train_ldm(dataset, out, tiny(seed=3), stage="ldm", device="cpu", progress=False)
    train_ldm(dataset, out, tiny(seed=3), stage="fp", device="cpu", progress=False)
    written = train_ldm(dataset, out, tiny(seed=3, condition_on="predictions"), stage="ldm", device="cpu",
                        progress=False, overwrite=True)
    config = LDMConfig.model_validate_json((written / "config.json").read_text())
    assert config.condition_on == "predictions" and config.stages["ldm"].extra["fp_weights"] == config.stages[
        "fp"].weights


def test_config_and_data_errors(dataset, tmp_path):
    with pytest.raises(ValueError, match="fp_outputs: must include"):
        LDMTrainConfig(conditioning=("vf_donor",), fp_outputs=("phi",))
    with pytest.raises(ValueError, match=r"labels \['nope'\] are not in the data set; available: \["):
        train_ldm(dataset, tmp_path / "e", tiny(conditioning=("nope",)), device="cpu", progress=False)
    with pytest.raises(ValueError, match="stage: expected one of"):
        train_ldm(dataset, tmp_path / "e", tiny(), stage="gan", device="cpu", progress=False)  # type: ignore[arg-type]


class Payload:
    """Any pickled object that is not a tensor or a plain container."""


def test_weights_load_only_as_plain_tensors(bundle, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(bundle, broken)
    state = torch.load(broken / "model.pt", weights_only=True)
    torch.save(state | {"fp": Payload()}, broken / "model.pt")
    with pytest.raises(BundleError, match="not a plain weights file"):
        load_ldm_bundle(broken)
    torch.save({"vae": state["vae"]}, broken / "model.pt")
    with pytest.raises(BundleError, match=r"expected a dict with keys \['vae', 'fp', 'ldm'\]"):
        load_ldm_bundle(broken)


# ---------------------------------------------------------------- generation


def test_generate_returns_volumes_and_predictions_reproducibly(generator):
    targets = medians(generator)
    samples = generator.generate(targets, n=2, steps=4, seed=0, verify=None)
    assert len(samples) == 2
    for s in samples:
        assert s.volume.dims == ("z", "y", "x") and s.volume.shape == (16, 16, 16) and s.volume.dtype == np.int8
        assert json.loads(s.volume.attrs["targets"]) == targets and s.volume.attrs["model"] == generator.model_ref
        assert json.loads(s.volume.attrs["settings"]) == {"steps": 4, "sampler": "ddpm", "guidance": 1.0,
                                                          "guidance_rescale": 0.0, "feature_guidance": 0.0}
        keys = set(generator.bundle.config.fp.outputs) | {"time"}
        assert set(s.predicted) == keys and s.predicted["time"] == pytest.approx(10 ** s.predicted["log_time"])
        assert s.seconds > 0 and s.data_config["snapshot_every"] == 20
    assert [s.seed for s in samples] == [0, 1] and [int(s.volume.attrs["seed"]) for s in samples] == [0, 1]
    again = generator.generate(targets, n=1, steps=4, seed=1, verify=None)[0]
    np.testing.assert_array_equal(again.volume.values, samples[1].volume.values)
    assert again.predicted == pytest.approx(samples[1].predicted)
    guided = generator.generate(targets, steps=3, sampler="ddim", guidance=2.0, verify=None)[0]
    assert json.loads(guided.volume.attrs["settings"])["sampler"] == "ddim"


def test_targets_are_checked_against_the_training_range(generator):
    lo, hi = generator.bundle.config.label_ranges["vf_donor"]
    targets = medians(generator) | {"vf_donor": 0.95}
    with pytest.raises(ValueError, match=rf"vf_donor = 0.95 is outside the training range \[{lo:.4g}, {hi:.4g}\]"):
        generator.generate(targets, steps=2)
    assert len(generator.generate(targets, steps=2, allow_extrapolation=True, verify=None)) == 1
    with pytest.raises(ValueError, match=r"unknown names \['vf_mixed'\]; this model is conditioned on \['vf_donor', "
                                         r"'tau_donor', 'tau_acceptor'\]"):
        generator.generate(medians(generator) | {"vf_mixed": 0.1}, steps=2)
    with pytest.raises(ValueError, match="give at least one of"):
        generator.generate({}, steps=2)
    with pytest.raises(ValueError, match="tau_donor: expected a positive number or inf"):
        generator.generate(medians(generator) | {"tau_donor": -1.0}, steps=2, allow_extrapolation=True)
    with pytest.raises(ValueError, match="training range"):  # no non-percolating training sample: inf is outside
        generator.generate(medians(generator) | {"tau_donor": math.inf}, steps=2)


@pytest.fixture(scope="module")
def full_conditions_generator(dataset, bundle, tmp_path_factory) -> LDMGenerator:
    """The tiny bundle with its diffusion model retrained without label dropout (the paper's model)."""
    copy = shutil.copytree(bundle, tmp_path_factory.mktemp("full") / "b")
    recipe = tiny()
    recipe.ldm = recipe.ldm.model_copy(update={"label_dropout": 0.0})
    train_ldm(dataset, copy, recipe, stage="ldm", device="cpu", progress=False, overwrite=True)
    return LDMGenerator(copy, device="cpu")


def test_any_subset_of_targets(generator, full_conditions_generator):
    assert generator.any_subset and not full_conditions_generator.any_subset
    vf = medians(generator)["vf_donor"]
    context = generator.context(generator.check_targets({"vf_donor": vf}))
    assert not torch.isnan(context[0, 0]) and torch.isnan(context[0, 1:]).all()
    one = generator.generate({"vf_donor": vf}, n=1, steps=3, seed=2, verify=None)[0]
    assert json.loads(one.volume.attrs["targets"]) == {"vf_donor": vf}
    full = generator.generate(medians(generator), n=1, steps=3, seed=2, verify=None)[0]
    assert not np.array_equal(one.volume.values, full.volume.values) or one.predicted != full.predicted
    lo, hi = generator.bundle.config.label_ranges["tau_donor"]
    with pytest.raises(ValueError, match="tau_donor = 50 is outside the training range"):  # ranges per given label
        generator.generate({"tau_donor": 50.0}, steps=2)
    with pytest.raises(ValueError, match=r"missing \['tau_acceptor'\]; this model was trained without label "
                                         r"dropout.*training medians: tau_acceptor="):
        full_conditions_generator.generate({"vf_donor": 0.5, "tau_donor": 2.0}, steps=2)
    assert len(full_conditions_generator.generate(medians(generator), steps=2, verify=None)) == 1


def test_batched_samples_equal_samples_made_alone(generator):
    targets = medians(generator)
    batched = generator.generate(targets, n=3, steps=3, seed=10, batch_size=3, verify=None)
    for i, sample in enumerate(batched):
        alone = generator.generate(targets, n=1, steps=3, seed=10 + i, batch_size=1, verify=None)[0]
        np.testing.assert_array_equal(sample.volume.values, alone.volume.values)
        assert sample.predicted == pytest.approx(alone.predicted, rel=1e-4, abs=1e-5)
    with pytest.raises(ValueError, match="batch_size"):
        generator.generate(targets, steps=2, batch_size=0)


def test_verified_generation(generator):
    targets = {"vf_donor": medians(generator)["vf_donor"]}
    loose = generator.generate(targets, n=2, steps=3, seed=4, verify=VerifySettings(tolerance=1.0))
    plain = generator.generate(targets, n=2, steps=3, seed=4, verify=None)
    for v, p in zip(loose, plain):  # everything is within 1.0 of a vf: candidate 0, the plain sample
        assert v.verification.met and v.verification.candidates == 1 and v.seed == p.seed
        np.testing.assert_array_equal(v.volume.values, p.volume.values)
        assert v.verification.measured["vf_donor"] == pytest.approx(volume_fraction(v.volume, "donor"))
    strict = VerifySettings(tolerance=1e-9, max_candidates=3)
    tight = generator.generate(targets, n=2, steps=3, seed=4, verify=strict, batch_size=16)
    for i, sample in enumerate(tight):  # none can meet 1e-9: the closest of the 3 candidates, marked
        v = sample.verification
        assert not v.met and v.candidates == 3
        attrs = json.loads(sample.volume.attrs["verification"])
        assert attrs["met"] is False and attrs["candidates"] == 3 and attrs["measured"] == v.measured
        errors = []
        for j in range(3):
            alone = generator.generate(targets, n=1, steps=3, seed=candidate_seed(4 + i, j), verify=None)[0]
            errors.append(abs(volume_fraction(alone.volume, "donor") - targets["vf_donor"]))
        assert abs(v.measured["vf_donor"] - targets["vf_donor"]) == pytest.approx(min(errors))
    one_by_one = generator.generate(targets, n=2, steps=3, seed=4, verify=strict, batch_size=1)
    assert [s.seed for s in one_by_one] == [s.seed for s in tight]  # the batch size does not choose
    with pytest.raises(ValueError, match=r"tolerance: labels \['tau_donor'\] are not requested"):
        generator.generate(targets, steps=2, verify=VerifySettings(tolerance={"tau_donor": 0.1}))
    with pytest.raises(ValueError, match="max_candidates"):
        VerifySettings(max_candidates=0)


def test_verification_is_on_by_default_and_none_gives_the_raw_sample(generator):
    targets = {"vf_donor": medians(generator)["vf_donor"]}
    (default,) = generator.generate(targets, n=1, steps=3, seed=6)
    v = default.verification
    assert v is not None and v.tolerance == {"vf_donor": DEFAULT_VERIFY.tolerance}
    assert 1 <= v.candidates <= DEFAULT_VERIFY.max_candidates
    assert v.met == (abs(v.measured["vf_donor"] - targets["vf_donor"]) <= DEFAULT_VERIFY.tolerance)
    (raw,) = generator.generate(targets, n=1, steps=3, seed=6, verify=None)
    assert raw.verification is None and "verification" not in raw.volume.attrs
    if v.candidates == 1:  # candidate 0 met the request: the raw sample itself
        np.testing.assert_array_equal(default.volume.values, raw.volume.values)
    else:
        assert default.seed != raw.seed
    assert "verify.met" in generator.sample({"target.vf_donor": targets["vf_donor"], "steps": 2}, n=1, seed=0)["predicted"][0]
    assert "verify.met" not in generator.sample({"target.vf_donor": targets["vf_donor"], "steps": 2}, n=1, seed=0,
                                                verify=None)["predicted"][0]  # fmt: skip


def test_corrected_request_moves_by_the_mean_miss_on_the_model_scale():
    targets = {"vf_donor": 0.3, "tau_donor": 2.0}
    measured = [{"vf_donor": 0.25, "tau_donor": 4.0}, {"vf_donor": 0.27, "tau_donor": math.inf}]
    # vf: 0.3 + mean(0.05, 0.03); 1/τ: 0.5 + mean(0.5 − 0.25, 0.5 − 0) = 0.875
    out = corrected_request(targets, targets, measured)
    assert out == pytest.approx({"vf_donor": 0.34, "tau_donor": 1 / 0.875})
    clipped = corrected_request(targets, targets, measured, ranges={"vf_donor": (0.1, 0.32), "tau_donor": (1.5, 3.0)})
    assert clipped == pytest.approx({"vf_donor": 0.32, "tau_donor": 1.5})  # 1/τ ≤ 1/1.5
    lower = corrected_request({"tau_donor": 3.0}, {"tau_donor": 3.0}, [{"tau_donor": 1.1}], ranges={"tau_donor": (1.5, 3.0)},
                              infinite_ok=frozenset({"tau_donor"}))  # fmt: skip
    assert lower["tau_donor"] == math.inf  # 1/3 − (1/1.1 − 1/3) < 0: clipped to 1/τ = 0, not percolating


def test_request_correction_conditions_later_rounds_on_the_corrected_request(generator):
    targets = {"vf_donor": medians(generator)["vf_donor"]}
    strict = VerifySettings(tolerance=1e-9, max_candidates=6, correct=True, round_size=2)
    samples = generator.generate(targets, n=2, steps=3, seed=8, verify=strict, batch_size=16)
    for i, sample in enumerate(samples):
        v = sample.verification
        assert not v.met and v.candidates == 6 and v.rounds == 3
        # the returned candidate is a plain sample at the request its round was conditioned on
        j = next(j for j in range(6) if candidate_seed(8 + i, j) == sample.seed)
        if j < 2:
            assert v.request == targets
        alone = generator.generate(v.request, n=1, steps=3, seed=sample.seed, verify=None)[0]
        np.testing.assert_array_equal(alone.volume.values, sample.volume.values)
        assert json.loads(sample.volume.attrs["verification"])["request"] == v.request
    later = [s.verification.request for s in samples if s.verification.request != targets]
    assert later, "no sample returned a candidate of a corrected round"  # (or the test seed needs changing)
    one_by_one = generator.generate(targets, n=2, steps=3, seed=8, verify=strict, batch_size=1)
    assert [s.seed for s in one_by_one] == [s.seed for s in samples]  # rounds do not depend on the batch size
    assert [s.verification.request for s in one_by_one] == [s.verification.request for s in samples]


def test_guidance_rescale_and_feature_guidance_change_the_sample(generator):
    targets = medians(generator)
    base = generator.generate(targets, steps=3, seed=1, guidance=3.0, verify=None)[0]
    rescaled = generator.generate(targets, steps=3, seed=1, guidance=3.0, guidance_rescale=0.7, verify=None)[0]
    pulled = generator.generate(targets, steps=3, seed=1, guidance=3.0, feature_guidance=5.0, verify=None)[0]
    assert rescaled.predicted != base.predicted and pulled.predicted != base.predicted  # (the formulas: test_models)
    assert json.loads(pulled.volume.attrs["settings"])["feature_guidance"] == 5.0
    assert json.loads(rescaled.volume.attrs["settings"])["guidance_rescale"] == 0.7


def test_three_phases_train_generate_and_verify_the_mixed_fraction(tmp_path):
    """The three-phase case (donor, acceptor, mixed) end to end at tiny size: labels include
    vf_mixed, the model conditions on it, and verification measures it."""
    from ldm_fixtures import TINY_OPV_DATA

    from micro_doe.platform.ldm.dataset import OPVDatasetConfig, make_opv_dataset

    data = make_opv_dataset(OPVDatasetConfig(**(TINY_OPV_DATA | {"n_phases": 3, "chis": [3.5, 4.0]})))
    assert list(data.attrs["phase_names"]) == ["acceptor", "donor", "mixed"] and "vf_mixed" in data
    conditioning = ("vf_donor", "vf_mixed", "tau_donor", "tau_acceptor")
    bundle = train_ldm(data, tmp_path / "ternary", tiny(conditioning=conditioning), device="cpu", progress=False)
    generator = LDMGenerator(bundle, device="cpu")
    assert generator.conditioning == list(conditioning) and generator.bundle.config.phase_names[2] == "mixed"
    vf_mixed = generator.bundle.config.condition_medians["vf_mixed"]
    sample = generator.generate({"vf_mixed": vf_mixed}, steps=2, verify=VerifySettings(tolerance=1.0))[0]
    assert set(np.unique(sample.volume.values)) <= {0, 1, 2}
    assert sample.verification.met
    assert sample.verification.measured["vf_mixed"] == pytest.approx(float((sample.volume.values == 2).mean()))


def test_actor_facing_sample_call(generator):
    params = {f"target.{k}": v for k, v in medians(generator).items()} | {"steps": 2, "guidance": 1.5}
    result = generator.sample(params, n=2, seed=5, verify=None)
    assert sorted(result) == ["predicted", "seconds", "volumes"] and len(result["volumes"]) == 2
    assert int(result["volumes"][1].attrs["seed"]) == 6 and "phi" in result["predicted"][0]
    with pytest.raises(ValueError, match="unknown generator parameter 'n_h'"):
        generator.sample(params | {"n_h": 1}, n=1, seed=0)
    verified = generator.sample(params | {"tolerance": 1.0}, n=2, seed=5, verify=VerifySettings(max_candidates=2))
    row = verified["predicted"][0]
    assert row["verify.met"] == 1.0 and row["verify.candidates"] == 1.0 and "verify.measured.vf_donor" in row
    assert int(verified["volumes"][1].attrs["seed"]) == 6
    corrected = generator.sample(params | {"tolerance": 1e-9}, n=1, seed=5,
                                 verify=VerifySettings(max_candidates=4, correct=True, round_size=2))  # fmt: skip
    row = corrected["predicted"][0]
    assert row["verify.rounds"] == 2.0 and {f"verify.request.{k}" for k in medians(generator)} <= set(row)


# ---------------------------------------------------------------- recipe check


def _dataset_sample(dataset: xr.Dataset, i: int) -> LDMSample:
    """A data-set snapshot dressed as a generated sample whose 'prediction' is its true recipe."""
    row = dataset.isel(sample=i)
    volume = row["phase"].drop_vars(list(row["phase"].coords))
    predicted = {k: float(row[k]) for k in ("phi", "chi", "log_time")} | {"time": float(row["time"])}
    return LDMSample(volume, predicted, 0.0, {}, 0, "data", json.loads(dataset.attrs["config"]))


def test_check_recipe_reproduces_a_training_snapshot_exactly(dataset):
    i = int(np.flatnonzero((dataset["percolating_donor"].values > 0) & (dataset["percolating_acceptor"].values > 0))[0])
    sample = _dataset_sample(dataset, i)
    seed = trajectory_seed(json.loads(dataset.attrs["config"])["seed"], int(dataset["trajectory"][i]))
    exact = check_recipe(sample, seed=seed)  # the trajectory's own noise: the very same morphology
    assert exact.simulated_recipe["steps"] == int(dataset["step"][i])
    assert exact.summary_error == 0.0 and all(d.absolute == 0.0 for d in exact.differences.values())
    other = check_recipe(sample, seed=seed + 1, repeats=2)  # another realisation: close, not equal
    names = {"vf_acceptor", "vf_donor", "inv_tau_donor", "inv_tau_acceptor", "interfacial_area"}
    assert set(other.differences) == names
    assert all(math.isfinite(d.absolute) and math.isfinite(d.scatter) for d in other.differences.values())
    assert 0.0 < other.summary_error < 0.5 and other.simulated_recipe["seeds"] == [seed + 1, seed + 2]
    json.dumps(other.as_dict())


def test_check_recipe_of_a_generated_sample(generator):
    sample = generator.generate(medians(generator), steps=3, verify=None)[0]
    result = check_recipe(sample, shape=(16, 16, 16))
    assert result.simulated_recipe["steps"] % 20 == 0 and 20 <= result.simulated_recipe["steps"] <= 200
    assert math.isfinite(result.summary_error) and result.simulated_volume.shape == (16, 16, 16)


def test_a_three_phase_recipe_uses_the_predicted_phi_mixed() -> None:
    volume = make_volume(np.zeros((8, 8, 8), dtype=np.int8), phase_names=["acceptor", "donor", "mixed"])
    data = {"phi_mixed": 0.3, "snapshot_every": 10, "n_steps": 100}
    predicted = {"phi": 0.5, "chi": 4.5, "time": 50.0}
    fixed = LDMSample(volume, predicted, 0.0, {}, 0, "x", data)
    assert recipe_params(fixed)[0].phi_mixed == 0.3  # a model that does not predict it: the data set's
    params, steps, notes = recipe_params(LDMSample(volume, predicted | {"phi_mixed": 0.2}, 0.0, {}, 0, "x", data))
    assert params.phi_mixed == 0.2 and steps == 50 and notes == []
    params, _, notes = recipe_params(LDMSample(volume, predicted | {"phi_mixed": 0.95}, 0.0, {}, 0, "x", data))
    assert params.phi_mixed == 0.9 and notes == ["phi_mixed 0.95 clipped to 0.9"]


# ---------------------------------------------------------------- command line


def test_generate_command_writes_volumes_and_checks_its_input(bundle, tmp_path, generator):
    targets = [f"{k}={v}" for k, v in medians(generator).items()]
    samples = generate_ldm(str(bundle), tmp_path / "out.nc", target=targets, n=2, steps=2, device="cpu")
    with xr.open_dataset(tmp_path / "out.nc", engine="netcdf4") as ds:
        assert ds["phase"].shape == (2, 16, 16, 16) and len(json.loads(ds["phase"].attrs["predicted"])) == 2
    assert samples[0].predicted == pytest.approx(generator.generate(medians(generator), steps=2)[0].predicted)
    assert parse_targets(["tau_donor=inf"]) == {"tau_donor": math.inf}
    with pytest.raises(ValueError, match="--target: expected NAME=VALUE"):
        generate_ldm(str(bundle), tmp_path / "x.nc", target=["vf_donor:0.4"])
    with pytest.raises(ValueError, match="--no-verify: conflicts with --tolerance, --correct-requests"):
        generate_ldm(str(bundle), tmp_path / "x.nc", target=targets, verify=False, tolerance=0.1, correct_requests=True)
    raw = generate_ldm(str(bundle), tmp_path / "raw.nc", target=targets, steps=2, device="cpu", verify=False)[0]
    assert raw.verification is None and samples[0].verification is not None  # verified unless --no-verify
    assert not (tmp_path / "x.nc").exists()
    with pytest.raises(ValueError, match="training range"):
        generate_ldm(str(bundle), tmp_path / "x.nc", target=[*targets[1:], "vf_donor=0.99"], steps=2, device="cpu")


def test_train_command_logs_losses_to_mlflow(dataset, tmp_path):
    from micro_doe.tracking.registry import mlflow_client

    data = tmp_path / "data.nc"
    dataset.to_netcdf(data, engine="netcdf4")
    recipe = tmp_path / "recipe.json"
    recipe.write_text(tiny().model_dump_json())
    uri = f"sqlite:///{tmp_path}/m.db"
    train_ldm_command(data, tmp_path / "cli", config=recipe, ldm_steps=3, tracking=uri, device="cpu", progress=False)
    client = mlflow_client(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("micro-doe-training").experiment_id])
    assert run.info.run_name == "train-ldm-cli" and run.info.status == "FINISHED"
    steps = {m.step for m in client.get_metric_history(run.info.run_id, "ldm_loss")}
    assert steps >= {3} and 4 not in steps
    assert 4 in {m.step for m in client.get_metric_history(run.info.run_id, "vae_loss")}
    assert "fp_val_r2_log_time" in run.data.metrics and run.data.params["ldm.steps"] == "3"
    card = Path(client.download_artifacts(run.info.run_id, "card.md", str(tmp_path)))
    assert card.read_text() == (tmp_path / "cli" / "card.md").read_text()
    assert load_ldm_bundle(tmp_path / "cli").config.stages["ldm"].steps == 3
    with pytest.raises(ValueError, match="--stage: expected one of"):
        train_ldm_command(data, tmp_path / "cli", stage="gan")
    with pytest.raises(ValueError, match="--conditioning"):
        train_ldm_command(data, tmp_path / "cli", conditioning=" , ")


def test_the_benchmark_prints_its_table_on_a_tiny_model(bundle, tmp_path):
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[3] / "benchmarks" / "ldm.py"
    out = tmp_path / "report.json"
    model = shutil.copytree(bundle, tmp_path / "model")  # the benchmark rewrites its card and defaults
    done = subprocess.run(
        [sys.executable, str(script), "--model", str(model), "--conditions", "1", "--per-condition", "2",
         "--steps", "2", "--variants", "w=1", "w=3,rescale=0.5", "w=2,fg=1", "--max-candidates", "2",
         "--recipe-checks", "1", "--no-images", "--json", str(out), "--update-card", "--update-defaults"],
        capture_output=True, text=True, timeout=300, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "requested vs measured" in done.stdout and "recipe check" in done.stdout and "untouched" in done.stdout
    report = json.loads(out.read_text())
    assert set(report["variants"]) == {"w=1", "w=3,rescale=0.5", "w=2,fg=1"} and report["targets"] == 1
    assert report["best"] in report["variants"]
    assert 1 <= report["verified"]["cost"]["candidates_per_volume"] <= 2
    assert any("alone" in k for k in report["subset"])  # the tiny model was trained with label dropout
    assert all(v > 0 for v in report["volumes_per_second"].values())
    assert report["recipe_check"]["floor"] >= 0 and math.isfinite(report["recipe_check"]["generated"])
    card = (model / "card.md").read_text()
    assert card.count("## Measured") == 1 and "| w=2,fg=1: requested vs measured |" in card
    assert "R² interfacial area (untouched)" in card
    sampling = LDMConfig.model_validate_json((model / "config.json").read_text()).sampling
    assert (sampling.steps, sampling.sampler) == (2, "ddim") and sampling.guidance in (1.0, 3.0, 2.0)
    assert f"Default sampling: ddim, 2 steps, guidance {sampling.guidance}" in card


def test_retraining_the_feature_predictor_rewrites_the_bundle(dataset, bundle, tmp_path):
    copy = shutil.copytree(bundle, tmp_path / "b")  # the bundle alone: earlier stages come from it
    before = load_ldm_bundle(copy)
    with pytest.raises(ValueError, match="pass --overwrite"):  # never replaced silently
        train_ldm(dataset, copy, tiny(fp=6), stage="fp", device="cpu", progress=False)
    written = train_ldm(dataset, copy, tiny(fp=6), stage="fp", overwrite=True, device="cpu", progress=False)
    assert written == copy
    after = load_ldm_bundle(copy)
    assert after.config.stages["fp"].steps == 6 and before.config.stages["fp"].steps == 4
    assert after.config.stages["ldm"] == before.config.stages["ldm"]  # the diffusion model is kept
    for name, tensor in before.unet.state_dict().items():
        assert torch.equal(tensor, after.unet.state_dict()[name])
