"""Tests of the diffusion core: schedules, forward noising, renoising, the two samplers."""

from __future__ import annotations

import json
import math

import pytest
import torch

from micro_doe.platform.diffusion import DDIMSampler, DDPMSampler, NoiseSchedule, diffusion_loss, randn_like


@pytest.fixture(scope="module")
def schedule() -> NoiseSchedule:
    return NoiseSchedule.linear()


def clone(g: torch.Generator) -> torch.Generator:
    c = torch.Generator()
    c.set_state(g.get_state())
    return c


# ---------------------------------------------------------------- schedules


def test_linear_schedule_is_the_papers(schedule: NoiseSchedule) -> None:
    assert schedule.T == 1000 and schedule.betas.dtype == torch.float64
    assert schedule.betas[0].item() == pytest.approx(1e-4, abs=1e-15)  # beta_1 of the paper
    assert schedule.betas[-1].item() == pytest.approx(1e-2, abs=1e-15)  # beta_T
    steps = schedule.betas.diff()
    assert torch.allclose(steps, torch.full_like(steps, (1e-2 - 1e-4) / 999), rtol=1e-9, atol=0)
    abar = schedule.alphas_cumprod
    assert bool((abar.diff() < 0).all()) and 0 < abar[-1] < abar[0] < 1
    assert abar[-1].item() == pytest.approx(math.prod(1 - b for b in schedule.betas.tolist()), rel=1e-12)
    # The paper's schedule does not reach pure noise: abar_{T-1} = 0.0063, signal std 0.079.
    assert schedule.alpha_bar(999) == pytest.approx(0.0063, abs=1e-4)
    assert schedule.alpha_bar(-1) == 1.0


def test_cosine_schedule() -> None:
    s = NoiseSchedule.cosine(T=1000, s=0.008)
    abar = s.alphas_cumprod
    assert bool((abar.diff() < 0).all()) and bool((s.betas <= 0.999).all())
    f = lambda u: math.cos((u / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    for t in (0, 100, 500, 900):
        assert abar[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-9)
    assert s.betas[-1].item() == 0.999  # clipped


@pytest.mark.parametrize(
    "make", [NoiseSchedule.linear, lambda: NoiseSchedule.cosine(T=50), lambda: NoiseSchedule([0.1, 0.2, 0.3])]
)
def test_schedule_round_trips_through_json(make) -> None:
    s = make()
    back = NoiseSchedule.from_dict(json.loads(json.dumps(s.to_dict())))
    assert torch.equal(back.betas, s.betas) and back.kind == s.kind


def test_schedule_errors_name_the_parameter() -> None:
    with pytest.raises(ValueError, match="betas"):
        NoiseSchedule([0.1, 1.5])
    with pytest.raises(ValueError, match="beta_start"):
        NoiseSchedule.linear(beta_start=0.2, beta_end=0.1)
    with pytest.raises(ValueError, match="kind"):
        NoiseSchedule.from_dict({"kind": "sigmoid"})


# ---------------------------------------------------------------- respacing


def test_timesteps_rule(schedule: NoiseSchedule) -> None:
    assert schedule.timesteps(10).tolist() == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]
    assert schedule.timesteps(4).tolist() == [999, 666, 333, 0]
    assert schedule.timesteps(1).tolist() == [999]
    assert torch.equal(schedule.timesteps(), torch.arange(999, -1, -1))
    # floor(i (T-1)/(S-1) + 1/2): for T = 11, S = 5 the steps are 0, 2.5 -> 3, 5, 7.5 -> 8, 10
    assert NoiseSchedule.linear(T=11).timesteps(5).tolist() == [10, 8, 5, 3, 0]


def test_timesteps_distinct_for_every_S() -> None:
    s = NoiseSchedule.linear(T=60)
    for S in range(1, 61):
        ts = s.timesteps(S)
        assert ts.numel() == S and ts[0] == 59 and ts[-1] == (0 if S > 1 else 59)
        assert bool((ts.diff() < 0).all())


def test_timesteps_errors(schedule: NoiseSchedule) -> None:
    for bad in (0, 1001):
        with pytest.raises(ValueError, match="steps"):
            schedule.timesteps(bad)


def test_pairs_end_at_the_data(schedule: NoiseSchedule) -> None:
    pairs = DDPMSampler(schedule, 4).pairs()
    assert pairs == [(999, 666), (666, 333), (333, 0), (0, -1)]


# ---------------------------------------------------------------- forward process


def test_q_sample_statistics(schedule: NoiseSchedule) -> None:
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((200_000,), 0.7)
    for t in (0, 300, 999):
        xt = schedule.q_sample(x0, t, torch.randn(x0.shape, generator=g))
        abar = schedule.alpha_bar(t)
        assert xt.mean().item() == pytest.approx(math.sqrt(abar) * 0.7, abs=0.01)
        assert xt.var().item() == pytest.approx(1 - abar, rel=0.02, abs=1e-5)


def test_q_sample_per_item_steps(schedule: NoiseSchedule) -> None:
    x0 = torch.randn(3, 1, 4, 4)
    noise = torch.randn(3, 1, 4, 4)
    t = torch.tensor([0, 500, 999])
    batched = schedule.q_sample(x0, t, noise)
    for i in range(3):
        assert torch.allclose(batched[i], schedule.q_sample(x0[i], int(t[i]), noise[i]), atol=1e-6)
    with pytest.raises(ValueError, match="t:"):
        schedule.q_sample(x0, torch.tensor([0, 1]), noise)


def test_renoise_consecutive_is_eq21(schedule: NoiseSchedule) -> None:
    """q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I): exactly, given the same draws."""
    x = torch.randn(1000)
    for t in (1, 400, 999):
        g = torch.Generator().manual_seed(t)
        z = torch.randn(1000, generator=clone(g))
        beta = schedule.betas[t].item()
        out = schedule.renoise(x, t - 1, t, g)
        assert torch.allclose(out, math.sqrt(1 - beta) * x + math.sqrt(beta) * z, atol=1e-6)


def test_renoise_respaced_statistics(schedule: NoiseSchedule) -> None:
    """q(x_s | x0) followed by renoise s -> t has the closed-form marginal q(x_t | x0)."""
    g = torch.Generator().manual_seed(1)
    x0 = torch.full((200_000,), -0.5)
    xs = schedule.q_sample(x0, 100, torch.randn(x0.shape, generator=g))
    xt = schedule.renoise(xs, 100, 700, g)
    abar = schedule.alpha_bar(700)
    assert xt.mean().item() == pytest.approx(math.sqrt(abar) * -0.5, abs=0.01)
    assert xt.var().item() == pytest.approx(1 - abar, rel=0.02)
    with pytest.raises(ValueError, match="t_prev"):
        schedule.renoise(xt, 700, 100)


# ---------------------------------------------------------------- samplers


def bayes_posterior(schedule: NoiseSchedule, x0: torch.Tensor, xt: torch.Tensor, t: int, s: int):
    """Mean and variance of x_s given (x_t, x0), by conditioning the jointly Gaussian pair:
    x_s = sqrt(abar_s) x0 + sqrt(1 - abar_s) e1,  x_t = sqrt(a) x_s + sqrt(1 - a) e2,  a = abar_t/abar_s."""
    ab_s, ab_t = schedule.alpha_bar(s), schedule.alpha_bar(t)
    a = ab_t / ab_s
    cov_st = math.sqrt(a) * (1 - ab_s)  # Cov(x_s, x_t | x0)
    var_t = 1 - ab_t
    mean = math.sqrt(ab_s) * x0 + cov_st / var_t * (xt - math.sqrt(ab_t) * x0)
    return mean, (1 - ab_s) - cov_st**2 / var_t


@pytest.mark.parametrize("t,s", [(999, 998), (500, 499), (999, 888), (300, 0), (111, 0)])
def test_ddpm_step_is_the_posterior(schedule: NoiseSchedule, t: int, s: int) -> None:
    x0 = torch.rand(64) * 2 - 1
    xt = schedule.q_sample(x0, t, torch.randn(64))
    ab = schedule.alpha_bar(t)
    eps = (xt - math.sqrt(ab) * x0) / math.sqrt(1 - ab)  # the exact noise, so x0_hat = x0
    mean, var = bayes_posterior(schedule, x0, xt, t, s)
    g = torch.Generator().manual_seed(3)
    z = torch.randn(64, generator=clone(g))
    out = DDPMSampler(schedule).step(eps, t, s, xt, g)
    assert torch.allclose(out, mean + math.sqrt(var) * z, atol=1e-5)


def test_ddpm_full_steps_match_eq17(schedule: NoiseSchedule) -> None:
    """With S = T and no clipping the DDPM mean is eq. 17: (x_t - beta_t/sqrt(1 - abar_t) eps)/sqrt(alpha_t)."""
    xt, eps = torch.randn(32), torch.randn(32)
    for t in (999, 400, 1):
        beta, abar = schedule.betas[t].item(), schedule.alpha_bar(t)
        g = torch.Generator().manual_seed(t)
        z = torch.randn(32, generator=clone(g))
        sampler = DDPMSampler(schedule, variance="beta")  # eq. 17's Sigma = beta_t I
        out = sampler.step(eps, t, t - 1, xt, g)
        mu = (xt - beta / math.sqrt(1 - abar) * eps) / math.sqrt(1 - beta)
        assert torch.allclose(out, mu + math.sqrt(beta) * z, atol=1e-5)


def test_last_step_returns_x0_hat_without_noise(schedule: NoiseSchedule) -> None:
    xt, eps = torch.randn(16), torch.randn(16)
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    abar = schedule.alpha_bar(0)
    x0_hat = (xt - math.sqrt(1 - abar) * eps) / math.sqrt(abar)
    for sampler in (DDPMSampler(schedule), DDPMSampler(schedule, variance="beta"), DDIMSampler(schedule, eta=1.0)):
        assert torch.allclose(sampler.step(eps, 0, -1, xt, g), x0_hat, atol=1e-5)
    assert torch.equal(g.get_state(), state)  # no random numbers drawn


def test_ddim_eta0_is_deterministic(schedule: NoiseSchedule) -> None:
    xt, eps = torch.randn(100), torch.randn(100)
    sampler = DDIMSampler(schedule, steps=10, eta=0.0)
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    a = sampler.step(eps, 999, 888, xt, g)
    b = sampler.step(eps, 999, 888, xt, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and torch.equal(g.get_state(), state)
    # the closed form: sqrt(abar') x0_hat + sqrt(1 - abar') eps
    ab, abp = schedule.alpha_bar(999), schedule.alpha_bar(888)
    x0 = (xt - math.sqrt(1 - ab) * eps) / math.sqrt(ab)
    assert torch.allclose(a, math.sqrt(abp) * x0 + math.sqrt(1 - abp) * eps, atol=1e-5)


@pytest.mark.parametrize("clip", [False, True])
def test_ddim_eta1_equals_ddpm(schedule: NoiseSchedule, clip: bool) -> None:
    xt, eps = torch.randn(100) * 2, torch.randn(100)
    for t, s in ((999, 888), (300, 10), (5, 0)):
        a = DDIMSampler(schedule, eta=1.0, clip=clip).step(eps, t, s, xt, torch.Generator().manual_seed(7))
        b = DDPMSampler(schedule, clip=clip).step(eps, t, s, xt, torch.Generator().manual_seed(7))
        assert torch.allclose(a, b, atol=1e-5)


def test_clip_bounds_x0_hat(schedule: NoiseSchedule) -> None:
    xt, eps = torch.randn(200) * 3, torch.randn(200)
    x0, eps2 = DDPMSampler(schedule, clip=True).predict_x0(eps, 500, xt)
    assert float(x0.abs().max()) <= 1.0
    ab = schedule.alpha_bar(500)
    assert torch.allclose(math.sqrt(ab) * x0 + math.sqrt(1 - ab) * eps2, xt, atol=1e-5)
    assert DDPMSampler(schedule).clip is False  # default: eq. 17 as written


def test_sampler_errors(schedule: NoiseSchedule) -> None:
    sampler = DDPMSampler(schedule, steps=10)
    with pytest.raises(ValueError, match="eps"):
        sampler.step(torch.zeros(3), 999, 888, torch.zeros(4))
    with pytest.raises(ValueError, match="t_prev"):
        sampler.step(torch.zeros(3), 888, 999, torch.zeros(3))
    with pytest.raises(ValueError, match="variance"):
        DDPMSampler(schedule, variance="learned")
    with pytest.raises(ValueError, match="eta"):
        DDIMSampler(schedule, eta=-1)


def test_randn_like_is_device_independent() -> None:
    x = torch.zeros(5, dtype=torch.float64)
    a = randn_like(x, torch.Generator().manual_seed(0))
    b = torch.randn(5, generator=torch.Generator().manual_seed(0))
    assert a.dtype == torch.float64 and torch.equal(a, b.double())


# ---------------------------------------------------------------- training loss


def test_diffusion_loss(schedule: NoiseSchedule) -> None:
    x0 = torch.rand(256, 1, 8, 8) * 2 - 1
    zero = lambda x, t: torch.zeros_like(x)  # noqa: E731
    loss = diffusion_loss(zero, x0, schedule, torch.Generator().manual_seed(0))
    assert loss.ndim == 0 and loss.item() == pytest.approx(1.0, abs=0.02)  # E[eps^2] = 1
    seen: list[torch.Tensor] = []

    def record(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen.append(t)
        return torch.zeros_like(x)

    diffusion_loss(record, x0, schedule)
    t = seen[0]
    assert t.dtype == torch.long and t.shape == (256,) and 0 <= int(t.min()) and int(t.max()) < 1000
    w = torch.zeros(1, requires_grad=True)
    diffusion_loss(lambda x, t: x * w, x0, schedule).backward()
    assert w.grad is not None
