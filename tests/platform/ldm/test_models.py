"""Tests of the conditional-LDM networks and sampling (tiny: base 8 channels, 16³ volumes → 4³ latents).

No training beyond a 30-step overfit of the VAE on a fixed batch; the guidance and dropout
tests use the real LatentUNet3D with its output layer re-initialised to non-zero weights, so
conditional and unconditional outputs differ.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from ldm_fixtures import one_torch_thread
from pydantic import ValidationError

from micro_doe.platform.diffusion import DDIMSampler, DDPMSampler, NoiseSchedule
from micro_doe.platform.ldm import (
    VAE3D,
    FeaturePredictor,
    FeaturePredictorConfig,
    LatentUNet3D,
    LatentUNetConfig,
    Normaliser,
    VAE3DConfig,
    conditional_diffusion_loss,
    decode_volumes,
    feature_guide,
    guided_eps,
    kl_divergence,
    labels_to_input,
    r2_scores,
    sample_latents,
    vae_loss,
)
from micro_doe.platform.micro3diff.unet import parameter_count

SIDE = 16
LATENT = (2, 4, 4, 4)  # (latent_channels, d, d, d) of the tiny VAE on 16³
F_CTX = 3
SCHEDULE = NoiseSchedule.linear()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with one_torch_thread():
        yield


def tiny_vae(in_channels: int = 1) -> VAE3D:
    torch.manual_seed(0)
    return VAE3D(VAE3DConfig(in_channels=in_channels, base_channels=8, channel_mults=(1, 2), latent_channels=2))


def tiny_unet() -> LatentUNet3D:
    """A tiny denoiser whose output layer is not zero, so its output depends on t and the context."""
    torch.manual_seed(1)
    model = LatentUNet3D(LatentUNetConfig(latent_channels=2, context_dim=F_CTX, base_channels=8, groups=4))
    torch.nn.init.normal_(model.head[-1].weight, std=0.1)
    torch.nn.init.normal_(model.null_embedding, std=1.0)
    return model.eval()


def slab_volumes(n: int = 2) -> torch.Tensor:
    """Fixed structured two-phase labels (n, 16, 16, 16): slabs and a cube, int8."""
    z, y, x = torch.meshgrid(*(torch.arange(SIDE),) * 3, indexing="ij")
    vols = [((z // 4) % 2), ((x - 8) ** 2 + (y - 8) ** 2 + (z - 8) ** 2 < 30).long()]
    return torch.stack([vols[i % 2] for i in range(n)]).to(torch.int8)


# ---------------------------------------------------------------- VAE


def test_vae_shapes_and_encoding() -> None:
    vae = tiny_vae().eval()
    labels = slab_volumes(3)
    x = labels_to_input(labels, 2)
    assert x.shape == (3, 1, SIDE, SIDE, SIDE) and set(x.unique().tolist()) == {-1.0, 1.0}
    mu, logvar = vae.encode(x)
    assert mu.shape == logvar.shape == (3, *LATENT) == (3, *vae.config.latent_shape(SIDE))
    logits, mu2, _ = vae(x)
    assert logits.shape == x.shape and torch.equal(mu, mu2)
    assert torch.equal(vae.decode(mu), logits)  # eval mode decodes the mean
    p = VAE3D.probabilities(logits)
    assert bool(((p > 0) & (p < 1)).all())

    vae3 = tiny_vae(in_channels=3)
    labels3 = torch.randint(0, 3, (2, SIDE, SIDE, SIDE), dtype=torch.int8)
    x3 = labels_to_input(labels3, 3)
    assert x3.shape == (2, 3, SIDE, SIDE, SIDE) and torch.equal(x3.argmax(1), labels3.long())
    logits3, _, _ = vae3(x3)
    assert logits3.shape == x3.shape
    assert torch.allclose(VAE3D.probabilities(logits3).sum(1), torch.ones(2, SIDE, SIDE, SIDE), atol=1e-6)


def test_vae_rejects_bad_inputs() -> None:
    with pytest.raises(ValidationError, match="in_channels"):
        VAE3DConfig(in_channels=2)
    vae = tiny_vae()
    with pytest.raises(ValueError, match="channel_mults"):
        vae.encode(torch.zeros(1, 1, 12, 12, 10))  # 10 is not a multiple of 4
    with pytest.raises(ValueError, match="latent side"):
        vae.encode(torch.zeros(1, 1, 4, 4, 4))  # a 1³ latent
    with pytest.raises(ValueError, match="labels"):
        labels_to_input(torch.full((1, 4, 4, 4), 2), 2)


def test_kl_is_zero_at_the_prior_and_positive_elsewhere() -> None:
    zeros = torch.zeros(2, *LATENT)
    assert torch.equal(kl_divergence(zeros, zeros), torch.zeros(2))
    mu = torch.zeros(2, *LATENT)
    mu[0, 0, 0, 0, 0] = 1.0
    logvar = torch.zeros(2, *LATENT)
    logvar[1, 1, 1, 1, 1] = math.log(4.0)
    kl = kl_divergence(mu, logvar)
    assert kl[0].item() == pytest.approx(0.5)  # ½ mu²
    assert kl[1].item() == pytest.approx(0.5 * (4.0 - 1.0 - math.log(4.0)))  # ½ (σ² − 1 − log σ²)
    assert bool((kl > 0).all())


def test_vae_loss_terms() -> None:
    labels = slab_volumes(2)
    zeros = torch.zeros(2, *LATENT)
    two = vae_loss(torch.zeros(2, 1, SIDE, SIDE, SIDE), labels, zeros, zeros, kl_weight=1.0)
    assert two.reconstruction.item() == pytest.approx(math.log(2)) and two.kl.item() == 0.0
    three = vae_loss(torch.zeros(2, 3, SIDE, SIDE, SIDE), labels.long() + 1, zeros, zeros, kl_weight=1.0)
    assert three.reconstruction.item() == pytest.approx(math.log(3))
    mu = torch.ones(2, *LATENT)
    weighted = vae_loss(torch.zeros(2, 1, SIDE, SIDE, SIDE), labels, mu, zeros, kl_weight=0.5)
    n_latent = math.prod(LATENT)
    assert weighted.kl.item() == pytest.approx(0.5 * n_latent)
    assert weighted.total.item() == pytest.approx(math.log(2) + 0.5 * 0.5 * n_latent / SIDE**3)


def test_vae_overfits_a_fixed_batch() -> None:
    vae = tiny_vae().train()
    labels = slab_volumes(2)
    x = labels_to_input(labels, 2)
    opt = torch.optim.Adam(vae.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        logits, mu, logvar = vae(x, generator=g)
        loss = vae_loss(logits, labels, mu, logvar, kl_weight=vae.config.kl_weight).total
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] > 0.6  # starts near log 2
    assert np.mean(losses[-5:]) < 0.25 * losses[0], losses
    print(f"VAE overfit: loss {losses[0]:.3f} -> {losses[-1]:.3f} in 30 steps")


# ---------------------------------------------------------------- feature predictor, normaliser, R²


def test_feature_predictor_shapes_and_dropout() -> None:
    torch.manual_seed(2)
    cfg = FeaturePredictorConfig(latent_dim=math.prod(LATENT), outputs=("vf", "inv_tau", "chi"), hidden=(32, 16))
    fp = FeaturePredictor(cfg)
    mu = torch.randn(5, *LATENT)
    fp.eval()
    out = fp(mu)
    assert out.shape == (5, 3) and torch.equal(out, fp(mu.flatten(1)))
    fp.train()
    assert not torch.equal(fp(mu), out)  # dropout 0.1 is active in training
    with pytest.raises(ValueError, match="latent_dim"):
        fp(torch.randn(5, 7))
    with pytest.raises(ValidationError, match="outputs"):
        FeaturePredictorConfig(latent_dim=4, outputs=("a", "a"))


def test_positionwise_readout_ignores_where_features_sit() -> None:
    torch.manual_seed(3)
    cfg = FeaturePredictorConfig(latent_dim=math.prod(LATENT), outputs=("vf", "chi"), hidden=(16,),
                                 readout="positionwise", latent_channels=LATENT[0], local_width=8)  # fmt: skip
    fp = FeaturePredictor(cfg).eval()
    mu = torch.randn(3, *LATENT)
    out = fp(mu)
    assert out.shape == (3, 2)
    # Mean and max over positions: any permutation of the latent voxels gives the same prediction.
    shuffled = mu.flatten(2)[:, :, torch.randperm(math.prod(LATENT[1:]))].reshape(mu.shape)
    assert torch.allclose(fp(shuffled), out, atol=1e-6)
    assert not torch.allclose(fp(mu + 0.5), out)  # but it does see the values
    flat = FeaturePredictor(cfg.model_copy(update={"readout": "flatten"})).eval()
    assert not torch.allclose(flat(shuffled), flat(mu), atol=1e-6)  # the flattened MLP is position-bound
    with pytest.raises(ValueError, match="positionwise readout takes"):
        fp(mu.flatten(1))
    with pytest.raises(ValidationError, match="latent_channels"):
        FeaturePredictorConfig(latent_dim=10, outputs=("a",), readout="positionwise", latent_channels=3)


@pytest.mark.parametrize("method", ["standard", "minmax"])
def test_normaliser_round_trip_with_infinite_tortuosity(method: str) -> None:
    names = ("vf", "tortuosity", "chi")
    values = torch.tensor(
        [[0.3, 1.5, 2.0], [0.5, math.inf, 3.0], [0.4, 2.0, 2.5], [0.35, 1.0, 4.0]], dtype=torch.float64
    )
    norm = Normaliser.fit(values, names, inverse=("tortuosity",), method=method)
    y = norm.transform(values)
    assert y.dtype == torch.float64 and bool(torch.isfinite(y).all())
    inv_tau = 1.0 / values[:, 1]  # inf -> 0
    assert torch.allclose(y[:, 1], (inv_tau - norm.shift[1]) / norm.scale[1])
    if method == "standard":
        assert torch.allclose(y.mean(0), torch.zeros(3, dtype=torch.float64), atol=1e-12)
        assert torch.allclose(y.std(0, unbiased=False), torch.ones(3, dtype=torch.float64))
    else:
        assert torch.allclose(y.min(0).values, torch.zeros(3, dtype=torch.float64))
        assert torch.allclose(y.max(0).values, torch.ones(3, dtype=torch.float64))
    back = norm.inverse_transform(y)
    assert back[1, 1].item() == math.inf
    assert torch.allclose(back, values, rtol=1e-12)

    again = Normaliser.from_dict(json.loads(json.dumps(norm.to_dict())))
    assert torch.equal(again.transform(values), y) and again.inverse == ("tortuosity",)
    assert norm.transform(values.float()).dtype == torch.float32  # network side

    with pytest.raises(ValueError, match="tortuosity"):
        Normaliser.fit(values, names)  # inf without the 1/τ rule
    with pytest.raises(ValueError, match="inverse"):
        Normaliser.fit(values, names, inverse=("tau",))


def test_r2_scores() -> None:
    torch.manual_seed(3)
    true = torch.randn(50, 2)
    perfect = r2_scores(true, true, ("a", "b"))
    assert perfect == {"a": 1.0, "b": 1.0}
    mean = r2_scores(true.mean(0).expand_as(true), true, ("a", "b"))
    assert mean["a"] == pytest.approx(0.0, abs=1e-12) and mean["b"] == pytest.approx(0.0, abs=1e-12)
    noisy = r2_scores(true + 0.5 * torch.randn(50, 2), true, ("a", "b"))
    assert all(0.0 < v < 1.0 for v in noisy.values())
    assert math.isnan(r2_scores(torch.zeros(4, 1), torch.ones(4, 1), ("c",))["c"])  # SS_tot = 0


# ---------------------------------------------------------------- latent U-Net, condition dropout, loss


def test_latent_unet_shapes() -> None:
    model = tiny_unet()
    z = torch.randn(3, *LATENT)
    t = torch.tensor([0, 500, 999])
    eps = model(z, t, torch.randn(3, F_CTX))
    assert eps.shape == z.shape
    assert model(z, t, None).shape == z.shape
    with pytest.raises(ValueError, match="context"):
        model(z, t, torch.randn(3, F_CTX + 1))
    with pytest.raises(ValueError, match="drop_mask"):
        model(z, t, torch.randn(3, F_CTX), torch.ones(3))
    with pytest.raises(ValidationError, match="groups"):
        LatentUNetConfig(context_dim=2, base_channels=8, groups=3)


def test_dropped_rows_ignore_their_context() -> None:
    model = tiny_unet()
    torch.manual_seed(4)
    z, t = torch.randn(4, *LATENT), torch.tensor([10, 200, 600, 999])
    mask = torch.tensor([True, False, True, False])
    out_a = model(z, t, torch.randn(4, F_CTX), mask)
    out_b = model(z, t, 10 * torch.randn(4, F_CTX), mask)
    assert torch.equal(out_a[mask], out_b[mask])
    assert not torch.allclose(out_a[~mask], out_b[~mask])
    assert torch.equal(model(z, t, None), model(z, t, torch.randn(4, F_CTX), torch.ones(4, dtype=torch.bool)))


def test_conditional_diffusion_loss_drops_the_condition() -> None:
    model = tiny_unet()
    z0 = torch.randn(4, *LATENT)
    ctx_a, ctx_b = torch.randn(4, F_CTX), torch.randn(4, F_CTX)

    def loss(ctx: torch.Tensor, p: float) -> float:
        return conditional_diffusion_loss(model, z0, ctx, SCHEDULE, p, torch.Generator().manual_seed(5)).item()

    assert loss(ctx_a, 0.0) == loss(ctx_a, 0.0)  # a seed fixes mask, t and noise
    assert loss(ctx_a, 0.0) != loss(ctx_b, 0.0)
    assert loss(ctx_a, 0.999999) == loss(ctx_b, 0.999999)  # every condition dropped
    with pytest.raises(ValueError, match="cfg_dropout"):
        loss(ctx_a, 1.0)


def subset_unet(label_dropout: float = 0.3) -> LatentUNet3D:
    torch.manual_seed(1)
    config = LatentUNetConfig(latent_channels=2, context_dim=F_CTX, base_channels=8, groups=4,
                              label_dropout=label_dropout)  # fmt: skip
    model = LatentUNet3D(config)
    torch.nn.init.normal_(model.head[-1].weight, std=0.1)
    return model.eval()


def test_free_labels_are_ignored_and_distinct_from_zero() -> None:
    model = subset_unet()
    torch.manual_seed(7)
    z, t = torch.randn(2, *LATENT), torch.tensor([100, 700])
    ctx = torch.randn(2, F_CTX)
    free = ctx.clone()
    free[:, 1] = math.nan
    with torch.no_grad():
        out_free = model(z, t, free)
        zero = free.nan_to_num(0.0)
        assert torch.isfinite(out_free).all()
        assert not torch.allclose(out_free, model(z, t, zero))  # "free" is not "normalised value 0"
        assert not torch.allclose(out_free, model(z, t, ctx))
    with pytest.raises(ValueError, match="label_dropout"):
        tiny_unet()(z, t, free)  # a model trained on full conditions refuses free labels


def test_label_dropout_frees_labels_in_training() -> None:
    model = subset_unet(0.5)
    z0 = torch.randn(8, *LATENT)
    ctx_a = torch.randn(8, F_CTX)

    def loss(ctx: torch.Tensor, m: LatentUNet3D) -> float:
        return conditional_diffusion_loss(m, z0, ctx, SCHEDULE, 0.0, torch.Generator().manual_seed(5)).item()

    assert math.isfinite(loss(ctx_a, model))
    # freeing labels changes the loss of the same draw: labels were actually masked
    assert loss(ctx_a, model) != loss(ctx_a, subset_unet(0.999999))
    all_free = subset_unet(0.999999)
    assert loss(ctx_a, all_free) == loss(torch.randn(8, F_CTX), all_free)


# ---------------------------------------------------------------- guidance and sampling


def test_guidance_convention_on_the_models_outputs() -> None:
    model = tiny_unet()
    torch.manual_seed(6)
    z, ctx = torch.randn(3, *LATENT), torch.randn(3, F_CTX)
    t = torch.full((3,), 700)
    with torch.no_grad():
        cond = model(z, t, ctx)
        uncond = model(z, t, ctx, torch.ones(3, dtype=torch.bool))
        assert not torch.allclose(cond, uncond, atol=1e-3)  # the test has teeth
        assert torch.equal(guided_eps(model, z, 700, ctx, 1.0), cond)
        assert torch.equal(guided_eps(model, z, 700, ctx, 0.0), uncond)
        w = 3.0
        expected = uncond + w * (cond - uncond)
        assert torch.allclose(guided_eps(model, z, 700, ctx, w), expected, atol=1e-5)


def test_guidance_rescale_matches_the_conditional_spread() -> None:
    model = tiny_unet()
    torch.manual_seed(8)
    z, ctx = torch.randn(3, *LATENT), torch.randn(3, F_CTX)
    t = torch.full((3,), 500)
    with torch.no_grad():
        cond = model(z, t, ctx)
        plain = guided_eps(model, z, 500, ctx, 4.0)
        full = guided_eps(model, z, 500, ctx, 4.0, rescale=1.0)
        half = guided_eps(model, z, 500, ctx, 4.0, rescale=0.5)
    dims = (1, 2, 3, 4)
    assert torch.allclose(full.std(dim=dims), cond.std(dim=dims), rtol=1e-4)
    assert not torch.allclose(plain.std(dim=dims), cond.std(dim=dims), rtol=1e-2)  # guidance did inflate it
    assert torch.allclose(half, 0.5 * full + 0.5 * plain, atol=1e-6)
    with pytest.raises(ValueError, match="rescale"):
        guided_eps(model, z, 500, ctx, 4.0, rescale=1.5)


def test_feature_guide_pulls_the_prediction_towards_the_target() -> None:
    torch.manual_seed(9)
    fp = FeaturePredictor(FeaturePredictorConfig(latent_dim=2 * 4**3, outputs=("a", "b"), hidden=(8,)))
    fp.eval()
    alpha_bar = SCHEDULE.alpha_bar
    z, eps = torch.randn(2, *LATENT), torch.randn(2, *LATENT)
    targets = torch.tensor([[2.0, 0.0], [-2.0, 0.0]])
    given = torch.tensor([[True, False], [True, False]])

    def miss(e: torch.Tensor) -> torch.Tensor:
        abar = alpha_bar(300)
        x0 = (z - math.sqrt(1 - abar) * e) / math.sqrt(abar)
        with torch.no_grad():
            return (fp(x0 / 0.5)[:, 0] - targets[:, 0]).abs()

    guide = feature_guide(fp, targets, given, alpha_bar, 0.5, scale=0.05)
    assert (miss(guide(z, eps, 300)) < miss(eps)).all()
    untouched = feature_guide(fp, targets, torch.zeros_like(given), alpha_bar, 0.5, scale=0.05)
    assert torch.equal(untouched(z, eps, 300), eps)  # nothing requested: no pull


def test_same_seed_same_latents_and_volumes() -> None:
    model, vae = tiny_unet(), tiny_vae()
    ctx = torch.randn(2, F_CTX, generator=torch.Generator().manual_seed(7))

    def run(seed: int) -> torch.Tensor:
        return sample_latents(model, DDPMSampler(SCHEDULE, steps=5), ctx, LATENT, guidance=2.0, seed=seed)

    a, b, c = run(0), run(0), run(1)
    assert a.shape == (2, *LATENT) and torch.equal(a, b) and not torch.equal(a, c)
    vols = decode_volumes(vae, a)
    assert vols.dtype == np.int8 and vols.shape == (2, SIDE, SIDE, SIDE)
    assert np.array_equal(vols, decode_volumes(vae, b, batch_size=1))
    with torch.no_grad():
        p = VAE3D.probabilities(vae.eval().decode(a))[:, 0].numpy()
    assert np.array_equal(vols, (p > 0.5).astype(np.int8))
    vae3 = tiny_vae(in_channels=3)
    vols3 = decode_volumes(vae3, a)
    assert vols3.shape == (2, SIDE, SIDE, SIDE) and set(np.unique(vols3)) <= {0, 1, 2}
    with pytest.raises(ValueError, match="clip"):
        sample_latents(model, DDPMSampler(SCHEDULE, steps=5, clip=True), ctx, LATENT, seed=0)
    with pytest.raises(ValueError, match="shape"):
        sample_latents(model, DDPMSampler(SCHEDULE, steps=5), ctx, (3, 4, 4, 4), seed=0)


def test_ddim_eta0_draws_only_the_initial_noise() -> None:
    model = tiny_unet()
    ctx = torch.randn(2, F_CTX, generator=torch.Generator().manual_seed(8))
    g = torch.Generator().manual_seed(9)
    z = sample_latents(model, DDIMSampler(SCHEDULE, steps=5, eta=0.0), ctx, LATENT, guidance=1.5, generator=g)
    g_ref = torch.Generator().manual_seed(9)
    x_T = torch.randn((2, *LATENT), generator=g_ref)
    assert torch.equal(g.get_state(), g_ref.get_state())  # nothing drawn after x_T
    x = x_T
    sampler = DDIMSampler(SCHEDULE, steps=5, eta=0.0)
    with torch.no_grad():
        for t, t_prev in sampler.pairs():
            x = sampler.step(guided_eps(model, x, t, ctx, 1.5), t, t_prev, x)
    assert torch.equal(z, x)


# ---------------------------------------------------------------- sizes for 32³ training on 2 CPUs


def test_default_32_cube_configuration_sizes() -> None:
    vae = VAE3D(VAE3DConfig())
    unet = LatentUNet3D(LatentUNetConfig(context_dim=4))
    assert vae.config.latent_shape(32) == (8, 4, 4, 4)
    n_vae, n_unet = parameter_count(vae), parameter_count(unet)
    print(f"32³ defaults: VAE3D {n_vae:,} parameters, LatentUNet3D {n_unet:,} parameters")
    assert n_vae <= 1_000_000 and n_unet <= 1_000_000
