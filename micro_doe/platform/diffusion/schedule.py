"""The noise schedule, forward noising and the training loss (shared by both generators).

Definitions (DDPM, Ho et al. 2020; Micro3Diff eqs. 8-19), with 0-based training steps:

- Training steps are ``t = 0 .. T-1``. ``betas[t]`` is beta_t, ``alphas[t] = 1 - betas[t]``
  (eq. 18) and ``alphas_cumprod[t] = prod_{s=0..t} alphas[s]`` (eq. 19), written abar_t.
  The paper's beta_1 = 1e-4 and beta_T = 1e-2 are ``betas[0]`` and ``betas[T-1]``.
- ``t = -1`` stands for clean data: abar_{-1} = 1, so x_{-1} = x_0 (the data).
- Forward process (eq. 8): q(x_t | x_{t-1}) = N(sqrt(alpha_t) x_{t-1}, beta_t I); in closed
  form q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I), i.e.
  ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps`` (:meth:`NoiseSchedule.q_sample`).
- Between any two steps s < t: q(x_t | x_s) = N(sqrt(abar_t/abar_s) x_s, (1 - abar_t/abar_s) I)
  (:meth:`NoiseSchedule.renoise`); for s = t-1 this is eq. 21, the harmonizing renoise.
- The network is an epsilon-predictor ``eps_model(x_t, t) -> eps`` trained with eq. 15:
  mean squared error between the drawn noise and the prediction, t uniform on 0..T-1
  (:func:`diffusion_loss`).

Sampling runs over S <= T of the training steps (:meth:`NoiseSchedule.timesteps`), from
t = T-1 down to t = 0 and then to t_prev = -1 (the data); the samplers are in
:mod:`~micro_doe.platform.diffusion.samplers`.

Random numbers are drawn with ``torch.randn(..., generator=generator)`` on the generator's
device (the CPU for a plain ``torch.Generator()``) and then moved to the data's device, so a
seed gives the same numbers on every device.
"""

from __future__ import annotations

import math
from typing import Any

import torch

SCHEDULE_KINDS = ("linear", "cosine", "custom")


class NoiseSchedule:
    """The betas of a T-step forward process and the quantities derived from them.

    ``betas``, ``alphas`` and ``alphas_cumprod`` are float64 CPU tensors of length T.
    Build one with :meth:`linear` (the paper's) or :meth:`cosine`, or pass betas directly.
    """

    def __init__(self, betas: torch.Tensor | list[float], kind: str = "custom", params: dict[str, Any] | None = None):
        betas = torch.as_tensor(betas, dtype=torch.float64).detach().cpu().clone()
        if betas.ndim != 1 or betas.numel() == 0:
            raise ValueError(f"betas: expected a non-empty 1D sequence, got shape {tuple(betas.shape)}")
        if not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError("betas: every beta_t must lie in (0, 1)")
        if kind not in SCHEDULE_KINDS:
            raise ValueError(f"kind: expected one of {SCHEDULE_KINDS}, got {kind!r}")
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.kind = kind
        self.params = dict(params or {})

    # ------------------------------------------------------------ constructors

    @classmethod
    def linear(cls, T: int = 1000, beta_start: float = 1e-4, beta_end: float = 1e-2) -> NoiseSchedule:
        """beta_t evenly spaced from ``beta_start`` (t=0) to ``beta_end`` (t=T-1); Micro3Diff's."""
        _check_T(T)
        if not 0 < beta_start <= beta_end < 1:
            raise ValueError(f"beta_start, beta_end: need 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}")
        betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
        return cls(betas, "linear", {"T": T, "beta_start": beta_start, "beta_end": beta_end})

    @classmethod
    def cosine(cls, T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> NoiseSchedule:
        """Nichol & Dhariwal (2021): abar(u) = f(u)/f(0), f(u) = cos^2((u/T + s)/(1 + s) * pi/2).

        beta_t = 1 - abar(t+1)/abar(t) for t = 0..T-1, clipped at ``max_beta``.
        """
        _check_T(T)
        if s < 0:
            raise ValueError(f"s: must be >= 0, got {s}")
        u = torch.arange(T + 1, dtype=torch.float64)
        f = torch.cos((u / T + s) / (1 + s) * math.pi / 2) ** 2
        betas = (1 - f[1:] / f[:-1]).clamp(max=max_beta)
        return cls(betas, "cosine", {"T": T, "s": s, "max_beta": max_beta})

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description; :meth:`from_dict` rebuilds the identical schedule."""
        if self.kind == "custom":
            return {"kind": "custom", "betas": self.betas.tolist()}
        return {"kind": self.kind, **self.params}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NoiseSchedule:
        data = dict(data)
        kind = data.pop("kind", None)
        if kind == "linear":
            return cls.linear(**data)
        if kind == "cosine":
            return cls.cosine(**data)
        if kind == "custom":
            return cls(data["betas"], "custom")
        raise ValueError(f"kind: expected one of {SCHEDULE_KINDS}, got {kind!r}")

    # ------------------------------------------------------------ quantities

    @property
    def T(self) -> int:
        """Number of training steps."""
        return self.betas.numel()

    def alpha_bar(self, t: int) -> float:
        """abar_t for ``-1 <= t <= T-1`` (abar_{-1} = 1, the data)."""
        t = int(t)
        if not -1 <= t < self.T:
            raise ValueError(f"t: expected -1 <= t <= {self.T - 1}, got {t}")
        return 1.0 if t == -1 else float(self.alphas_cumprod[t])

    def timesteps(self, steps: int | None = None) -> torch.Tensor:
        """S = ``steps`` training steps to sample on, descending, always from T-1 to 0.

        Rule: t_i = floor(i (T-1)/(S-1) + 1/2) for i = 0..S-1 (exact integer arithmetic),
        returned in the order t_{S-1} = T-1, ..., t_0 = 0. The spacing (T-1)/(S-1) >= 1
        makes the steps distinct; S = T gives every step; S = 1 gives just T-1.
        """
        S = self.T if steps is None else int(steps)
        if not 1 <= S <= self.T:
            raise ValueError(f"steps: expected 1 <= steps <= T = {self.T}, got {steps}")
        if S == 1:
            return torch.tensor([self.T - 1], dtype=torch.long)
        i = torch.arange(S, dtype=torch.long)
        t = (2 * i * (self.T - 1) + (S - 1)) // (2 * (S - 1))
        return t.flip(0)

    # ------------------------------------------------------------ forward process

    def q_sample(self, x0: torch.Tensor, t: int | torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise.

        ``t`` is one step for the whole batch, or a LongTensor[B] with one step per item
        (broadcast over the remaining dims of ``x0``).
        """
        if noise.shape != x0.shape:
            raise ValueError(f"noise: shape {tuple(noise.shape)} differs from x0's {tuple(x0.shape)}")
        if isinstance(t, torch.Tensor) and t.ndim > 0:
            if t.shape != x0.shape[:1]:
                raise ValueError(f"t: expected one step per batch item, shape {tuple(x0.shape[:1])}, "
                                 f"got {tuple(t.shape)}")
            if int(t.min()) < 0 or int(t.max()) >= self.T:
                raise ValueError(f"t: steps must lie in 0..{self.T - 1}")
            abar = self.alphas_cumprod.to(x0.device)[t.to(x0.device)].to(x0.dtype)
            abar = abar.reshape(-1, *([1] * (x0.ndim - 1)))
            return abar.sqrt() * x0 + (1 - abar).sqrt() * noise
        abar = self.alpha_bar(int(t))  # type: ignore[assignment]
        return math.sqrt(abar) * x0 + math.sqrt(1 - abar) * noise

    def renoise(self, x: torch.Tensor, t_prev: int, t: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw x_t ~ q(x_t | x_{t_prev}) = N(sqrt(a) x_{t_prev}, (1 - a) I), a = abar_t / abar_{t_prev}.

        For t_prev = t - 1, a = alpha_t and this is eq. 21 (one forward step, eq. 8).
        """
        if not -1 <= int(t_prev) < int(t) < self.T:
            raise ValueError(f"t_prev, t: need -1 <= t_prev < t <= {self.T - 1}, got {t_prev}, {t}")
        a = self.alpha_bar(t) / self.alpha_bar(t_prev)
        return math.sqrt(a) * x + math.sqrt(1 - a) * randn_like(x, generator)


def _check_T(T: int) -> None:
    if int(T) != T or T < 1:
        raise ValueError(f"T: expected a positive integer, got {T}")


def randn_like(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard normal noise shaped like ``x``, drawn on the generator's device, then moved to x's."""
    device = generator.device if generator is not None else x.device
    noise = torch.randn(x.shape, generator=generator, device=device, dtype=torch.float32)
    return noise.to(device=x.device, dtype=x.dtype)

def make_generator(seed: int | None = None, generator: torch.Generator | None = None) -> torch.Generator:
    """A CPU generator from ``seed``, or ``generator`` itself; a randomly seeded one if neither."""
    if seed is not None and generator is not None:
        raise ValueError("seed, generator: give one or the other, not both")
    if generator is not None:
        return generator
    g = torch.Generator()
    if seed is None:
        g.seed()
    else:
        g.manual_seed(int(seed))
    return g


def diffusion_loss(
    model: Any, x0: torch.Tensor, schedule: NoiseSchedule, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Eq. 15 with lambda(t) = 1: mean over all elements of (eps - model(x_t, t))^2.

    One t per batch item, uniform on 0..T-1; eps ~ N(0, I); x_t from :meth:`NoiseSchedule.q_sample`.
    """
    device = generator.device if generator is not None else x0.device
    t = torch.randint(0, schedule.T, (x0.shape[0],), generator=generator, device=device).to(x0.device)
    noise = randn_like(x0, generator)
    x_t = schedule.q_sample(x0, t, noise)
    return torch.mean((noise - model(x_t, t)) ** 2)
