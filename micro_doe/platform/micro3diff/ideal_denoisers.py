"""Denoisers whose exact answer is known: references for testing samplers without training.

All of them are epsilon-predictors with the interface of a trained network,
``model(x_t: Tensor[B, C, H, W], t: LongTensor[B]) -> Tensor[B, C, H, W]``. For data
distribution p(x0) and the forward process x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps
(see :mod:`micro_doe.platform.diffusion.schedule`) the minimiser of the training loss (eq. 15) is

    eps*(x_t, t) = (x_t - sqrt(abar_t) E[x0 | x_t]) / sqrt(1 - abar_t),

so each class only has to compute the posterior mean E[x0 | x_t] exactly:

- :class:`GaussianDenoiser`: x0 ~ N(mean, cov) with a dense covariance over the C*H*W pixels;
  E[x0 | x_t] = mean + sqrt(abar) cov (abar cov + (1 - abar) I)^-1 (x_t - sqrt(abar) mean),
  evaluated in the eigenbasis of ``cov``.
- :class:`StationaryGaussianDenoiser`: the same for a periodic stationary covariance on an
  H x W grid (circulant), evaluated in Fourier space, where the covariance is diagonal
  with eigenvalues ``spectrum = fft2(c)`` (c = covariance of pixel (0, 0) with every pixel).
- :class:`EmpiricalDenoiser`: p(x0) uniform over N training images x0_i;
  E[x0 | x_t] = sum_i w_i x0_i with w = softmax_i(-|x_t - sqrt(abar) x0_i|^2 / (2 (1 - abar))).

Computation is in float64; the result has the dtype of ``x_t``. ``calls`` counts the
forward passes and ``images`` the images seen, for tests that count network evaluations.
"""

from __future__ import annotations

import math

import torch

from micro_doe.platform.diffusion import NoiseSchedule


class _IdealDenoiser:
    """Turns an exact posterior mean into an exact noise prediction."""

    def __init__(self, schedule: NoiseSchedule, shape: tuple[int, int, int]):
        self.schedule = schedule
        self.shape = tuple(int(s) for s in shape)  # (C, H, W)
        self.calls = 0
        self.images = 0

    def posterior_mean(self, x_t: torch.Tensor, abar: float) -> torch.Tensor:
        """E[x0 | x_t] for a batch of float64 images (B, C, H, W) at noise level abar."""
        raise NotImplementedError

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if tuple(x_t.shape[1:]) != self.shape:
            raise ValueError(f"x_t: expected images of shape {self.shape}, got {tuple(x_t.shape[1:])}")
        t = torch.as_tensor(t)
        steps = t.unique() if t.ndim else t.reshape(1)
        self.calls += 1
        self.images += x_t.shape[0]
        x = x_t.detach().to(torch.float64)
        eps = torch.empty_like(x)
        for step in steps.tolist():  # the samplers use one step per call; training batches mix them
            rows = slice(None) if steps.numel() == 1 else (t == step).to(x.device)
            abar = self.schedule.alpha_bar(step)
            mean = self.posterior_mean(x[rows], abar)
            eps[rows] = (x[rows] - math.sqrt(abar) * mean) / math.sqrt(1 - abar)
        return eps.to(x_t.dtype)


class GaussianDenoiser(_IdealDenoiser):
    """Ideal noise predictor for Gaussian images x0 ~ N(mean, cov).

    ``mean``: a scalar or a tensor of shape (C, H, W); ``cov``: (D, D) symmetric positive
    semi-definite with D = C*H*W, pixels in C-order of (C, H, W).
    """

    def __init__(
        self, schedule: NoiseSchedule, mean: float | torch.Tensor, cov: torch.Tensor, shape: tuple[int, int, int]
    ):
        super().__init__(schedule, shape)
        d = math.prod(self.shape)
        cov = torch.as_tensor(cov, dtype=torch.float64)
        if cov.shape != (d, d):
            raise ValueError(f"cov: expected shape ({d}, {d}) for images of shape {self.shape}, got {tuple(cov.shape)}")
        if not torch.allclose(cov, cov.T, atol=1e-10):
            raise ValueError("cov: must be symmetric")
        evals, self.evecs = torch.linalg.eigh(cov)
        if float(evals.min()) < -1e-8 * max(float(evals.max()), 1.0):
            raise ValueError(f"cov: must be positive semi-definite, smallest eigenvalue {float(evals.min()):.3g}")
        self.evals = evals.clamp(min=0)
        self.mean = torch.as_tensor(mean, dtype=torch.float64).expand(self.shape).reshape(d).clone()

    def posterior_mean(self, x_t: torch.Tensor, abar: float) -> torch.Tensor:
        gain = math.sqrt(abar) * self.evals / (abar * self.evals + 1 - abar)
        evecs, mean = self.evecs.to(x_t.device), self.mean.to(x_t.device)
        r = x_t.reshape(x_t.shape[0], -1) - math.sqrt(abar) * mean
        out = mean + ((r @ evecs) * gain.to(x_t.device)) @ evecs.T
        return out.reshape(x_t.shape)


class StationaryGaussianDenoiser(_IdealDenoiser):
    """Ideal noise predictor for periodic stationary Gaussian images, in Fourier space.

    Every channel is an independent field with constant ``mean`` and covariance
    Cov(x[i, j], x[i + a, j + b]) = ``cov_kernel[a mod H, b mod W]`` (shape (H, W)).
    """

    def __init__(self, schedule: NoiseSchedule, mean: float, cov_kernel: torch.Tensor, channels: int = 1):
        kernel = torch.as_tensor(cov_kernel, dtype=torch.float64)
        if kernel.ndim != 2:
            raise ValueError(f"cov_kernel: expected shape (H, W), got {tuple(kernel.shape)}")
        super().__init__(schedule, (channels, *kernel.shape))
        spectrum = torch.fft.fft2(kernel)
        if float(spectrum.imag.abs().max()) > 1e-8 * float(spectrum.real.abs().max()):
            raise ValueError("cov_kernel: must be symmetric, kernel[a, b] == kernel[-a, -b]")
        if float(spectrum.real.min()) < -1e-8 * float(spectrum.real.max()):
            raise ValueError("cov_kernel: not positive semi-definite (negative Fourier eigenvalue)")
        self.spectrum = spectrum.real.clamp(min=0)
        self.mean = float(mean)

    def posterior_mean(self, x_t: torch.Tensor, abar: float) -> torch.Tensor:
        gain = math.sqrt(abar) * self.spectrum / (abar * self.spectrum + 1 - abar)
        r = torch.fft.fft2(x_t - math.sqrt(abar) * self.mean)
        return self.mean + torch.fft.ifft2(r * gain.to(x_t.device)).real


class EmpiricalDenoiser(_IdealDenoiser):
    """Ideal noise predictor when the data are exactly the N training ``images`` (N, C, H, W).

    Batched and numerically stable: log-weights are formed from squared distances and
    normalised with a softmax (a log-sum-exp); ``chunk`` bounds the (batch x N) distance matrix.
    """

    def __init__(self, schedule: NoiseSchedule, images: torch.Tensor, chunk: int = 4096):
        images = torch.as_tensor(images, dtype=torch.float64)
        if images.ndim != 4 or images.shape[0] == 0:
            raise ValueError(f"images: expected a non-empty (N, C, H, W) tensor, got shape {tuple(images.shape)}")
        super().__init__(schedule, tuple(images.shape[1:]))  # type: ignore[arg-type]
        self.data = images.reshape(images.shape[0], -1)
        self.sq_norms = (self.data**2).sum(1)
        self.chunk = int(chunk)

    def posterior_mean(self, x_t: torch.Tensor, abar: float) -> torch.Tensor:
        data, sq_norms = self.data.to(x_t.device), self.sq_norms.to(x_t.device)
        flat = x_t.reshape(x_t.shape[0], -1)
        out = torch.empty_like(flat)
        for lo in range(0, flat.shape[0], self.chunk):
            x = flat[lo : lo + self.chunk]
            # |x - s d_i|^2 = |x|^2 - 2 s x.d_i + s^2 |d_i|^2; |x|^2 is common to all i and drops out.
            logits = (2 * math.sqrt(abar) * (x @ data.T) - abar * sq_norms) / (2 * (1 - abar))
            out[lo : lo + self.chunk] = torch.softmax(logits, dim=1) @ data
        return out.reshape(x_t.shape)


def periodic_gaussian_kernel(size: int, length: float, variance: float = 1.0, dims: int = 2) -> torch.Tensor:
    """Covariance kernel of an isotropic field with Gaussian correlation on a periodic grid.

    c(r) = variance * prod_axes k(r_a), with the 1D periodised Gaussian
    k(r) = sum_m exp(-(r + m size)^2 / (2 length^2)) / sum_m exp(-(m size)^2 / (2 length^2)),
    so c(0) = variance. Because it factorises over axes, every plane section of the ``dims=3``
    field has exactly the ``dims=2`` kernel: the 2D slices of one 3D field share the 2D statistics.
    Returned with shape ``(size,) * dims``, index = lag modulo size.
    """
    if size < 1 or length <= 0 or variance <= 0:
        raise ValueError(f"size, length, variance: must be positive, got {size}, {length}, {variance}")
    r = torch.arange(size, dtype=torch.float64)
    m = torch.arange(-3, 4, dtype=torch.float64)[:, None] * size
    k = torch.exp(-((r + m) ** 2) / (2 * length**2)).sum(0)
    k = k / torch.exp(-(m[:, 0] ** 2) / (2 * length**2)).sum()
    out = torch.tensor(float(variance), dtype=torch.float64)
    for _ in range(dims):
        out = out[..., None] * k
    return out
