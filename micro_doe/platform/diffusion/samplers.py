"""DDPM and DDIM samplers behind one ``step()`` interface (shared by both generators).

Every sampler walks S <= T respaced training steps (:meth:`NoiseSchedule.timesteps`) from
t = T-1 down to t = 0 and then to t_prev = -1 (the data), so the plain 2D sampler, the
multi-plane sampler and the latent sampler can use any of them::

    sampler = DDPMSampler(schedule, steps=50)
    for t, t_prev in sampler.pairs():
        eps = model(x, t)
        x = sampler.step(eps, t, t_prev, x, generator)

Definitions of the schedule and of t = -1 are in :mod:`~micro_doe.platform.diffusion.schedule`.
"""

from __future__ import annotations

import math

import torch

from micro_doe.platform.diffusion.schedule import NoiseSchedule, randn_like


class Sampler:
    """Shared part of the samplers: the respaced steps and the x0 prediction.

    ``timesteps`` (LongTensor[S], descending from T-1 to 0, see :meth:`NoiseSchedule.timesteps`);
    :meth:`pairs` lists the transitions (t, t_prev), the last one being (0, -1).
    ``clip``: clip the predicted x0 to [-1, 1] before it is used (default False, i.e. eq. 17
    as written; pass True for data scaled to [-1, 1] sampled in few steps). When clipping,
    the noise estimate is recomputed from the clipped x0 so that x_t, x0 and eps stay consistent.
    """

    def __init__(self, schedule: NoiseSchedule, steps: int | None = None, clip: bool = False):
        self.schedule = schedule
        self.timesteps = schedule.timesteps(steps)
        self.clip = bool(clip)

    @property
    def steps(self) -> int:
        return self.timesteps.numel()

    def pairs(self) -> list[tuple[int, int]]:
        """The transitions (t, t_prev) in sampling order; S of them, ending with (0, -1)."""
        ts = self.timesteps.tolist()
        return list(zip(ts, ts[1:] + [-1]))

    def predict_x0(self, eps: torch.Tensor, t: int, x_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t), clipped if ``clip``; returns (x0_hat, eps)."""
        if eps.shape != x_t.shape:
            raise ValueError(f"eps: shape {tuple(eps.shape)} differs from x_t's {tuple(x_t.shape)}")
        abar = self.schedule.alpha_bar(t)
        x0 = (x_t - math.sqrt(1 - abar) * eps) / math.sqrt(abar)
        if self.clip:
            x0 = x0.clamp(-1.0, 1.0)
            eps = (x_t - math.sqrt(abar) * x0) / math.sqrt(1 - abar)
        return x0, eps

    def _check_pair(self, t: int, t_prev: int) -> None:
        if not -1 <= int(t_prev) < int(t) < self.schedule.T:
            raise ValueError(f"t, t_prev: need -1 <= t_prev < t <= {self.schedule.T - 1}, got t={t}, t_prev={t_prev}")

    def step(
        self, eps: torch.Tensor, t: int, t_prev: int, x_t: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """One reverse transition x_t -> x_{t_prev} given the noise prediction ``eps``."""
        raise NotImplementedError

class DDPMSampler(Sampler):
    """Ancestral DDPM sampling between respaced steps t -> t_prev.

    With abar = abar_t, abar' = abar_{t_prev}, beta = 1 - abar/abar' (the beta of the
    respaced step; beta_t when t_prev = t-1), the step draws from the posterior
    q(x_{t_prev} | x_t, x0_hat) = N(mu, var):

        mu  = sqrt(abar') beta / (1 - abar) x0_hat + sqrt(1 - beta) (1 - abar') / (1 - abar) x_t
        var = beta_tilde = (1 - abar') / (1 - abar) beta          (variance="posterior", default)
        var = beta                                                 (variance="beta", eq. 17's Sigma = beta_t I)

    Without clipping and with S = T, mu is exactly eq. 17. No noise is added on the last
    transition (t_prev = -1), whose mean is x0_hat itself.
    """

    def __init__(
        self, schedule: NoiseSchedule, steps: int | None = None, clip: bool = False, variance: str = "posterior"
    ):
        super().__init__(schedule, steps, clip)
        if variance not in ("posterior", "beta"):
            raise ValueError(f"variance: expected 'posterior' or 'beta', got {variance!r}")
        self.variance = variance

    def step(
        self, eps: torch.Tensor, t: int, t_prev: int, x_t: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        self._check_pair(t, t_prev)
        x0, _ = self.predict_x0(eps, t, x_t)
        abar, abar_prev = self.schedule.alpha_bar(t), self.schedule.alpha_bar(t_prev)
        beta = 1 - abar / abar_prev
        coef_x0 = math.sqrt(abar_prev) * beta / (1 - abar)
        coef_xt = math.sqrt(1 - beta) * (1 - abar_prev) / (1 - abar)
        mean = coef_x0 * x0 + coef_xt * x_t
        if t_prev == -1:
            return mean
        var = (1 - abar_prev) / (1 - abar) * beta if self.variance == "posterior" else beta
        return mean + math.sqrt(var) * randn_like(x_t, generator)

class DDIMSampler(Sampler):
    """DDIM (Song et al. 2021) between respaced steps t -> t_prev, with stochasticity ``eta``.

        sigma  = eta * sqrt((1 - abar') / (1 - abar) * (1 - abar / abar'))
        x_prev = sqrt(abar') x0_hat + sqrt(1 - abar' - sigma^2) eps + sigma z,   z ~ N(0, I)

    eta = 0 is deterministic (no random numbers drawn); eta = 1 gives sigma^2 = beta_tilde and
    then the step equals :class:`DDPMSampler`'s (variance="posterior") step exactly.
    """

    def __init__(self, schedule: NoiseSchedule, steps: int | None = None, eta: float = 0.0, clip: bool = False):
        super().__init__(schedule, steps, clip)
        if not eta >= 0:
            raise ValueError(f"eta: must be >= 0, got {eta}")
        self.eta = float(eta)

    def step(
        self, eps: torch.Tensor, t: int, t_prev: int, x_t: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        self._check_pair(t, t_prev)
        x0, eps = self.predict_x0(eps, t, x_t)
        abar, abar_prev = self.schedule.alpha_bar(t), self.schedule.alpha_bar(t_prev)
        var = self.eta**2 * (1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev)
        if var > 1 - abar_prev:
            raise ValueError(f"eta: {self.eta} makes sigma^2 exceed 1 - abar_prev at t={t}; use eta <= 1")
        out = math.sqrt(abar_prev) * x0 + math.sqrt(1 - abar_prev - var) * eps
        if var > 0:
            out = out + math.sqrt(var) * randn_like(x_t, generator)
        return out
